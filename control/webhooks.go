package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"

	"github.com/edgeproxy/edgeproxy/store"
	"github.com/edgeproxy/edgeproxy/webhooks"
)

// MaxWebhooks is how many webhooks an organization may have.
const MaxWebhooks = 5

// WebhookConfig is what the API needs to check a webhook's URL.
type WebhookConfig struct {
	// AllowPrivate accepts http:// URLs and any address
	// (--webhook-allow-private, --dev).
	AllowPrivate bool
	// Resolver resolves a URL's host at creation. If nil, the system's.
	Resolver *net.Resolver
}

// webhookJSON is a webhook as the API shows it. Secret is set only in the
// answers to a create and a rotation.
type webhookJSON struct {
	ID           string            `json:"id"`
	URL          string            `json:"url"`
	Events       []string          `json:"events"`
	Secret       string            `json:"secret,omitempty"`
	CreatedAt    string            `json:"created_at"`
	DisabledAt   *string           `json:"disabled_at"`
	LastDelivery *lastDeliveryJSON `json:"last_delivery"`
}

type lastDeliveryJSON struct {
	At         string  `json:"at"`
	StatusCode *int    `json:"status_code"`
	Error      *string `json:"error"`
}

func webhookToJSON(w store.Webhook, withSecret bool) webhookJSON {
	out := webhookJSON{ID: w.ID, URL: w.URL, Events: w.Events, CreatedAt: w.CreatedAt.UTC().Format(store.TimeFormat)}
	if withSecret {
		out.Secret = w.Secret
	}
	if w.DisabledAt != nil {
		s := w.DisabledAt.UTC().Format(store.TimeFormat)
		out.DisabledAt = &s
	}
	if d := w.LastDelivery; d != nil {
		out.LastDelivery = &lastDeliveryJSON{At: d.At.UTC().Format(store.TimeFormat)}
		if d.StatusCode != 0 {
			out.LastDelivery.StatusCode = &d.StatusCode
		}
		if d.Error != "" {
			out.LastDelivery.Error = &d.Error
		}
	}
	return out
}

// RecordJSON is a record exactly as the API shows it; webhook events carry
// it as data.record.
func RecordJSON(r store.Record) any { return toJSON(r) }

func invalidWebhookInput(field, detail string) *apiError {
	return &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "invalid_input", Detail: detail, Attr: attr(field)}
}

var (
	errWebhookURLRequired = &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "required",
		Detail: "This field is required.", Attr: attr("url")}
	errMaxWebhooks = &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "max_webhooks",
		Detail: fmt.Sprintf("Maximum of %d webhooks per organization.", MaxWebhooks)}
	errWebhookDisabled = &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "invalid_state",
		Detail: "Cannot ping a disabled webhook; create a new one."}
)

// webhookRequest is the body of a webhook create: url, and events (every
// type when absent or null).
type webhookRequest struct {
	url    string
	events []string
}

// parseWebhookRequest reads url and events from a JSON body, or from a
// form body (events repeated or comma-separated), and checks events.
func parseWebhookRequest(b *requestBody) (webhookRequest, *apiError) {
	var req webhookRequest
	var events []string
	eventsGiven := false
	switch {
	case b.fields != nil:
		if raw, ok := b.fields["url"]; ok && string(raw) != "null" {
			if err := json.Unmarshal(raw, &req.url); err != nil {
				return req, invalidWebhookInput("url", "Not a valid string.")
			}
		}
		if raw, ok := b.fields["events"]; ok && string(raw) != "null" {
			eventsGiven = true
			if err := json.Unmarshal(raw, &events); err != nil {
				return req, invalidWebhookInput("events", `Expected a list of event types, such as ["proxy_record.status_changed"].`)
			}
		}
	case b.form != nil:
		req.url = b.form.Get("url")
		if vs, ok := b.form["events"]; ok {
			eventsGiven = true
			for _, v := range vs {
				for _, e := range strings.Split(v, ",") {
					if e = strings.TrimSpace(e); e != "" {
						events = append(events, e)
					}
				}
			}
		}
	}
	if strings.TrimSpace(req.url) == "" {
		return req, errWebhookURLRequired
	}
	if !eventsGiven {
		req.events = slices.Clone(store.EventTypes)
		return req, nil
	}
	if len(events) == 0 {
		return req, invalidWebhookInput("events", "Name at least one event type: "+strings.Join(store.EventTypes, ", ")+"; leave events out for all of them.")
	}
	for _, e := range events {
		if !slices.Contains(store.EventTypes, e) {
			return req, invalidWebhookInput("events", fmt.Sprintf("%q is not an event type; the event types are %s.", e, strings.Join(store.EventTypes, ", ")))
		}
	}
	// In the order of EventTypes, each once.
	for _, e := range store.EventTypes {
		if slices.Contains(events, e) {
			req.events = append(req.events, e)
		}
	}
	return req, nil
}

func (a *API) listWebhooks(c *call) *apiError {
	hooks, err := a.store.OrgWebhooks(c.org.ID)
	if err != nil {
		return internalError(fmt.Errorf("listing webhooks: %w", err))
	}
	results := make([]webhookJSON, len(hooks))
	for i, w := range hooks {
		results[i] = webhookToJSON(w, false)
	}
	writeJSON(c.w, http.StatusOK, struct {
		Results []webhookJSON `json:"results"`
	}{results})
	return nil
}

func (a *API) createWebhook(c *call) *apiError {
	body, aerr := c.body.decode()
	if aerr != nil {
		return aerr
	}
	req, aerr := parseWebhookRequest(body)
	if aerr != nil {
		return aerr
	}
	url, err := webhooks.CheckURL(c.r.Context(), req.url, a.cfg.Webhooks.AllowPrivate, a.cfg.Webhooks.Resolver)
	var uerr *webhooks.URLError
	if errors.As(err, &uerr) {
		return invalidWebhookInput("url", uerr.Reason)
	}
	if err != nil {
		return internalError(err)
	}
	w, err := a.store.CreateWebhook(store.Webhook{OrgID: c.org.ID, URL: url, Events: req.events, Secret: webhooks.NewSecret()}, MaxWebhooks)
	switch {
	case errors.Is(err, store.ErrTooManyWebhooks):
		return errMaxWebhooks
	case errors.Is(err, store.ErrNotFound):
		return errOrgNotFound
	case err != nil:
		return internalError(err)
	}
	a.log.Info("webhook created", "org_id", w.OrgID, "webhook_id", w.ID, "events", strings.Join(w.Events, ","))
	writeJSON(c.w, http.StatusCreated, webhookToJSON(w, true))
	return nil
}

// orgWebhookID is the path's webhook id; one that is not a UUID names no
// webhook.
func orgWebhookID(c *call) (string, *apiError) {
	id := c.vars["id"]
	if !store.IsID(id) {
		return "", errNotFound
	}
	return id, nil
}

// webhookErr maps the store's answers about one webhook: another
// organization's webhook is as unknown as a missing one.
func webhookErr(err error) *apiError {
	switch {
	case errors.Is(err, store.ErrNotFound):
		return errNotFound
	case errors.Is(err, store.ErrWebhookDisabled):
		return errWebhookDisabled
	}
	return internalError(err)
}

func (a *API) getWebhook(c *call) *apiError {
	id, aerr := orgWebhookID(c)
	if aerr != nil {
		return aerr
	}
	w, err := a.store.Webhook(id)
	if err == nil && w.OrgID != c.org.ID {
		err = store.ErrNotFound
	}
	if err != nil {
		return webhookErr(err)
	}
	writeJSON(c.w, http.StatusOK, webhookToJSON(w, false))
	return nil
}

func (a *API) deleteWebhook(c *call) *apiError {
	id, aerr := orgWebhookID(c)
	if aerr != nil {
		return aerr
	}
	if err := a.store.DeleteWebhook(c.org.ID, id); err != nil {
		return webhookErr(err)
	}
	a.log.Info("webhook deleted", "org_id", c.org.ID, "webhook_id", id)
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) rotateWebhookSecret(c *call) *apiError {
	id, aerr := orgWebhookID(c)
	if aerr != nil {
		return aerr
	}
	w, err := a.store.UpdateWebhook(c.org.ID, id, func(w *store.Webhook) error {
		w.Secret = webhooks.NewSecret()
		return nil
	})
	if err != nil {
		return webhookErr(err)
	}
	a.log.Info("webhook secret rotated", "org_id", w.OrgID, "webhook_id", w.ID)
	writeJSON(c.w, http.StatusOK, webhookToJSON(w, true))
	return nil
}

func (a *API) pingWebhook(c *call) *apiError {
	id, aerr := orgWebhookID(c)
	if aerr != nil {
		return aerr
	}
	ev, err := a.store.EnqueuePing(c.org.ID, id)
	if err != nil {
		return webhookErr(err)
	}
	writeJSON(c.w, http.StatusAccepted, struct {
		EventID string `json:"event_id"`
	}{ev.ID})
	return nil
}

// AdminWebhook is a webhook as the operator sees it: the API's fields
// (never the secret), its organization, why it was disabled, since when
// its deliveries fail and how many are queued.
type AdminWebhook struct {
	OrgID string `json:"org_id"`
	webhookJSON
	DisabledReason *string `json:"disabled_reason"`
	FailingSince   *string `json:"failing_since"`
	Queued         int     `json:"queued"`
}

func (a *Admin) listWebhooks(w http.ResponseWriter, r *http.Request) {
	org := r.URL.Query().Get("org")
	var err error
	if org != "" && !store.IsID(org) {
		err = badRequest("--org: %q is not an organization id (a UUID)", org)
	}
	out := []AdminWebhook{}
	if err == nil {
		var hooks []store.WebhookWithQueue
		hooks, err = a.store.Webhooks(org)
		for _, h := range hooks {
			aw := AdminWebhook{OrgID: h.OrgID, webhookJSON: webhookToJSON(h.Webhook, false), Queued: h.Queued}
			if h.DisabledReason != "" {
				aw.DisabledReason = &h.DisabledReason
			}
			if h.FailingSince != nil {
				s := h.FailingSince.UTC().Format(store.TimeFormat)
				aw.FailingSince = &s
			}
			out = append(out, aw)
		}
	}
	a.reply(w, http.StatusOK, out, err)
}
