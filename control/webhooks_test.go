package control_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/edgeproxy/edgeproxy/webhooks"
)

func hooksPath(orgID string) string      { return "/api/organizations/" + orgID + "/webhooks/" }
func hookPath(orgID, id string) string   { return hooksPath(orgID) + id + "/" }
func rotatePath(orgID, id string) string { return hookPath(orgID, id) + "rotate_secret/" }
func pingPath(orgID, id string) string   { return hookPath(orgID, id) + "ping/" }

// webhookView is a webhook as the API answers it.
type webhookView struct {
	ID           string   `json:"id"`
	URL          string   `json:"url"`
	Events       []string `json:"events"`
	Secret       *string  `json:"secret"`
	CreatedAt    string   `json:"created_at"`
	DisabledAt   *string  `json:"disabled_at"`
	LastDelivery *struct {
		At         string  `json:"at"`
		StatusCode *int    `json:"status_code"`
		Error      *string `json:"error"`
	} `json:"last_delivery"`
}

func decodeWebhook(t *testing.T, res response, status int) webhookView {
	t.Helper()
	if res.status != status {
		t.Fatalf("status %d, want %d: %s", res.status, status, res.body)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &fields); err != nil {
		t.Fatalf("body %s: %v", res.body, err)
	}
	want := []string{"created_at", "disabled_at", "events", "id", "last_delivery", "url"}
	if _, ok := fields["secret"]; ok {
		want = append(want, "secret")
	}
	if got, want := slices.Sorted(mapKeys(fields)), slices.Sorted(slices.Values(want)); !slices.Equal(got, want) {
		t.Errorf("webhook fields %s, want %v", got, want)
	}
	var w webhookView
	json.Unmarshal(res.body, &w)
	return w
}

// hookJSON is a create body.
func hookJSON(url string, events ...string) string {
	body := map[string]any{"url": url}
	if events != nil {
		body["events"] = events
	}
	data, _ := json.Marshal(body)
	return string(data)
}

// TestWebhookRoutes: the routes of CONTRACT §10 for an owner: the create
// answers the secret once, reads never show it, a rotation answers a new
// one, and a delete makes the webhook unknown.
func TestWebhookRoutes(t *testing.T) {
	f := newAPIFixtureConfig(t, control.Config{TargetCNAMEBase: testBase, MaxProxyRecords: 2,
		Webhooks: control.WebhookConfig{AllowPrivate: true}})
	org := f.addOrg(t, "Acme", nil)
	owner := f.addUser(t, "owner@acme.test")
	f.addMember(t, org, owner, store.LevelOwner)
	key := f.addKey(t, owner, []string{"*"})
	ro := f.addKey(t, owner, []string{control.ScopeOrgRead})

	created := decodeWebhook(t, f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: key,
		body: hookJSON("https://hooks.example.com/a"), contentType: "application/json"}), http.StatusCreated)
	if created.Secret == nil || !strings.HasPrefix(*created.Secret, "whsec_") {
		t.Fatalf("create answered secret %v, want whsec_…", created.Secret)
	}
	if got := strings.Join(created.Events, ","); got != strings.Join(store.EventTypes, ",") {
		t.Errorf("default events %s, want every type", got)
	}
	if created.DisabledAt != nil || created.LastDelivery != nil || created.URL != "https://hooks.example.com/a" {
		t.Errorf("created %+v", created)
	}
	got := decodeWebhook(t, f.send(t, request{method: "GET", path: hookPath(org.ID, created.ID), bearer: ro}), http.StatusOK)
	if got.Secret != nil || got.ID != created.ID {
		t.Errorf("GET shows %+v (a secret, or another webhook)", got)
	}
	list := f.send(t, request{method: "GET", path: hooksPath(org.ID), bearer: ro})
	if list.status != 200 || strings.Contains(string(list.body), "whsec_") || !strings.Contains(string(list.body), created.ID) {
		t.Errorf("list: %d %s", list.status, list.body)
	}
	rotated := decodeWebhook(t, f.send(t, request{method: "POST", path: rotatePath(org.ID, created.ID), bearer: key}), http.StatusOK)
	if rotated.Secret == nil || *rotated.Secret == *created.Secret {
		t.Errorf("rotate answered secret %v, want a new one", rotated.Secret)
	}
	if stored, _ := f.st.Webhook(created.ID); stored.Secret != *rotated.Secret {
		t.Error("the rotated secret is not the stored one")
	}
	ping := f.send(t, request{method: "POST", path: pingPath(org.ID, created.ID), bearer: key})
	if ping.status != http.StatusAccepted || !strings.Contains(string(ping.body), `"event_id"`) {
		t.Errorf("ping: %d %s", ping.status, ping.body)
	}
	// Form bodies work as for records.
	form := f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: key,
		body: "url=https://hooks.example.com/b&events=proxy_record.deleted,proxy_record.created", contentType: "application/x-www-form-urlencoded"})
	if w := decodeWebhook(t, form, http.StatusCreated); strings.Join(w.Events, ",") != "proxy_record.created,proxy_record.deleted" {
		t.Errorf("form create events %v", w.Events)
	}
	if res := f.send(t, request{method: "DELETE", path: hookPath(org.ID, created.ID), bearer: key}); res.status != http.StatusNoContent || len(res.body) != 0 {
		t.Errorf("delete: %d %q", res.status, res.body)
	}
	checkError(t, f.send(t, request{method: "GET", path: hookPath(org.ID, created.ID), bearer: key}),
		apiErr{404, "invalid_request", "not_found", "Not found.", ""})
	checkError(t, f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: ro, body: hookJSON("https://hooks.example.com/c")}),
		apiErr{403, "authentication_error", "permission_denied", "API key missing required scope 'organization:write'", ""})
}

// TestWebhookOfAnotherOrg plays a hostile tenant: an owner of another
// organization who knows a webhook's id, through its own organization's
// path, cannot read, rotate (and so learn the secret of), ping or delete
// it: each answers exactly like a missing webhook, and the webhook is
// unchanged.
func TestWebhookOfAnotherOrg(t *testing.T) {
	f := newAPIFixtureConfig(t, control.Config{TargetCNAMEBase: testBase, MaxProxyRecords: 2,
		Webhooks: control.WebhookConfig{AllowPrivate: true}})
	victim, attacker := f.addOrg(t, "Victim", nil), f.addOrg(t, "Attacker", nil)
	vu, au := f.addUser(t, "v@victim.test"), f.addUser(t, "a@attacker.test")
	f.addMember(t, victim, vu, store.LevelOwner)
	f.addMember(t, attacker, au, store.LevelOwner)
	vkey, akey := f.addKey(t, vu, []string{"*"}), f.addKey(t, au, []string{"*"})
	hook := decodeWebhook(t, f.send(t, request{method: "POST", path: hooksPath(victim.ID), bearer: vkey,
		body: hookJSON("https://hooks.victim.test/")}), http.StatusCreated)
	before, _ := f.st.Webhook(hook.ID)

	notFound := apiErr{404, "invalid_request", "not_found", "Not found.", ""}
	for _, r := range []request{
		{method: "GET", path: hookPath(attacker.ID, hook.ID)},
		{method: "POST", path: rotatePath(attacker.ID, hook.ID)},
		{method: "POST", path: pingPath(attacker.ID, hook.ID)},
		{method: "DELETE", path: hookPath(attacker.ID, hook.ID)},
	} {
		r.bearer = akey
		checkError(t, f.send(t, r), notFound)
	}
	// Through the victim's path the attacker is not a member.
	checkError(t, f.send(t, request{method: "GET", path: hookPath(victim.ID, hook.ID), bearer: akey}),
		apiErr{404, "invalid_request", "not_found", "Organization not found.", ""})
	if list := f.send(t, request{method: "GET", path: hooksPath(attacker.ID), bearer: akey}); strings.Contains(string(list.body), hook.ID) {
		t.Errorf("the attacker's list shows the victim's webhook: %s", list.body)
	}
	after, err := f.st.Webhook(hook.ID)
	if err != nil || after.Secret != before.Secret {
		t.Errorf("the victim's webhook changed: %v", err)
	}
	if n, _, _ := f.st.OutboxStats(); n != 0 {
		t.Errorf("the attacker's ping queued %d deliveries to the victim's receiver", n)
	}
	// A plain member of the victim cannot write either.
	member := f.addUser(t, "m@victim.test")
	f.addMember(t, victim, member, store.LevelMember)
	checkError(t, f.send(t, request{method: "POST", path: rotatePath(victim.ID, hook.ID), bearer: f.addKey(t, member, []string{"*"})}),
		apiErr{403, "authentication_error", "permission_denied", "Your organization access level is insufficient.", ""})
}

// TestWebhookCreateRules: every refused create names the field and the
// rule, and stores nothing; the sixth webhook is refused with
// max_webhooks. Without --webhook-allow-private a URL that is not https,
// or whose host is or resolves to a loopback address, is refused.
func TestWebhookCreateRules(t *testing.T) {
	dnsSrv := dnstest.Start(t)
	dnsSrv.SetA("public.example.com", "93.184.215.14")
	dnsSrv.SetA("loop.example.com", "127.0.0.1")
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsSrv.Addr())
	}}
	f := newAPIFixtureConfig(t, control.Config{TargetCNAMEBase: testBase, MaxProxyRecords: 2,
		Webhooks: control.WebhookConfig{Resolver: resolver}})
	org := f.addOrg(t, "Acme", nil)
	owner := f.addUser(t, "owner@acme.test")
	f.addMember(t, org, owner, store.LevelOwner)
	key := f.addKey(t, owner, []string{"*"})

	for _, tt := range []struct {
		body string
		want apiErr
	}{
		{`{}`, apiErr{400, "validation_error", "required", "This field is required.", "url"}},
		{`{"url": 5}`, apiErr{400, "validation_error", "invalid_input", "Not a valid string.", "url"}},
		{hookJSON("http://public.example.com/"), apiErr{400, "validation_error", "invalid_input", "The URL must start with https:// (a http:// URL is not accepted).", "url"}},
		{hookJSON("https://127.0.0.1/"), apiErr{400, "validation_error", "invalid_input", "The URL's address 127.0.0.1 is not a public address.", "url"}},
		{hookJSON("https://loop.example.com/"), apiErr{400, "validation_error", "invalid_input", "The URL's host loop.example.com resolves to 127.0.0.1, which is not a public address.", "url"}},
		{hookJSON("https://public.example.com/", "proxy_record.renamed"), apiErr{400, "validation_error", "invalid_input",
			`"proxy_record.renamed" is not an event type; the event types are proxy_record.created, proxy_record.status_changed, proxy_record.deleted, webhook.ping.`, "events"}},
		{`{"url": "https://public.example.com/", "events": []}`, apiErr{400, "validation_error", "invalid_input", "", "events"}},
		{`{"url": "https://public.example.com/", "events": "proxy_record.created"}`, apiErr{400, "validation_error", "invalid_input", "", "events"}},
		{`{"url": `, apiErr{400, "invalid_request", "parse_error", "", ""}},
	} {
		checkError(t, f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: key, body: tt.body}), tt.want)
	}
	if hooks, _ := f.st.OrgWebhooks(org.ID); len(hooks) != 0 {
		t.Fatalf("refused creates stored %d webhooks", len(hooks))
	}
	for range control.MaxWebhooks {
		decodeWebhook(t, f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: key,
			body: hookJSON("https://public.example.com/", "proxy_record.status_changed")}), http.StatusCreated)
	}
	checkError(t, f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: key, body: hookJSON("https://public.example.com/")}),
		apiErr{400, "validation_error", "max_webhooks", "Maximum of 5 webhooks per organization.", ""})
	if hooks, _ := f.st.OrgWebhooks(org.ID); len(hooks) != control.MaxWebhooks {
		t.Errorf("%d webhooks stored, want %d", len(hooks), control.MaxWebhooks)
	}
}

// TestWebhookEventsThroughTheAPI runs the API and a delivery worker over
// one store, with a real TLS receiver: a record created through the API
// arrives as proxy_record.created carrying the record exactly as the API
// answered it; only the listed event types are delivered; a ping arrives
// as webhook.ping; after rotate_secret deliveries verify with the new
// secret and not the old one.
func TestWebhookEventsThroughTheAPI(t *testing.T) {
	f := newAPIFixtureConfig(t, control.Config{TargetCNAMEBase: testBase, MaxProxyRecords: 5,
		Webhooks: control.WebhookConfig{AllowPrivate: true}})
	org := f.addOrg(t, "Acme", nil)
	owner := f.addUser(t, "owner@acme.test")
	f.addMember(t, org, owner, store.LevelOwner)
	key := f.addKey(t, owner, []string{"*"})

	type got struct {
		header http.Header
		body   []byte
	}
	deliveries := make(chan got, 16)
	rcv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		deliveries <- got{r.Header.Clone(), b}
		w.WriteHeader(http.StatusOK)
	}))
	t.Cleanup(rcv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(rcv.Certificate())
	worker := webhooks.New(f.st, control.RecordJSON, webhooks.Config{AllowPrivate: true, RootCAs: pool, Now: time.Now,
		Logger: slog.New(slog.NewTextHandler(t.Output(), nil))})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { worker.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	next := func(what string) got {
		t.Helper()
		select {
		case d := <-deliveries:
			return d
		case <-time.After(30 * time.Second):
			t.Fatalf("no delivery: %s", what)
		}
		return got{}
	}
	verify := func(secret string, d got) error {
		return webhooks.Verify(secret, d.header.Get, d.body, time.Now(), 5*time.Minute)
	}

	hook := decodeWebhook(t, f.send(t, request{method: "POST", path: hooksPath(org.ID), bearer: key,
		body: hookJSON(rcv.URL+"/hooks", "proxy_record.created", "proxy_record.deleted")}), http.StatusCreated)
	res := f.send(t, request{method: "POST", path: listPath(org.ID), bearer: key, body: jsonBody("e.example.com")})
	if res.status != http.StatusCreated {
		t.Fatalf("create record: %d %s", res.status, res.body)
	}
	d := next("proxy_record.created")
	if err := verify(*hook.Secret, d); err != nil {
		t.Errorf("signature: %v", err)
	}
	var ev struct {
		Type string                     `json:"type"`
		Data map[string]json.RawMessage `json:"data"`
	}
	json.Unmarshal(d.body, &ev)
	var fromAPI, inEvent any
	json.Unmarshal(res.body, &fromAPI)
	json.Unmarshal(ev.Data["record"], &inEvent)
	if ev.Type != store.EventRecordCreated || !jsonEqual(fromAPI, inEvent) {
		t.Errorf("event %s carries record %s; the API answered %s", ev.Type, ev.Data["record"], res.body)
	}

	// status_changed is not among the webhook's events: a status change
	// queues nothing for it.
	var rec struct{ ID string }
	json.Unmarshal(res.body, &rec)
	f.setStatus(t, rec.ID, store.StatusIssuing)
	if n, _, _ := f.st.OutboxStats(); n != 0 {
		t.Errorf("a status change queued %d deliveries for a webhook that does not take it", n)
	}

	if res := f.send(t, request{method: "POST", path: pingPath(org.ID, hook.ID), bearer: key}); res.status != http.StatusAccepted {
		t.Fatalf("ping: %d %s", res.status, res.body)
	}
	d = next("webhook.ping")
	json.Unmarshal(d.body, &ev)
	if ev.Type != store.EventWebhookPing || string(ev.Data["webhook_id"]) != `"`+hook.ID+`"` || verify(*hook.Secret, d) != nil {
		t.Errorf("ping delivery %s", d.body)
	}

	rotated := decodeWebhook(t, f.send(t, request{method: "POST", path: rotatePath(org.ID, hook.ID), bearer: key}), http.StatusOK)
	f.send(t, request{method: "POST", path: pingPath(org.ID, hook.ID), bearer: key})
	d = next("the ping after rotate_secret")
	if err := verify(*rotated.Secret, d); err != nil {
		t.Errorf("with the new secret: %v", err)
	}
	if verify(*hook.Secret, d) == nil {
		t.Error("a delivery after rotate_secret verifies with the old secret")
	}
	var last webhookView
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		last = decodeWebhook(t, f.send(t, request{method: "GET", path: hookPath(org.ID, hook.ID), bearer: key}), http.StatusOK)
		if last.LastDelivery != nil && last.LastDelivery.StatusCode != nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if last.LastDelivery == nil || *last.LastDelivery.StatusCode != 200 || last.LastDelivery.Error != nil {
		t.Errorf("last_delivery %+v", last.LastDelivery)
	}
}

func jsonEqual(a, b any) bool {
	x, _ := json.Marshal(a)
	y, _ := json.Marshal(b)
	return string(x) == string(y)
}
