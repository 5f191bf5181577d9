package control_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/internal/openapitest"
	"github.com/edgeproxy/edgeproxy/store"
)

// testBase is the --target-cname-base every test server runs with.
const testBase = "proxy.example.net"

// apiFixture is a real store in a temporary directory and the management
// API served over it on loopback.
type apiFixture struct {
	st  *store.Store
	srv *httptest.Server
}

// newAPIFixture opens a store in t.TempDir() and serves the API over it
// with the limit of 2 records per organization. The store's clock moves on
// by a millisecond at every reading, so every write has its own time. When
// the test ends the server stops and bbolt checks the file's consistency.
func newAPIFixture(t *testing.T) *apiFixture {
	t.Helper()
	return newAPIFixtureConfig(t, control.Config{TargetCNAMEBase: testBase, MaxProxyRecords: 2})
}

func newAPIFixtureConfig(t *testing.T, cfg control.Config) *apiFixture {
	t.Helper()
	start := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	var ticks atomic.Int64
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{
		Now: func() time.Time { return start.Add(time.Duration(ticks.Add(1)) * time.Millisecond) },
	})
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("closing store: %v", err)
		}
	})
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store consistency check: %v", err)
		}
	})
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(t.Output(), nil))
	}
	// Every answer of every test is held to docs/openapi.yaml.
	srv := httptest.NewServer(openapitest.Load(t).Handler(t, control.NewAPI(st, cfg)))
	t.Cleanup(srv.Close)
	return &apiFixture{st: st, srv: srv}
}

func (f *apiFixture) addOrg(t *testing.T, name string, maxRecords *int) store.Org {
	t.Helper()
	org, err := f.st.CreateOrg(name, maxRecords)
	if err != nil {
		t.Fatalf("CreateOrg(%q): %v", name, err)
	}
	return org
}

func (f *apiFixture) addUser(t *testing.T, email string) store.User {
	t.Helper()
	u, err := f.st.CreateUser(email)
	if err != nil {
		t.Fatalf("CreateUser(%q): %v", email, err)
	}
	return u
}

func (f *apiFixture) addMember(t *testing.T, org store.Org, u store.User, level store.Level) {
	t.Helper()
	if _, err := f.st.SetMembership(org.ID, u.ID, level); err != nil {
		t.Fatalf("SetMembership(%s, %d, %v): %v", org.ID, u.ID, level, err)
	}
}

// key stores a personal API key of u with the scopes, limited to orgs when
// any are given, and returns its value.
func (f *apiFixture) addKey(t *testing.T, u store.User, scopes []string, orgs ...string) string {
	t.Helper()
	k, value := control.NewKey(u.ID, "test", scopes, orgs)
	if got, want := k.Hash, control.HashKey(value); got != want {
		t.Fatalf("NewKey: hash %q, want HashKey(value) %q", got, want)
	}
	if _, err := f.st.CreateKey(k); err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	return value
}

// revokedKey stores a key of u with every scope, revokes it and returns its
// value.
func (f *apiFixture) revokedKey(t *testing.T, u store.User) string {
	t.Helper()
	k, value := control.NewKey(u.ID, "revoked", []string{control.ScopeAll}, nil)
	k, err := f.st.CreateKey(k)
	if err != nil {
		t.Fatalf("CreateKey: %v", err)
	}
	if _, err := f.st.RevokeKey(k.ID); err != nil {
		t.Fatalf("RevokeKey: %v", err)
	}
	return value
}

// record stores a record for org directly (no limit but the
// organization's own applies) and puts it in status.
func (f *apiFixture) addRecord(t *testing.T, org store.Org, domain string, status store.Status) store.Record {
	t.Helper()
	rec, err := f.st.CreateRecord(store.Record{
		OrgID:       org.ID,
		Domain:      domain,
		TargetCNAME: wantTarget(org.ID, domain),
		Status:      store.StatusWaiting,
	}, 1000)
	if err != nil {
		t.Fatalf("CreateRecord(%s): %v", domain, err)
	}
	if status != store.StatusWaiting {
		rec = f.setStatus(t, rec.ID, status)
	}
	return rec
}

// setStatus moves a record to status through the store, as the engine
// would, with a message for every status but waiting.
func (f *apiFixture) setStatus(t *testing.T, id string, status store.Status) store.Record {
	t.Helper()
	rec, _, err := f.st.Mutate(id, func(r *store.Record) (store.Op, error) {
		r.Status = status
		r.Message = nil
		if status != store.StatusWaiting {
			msg := "engine says " + string(status)
			r.Message = &msg
		}
		return store.OpSave, nil
	})
	if err != nil {
		t.Fatalf("Mutate(%s) to %s: %v", id, status, err)
	}
	return rec
}

// request is one HTTP request to the fixture's server.
type request struct {
	method string
	path   string
	// bearer, when set, is sent as "Authorization: Bearer <bearer>".
	bearer string
	// auth, when set, is the whole Authorization header.
	auth        string
	body        string
	contentType string
}

type response struct {
	status int
	header http.Header
	body   []byte
}

func (f *apiFixture) send(t *testing.T, r request) response {
	t.Helper()
	var body io.Reader
	if r.body != "" {
		body = strings.NewReader(r.body)
	}
	req, err := http.NewRequest(r.method, f.srv.URL+r.path, body)
	if err != nil {
		t.Fatalf("NewRequest: %v", err)
	}
	if r.bearer != "" {
		req.Header.Set("Authorization", "Bearer "+r.bearer)
	}
	if r.auth != "" {
		req.Header.Set("Authorization", r.auth)
	}
	if r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	res, err := f.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", r.method, r.path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading body: %v", r.method, r.path, err)
	}
	return response{status: res.StatusCode, header: res.Header, body: data}
}

// Paths of the API.
func orgPath(orgID string) string     { return "/api/organizations/" + orgID + "/" }
func listPath(orgID string) string    { return "/api/organizations/" + orgID + "/proxy_records/" }
func recPath(orgID, id string) string { return listPath(orgID) + id + "/" }
func retryPath(orgID, id string) string {
	return recPath(orgID, id) + "retry/"
}

// jsonBody is {"domain": domain} with the extra fields.
func jsonBody(domain string, extra ...string) string {
	fields := map[string]string{"domain": domain}
	for i := 0; i+1 < len(extra); i += 2 {
		fields[extra[i]] = extra[i+1]
	}
	data, _ := json.Marshal(fields)
	return string(data)
}

// wantTarget computes target_cname as the API documents it: the first 20
// hex digits of sha256(organization id + domain), a dot, the base.
func wantTarget(orgID, domain string) string {
	sum := sha256.Sum256([]byte(orgID + domain))
	return hex.EncodeToString(sum[:])[:20] + "." + testBase
}

// apiErr is an error answer: a status and the body's type, code, detail
// and attr.
type apiErr struct {
	status int
	typ    string
	code   string
	// detail is the exact detail; empty means any non-empty detail.
	detail string
	// attr is the attr field; empty means null.
	attr string
}

// checkError checks the status and that the body is exactly
// {"type","code","detail","attr"} with the wanted values.
func checkError(t *testing.T, res response, want apiErr) {
	t.Helper()
	if got := res.status; got != want.status {
		t.Errorf("status %d, want %d (body %s)", got, want.status, res.body)
	}
	if got, want := res.header.Get("Content-Type"), "application/json"; got != want {
		t.Errorf("Content-Type %q, want %q", got, want)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &fields); err != nil {
		t.Fatalf("error body %q is not a JSON object: %v", res.body, err)
	}
	if got, want := strings.Join(slices.Sorted(mapKeys(fields)), ","), "attr,code,detail,type"; got != want {
		t.Errorf("error body fields %s, want %s (body %s)", got, want, res.body)
	}
	var e struct {
		Type   string  `json:"type"`
		Code   string  `json:"code"`
		Detail string  `json:"detail"`
		Attr   *string `json:"attr"`
	}
	if err := json.Unmarshal(res.body, &e); err != nil {
		t.Fatalf("error body %q: %v", res.body, err)
	}
	if got, want := e.Type, want.typ; got != want {
		t.Errorf("type %q, want %q", got, want)
	}
	if got, want := e.Code, want.code; got != want {
		t.Errorf("code %q, want %q", got, want)
	}
	if want.detail == "" {
		if e.Detail == "" {
			t.Errorf("detail is empty")
		}
	} else if got, want := e.Detail, want.detail; got != want {
		t.Errorf("detail %q, want %q", got, want)
	}
	switch {
	case want.attr == "" && e.Attr != nil:
		t.Errorf("attr %q, want null", *e.Attr)
	case want.attr != "" && e.Attr == nil:
		t.Errorf("attr null, want %q", want.attr)
	case want.attr != "" && *e.Attr != want.attr:
		t.Errorf("attr %q, want %q", *e.Attr, want.attr)
	}
}

func mapKeys[V any](m map[string]V) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// recordView is a record as the API shows it.
type recordView struct {
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

// ownershipToken is the form of a record's ownership token.
var ownershipToken = regexp.MustCompile(`^edgeproxy-verification=[a-z2-7]{26}$`)

// decodeRecord checks that data is a record of exactly the contract's ten
// fields, with a UUID id, RFC 3339 UTC times, and the ownership and DCV
// delegation records of its domain and target, and returns it.
func decodeRecord(t *testing.T, data []byte) recordView {
	t.Helper()
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(data, &fields); err != nil {
		t.Fatalf("record %q is not a JSON object: %v", data, err)
	}
	if got, want := strings.Join(slices.Sorted(mapKeys(fields)), ","),
		"created_at,created_by,dcv_delegation,domain,id,message,ownership,status,target_cname,updated_at"; got != want {
		t.Errorf("record fields %s, want %s", got, want)
	}
	var r recordView
	if err := json.Unmarshal(data, &r); err != nil {
		t.Fatalf("record %q: %v", data, err)
	}
	if !store.IsID(r.ID) {
		t.Errorf("id %q is not a UUID", r.ID)
	}
	if o := r.Ownership; o.Name != "_edgeproxy."+r.Domain || o.Type != "TXT" || !ownershipToken.MatchString(o.Value) {
		t.Errorf("ownership %+v, want _edgeproxy.%s TXT %s", o, r.Domain, ownershipToken)
	}
	if d, want := r.DCVDelegation, (store.DNSRecord{Name: "_acme-challenge." + r.Domain, Type: "CNAME", Value: "_acme-challenge." + r.TargetCNAME}); d != want {
		t.Errorf("dcv_delegation %+v, want %+v", d, want)
	}
	for name, v := range map[string]string{"created_at": r.CreatedAt, "updated_at": r.UpdatedAt} {
		ts, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			t.Errorf("%s %q is not RFC 3339: %v", name, v, err)
			continue
		}
		if _, off := ts.Zone(); off != 0 || !strings.HasSuffix(v, "Z") {
			t.Errorf("%s %q is not UTC", name, v)
		}
	}
	return r
}

// TestErrors holds every kind of error the management API answers, from
// a missing key to a retry in a state that allows none, to its status and
// its whole body (docs/API.md lists them).
func TestErrors(t *testing.T) {
	f := newAPIFixture(t)
	one, ten := 1, 10
	orgA := f.addOrg(t, "A", &ten)
	orgB := f.addOrg(t, "B", nil)
	orgC := f.addOrg(t, "C", nil) // owner is not a member
	full := f.addOrg(t, "Full", nil)
	tiny := f.addOrg(t, "Tiny", &one)

	owner := f.addUser(t, "owner@a.test")
	mem := f.addUser(t, "member@a.test")
	lonely := f.addUser(t, "lonely@a.test") // no membership at all
	outsider := f.addUser(t, "c@c.test")
	f.addMember(t, orgA, owner, store.LevelOwner)
	f.addMember(t, orgB, owner, store.LevelOwner)
	f.addMember(t, full, owner, store.LevelAdmin)
	f.addMember(t, tiny, owner, store.LevelAdmin)
	f.addMember(t, orgA, mem, store.LevelMember)
	f.addMember(t, orgC, outsider, store.LevelOwner)

	all := f.addKey(t, owner, []string{"*"})
	readOnly := f.addKey(t, owner, []string{"organization:read"})
	unrelated := f.addKey(t, owner, []string{"feature_flag:read", "insight:write"})
	scopedA := f.addKey(t, owner, []string{"*"}, orgA.ID)
	memberWrite := f.addKey(t, mem, []string{"organization:write"})
	lonelyKey := f.addKey(t, lonely, []string{"*"})
	revoked := f.revokedKey(t, owner)
	unknown := control.NewKeyValue()

	recA := f.addRecord(t, orgA, "a.example.com", store.StatusWaiting)
	errA := f.addRecord(t, orgA, "err.example.com", store.StatusErroring)
	recB := f.addRecord(t, orgB, "b.example.com", store.StatusErroring)
	recC := f.addRecord(t, orgC, "c.example.org", store.StatusErroring)
	f.addRecord(t, full, "f1.example.com", store.StatusWaiting)
	f.addRecord(t, full, "f2.example.com", store.StatusWaiting)
	f.addRecord(t, tiny, "t1.example.com", store.StatusWaiting)
	randomID := store.NewID()

	var (
		notAuthenticated = apiErr{401, "authentication_error", "not_authenticated", "Authentication credentials were not provided.", ""}
		badHeaderKey     = apiErr{401, "authentication_error", "authentication_failed", "Personal API key found in request Authorization header is invalid.", ""}
		badBodyKey       = apiErr{401, "authentication_error", "authentication_failed", "Personal API key found in request body is invalid.", ""}
		badQueryKey      = apiErr{401, "authentication_error", "authentication_failed", "Personal API key found in request query string is invalid.", ""}
		noWriteScope     = apiErr{403, "authentication_error", "permission_denied", "API key missing required scope 'organization:write'", ""}
		noReadScope      = apiErr{403, "authentication_error", "permission_denied", "API key missing required scope 'organization:read'", ""}
		levelTooLow      = apiErr{403, "authentication_error", "permission_denied", "Your organization access level is insufficient.", ""}
		keyNotForB       = apiErr{403, "authentication_error", "permission_denied", "API key does not have access to the requested organization: ID " + orgB.ID + ".", ""}
		orgNotFound      = apiErr{404, "invalid_request", "not_found", "Organization not found.", ""}
		notFound         = apiErr{404, "invalid_request", "not_found", "Not found.", ""}
		parseError       = apiErr{400, "invalid_request", "parse_error", "", ""}
		tooLarge         = apiErr{413, "invalid_request", "request_too_large", "", ""}
		limit2           = apiErr{400, "validation_error", "max_proxy_records", "Maximum of 2 proxy records per organization.", ""}
		limit1           = apiErr{400, "validation_error", "max_proxy_records", "Maximum of 1 proxy records per organization.", ""}
		unique           = apiErr{400, "validation_error", "unique", "A proxy record with this domain already exists.", "domain"}
		waitingState     = apiErr{400, "validation_error", "invalid_state", "Cannot retry proxy in waiting state.", ""}
	)
	notAllowed := func(method string) apiErr {
		return apiErr{405, "invalid_request", "method_not_allowed", fmt.Sprintf("Method %q not allowed.", method), ""}
	}
	const form = "application/x-www-form-urlencoded"
	newDomain := jsonBody("new.example.com")
	// oversized is a JSON body one byte over 1 MiB.
	oversized := `{"domain":"big.example.com"` + strings.Repeat(" ", 1<<20-len(`{"domain":"big.example.com"}`)+1) + `}`

	tests := []struct {
		name string
		req  request
		want apiErr
	}{
		// No key.
		{"no key list", request{method: "GET", path: listPath(orgA.ID)}, notAuthenticated},
		{"no key create", request{method: "POST", path: listPath(orgA.ID), body: newDomain}, notAuthenticated},
		{"no key get", request{method: "GET", path: recPath(orgA.ID, recA.ID)}, notAuthenticated},
		{"no key delete", request{method: "DELETE", path: recPath(orgA.ID, recA.ID)}, notAuthenticated},
		{"no key retry", request{method: "POST", path: retryPath(orgA.ID, errA.ID)}, notAuthenticated},
		{"no key org", request{method: "GET", path: orgPath(orgA.ID)}, notAuthenticated},
		{"no key PUT", request{method: "PUT", path: listPath(orgA.ID)}, notAuthenticated},
		{"no key, Basic authorization", request{method: "GET", path: listPath(orgA.ID), auth: "Basic dXNlcjpwYXNz"}, notAuthenticated},
		{"no key, empty bearer", request{method: "GET", path: listPath(orgA.ID), auth: "Bearer "}, notAuthenticated},
		{"no key, empty body key", request{method: "POST", path: listPath(orgA.ID), body: jsonBody("new.example.com", "personal_api_key", "")}, notAuthenticated},
		{"no key, empty query key", request{method: "GET", path: listPath(orgA.ID) + "?personal_api_key="}, notAuthenticated},

		// Unknown and revoked keys, in each place.
		{"unknown key in header", request{method: "GET", path: listPath(orgA.ID), bearer: unknown}, badHeaderKey},
		{"revoked key in header", request{method: "GET", path: listPath(orgA.ID), bearer: revoked}, badHeaderKey},
		{"unknown key in lower-case bearer header", request{method: "GET", path: listPath(orgA.ID), auth: "bearer " + unknown}, badHeaderKey},
		{"unknown key in JSON body", request{method: "POST", path: listPath(orgA.ID), body: jsonBody("new.example.com", "personal_api_key", unknown)}, badBodyKey},
		{"revoked key in JSON body", request{method: "POST", path: listPath(orgA.ID), body: jsonBody("new.example.com", "personal_api_key", revoked), contentType: "application/json"}, badBodyKey},
		{"unknown key in form body", request{method: "POST", path: listPath(orgA.ID), body: "domain=new.example.com&personal_api_key=" + unknown, contentType: form}, badBodyKey},
		{"revoked key in form body", request{method: "POST", path: listPath(orgA.ID), body: "personal_api_key=" + revoked, contentType: form}, badBodyKey},
		{"revoked key in form body sent as JSON", request{method: "POST", path: retryPath(orgA.ID, errA.ID), body: "personal_api_key=" + revoked, contentType: "application/json"}, badBodyKey},
		{"unknown key in query", request{method: "GET", path: listPath(orgA.ID) + "?personal_api_key=" + unknown}, badQueryKey},
		{"revoked key in query", request{method: "GET", path: recPath(orgA.ID, recA.ID) + "?personal_api_key=" + revoked}, badQueryKey},
		{"revoked key in query of a retry", request{method: "POST", path: retryPath(orgA.ID, errA.ID) + "?personal_api_key=" + revoked}, badQueryKey},
		{"revoked key in query of a delete", request{method: "DELETE", path: recPath(orgA.ID, recA.ID) + "?personal_api_key=" + revoked}, badQueryKey},
		{"revoked key in body of a delete", request{method: "DELETE", path: recPath(orgA.ID, recA.ID), body: "personal_api_key=" + revoked, contentType: form}, badBodyKey},

		// The first key found is the only one tried.
		{"bad header key beats good body key", request{method: "POST", path: listPath(orgA.ID), bearer: unknown, body: jsonBody("new.example.com", "personal_api_key", all)}, badHeaderKey},
		{"bad header key beats good query key", request{method: "GET", path: listPath(orgA.ID) + "?personal_api_key=" + all, bearer: revoked}, badHeaderKey},
		{"bad body key beats good query key", request{method: "POST", path: listPath(orgA.ID) + "?personal_api_key=" + all, body: jsonBody("new.example.com", "personal_api_key", revoked)}, badBodyKey},
		{"Basic header is no key; query key tried", request{method: "GET", path: listPath(orgA.ID) + "?personal_api_key=" + unknown, auth: "Basic dXNlcjpwYXNz"}, badQueryKey},

		// Scopes.
		{"read-only key creates", request{method: "POST", path: listPath(orgA.ID), bearer: readOnly, body: newDomain}, noWriteScope},
		{"read-only key deletes", request{method: "DELETE", path: recPath(orgA.ID, recA.ID), bearer: readOnly}, noWriteScope},
		{"read-only key retries", request{method: "POST", path: retryPath(orgA.ID, errA.ID), bearer: readOnly}, noWriteScope},
		{"read-only key in query creates", request{method: "POST", path: listPath(orgA.ID) + "?personal_api_key=" + readOnly, body: newDomain}, noWriteScope},
		{"unrelated scopes list", request{method: "GET", path: listPath(orgA.ID), bearer: unrelated}, noReadScope},
		{"unrelated scopes get", request{method: "GET", path: recPath(orgA.ID, recA.ID), bearer: unrelated}, noReadScope},
		{"unrelated scopes org", request{method: "GET", path: orgPath(orgA.ID), bearer: unrelated}, noReadScope},
		{"unrelated scopes create", request{method: "POST", path: listPath(orgA.ID), bearer: unrelated, body: newDomain}, noWriteScope},

		// Members below admin.
		{"member creates", request{method: "POST", path: listPath(orgA.ID), bearer: memberWrite, body: newDomain}, levelTooLow},
		{"member deletes", request{method: "DELETE", path: recPath(orgA.ID, recA.ID), bearer: memberWrite}, levelTooLow},
		{"member retries", request{method: "POST", path: retryPath(orgA.ID, errA.ID), bearer: memberWrite}, levelTooLow},

		// A key scoped to organization A, on organization B (where its user is owner).
		{"A key lists B", request{method: "GET", path: listPath(orgB.ID), bearer: scopedA}, keyNotForB},
		{"A key creates in B", request{method: "POST", path: listPath(orgB.ID), bearer: scopedA, body: newDomain}, keyNotForB},
		{"A key gets B record", request{method: "GET", path: recPath(orgB.ID, recB.ID), bearer: scopedA}, keyNotForB},
		{"A key deletes B record", request{method: "DELETE", path: recPath(orgB.ID, recB.ID), bearer: scopedA}, keyNotForB},
		{"A key retries B record", request{method: "POST", path: retryPath(orgB.ID, recB.ID), bearer: scopedA}, keyNotForB},
		{"A key reads B", request{method: "GET", path: orgPath(orgB.ID), bearer: scopedA}, keyNotForB},
		// Membership is checked first: a scoped key learns nothing of an
		// organization its user is not in.
		{"A key lists an org its user is not in", request{method: "GET", path: listPath(orgC.ID), bearer: scopedA}, orgNotFound},
		{"A key reads an org its user is not in", request{method: "GET", path: orgPath(orgC.ID), bearer: scopedA}, orgNotFound},

		// Unknown organizations and organizations the user is not in.
		{"unknown org list", request{method: "GET", path: listPath(randomID), bearer: all}, orgNotFound},
		{"unknown org detail", request{method: "GET", path: orgPath(randomID), bearer: all}, orgNotFound},
		{"unknown org create", request{method: "POST", path: listPath(randomID), bearer: all, body: newDomain}, orgNotFound},
		{"unknown org, read-only key create", request{method: "POST", path: listPath(randomID), bearer: readOnly, body: newDomain}, orgNotFound},
		{"non-UUID org", request{method: "GET", path: listPath("not-a-uuid"), bearer: all}, orgNotFound},
		{"non-UUID org detail", request{method: "GET", path: orgPath("12345"), bearer: all}, orgNotFound},
		{"not a member list", request{method: "GET", path: listPath(orgC.ID), bearer: all}, orgNotFound},
		{"not a member detail", request{method: "GET", path: orgPath(orgC.ID), bearer: all}, orgNotFound},
		{"not a member create", request{method: "POST", path: listPath(orgC.ID), bearer: all, body: newDomain}, orgNotFound},
		{"not a member get", request{method: "GET", path: recPath(orgC.ID, recC.ID), bearer: all}, orgNotFound},
		{"not a member delete", request{method: "DELETE", path: recPath(orgC.ID, recC.ID), bearer: all}, orgNotFound},
		{"not a member retry", request{method: "POST", path: retryPath(orgC.ID, recC.ID), bearer: all}, orgNotFound},
		{"@current without membership", request{method: "GET", path: listPath("@current"), bearer: lonelyKey}, orgNotFound},

		// Unknown records and other organizations' records.
		{"unknown record get", request{method: "GET", path: recPath(orgA.ID, randomID), bearer: all}, notFound},
		{"unknown record delete", request{method: "DELETE", path: recPath(orgA.ID, randomID), bearer: all}, notFound},
		{"unknown record retry", request{method: "POST", path: retryPath(orgA.ID, randomID), bearer: all}, notFound},
		{"non-UUID record", request{method: "GET", path: recPath(orgA.ID, "nope"), bearer: all}, notFound},
		{"B record through A get", request{method: "GET", path: recPath(orgA.ID, recB.ID), bearer: all}, notFound},
		{"B record through A delete", request{method: "DELETE", path: recPath(orgA.ID, recB.ID), bearer: all}, notFound},
		{"B record through A retry", request{method: "POST", path: retryPath(orgA.ID, recB.ID), bearer: all}, notFound},
		{"unknown path", request{method: "GET", path: "/api/organizations/" + orgA.ID + "/proxy_records/" + recA.ID + "/nope/", bearer: all}, notFound},

		// Wrong methods.
		{"PUT list", request{method: "PUT", path: listPath(orgA.ID), bearer: all, body: newDomain}, notAllowed("PUT")},
		{"PUT record", request{method: "PUT", path: recPath(orgA.ID, recA.ID), bearer: all, body: newDomain}, notAllowed("PUT")},
		{"PUT retry", request{method: "PUT", path: retryPath(orgA.ID, errA.ID), bearer: all}, notAllowed("PUT")},
		{"PUT org", request{method: "PUT", path: orgPath(orgA.ID), bearer: all}, notAllowed("PUT")},
		{"PATCH record", request{method: "PATCH", path: recPath(orgA.ID, recA.ID), bearer: all, body: newDomain}, notAllowed("PATCH")},
		{"DELETE list", request{method: "DELETE", path: listPath(orgA.ID), bearer: all}, notAllowed("DELETE")},
		{"GET retry", request{method: "GET", path: retryPath(orgA.ID, errA.ID), bearer: all}, notAllowed("GET")},
		{"POST record", request{method: "POST", path: recPath(orgA.ID, recA.ID), bearer: all}, notAllowed("POST")},

		// Malformed and oversized bodies.
		{"truncated JSON", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: `{"domain":`, contentType: "application/json"}, parseError},
		{"JSON with trailing garbage", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: `{"domain":"new.example.com"} x`}, parseError},
		{"JSON array", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: `["new.example.com"]`}, parseError},
		{"JSON string", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: `"new.example.com"`}, parseError},
		{"bad form escape", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: "domain=%zz", contentType: form}, parseError},
		{"body over 1 MiB", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: oversized, contentType: "application/json"}, tooLarge},
		{"body over 1 MiB on a retry", request{method: "POST", path: retryPath(orgA.ID, errA.ID), bearer: all, body: oversized}, tooLarge},
		{"body over 1 MiB on a delete", request{method: "DELETE", path: recPath(orgA.ID, recA.ID), bearer: all, body: oversized}, tooLarge},
		{"body over 1 MiB with the key in it", request{method: "POST", path: listPath(orgA.ID), body: `{"personal_api_key":"` + all + `",` + oversized[1:]}, tooLarge},

		// Rules of records.
		{"limit reached", request{method: "POST", path: listPath(full.ID), bearer: all, body: newDomain}, limit2},
		{"organization's own limit reached", request{method: "POST", path: listPath(tiny.ID), bearer: all, body: newDomain}, limit1},
		{"domain in another organization", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: jsonBody("b.example.com")}, unique},
		{"domain in another organization, after normalising", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: jsonBody(" B.Example.COM. ")}, unique},
		{"domain in another organization the user cannot see", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: jsonBody("c.example.org")}, unique},
		{"domain in the same organization", request{method: "POST", path: listPath(orgA.ID), bearer: all, body: jsonBody("a.example.com")}, unique},
		{"retry of a waiting record", request{method: "POST", path: retryPath(orgA.ID, recA.ID), bearer: all}, waitingState},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkError(t, f.send(t, tt.req), tt.want)
		})
	}

	// None of the refused calls changed anything.
	for _, want := range []store.Record{recA, errA, recB, recC} {
		got, err := f.st.Record(want.ID)
		if err != nil {
			t.Errorf("record %s after refused calls: %v", want.Domain, err)
			continue
		}
		if got.Status != want.Status || !got.UpdatedAt.Equal(want.UpdatedAt) {
			t.Errorf("record %s after refused calls: status %s updated %v, want %s %v", want.Domain, got.Status, got.UpdatedAt, want.Status, want.UpdatedAt)
		}
	}
	for _, org := range []store.Org{orgA, orgB, orgC, full, tiny} {
		recs, err := f.st.OrgRecords(org.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range recs {
			if r.Domain == "new.example.com" || r.Domain == "big.example.com" {
				t.Errorf("org %s holds %s after refused creates", org.Name, r.Domain)
			}
		}
	}
}

// TestMethodNotAllowedAllowHeader checks that a 405 says which methods the
// path takes.
func TestMethodNotAllowedAllowHeader(t *testing.T) {
	f := newAPIFixture(t)
	org := f.addOrg(t, "A", nil)
	u := f.addUser(t, "a@a.test")
	f.addMember(t, org, u, store.LevelOwner)
	key := f.addKey(t, u, []string{"*"})
	rec := f.addRecord(t, org, "a.example.com", store.StatusWaiting)
	tests := []struct {
		path  string
		allow string
	}{
		{orgPath(org.ID), "GET, HEAD"},
		{listPath(org.ID), "GET, HEAD, POST"},
		{recPath(org.ID, rec.ID), "DELETE, GET, HEAD"},
		{retryPath(org.ID, rec.ID), "POST"},
	}
	for _, tt := range tests {
		res := f.send(t, request{method: "PUT", path: tt.path, bearer: key})
		if got, want := res.status, http.StatusMethodNotAllowed; got != want {
			t.Errorf("PUT %s: status %d, want %d", tt.path, got, want)
		}
		if got, want := res.header.Get("Allow"), tt.allow; got != want {
			t.Errorf("PUT %s: Allow %q, want %q", tt.path, got, want)
		}
	}
}

// TestSchemaMethodNotAllowed pins a bug fixed in 104d01f: a POST to
// /api/schema/ built the Allow header from a nil route and panicked, so the
// client got no answer at all.
func TestSchemaMethodNotAllowed(t *testing.T) {
	f := newAPIFixtureConfig(t, control.Config{TargetCNAMEBase: testBase, MaxProxyRecords: 2, Schema: []byte("openapi: 3.0.3\n")})
	res := f.send(t, request{method: "GET", path: "/api/schema/"})
	if got, want := res.status, http.StatusOK; got != want {
		t.Errorf("GET /api/schema/: status %d, want %d", got, want)
	}
	if got, want := string(res.body), "openapi: 3.0.3\n"; got != want {
		t.Errorf("GET /api/schema/: body %q, want %q", got, want)
	}
	for _, path := range []string{"/api/schema/", "/api/schema"} {
		res := f.send(t, request{method: "POST", path: path, body: "x"})
		checkError(t, res, apiErr{405, "invalid_request", "method_not_allowed", `Method "POST" not allowed.`, ""})
		if got, want := res.header.Get("Allow"), "GET, HEAD"; got != want {
			t.Errorf("POST %s: Allow %q, want %q", path, got, want)
		}
	}
}

// TestCreateRejectsBadDomains sends every rule a domain must meet (see
// NormalizeDomain) through the API.
func TestCreateRejectsBadDomains(t *testing.T) {
	f := newAPIFixture(t)
	org := f.addOrg(t, "A", nil)
	u := f.addUser(t, "a@a.test")
	f.addMember(t, org, u, store.LevelOwner)
	key := f.addKey(t, u, []string{"*"})

	tests := []struct {
		name   string
		body   string
		code   string
		detail string // a part of the detail that names the rule
	}{
		{"empty", jsonBody(""), "required", "required"},
		{"blank", jsonBody("  \t "), "required", "required"},
		{"missing", `{}`, "required", "required"},
		{"null", `{"domain": null}`, "required", "required"},
		{"empty body", ``, "required", "required"},
		{"empty form value", `domain=`, "required", "required"},
		{"form without domain", `other=1`, "required", "required"},
		{"number", `{"domain": 5}`, "invalid_input", "string"},
		{"scheme", jsonBody("https://e.example.com"), "invalid_input", "scheme"},
		{"path", jsonBody("e.example.com/x"), "invalid_input", "path"},
		{"port", jsonBody("e.example.com:8443"), "invalid_input", "port"},
		{"user info", jsonBody("user@e.example.com"), "invalid_input", "user info"},
		{"space", jsonBody("e example.com"), "invalid_input", "space"},
		{"space from form plus", "domain=e+example.com", "invalid_input", "space"},
		{"not UTF-8, from a form body", "domain=a%FFb.example.com", "invalid_input", "UTF-8"},
		{"wildcard", jsonBody("*.example.com"), "invalid_input", "*"},
		{"IPv4", jsonBody("192.0.2.1"), "invalid_input", "IP address"},
		{"IPv6", jsonBody("2001:db8::1"), "invalid_input", "IP address"},
		{"bracketed IPv6", jsonBody("[2001:db8::1]"), "invalid_input", "IP address"},
		{"single label", jsonBody("localhost"), "invalid_input", "single label"},
		{"public suffix", jsonBody("co.uk"), "invalid_input", "public suffix"},
		{"numeric top-level label", jsonBody("e.example.123"), "invalid_input", "public suffix list"},
		{"cluster-internal name", jsonBody("a.svc.cluster.local"), "invalid_input", "public suffix list"},
		{".internal", jsonBody("x.internal"), "invalid_input", "public suffix list"},
		{".test", jsonBody("x.test"), "invalid_input", "public suffix list"},
		{".invalid", jsonBody("x.invalid"), "invalid_input", "public suffix list"},
		{".localhost, from a form body", "domain=x.localhost", "invalid_input", "public suffix list"},
		{"64-byte label", jsonBody(strings.Repeat("a", 64) + ".example.com"), "invalid_input", "at most 63"},
		{"name over 253", jsonBody(strings.Repeat("abcdefghi.", 25) + "example.com"), "invalid_input", "at most 253"},
		{"underscore", jsonBody("_dmarc.example.com"), "invalid_input", "only letters, digits and '-'"},
		{"leading hyphen", jsonBody("-e.example.com"), "invalid_input", "starts or ends with '-'"},
		{"trailing hyphen", jsonBody("e-.example.com"), "invalid_input", "starts or ends with '-'"},
		{"empty label", jsonBody("e..example.com"), "invalid_input", "empty label"},
		{"the base itself", jsonBody(testBase), "invalid_input", testBase},
		{"under the base", jsonBody("x." + testBase), "invalid_input", testBase},
		{"under the base, upper case", jsonBody("X.PROXY.Example.NET."), "invalid_input", testBase},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := f.send(t, request{method: "POST", path: listPath(org.ID), bearer: key, body: tt.body})
			checkError(t, res, apiErr{400, "validation_error", tt.code, "", "domain"})
			var e struct{ Detail string }
			json.Unmarshal(res.body, &e)
			if !strings.Contains(e.Detail, tt.detail) {
				t.Errorf("detail %q does not name the rule (%q)", e.Detail, tt.detail)
			}
		})
	}
	recs, err := f.st.OrgRecords(org.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(recs), 0; got != want {
		t.Errorf("%d records after refused creates, want %d", got, want)
	}
}

// ownerFixture is a fixture with one organization whose owner holds a key
// with every scope.
type ownerFixture struct {
	*apiFixture
	org   store.Org
	owner store.User
	key   string
}

func newOwnerFixture(t *testing.T, maxRecords *int) ownerFixture {
	t.Helper()
	f := newAPIFixture(t)
	org := f.addOrg(t, "Acme", maxRecords)
	owner := f.addUser(t, "owner@acme.test")
	f.addMember(t, org, owner, store.LevelOwner)
	return ownerFixture{apiFixture: f, org: org, owner: owner, key: f.addKey(t, owner, []string{"*"})}
}

func TestList(t *testing.T) {
	three := 3
	f := newOwnerFixture(t, &three)

	res := f.send(t, request{method: "GET", path: listPath(f.org.ID), bearer: f.key})
	if got, want := res.status, http.StatusOK; got != want {
		t.Fatalf("status %d, want %d", got, want)
	}
	if got, want := strings.TrimSpace(string(res.body)), `{"results":[],"max_proxy_records":3}`; got != want {
		t.Errorf("empty list %s, want %s", got, want)
	}

	var created []recordView
	for _, d := range []string{"one.example.com", "two.example.com", "three.example.com"} {
		res := f.send(t, request{method: "POST", path: listPath(f.org.ID), bearer: f.key, body: jsonBody(d)})
		if got, want := res.status, http.StatusCreated; got != want {
			t.Fatalf("create %s: status %d, want %d (%s)", d, got, want, res.body)
		}
		created = append(created, decodeRecord(t, res.body))
	}
	// An older record changed later stays where its creation put it.
	f.setStatus(t, created[0].ID, store.StatusValid)

	res = f.send(t, request{method: "GET", path: listPath(f.org.ID), bearer: f.key})
	if got, want := res.status, http.StatusOK; got != want {
		t.Fatalf("status %d, want %d", got, want)
	}
	var list struct {
		Results         []json.RawMessage `json:"results"`
		MaxProxyRecords int               `json:"max_proxy_records"`
	}
	var fields map[string]json.RawMessage
	json.Unmarshal(res.body, &fields)
	if got, want := strings.Join(slices.Sorted(mapKeys(fields)), ","), "max_proxy_records,results"; got != want {
		t.Errorf("list fields %s, want %s", got, want)
	}
	if err := json.Unmarshal(res.body, &list); err != nil {
		t.Fatalf("list %s: %v", res.body, err)
	}
	if got, want := list.MaxProxyRecords, 3; got != want {
		t.Errorf("max_proxy_records %d, want %d", got, want)
	}
	var domains []string
	for _, raw := range list.Results {
		domains = append(domains, decodeRecord(t, raw).Domain)
	}
	if got, want := strings.Join(domains, " "), "three.example.com two.example.com one.example.com"; got != want {
		t.Errorf("list order %q, want newest first %q", got, want)
	}

	// Another organization without a limit of its own shows the server's.
	other := f.addOrg(t, "Other", nil)
	f.addMember(t, other, f.owner, store.LevelMember)
	res = f.send(t, request{method: "GET", path: listPath(other.ID), bearer: f.key})
	if got, want := strings.TrimSpace(string(res.body)), `{"results":[],"max_proxy_records":2}`; got != want {
		t.Errorf("other org's list %s, want %s", got, want)
	}
}

// TestCreate creates a record through each way of sending the body and
// the key.
func TestCreate(t *testing.T) {
	hundred := 100
	f := newOwnerFixture(t, &hundred)
	const form = "application/x-www-form-urlencoded"
	tests := []struct {
		name string
		req  request
		want string // the domain stored
	}{
		{"JSON body", request{body: jsonBody("json.example.com"), contentType: "application/json", bearer: f.key}, "json.example.com"},
		{"JSON body without content type", request{body: jsonBody("json2.example.com"), bearer: f.key}, "json2.example.com"},
		{"JSON body with charset", request{body: " \n" + jsonBody("json3.example.com") + "\n", contentType: "application/json; charset=utf-8", bearer: f.key}, "json3.example.com"},
		{"form body", request{body: "domain=form.example.com", contentType: form, bearer: f.key}, "form.example.com"},
		{"form body sent as JSON", request{body: "domain=curl.example.com", contentType: "application/json", bearer: f.key}, "curl.example.com"},
		{"form body with escapes", request{body: "domain=b%C3%BCcher.example.at", contentType: form, bearer: f.key}, "xn--bcher-kva.example.at"},
		{"key in JSON body", request{body: jsonBody("bodykey.example.com", "personal_api_key", f.key)}, "bodykey.example.com"},
		{"key in form body", request{body: "personal_api_key=" + f.key + "&domain=formkey.example.com", contentType: form}, "formkey.example.com"},
		{"key in query", request{path: "?personal_api_key=" + f.key, body: jsonBody("querykey.example.com")}, "querykey.example.com"},
		{"valid header key, other fields ignored", request{body: jsonBody("extra.example.com", "name", "x"), bearer: f.key}, "extra.example.com"},
		{"trim, lower case, trailing dot", request{body: jsonBody("  Mixed.Example.COM.  "), bearer: f.key}, "mixed.example.com"},
		{"Unicode to punycode", request{body: jsonBody("bücher.example.de"), bearer: f.key}, "xn--bcher-kva.example.de"},
		{"Unicode upper case to punycode", request{body: jsonBody("MÜNCHEN.example.de"), bearer: f.key}, "xn--mnchen-3ya.example.de"},
		{"full-width letters", request{body: jsonBody("ｗｉｄｅ.example.com"), bearer: f.key}, "wide.example.com"},
		{"punycode kept", request{body: jsonBody("xn--caf-dma.example.fr"), bearer: f.key}, "xn--caf-dma.example.fr"},
		{"hyphens inside labels", request{body: jsonBody("r3---sn-abc.example.com"), bearer: f.key}, "r3---sn-abc.example.com"},
		{"deep name under a two-label suffix", request{body: jsonBody("a.b.example.co.uk"), bearer: f.key}, "a.b.example.co.uk"},
		{"registrable domain (zone apex)", request{body: jsonBody("example.com"), bearer: f.key}, "example.com"},
		{"registrable domain under a two-label suffix", request{body: jsonBody("Example.CO.UK."), bearer: f.key}, "example.co.uk"},
		{"registrable Unicode domain", request{body: jsonBody("bücher.de"), bearer: f.key}, "xn--bcher-kva.de"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := tt.req
			req.method = "POST"
			req.path = listPath(f.org.ID) + req.path
			res := f.send(t, req)
			if got, want := res.status, http.StatusCreated; got != want {
				t.Fatalf("status %d, want %d (%s)", got, want, res.body)
			}
			if got, want := res.header.Get("Content-Type"), "application/json"; got != want {
				t.Errorf("Content-Type %q, want %q", got, want)
			}
			r := decodeRecord(t, res.body)
			if got, want := r.Domain, tt.want; got != want {
				t.Errorf("domain %q, want %q", got, want)
			}
			if got, want := r.TargetCNAME, wantTarget(f.org.ID, tt.want); got != want {
				t.Errorf("target_cname %q, want %q", got, want)
			}
			if got, want := r.Status, "waiting"; got != want {
				t.Errorf("status %q, want %q", got, want)
			}
			if r.Message != nil {
				t.Errorf("message %q, want null", *r.Message)
			}
			if r.CreatedBy == nil || *r.CreatedBy != f.owner.ID {
				t.Errorf("created_by %v, want %d", r.CreatedBy, f.owner.ID)
			}
			if got, want := r.UpdatedAt, r.CreatedAt; got != want {
				t.Errorf("updated_at %s, want created_at %s", got, want)
			}

			// The record is stored as shown, and reads back the same.
			stored, err := f.st.Record(r.ID)
			if err != nil {
				t.Fatalf("stored record: %v", err)
			}
			if got, want := stored.OrgID, f.org.ID; got != want {
				t.Errorf("stored org %s, want %s", got, want)
			}
			if got, want := stored.Domain, tt.want; got != want {
				t.Errorf("stored domain %q, want %q", got, want)
			}
			if got, want := stored.OwnershipToken, r.Ownership.Value; got != want {
				t.Errorf("stored ownership token %q, want the one shown, %q", got, want)
			}
			get := f.send(t, request{method: "GET", path: recPath(f.org.ID, r.ID), bearer: f.key})
			if got, want := get.status, http.StatusOK; got != want {
				t.Fatalf("GET: status %d, want %d", got, want)
			}
			if got, want := string(get.body), string(res.body); got != want {
				t.Errorf("GET %s, want what create answered %s", got, want)
			}
		})
	}
}

// TestOwnershipTokenPerRecord: every record gets its own random ownership
// token, so the TXT record published for one never proves another: not
// another domain's record, and not a later record of the same domain in
// another organization (or in the same one). (TestCreate checks that
// reads show the token the create showed.)
func TestOwnershipTokenPerRecord(t *testing.T) {
	f := newOwnerFixture(t, nil)
	other := f.addOrg(t, "Other", nil)
	f.addMember(t, other, f.owner, store.LevelOwner)
	create := func(org, domain string) recordView {
		t.Helper()
		res := f.send(t, request{method: "POST", path: listPath(org), bearer: f.key, body: jsonBody(domain)})
		if res.status != http.StatusCreated {
			t.Fatalf("create %s: %d %s", domain, res.status, res.body)
		}
		return decodeRecord(t, res.body)
	}
	del := func(org, id string) {
		t.Helper()
		if res := f.send(t, request{method: "DELETE", path: recPath(org, id), bearer: f.key}); res.status != http.StatusNoContent {
			t.Fatalf("delete: %d %s", res.status, res.body)
		}
	}
	seen := map[string]string{}
	note := func(r recordView, what string) {
		t.Helper()
		if prev, ok := seen[r.Ownership.Value]; ok {
			t.Errorf("%s has the ownership token of %s: %s", what, prev, r.Ownership.Value)
		}
		seen[r.Ownership.Value] = what
	}
	a := create(f.org.ID, "e.example.com")
	note(a, "the first record of e.example.com")
	note(create(f.org.ID, "f.example.com"), "a record of f.example.com")
	del(f.org.ID, a.ID)
	b := create(other.ID, "e.example.com")
	note(b, "another organization's record of e.example.com")
	if b.TargetCNAME == a.TargetCNAME {
		t.Errorf("two organizations' records of e.example.com share the target %s", a.TargetCNAME)
	}
	del(other.ID, b.ID)
	note(create(f.org.ID, "e.example.com"), "the first organization's second record of e.example.com")
}

// TestBodyOfExactly1MiB checks the edge of the body limit: 1 MiB is read.
func TestBodyOfExactly1MiB(t *testing.T) {
	f := newOwnerFixture(t, nil)
	body := `{"domain":"big.example.com"` + strings.Repeat(" ", 1<<20-len(`{"domain":"big.example.com"}`)) + `}`
	if got, want := len(body), 1<<20; got != want {
		t.Fatalf("body is %d bytes, want %d", got, want)
	}
	res := f.send(t, request{method: "POST", path: listPath(f.org.ID), bearer: f.key, body: body})
	if got, want := res.status, http.StatusCreated; got != want {
		t.Errorf("status %d, want %d (%s)", got, want, res.body)
	}
}

func TestTrailingSlashOptional(t *testing.T) {
	hundred := 100
	f := newOwnerFixture(t, &hundred)
	type step struct {
		method string
		path   string
		body   string
		status int
	}
	run := func(t *testing.T, steps []step) {
		t.Helper()
		for _, s := range steps {
			res := f.send(t, request{method: s.method, path: s.path, body: s.body, bearer: f.key})
			if got, want := res.status, s.status; got != want {
				t.Fatalf("%s %s: status %d, want %d (%s)", s.method, s.path, got, want, res.body)
			}
		}
	}
	for _, slash := range []string{"/", ""} {
		t.Run(fmt.Sprintf("slash %q", slash), func(t *testing.T) {
			trim := func(p string) string { return strings.TrimSuffix(p, "/") + slash }
			domain := fmt.Sprintf("slash%d.example.com", len(slash))
			run(t, []step{
				{"GET", trim(orgPath(f.org.ID)), "", http.StatusOK},
				{"GET", trim(listPath(f.org.ID)), "", http.StatusOK},
				{"POST", trim(listPath(f.org.ID)), jsonBody(domain), http.StatusCreated},
			})
			rec, err := f.st.RecordByDomain(domain)
			if err != nil {
				t.Fatal(err)
			}
			f.setStatus(t, rec.ID, store.StatusErroring)
			run(t, []step{
				{"GET", trim(recPath(f.org.ID, rec.ID)), "", http.StatusOK},
				{"POST", trim(retryPath(f.org.ID, rec.ID)), "", http.StatusOK},
				{"DELETE", trim(recPath(f.org.ID, rec.ID)), "", http.StatusNoContent},
			})
		})
	}
}

func TestCurrentOrg(t *testing.T) {
	f := newAPIFixture(t)
	first := f.addOrg(t, "First", nil)
	second := f.addOrg(t, "Second", nil)
	third := f.addOrg(t, "Third", nil)
	u := f.addUser(t, "u@x.test")
	// Memberships are made in this order: first, second, third.
	f.addMember(t, first, u, store.LevelOwner)
	f.addMember(t, second, u, store.LevelAdmin)
	f.addMember(t, third, u, store.LevelMember)
	// Changing the level of the first membership keeps it first.
	f.addMember(t, first, u, store.LevelAdmin)
	f.addRecord(t, first, "first.example.com", store.StatusWaiting)
	f.addRecord(t, second, "second.example.com", store.StatusWaiting)
	f.addRecord(t, third, "third.example.com", store.StatusWaiting)

	tests := []struct {
		name string
		key  string
		want store.Org
	}{
		{"unscoped key: first membership", f.addKey(t, u, []string{"*"}), first},
		{"key scoped to the second", f.addKey(t, u, []string{"*"}, second.ID), second},
		{"key scoped to the first", f.addKey(t, u, []string{"organization:read"}, first.ID), first},
		{"key scoped to both: first membership", f.addKey(t, u, []string{"*"}, second.ID, first.ID), first},
		{"key scoped to third and second: first membership among them", f.addKey(t, u, []string{"*"}, third.ID, second.ID), second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := f.send(t, request{method: "GET", path: orgPath("@current"), bearer: tt.key})
			if got, want := res.status, http.StatusOK; got != want {
				t.Fatalf("status %d, want %d (%s)", got, want, res.body)
			}
			var org struct{ ID string }
			json.Unmarshal(res.body, &org)
			if got, want := org.ID, tt.want.ID; got != want {
				t.Errorf("@current is %s, want %s (%s)", got, want, tt.want.Name)
			}

			res = f.send(t, request{method: "GET", path: listPath("@current"), bearer: tt.key})
			var list struct{ Results []recordView }
			json.Unmarshal(res.body, &list)
			if len(list.Results) != 1 {
				t.Fatalf("@current list %s, want one record", res.body)
			}
			if got, want := list.Results[0].Domain, tt.want.Name+".example.com"; !strings.EqualFold(got, want) {
				t.Errorf("@current list holds %s, want %s", got, want)
			}
		})
	}

	t.Run("create through @current", func(t *testing.T) {
		key := f.addKey(t, u, []string{"organization:write"}, second.ID)
		res := f.send(t, request{method: "POST", path: listPath("@current"), bearer: key, body: jsonBody("new.example.com")})
		if got, want := res.status, http.StatusCreated; got != want {
			t.Fatalf("status %d, want %d (%s)", got, want, res.body)
		}
		r := decodeRecord(t, res.body)
		if got, want := r.TargetCNAME, wantTarget(second.ID, "new.example.com"); got != want {
			t.Errorf("target_cname %s, want %s (computed with the real organization id)", got, want)
		}
		stored, err := f.st.Record(r.ID)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := stored.OrgID, second.ID; got != want {
			t.Errorf("record stored in %s, want %s", got, want)
		}
	})
}

// TestScopes checks which calls each set of scopes allows.
func TestScopes(t *testing.T) {
	hundred := 100
	f := newOwnerFixture(t, &hundred)
	tests := []struct {
		scopes  []string
		readOK  bool
		writeOK bool
	}{
		{[]string{"organization:read"}, true, false},
		{[]string{"organization:write"}, true, true},
		{[]string{"*"}, true, true},
		{[]string{"organization:read", "organization:write"}, true, true},
		{[]string{"project:write", "feature_flag:read"}, false, false},
	}
	for i, tt := range tests {
		t.Run(strings.Join(tt.scopes, ","), func(t *testing.T) {
			key := f.addKey(t, f.owner, tt.scopes)
			read := []request{
				{method: "GET", path: orgPath(f.org.ID)},
				{method: "GET", path: listPath(f.org.ID)},
			}
			for _, r := range read {
				r.bearer = key
				res := f.send(t, r)
				if tt.readOK {
					if got, want := res.status, http.StatusOK; got != want {
						t.Errorf("%s %s: status %d, want %d (%s)", r.method, r.path, got, want, res.body)
					}
				} else {
					checkError(t, res, apiErr{403, "authentication_error", "permission_denied", "API key missing required scope 'organization:read'", ""})
				}
			}
			res := f.send(t, request{method: "POST", path: listPath(f.org.ID), bearer: key, body: jsonBody(fmt.Sprintf("s%d.example.com", i))})
			if tt.writeOK {
				if got, want := res.status, http.StatusCreated; got != want {
					t.Errorf("create: status %d, want %d (%s)", got, want, res.body)
				}
			} else {
				checkError(t, res, apiErr{403, "authentication_error", "permission_denied", "API key missing required scope 'organization:write'", ""})
			}
		})
	}
}

// TestMemberReads checks that a member (below admin) reads everything.
func TestMemberReads(t *testing.T) {
	f := newOwnerFixture(t, nil)
	m := f.addUser(t, "m@acme.test")
	f.addMember(t, f.org, m, store.LevelMember)
	key := f.addKey(t, m, []string{"organization:write"})
	rec := f.addRecord(t, f.org, "e.example.com", store.StatusValid)
	for _, path := range []string{orgPath(f.org.ID), listPath(f.org.ID), recPath(f.org.ID, rec.ID)} {
		res := f.send(t, request{method: "GET", path: path, bearer: key})
		if got, want := res.status, http.StatusOK; got != want {
			t.Errorf("GET %s: status %d, want %d (%s)", path, got, want, res.body)
		}
	}
	// An admin writes.
	admin := f.addUser(t, "admin@acme.test")
	f.addMember(t, f.org, admin, store.LevelAdmin)
	res := f.send(t, request{method: "DELETE", path: recPath(f.org.ID, rec.ID), bearer: f.addKey(t, admin, []string{"organization:write"})})
	if got, want := res.status, http.StatusNoContent; got != want {
		t.Errorf("admin DELETE: status %d, want %d (%s)", got, want, res.body)
	}
}

func TestGetOrg(t *testing.T) {
	five := 5
	f := newOwnerFixture(t, &five)
	res := f.send(t, request{method: "GET", path: orgPath(f.org.ID), bearer: f.key})
	if got, want := res.status, http.StatusOK; got != want {
		t.Fatalf("status %d, want %d (%s)", got, want, res.body)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(res.body, &fields); err != nil {
		t.Fatal(err)
	}
	if got, want := strings.Join(slices.Sorted(mapKeys(fields)), ","), "created_at,id,max_proxy_records,name,slug"; got != want {
		t.Errorf("org fields %s, want %s", got, want)
	}
	var org struct {
		ID              string `json:"id"`
		Name            string `json:"name"`
		CreatedAt       string `json:"created_at"`
		MaxProxyRecords int    `json:"max_proxy_records"`
		Slug            string `json:"slug"`
	}
	json.Unmarshal(res.body, &org)
	if got, want := org.ID, f.org.ID; got != want {
		t.Errorf("id %s, want %s", got, want)
	}
	if got, want := org.Slug, "acme"; got != want {
		t.Errorf("slug %q, want %q", got, want)
	}
	if got, want := org.Name, "Acme"; got != want {
		t.Errorf("name %q, want %q", got, want)
	}
	if got, want := org.MaxProxyRecords, 5; got != want {
		t.Errorf("max_proxy_records %d, want %d", got, want)
	}
	ts, err := time.Parse(time.RFC3339, org.CreatedAt)
	if err != nil {
		t.Errorf("created_at %q: %v", org.CreatedAt, err)
	} else if !ts.Equal(f.org.CreatedAt) {
		t.Errorf("created_at %v, want %v", ts, f.org.CreatedAt)
	}
}

// TestDelete follows the delete rules from every status: waiting,
// erroring and timed_out go at once; issuing, valid and warning go to
// deleting; a record already deleting answers 204 again.
func TestDelete(t *testing.T) {
	f := newOwnerFixture(t, nil)
	tests := []struct {
		status store.Status
		// gone: the record disappears at once; else it goes to deleting.
		gone bool
	}{
		{store.StatusWaiting, true},
		{store.StatusErroring, true},
		{store.StatusTimedOut, true},
		{store.StatusIssuing, false},
		{store.StatusValid, false},
		{store.StatusWarning, false},
		{store.StatusDeleting, false},
	}
	for _, tt := range tests {
		t.Run(string(tt.status), func(t *testing.T) {
			domain := strings.ReplaceAll(string(tt.status), "_", "-") + ".example.com"
			rec := f.addRecord(t, f.org, domain, tt.status)
			res := f.send(t, request{method: "DELETE", path: recPath(f.org.ID, rec.ID), bearer: f.key})
			if got, want := res.status, http.StatusNoContent; got != want {
				t.Fatalf("status %d, want %d (%s)", got, want, res.body)
			}
			if len(res.body) != 0 {
				t.Errorf("body %q, want none", res.body)
			}
			get := f.send(t, request{method: "GET", path: recPath(f.org.ID, rec.ID), bearer: f.key})
			stored, err := f.st.Record(rec.ID)
			if tt.gone {
				if !errors.Is(err, store.ErrNotFound) {
					t.Errorf("store after DELETE: %v, %v; want ErrNotFound", stored.Status, err)
				}
				checkError(t, get, apiErr{404, "invalid_request", "not_found", "Not found.", ""})
				if _, err := f.st.RecordByDomain(domain); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("domain still held after DELETE: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("store after DELETE: %v", err)
			}
			if got, want := stored.Status, store.StatusDeleting; got != want {
				t.Errorf("status %s, want %s", got, want)
			}
			if got := decodeRecord(t, get.body); got.Status != "deleting" {
				t.Errorf("GET after DELETE shows %s, want deleting", got.Status)
			}
			// A record already deleting answers 204 again and stays.
			before := stored
			res = f.send(t, request{method: "DELETE", path: recPath(f.org.ID, rec.ID), bearer: f.key})
			if got, want := res.status, http.StatusNoContent; got != want {
				t.Fatalf("second DELETE: status %d, want %d (%s)", got, want, res.body)
			}
			if len(res.body) != 0 {
				t.Errorf("second DELETE: body %q, want none", res.body)
			}
			after, err := f.st.Record(rec.ID)
			if err != nil {
				t.Fatalf("store after second DELETE: %v", err)
			}
			if after.Status != store.StatusDeleting || !after.UpdatedAt.Equal(before.UpdatedAt) {
				t.Errorf("second DELETE changed the record: %s %v, was %s %v", after.Status, after.UpdatedAt, before.Status, before.UpdatedAt)
			}
			// Finish the deletion as the engine would, for the next case's
			// limit.
			if _, _, err := f.st.Mutate(rec.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRetry follows the retry rule from every status: erroring and
// timed_out go back to waiting with no message; every other status
// refuses with invalid_state.
func TestRetry(t *testing.T) {
	f := newOwnerFixture(t, nil)
	for _, status := range store.Statuses {
		t.Run(string(status), func(t *testing.T) {
			domain := strings.ReplaceAll(string(status), "_", "-") + ".example.com"
			rec := f.addRecord(t, f.org, domain, status)
			t.Cleanup(func() {
				f.st.Mutate(rec.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil })
			})
			res := f.send(t, request{method: "POST", path: retryPath(f.org.ID, rec.ID), bearer: f.key})
			if status != store.StatusErroring && status != store.StatusTimedOut {
				checkError(t, res, apiErr{400, "validation_error", "invalid_state", "Cannot retry proxy in " + string(status) + " state.", ""})
				after, err := f.st.Record(rec.ID)
				if err != nil {
					t.Fatal(err)
				}
				if after.Status != status || !after.UpdatedAt.Equal(rec.UpdatedAt) {
					t.Errorf("refused retry changed the record to %s %v", after.Status, after.UpdatedAt)
				}
				return
			}
			if got, want := res.status, http.StatusOK; got != want {
				t.Fatalf("status %d, want %d (%s)", got, want, res.body)
			}
			r := decodeRecord(t, res.body)
			if got, want := r.Status, "waiting"; got != want {
				t.Errorf("status %q, want %q", got, want)
			}
			if r.Message != nil {
				t.Errorf("message %q, want null", *r.Message)
			}
			if got, want := r.ID, rec.ID; got != want {
				t.Errorf("id %s, want %s", got, want)
			}
			if got, want := r.Domain, domain; got != want {
				t.Errorf("domain %s, want %s", got, want)
			}
			updated, _ := time.Parse(time.RFC3339Nano, r.UpdatedAt)
			if !updated.After(rec.UpdatedAt) {
				t.Errorf("updated_at %s, want after %v", r.UpdatedAt, rec.UpdatedAt)
			}
			stored, err := f.st.Record(rec.ID)
			if err != nil {
				t.Fatal(err)
			}
			if stored.Status != store.StatusWaiting || stored.Message != nil {
				t.Errorf("stored %s %v, want waiting and no message", stored.Status, stored.Message)
			}
			// Now waiting, the record cannot be retried again.
			res = f.send(t, request{method: "POST", path: retryPath(f.org.ID, rec.ID), bearer: f.key})
			checkError(t, res, apiErr{400, "validation_error", "invalid_state", "Cannot retry proxy in waiting state.", ""})
		})
	}
}

// TestIsolation checks that a key of organization A can neither see,
// change nor learn of organization B's records: every answer about one of
// B's records is byte for byte the answer about an id nobody holds.
func TestIsolation(t *testing.T) {
	f := newAPIFixture(t)
	orgA := f.addOrg(t, "A", nil)
	orgB := f.addOrg(t, "B", nil)
	alice := f.addUser(t, "alice@a.test")
	bob := f.addUser(t, "bob@b.test")
	f.addMember(t, orgA, alice, store.LevelOwner)
	f.addMember(t, orgB, bob, store.LevelOwner)
	keyA := f.addKey(t, alice, []string{"*"})
	scopedA := f.addKey(t, alice, []string{"*"}, orgA.ID)
	f.addRecord(t, orgA, "mine.example.com", store.StatusWaiting)
	waitingB := f.addRecord(t, orgB, "waiting.example.org", store.StatusWaiting)
	erroringB := f.addRecord(t, orgB, "erroring.example.org", store.StatusErroring)
	validB := f.addRecord(t, orgB, "valid.example.org", store.StatusValid)
	unknownID := store.NewID()

	for _, key := range []string{keyA, scopedA} {
		for _, org := range []string{orgA.ID, orgB.ID, "@current"} {
			for _, recB := range []store.Record{waitingB, erroringB, validB} {
				for _, op := range []struct{ method, suffix string }{{"GET", ""}, {"DELETE", ""}, {"POST", "retry/"}} {
					withB := f.send(t, request{method: op.method, path: recPath(org, recB.ID) + op.suffix, bearer: key})
					withUnknown := f.send(t, request{method: op.method, path: recPath(org, unknownID) + op.suffix, bearer: key})
					if withB.status < 400 {
						t.Errorf("%s %s%s on B's %s record: status %d", op.method, recPath(org, recB.ID), op.suffix, recB.Status, withB.status)
					}
					if withB.status != withUnknown.status || string(withB.body) != string(withUnknown.body) {
						t.Errorf("%s on B's %s record through %s: %d %s; an unknown id: %d %s",
							op.method+" "+op.suffix, recB.Status, org, withB.status, withB.body, withUnknown.status, withUnknown.body)
					}
					for _, h := range []string{"Content-Type", "Content-Length", "Allow"} {
						if got, want := withB.header.Get(h), withUnknown.header.Get(h); got != want {
							t.Errorf("%s on B's record: %s %q; an unknown id: %q", op.method, h, got, want)
						}
					}
				}
			}
		}
		// A's list shows only A's records.
		res := f.send(t, request{method: "GET", path: listPath(orgA.ID), bearer: key})
		var list struct{ Results []recordView }
		if err := json.Unmarshal(res.body, &list); err != nil {
			t.Fatalf("list: %v (%s)", err, res.body)
		}
		if len(list.Results) != 1 || list.Results[0].Domain != "mine.example.com" {
			t.Errorf("A's list %s, want only mine.example.com", res.body)
		}
		// B's list is refused like any organization alice is not in.
		res = f.send(t, request{method: "GET", path: listPath(orgB.ID), bearer: key})
		if res.status < 400 || strings.Contains(string(res.body), "example.org") {
			t.Errorf("B's list through alice's key: %d %s", res.status, res.body)
		}
	}

	// Nothing of B's changed.
	for _, want := range []store.Record{waitingB, erroringB, validB} {
		got, err := f.st.Record(want.ID)
		if err != nil {
			t.Errorf("B's %s record: %v", want.Status, err)
			continue
		}
		if got.Status != want.Status || !got.UpdatedAt.Equal(want.UpdatedAt) {
			t.Errorf("B's record went from %s to %s", want.Status, got.Status)
		}
	}
}

// TestConcurrentCreatesRespectLimit fires 50 creates at once into an
// organization whose limit is 2.
func TestConcurrentCreatesRespectLimit(t *testing.T) {
	f := newOwnerFixture(t, nil)
	const n = 50
	statuses := make([]int, n)
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", f.srv.URL+listPath(f.org.ID), strings.NewReader(jsonBody(fmt.Sprintf("c%d.example.com", i))))
			req.Header.Set("Authorization", "Bearer "+f.key)
			res, err := f.srv.Client().Do(req)
			if err != nil {
				t.Errorf("create %d: %v", i, err)
				return
			}
			defer res.Body.Close()
			statuses[i] = res.StatusCode
			bodies[i], _ = io.ReadAll(res.Body)
		})
	}
	wg.Wait()
	created := 0
	for i := range n {
		switch statuses[i] {
		case http.StatusCreated:
			created++
		default:
			checkError(t, response{status: statuses[i], header: http.Header{"Content-Type": {"application/json"}}, body: bodies[i]},
				apiErr{400, "validation_error", "max_proxy_records", "Maximum of 2 proxy records per organization.", ""})
		}
	}
	if got, want := created, 2; got != want {
		t.Errorf("%d creates succeeded, want %d", got, want)
	}
	recs, err := f.st.OrgRecords(f.org.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(recs), 2; got != want {
		t.Errorf("%d records stored, want %d", got, want)
	}
}

// TestConcurrentSameDomain creates the same domain in several
// organizations at once, several times over: exactly one create wins.
func TestConcurrentSameDomain(t *testing.T) {
	f := newAPIFixture(t)
	hundred := 100
	u := f.addUser(t, "u@x.test")
	key := f.addKey(t, u, []string{"*"})
	var orgs []store.Org
	for i := range 5 {
		org := f.addOrg(t, fmt.Sprintf("Org%d", i), &hundred)
		f.addMember(t, org, u, store.LevelOwner)
		orgs = append(orgs, org)
	}
	for round := range 10 {
		domain := fmt.Sprintf("same%d.example.com", round)
		statuses := make([]int, len(orgs))
		bodies := make([][]byte, len(orgs))
		var wg sync.WaitGroup
		for i, org := range orgs {
			wg.Go(func() {
				req, _ := http.NewRequest("POST", f.srv.URL+listPath(org.ID), strings.NewReader("domain="+domain))
				req.Header.Set("Authorization", "Bearer "+key)
				res, err := f.srv.Client().Do(req)
				if err != nil {
					t.Errorf("create in %s: %v", org.Name, err)
					return
				}
				defer res.Body.Close()
				statuses[i] = res.StatusCode
				bodies[i], _ = io.ReadAll(res.Body)
			})
		}
		wg.Wait()
		winners := 0
		for i := range orgs {
			if statuses[i] == http.StatusCreated {
				winners++
				continue
			}
			checkError(t, response{status: statuses[i], header: http.Header{"Content-Type": {"application/json"}}, body: bodies[i]},
				apiErr{400, "validation_error", "unique", "A proxy record with this domain already exists.", "domain"})
		}
		if got, want := winners, 1; got != want {
			t.Errorf("%s: %d creates succeeded, want %d", domain, got, want)
		}
		recs, err := f.st.Records(func(r *store.Record) bool { return r.Domain == domain })
		if err != nil {
			t.Fatal(err)
		}
		if got, want := len(recs), 1; got != want {
			t.Errorf("%s: %d records stored, want %d", domain, got, want)
		}
	}
}

// TestConcurrentRetries retries one erroring record from many clients at
// once: the transition is one store transaction, so exactly one retry
// wins and every other one finds the record already waiting.
func TestConcurrentRetries(t *testing.T) {
	f := newOwnerFixture(t, nil)
	rec := f.addRecord(t, f.org, "e.example.com", store.StatusErroring)
	const n = 20
	statuses := make([]int, n)
	bodies := make([][]byte, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			req, _ := http.NewRequest("POST", f.srv.URL+retryPath(f.org.ID, rec.ID), nil)
			req.Header.Set("Authorization", "Bearer "+f.key)
			res, err := f.srv.Client().Do(req)
			if err != nil {
				t.Errorf("retry %d: %v", i, err)
				return
			}
			defer res.Body.Close()
			statuses[i] = res.StatusCode
			bodies[i], _ = io.ReadAll(res.Body)
		})
	}
	wg.Wait()
	won := 0
	for i := range n {
		if statuses[i] == http.StatusOK {
			won++
			continue
		}
		checkError(t, response{status: statuses[i], header: http.Header{"Content-Type": {"application/json"}}, body: bodies[i]},
			apiErr{400, "validation_error", "invalid_state", "Cannot retry proxy in waiting state.", ""})
	}
	if got, want := won, 1; got != want {
		t.Errorf("%d retries succeeded, want %d", got, want)
	}
}

// TestHead checks that HEAD answers like GET, without a body.
func TestHead(t *testing.T) {
	f := newOwnerFixture(t, nil)
	rec := f.addRecord(t, f.org, "e.example.com", store.StatusWaiting)
	for _, path := range []string{orgPath(f.org.ID), listPath(f.org.ID), recPath(f.org.ID, rec.ID)} {
		get := f.send(t, request{method: "GET", path: path, bearer: f.key})
		head := f.send(t, request{method: "HEAD", path: path, bearer: f.key})
		if got, want := head.status, get.status; got != want {
			t.Errorf("HEAD %s: status %d, GET says %d", path, got, want)
		}
		if len(head.body) != 0 {
			t.Errorf("HEAD %s: body %q", path, head.body)
		}
		if got, want := head.header.Get("Content-Length"), get.header.Get("Content-Length"); got != want {
			t.Errorf("HEAD %s: Content-Length %q, GET says %q", path, got, want)
		}
	}
}
