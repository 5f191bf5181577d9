package control

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures the management API. The zero value works except for
// TargetCNAMEBase, which every record's target is built from.
type Config struct {
	// TargetCNAMEBase is the zone customers' CNAMEs point into, e.g.
	// proxy.example.net.
	TargetCNAMEBase string
	// MaxProxyRecords is the per-organization limit for organizations that
	// have none of their own. Zero means no organization can create one.
	MaxProxyRecords int
	// Schema is served at /api/schema/ when not nil.
	Schema []byte
	// Logger gets the causes of server errors. If nil, slog.Default().
	Logger *slog.Logger
	// Registerer gets the API's metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
	// Diagnoser runs POST …/proxy_records/{id}/diagnose/. If nil, that
	// route answers 503 unavailable.
	Diagnoser Diagnoser
	// Webhooks checks webhook URLs.
	Webhooks WebhookConfig
}

// API is the management API (proxy records and the organization, under
// /api/organizations/{organization_id}/) as an http.Handler.
type API struct {
	store   *store.Store
	cfg     Config
	log     *slog.Logger
	metrics *apiMetrics
	fails   *failLimiter
}

// NewAPI returns the management API over st.
func NewAPI(st *store.Store, cfg Config) *API {
	a := &API{store: st, cfg: cfg, log: cfg.Logger, metrics: newAPIMetrics(cfg.Registerer), fails: newFailLimiter(time.Now)}
	if a.log == nil {
		a.log = slog.Default()
	}
	return a
}

// route is one path shape of the API and what each method needs there.
type route struct {
	// pattern is the path with {org} and {id} for its variables and no
	// trailing slash.
	pattern string
	methods map[string]handlerSpec
	// name labels the route in metrics.
	name string
}

type handlerSpec struct {
	scope string
	// admin requires the caller to be an admin or owner of the
	// organization; otherwise any member will do.
	admin bool
	fn    func(a *API, c *call) *apiError
}

// routes is every route the API answers, besides /api/schema/. The
// OpenAPI document lists the same set; a test keeps them equal.
var routes = []route{
	// The only route without an organization in its path: serve checks
	// the key's scope and nothing about organizations.
	{"/api/organizations", map[string]handlerSpec{
		http.MethodGet: {scope: ScopeOrgRead, fn: (*API).listOrgs},
	}, "organizations"},
	{"/api/organizations/{org}", map[string]handlerSpec{
		http.MethodGet: {scope: ScopeOrgRead, fn: (*API).getOrg},
	}, "organization"},
	{"/api/organizations/{org}/proxy_records", map[string]handlerSpec{
		http.MethodGet:  {scope: ScopeOrgRead, fn: (*API).listRecords},
		http.MethodPost: {scope: ScopeOrgWrite, admin: true, fn: (*API).createRecord},
	}, "proxy_records"},
	{"/api/organizations/{org}/proxy_records/{id}", map[string]handlerSpec{
		http.MethodGet:    {scope: ScopeOrgRead, fn: (*API).getRecord},
		http.MethodDelete: {scope: ScopeOrgWrite, admin: true, fn: (*API).deleteRecord},
	}, "proxy_record"},
	{"/api/organizations/{org}/proxy_records/{id}/retry", map[string]handlerSpec{
		http.MethodPost: {scope: ScopeOrgWrite, admin: true, fn: (*API).retryRecord},
	}, "retry"},
	{"/api/organizations/{org}/proxy_records/{id}/diagnose", map[string]handlerSpec{
		http.MethodPost: {scope: ScopeOrgRead, fn: (*API).diagnoseRecord},
	}, "diagnose"},
	{"/api/organizations/{org}/webhooks", map[string]handlerSpec{
		http.MethodGet:  {scope: ScopeOrgRead, fn: (*API).listWebhooks},
		http.MethodPost: {scope: ScopeOrgWrite, admin: true, fn: (*API).createWebhook},
	}, "webhooks"},
	{"/api/organizations/{org}/webhooks/{id}", map[string]handlerSpec{
		http.MethodGet:    {scope: ScopeOrgRead, fn: (*API).getWebhook},
		http.MethodDelete: {scope: ScopeOrgWrite, admin: true, fn: (*API).deleteWebhook},
	}, "webhook"},
	{"/api/organizations/{org}/webhooks/{id}/rotate_secret", map[string]handlerSpec{
		http.MethodPost: {scope: ScopeOrgWrite, admin: true, fn: (*API).rotateWebhookSecret},
	}, "webhook_rotate_secret"},
	{"/api/organizations/{org}/webhooks/{id}/ping", map[string]handlerSpec{
		http.MethodPost: {scope: ScopeOrgWrite, admin: true, fn: (*API).pingWebhook},
	}, "webhook_ping"},
}

// Routes lists every method and path pattern the API answers (besides
// /api/schema/), for the test that holds the OpenAPI document to them.
func Routes() map[string][]string {
	out := map[string][]string{}
	for _, rt := range routes {
		for m := range rt.methods {
			out[rt.pattern] = append(out[rt.pattern], m)
		}
		slices.Sort(out[rt.pattern])
	}
	return out
}

// match finds the route for path and its variables. A trailing slash is
// optional; empty segments match nothing.
func match(path string) (*route, map[string]string) {
	segs := strings.Split(strings.TrimSuffix(strings.TrimPrefix(path, "/"), "/"), "/")
	for i := range routes {
		pat := strings.Split(strings.TrimPrefix(routes[i].pattern, "/"), "/")
		if len(pat) != len(segs) {
			continue
		}
		vars := map[string]string{}
		ok := true
		for j, p := range pat {
			if segs[j] == "" {
				ok = false
				break
			}
			if strings.HasPrefix(p, "{") {
				vars[strings.Trim(p, "{}")] = segs[j]
			} else if p != segs[j] {
				ok = false
				break
			}
		}
		if ok {
			return &routes[i], vars
		}
	}
	return nil, nil
}

// call is one authenticated, authorized API request.
type call struct {
	w    http.ResponseWriter
	r    *http.Request
	key  store.APIKey
	org  store.Org
	vars map[string]string
	body *body
}

func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &statusRecorder{ResponseWriter: w}
	a.respond(rec, r)
	a.metrics.observe(r.Method, r.URL.Path, rec.status, time.Since(start))
}

func (a *API) respond(w http.ResponseWriter, r *http.Request) {
	if aerr := a.serve(w, r); aerr != nil {
		if aerr.Status >= 500 {
			a.log.Error("api request failed", "method", r.Method, "path", r.URL.Path, "err", aerr)
		}
		if aerr.retryAfter > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(aerr.retryAfter))
		}
		if aerr.Status == http.StatusMethodNotAllowed {
			rt, _ := match(r.URL.Path)
			w.Header().Set("Allow", strings.Join(allowed(rt), ", "))
		}
		writeJSON(w, aerr.Status, aerr)
	}
}

func allowed(rt *route) []string {
	if rt == nil {
		// Only /api/schema/ answers 405 without a route.
		return []string{http.MethodGet, http.MethodHead}
	}
	var ms []string
	for m := range rt.methods {
		ms = append(ms, m)
		if m == http.MethodGet {
			ms = append(ms, http.MethodHead)
		}
	}
	slices.Sort(ms)
	return ms
}

// serve runs the checks of every request in order: authentication, body
// size, method, organization, membership, the key's organizations, scope,
// level; then the handler. Membership comes before the key's organizations
// so that a key learns nothing about organizations its user is not in.
func (a *API) serve(w http.ResponseWriter, r *http.Request) *apiError {
	if p := strings.TrimSuffix(r.URL.Path, "/"); p == "/api/schema" && a.cfg.Schema != nil {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			return methodNotAllowed(r.Method)
		}
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(a.cfg.Schema)
		return nil
	}
	rt, vars := match(r.URL.Path)
	if rt == nil {
		return errNotFound
	}
	c := &call{w: w, r: r, vars: vars, body: newBody(r)}
	var aerr *apiError
	if c.key, aerr = a.authenticate(r, c.body); aerr != nil {
		// Authentication comes first, so a valid key is never counted
		// nor refused. Everything else that fails to show one (no key, a
		// bad key, an oversized body) counts against the address.
		if aerr.Status < http.StatusInternalServerError {
			if wait := a.fails.fail(clientAddr(r)); wait > 0 {
				return throttled(wait)
			}
		}
		return aerr
	}
	// The 1 MiB limit holds for every request, whether or not its handler
	// reads the body. A body that does not parse matters only to the
	// handlers that read it.
	if _, aerr := c.body.bytes(); aerr != nil && aerr.Code == "request_too_large" {
		return aerr
	}
	method := r.Method
	if method == http.MethodHead {
		method = http.MethodGet
	}
	spec, ok := rt.methods[method]
	if !ok {
		return methodNotAllowed(r.Method)
	}
	if _, inPath := vars["org"]; !inPath {
		if !hasScope(c.key.Scopes, spec.scope) {
			return scopeMissing(spec.scope)
		}
		return spec.fn(a, c)
	}
	if c.org, aerr = a.resolveOrg(c.key, vars["org"]); aerr != nil {
		return aerr
	}
	m, err := a.store.Membership(c.org.ID, c.key.UserID)
	if errors.Is(err, store.ErrNotFound) {
		return errOrgNotFound
	}
	if err != nil {
		return internalError(fmt.Errorf("looking up membership: %w", err))
	}
	if len(c.key.Orgs) > 0 && !slices.Contains(c.key.Orgs, c.org.ID) {
		return orgNotInKey(c.org.ID)
	}
	if !hasScope(c.key.Scopes, spec.scope) {
		return scopeMissing(spec.scope)
	}
	if spec.admin && m.Level < store.LevelAdmin {
		return errLevelTooLow
	}
	return spec.fn(a, c)
}

// resolveOrg finds the organization a path names: its id, its slug, or
// @current for the one organization the key is scoped to, else the user's
// first membership (among the key's organizations, when it has several).
// Whatever names it, membership is checked afterwards by the caller, so a
// slug reveals no more than an id: an organization the caller is not in
// answers as an unknown one.
func (a *API) resolveOrg(key store.APIKey, ref string) (store.Org, *apiError) {
	var (
		org store.Org
		err error
	)
	switch {
	case ref == "@current":
		id := ""
		if len(key.Orgs) == 1 {
			id = key.Orgs[0]
		} else {
			ms, err := a.store.UserMemberships(key.UserID)
			if err != nil {
				return store.Org{}, internalError(fmt.Errorf("listing memberships: %w", err))
			}
			for _, m := range ms {
				if len(key.Orgs) == 0 || slices.Contains(key.Orgs, m.OrgID) {
					id = m.OrgID
					break
				}
			}
		}
		if !store.IsID(id) {
			return store.Org{}, errOrgNotFound
		}
		org, err = a.store.Org(id)
	case store.IsID(ref):
		org, err = a.store.Org(ref)
	case store.CheckSlug(ref) == nil:
		org, err = a.store.OrgBySlug(ref)
	default:
		return store.Org{}, errOrgNotFound
	}
	if errors.Is(err, store.ErrNotFound) {
		return store.Org{}, errOrgNotFound
	}
	if err != nil {
		return store.Org{}, internalError(fmt.Errorf("looking up organization: %w", err))
	}
	return org, nil
}

// recordJSON is a proxy record exactly as the API shows it. Ownership and
// DCVDelegation are the two DNS records the customer may add besides the
// one that brings traffic (see store/ownership.go).
type recordJSON struct {
	ID            string          `json:"id"`
	Domain        string          `json:"domain"`
	TargetCNAME   string          `json:"target_cname"`
	Ownership     store.DNSRecord `json:"ownership"`
	DCVDelegation store.DNSRecord `json:"dcv_delegation"`
	Status        string          `json:"status"`
	Message       *string         `json:"message"`
	CreatedAt     string          `json:"created_at"`
	UpdatedAt     string          `json:"updated_at"`
	CreatedBy     *int64          `json:"created_by"`
}

func toJSON(r store.Record) recordJSON {
	return recordJSON{
		ID:            r.ID,
		Domain:        r.Domain,
		TargetCNAME:   r.TargetCNAME,
		Ownership:     r.Ownership(),
		DCVDelegation: r.DCVDelegation(),
		Status:        string(r.Status),
		Message:       r.Message,
		CreatedAt:     r.CreatedAt.UTC().Format(store.TimeFormat),
		UpdatedAt:     r.UpdatedAt.UTC().Format(store.TimeFormat),
		CreatedBy:     r.CreatedBy,
	}
}

// orgJSON is an organization exactly as the API shows it.
type orgJSON struct {
	ID              string `json:"id"`
	Name            string `json:"name"`
	Slug            string `json:"slug"`
	CreatedAt       string `json:"created_at"`
	MaxProxyRecords int    `json:"max_proxy_records"`
}

func (a *API) orgJSON(o store.Org) orgJSON {
	return orgJSON{o.ID, o.Name, o.Slug, o.CreatedAt.UTC().Format(store.TimeFormat), o.Limit(a.cfg.MaxProxyRecords)}
}

func (a *API) getOrg(c *call) *apiError {
	writeJSON(c.w, http.StatusOK, a.orgJSON(c.org))
	return nil
}

func (a *API) listRecords(c *call) *apiError {
	records, err := a.store.OrgRecords(c.org.ID)
	if err != nil {
		return internalError(fmt.Errorf("listing records: %w", err))
	}
	results := make([]recordJSON, len(records))
	for i, r := range records {
		results[i] = toJSON(r)
	}
	writeJSON(c.w, http.StatusOK, struct {
		Results         []recordJSON `json:"results"`
		MaxProxyRecords int          `json:"max_proxy_records"`
	}{results, c.org.Limit(a.cfg.MaxProxyRecords)})
	return nil
}

func (a *API) createRecord(c *call) *apiError {
	body, aerr := c.body.decode()
	if aerr != nil {
		return aerr
	}
	if body.domainNotString {
		return &apiError{Status: http.StatusBadRequest, Type: "validation_error", Code: "invalid_input",
			Detail: "Not a valid string.", Attr: attr("domain")}
	}
	raw := ""
	if body.domain != nil {
		raw = *body.domain
	}
	domain, err := NormalizeDomain(raw, a.cfg.TargetCNAMEBase)
	if err != nil {
		return err.(*domainError).apiError()
	}
	userID := c.key.UserID
	now := a.store.Now()
	rec, err := a.store.CreateRecord(store.Record{
		OrgID:       c.org.ID,
		Domain:      domain,
		TargetCNAME: TargetCNAME(c.org.ID, domain, a.cfg.TargetCNAMEBase),
		// Random for every record, so that no other record (of this or
		// another organization, for this domain or another) can be proven
		// by the TXT record published for this one.
		OwnershipToken: store.NewOwnershipToken(),
		Status:         store.StatusWaiting,
		CreatedBy:      &userID,
		// The first DNS check is due at once.
		NextCheckAt:  now,
		WaitingSince: now,
	}, a.cfg.MaxProxyRecords)
	var limitErr *store.LimitError
	switch {
	case errors.As(err, &limitErr):
		return limitReached(limitErr.Max)
	case errors.Is(err, store.ErrDomainTaken):
		return errDomainTaken
	case errors.Is(err, store.ErrNotFound):
		return errOrgNotFound
	case err != nil:
		return internalError(err)
	}
	writeJSON(c.w, http.StatusCreated, toJSON(rec))
	return nil
}

// orgRecord reads the path's record, which must belong to the path's
// organization: another organization's record is as unknown as a missing
// one.
func (a *API) orgRecord(c *call) (store.Record, *apiError) {
	id := c.vars["id"]
	if !store.IsID(id) {
		return store.Record{}, errNotFound
	}
	rec, err := a.store.Record(id)
	if errors.Is(err, store.ErrNotFound) || err == nil && rec.OrgID != c.org.ID {
		return store.Record{}, errNotFound
	}
	if err != nil {
		return store.Record{}, internalError(err)
	}
	return rec, nil
}

func (a *API) getRecord(c *call) *apiError {
	rec, aerr := a.orgRecord(c)
	if aerr != nil {
		return aerr
	}
	writeJSON(c.w, http.StatusOK, toJSON(rec))
	return nil
}

// mutate applies fn to the path's record in one write transaction,
// treating another organization's record as missing.
func (a *API) mutate(c *call, fn func(r *store.Record) (store.Op, *apiError)) (store.Record, *apiError) {
	id := c.vars["id"]
	if !store.IsID(id) {
		return store.Record{}, errNotFound
	}
	rec, _, err := a.store.Mutate(id, func(r *store.Record) (store.Op, error) {
		if r.OrgID != c.org.ID {
			return store.OpKeep, errNotFound
		}
		op, aerr := fn(r)
		if aerr != nil {
			return store.OpKeep, aerr
		}
		return op, nil
	})
	var aerr *apiError
	switch {
	case errors.As(err, &aerr):
		return store.Record{}, aerr
	case errors.Is(err, store.ErrNotFound):
		return store.Record{}, errNotFound
	case err != nil:
		return store.Record{}, internalError(err)
	}
	return rec, nil
}

func (a *API) deleteRecord(c *call) *apiError {
	now := a.store.Now()
	var before store.Record
	var op store.Op
	after, aerr := a.mutate(c, func(r *store.Record) (store.Op, *apiError) {
		before = *r
		op = r.ApplyDelete(now)
		return op, nil
	})
	if aerr != nil {
		return aerr
	}
	switch op {
	case store.OpSave:
		store.LogTransition(a.log, before, after)
	case store.OpDelete:
		store.LogDeleted(a.log, before)
	}
	c.w.WriteHeader(http.StatusNoContent)
	return nil
}

func (a *API) retryRecord(c *call) *apiError {
	now := a.store.Now()
	var before store.Record
	rec, aerr := a.mutate(c, func(r *store.Record) (store.Op, *apiError) {
		if !r.Status.CanRetry() {
			return store.OpKeep, invalidState(string(r.Status))
		}
		before = *r
		r.Retry(now)
		return store.OpSave, nil
	})
	if aerr != nil {
		return aerr
	}
	store.LogTransition(a.log, before, rec)
	writeJSON(c.w, http.StatusOK, toJSON(rec))
	return nil
}
