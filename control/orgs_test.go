package control_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/store"
)

// orgPage is an answer of GET /api/organizations/.
type orgPage struct {
	Count    int     `json:"count"`
	Next     *string `json:"next"`
	Previous *string `json:"previous"`
	Results  []struct {
		ID, Name, Slug string
	} `json:"results"`
}

func (f *apiFixture) listOrgs(t *testing.T, key, query string) (response, orgPage) {
	t.Helper()
	res := f.send(t, request{method: "GET", path: "/api/organizations/" + query, bearer: key})
	var page orgPage
	if res.status == http.StatusOK {
		if err := json.Unmarshal(res.body, &page); err != nil {
			t.Fatalf("GET /api/organizations/%s: %v: %s", query, err, res.body)
		}
	}
	return res, page
}

func slugsOf(p orgPage) []string {
	var out []string
	for _, o := range p.Results {
		out = append(out, o.Slug)
	}
	return out
}

// TestListOrgs: an unscoped key lists every organization its user is in,
// in the order the user joined; a scoped key only those of its
// organizations its user is still in; nobody sees an organization it is
// not a member of.
func TestListOrgs(t *testing.T) {
	f := newAPIFixture(t)
	a, b, c := f.addOrg(t, "A", nil), f.addOrg(t, "B", nil), f.addOrg(t, "C", nil)
	stranger := f.addOrg(t, "Stranger", nil)
	u := f.addUser(t, "u@example.com")
	other := f.addUser(t, "other@example.com")
	f.addMember(t, stranger, other, store.LevelOwner)
	f.addMember(t, a, other, store.LevelOwner)
	for _, o := range []store.Org{c, a, b} {
		f.addMember(t, o, u, store.LevelMember)
	}
	all := f.addKey(t, u, []string{control.ScopeOrgRead})
	scoped := f.addKey(t, u, []string{control.ScopeOrgRead}, b.ID, a.ID, stranger.ID)

	res, page := f.listOrgs(t, all, "")
	if res.status != http.StatusOK || page.Count != 3 || !slices.Equal(slugsOf(page), []string{"c", "a", "b"}) || page.Next != nil || page.Previous != nil {
		t.Errorf("unscoped key: %d %s; want 3 organizations c, a, b in joining order, no next or previous", res.status, res.body)
	}
	_, page = f.listOrgs(t, scoped, "")
	if page.Count != 2 || !slices.Equal(slugsOf(page), []string{"a", "b"}) {
		t.Errorf("key scoped to b, a and an organization its user is not in: %v (count %d), want a, b", slugsOf(page), page.Count)
	}
	// The organization's own fields, as GET /api/organizations/{id}/
	// shows them.
	one := f.send(t, request{method: "GET", path: orgPath(a.ID), bearer: all})
	var want json.RawMessage
	json.Unmarshal(one.body, &want)
	var raw struct{ Results []json.RawMessage }
	json.Unmarshal(f.send(t, request{method: "GET", path: "/api/organizations/", bearer: scoped}).body, &raw)
	if len(raw.Results) == 0 || string(raw.Results[0]) != string(want) {
		t.Errorf("listed organization %s, want what GET of it answers: %s", raw.Results, want)
	}

	if _, err := f.st.RemoveMembership(a.ID, u.ID); err != nil {
		t.Fatal(err)
	}
	_, page = f.listOrgs(t, scoped, "")
	if !slices.Equal(slugsOf(page), []string{"b"}) {
		t.Errorf("scoped key after its user left a: %v, want b", slugsOf(page))
	}
	_, page = f.listOrgs(t, all, "")
	if !slices.Equal(slugsOf(page), []string{"c", "b"}) {
		t.Errorf("unscoped key after its user left a: %v, want c, b", slugsOf(page))
	}

	// A user with no membership has an empty list, not an error.
	lonely := f.addKey(t, f.addUser(t, "lonely@example.com"), []string{control.ScopeOrgRead})
	if res, page := f.listOrgs(t, lonely, ""); res.status != http.StatusOK || page.Count != 0 || page.Results == nil {
		t.Errorf("a user in no organization: %d %s, want 200 with count 0 and results []", res.status, res.body)
	}

	// Only the scope is checked: no key, a key without organization:read,
	// a method the route does not have.
	checkError(t, f.send(t, request{method: "GET", path: "/api/organizations/"}),
		apiErr{401, "authentication_error", "not_authenticated", "Authentication credentials were not provided.", ""})
	noScope := f.addKey(t, u, []string{"feature_flag:read"})
	checkError(t, f.send(t, request{method: "GET", path: "/api/organizations", bearer: noScope}),
		apiErr{403, "authentication_error", "permission_denied", "API key missing required scope 'organization:read'", ""})
	checkError(t, f.send(t, request{method: "POST", path: "/api/organizations/", bearer: all, body: `{"name":"x"}`}),
		apiErr{405, "invalid_request", "method_not_allowed", `Method "POST" not allowed.`, ""})
}

// TestListOrgsPagination follows PostHog's limit and offset: next and
// previous are absolute URLs (previous drops offset on reaching the
// start), following next from the first page visits every organization
// once, other query parameters are kept but never a personal_api_key, and
// a limit or offset outside its range is refused naming it.
func TestListOrgsPagination(t *testing.T) {
	f := newAPIFixture(t)
	u := f.addUser(t, "u@example.com")
	var want []string
	for _, name := range []string{"O1", "O2", "O3", "O4", "O5"} {
		o := f.addOrg(t, name, nil)
		f.addMember(t, o, u, store.LevelMember)
		want = append(want, o.Slug)
	}
	key := f.addKey(t, u, []string{control.ScopeOrgRead})
	base := f.srv.URL + "/api/organizations/"
	str := func(p *string) string {
		if p == nil {
			return "null"
		}
		return *p
	}
	for _, tt := range []struct {
		query, next, previous string
		slugs                 []string
	}{
		{"?limit=2", base + "?limit=2&offset=2", "null", want[0:2]},
		{"?limit=2&offset=2", base + "?limit=2&offset=4", base + "?limit=2", want[2:4]},
		{"?limit=2&offset=3", "null", base + "?limit=2&offset=1", want[3:5]},
		{"?limit=2&offset=4", "null", base + "?limit=2&offset=2", want[4:5]},
		{"?limit=2&offset=10", "null", base + "?limit=2&offset=8", nil},
		{"?offset=1", "null", base + "?limit=100", want[1:]},
		{"?limit=1000", "null", "null", want},
		{"?limit=2&offset=9223372036854775807", "null", base + "?limit=2&offset=9223372036854775805", nil},
		{"?limit=2&foo=bar", base + "?foo=bar&limit=2&offset=2", "null", want[0:2]},
	} {
		res, page := f.listOrgs(t, key, tt.query)
		if res.status != http.StatusOK {
			t.Errorf("%s: %d %s", tt.query, res.status, res.body)
			continue
		}
		if page.Count != 5 || !slices.Equal(slugsOf(page), tt.slugs) || str(page.Next) != tt.next || str(page.Previous) != tt.previous {
			t.Errorf("%s: count %d, %v, next %s, previous %s; want 5, %v, %s, %s",
				tt.query, page.Count, slugsOf(page), str(page.Next), str(page.Previous), tt.slugs, tt.next, tt.previous)
		}
	}

	// Following next visits every organization once; the key, given in
	// the query string, is not carried along.
	var seen []string
	next := base + "?limit=2&personal_api_key=" + url.QueryEscape(key)
	for range 10 {
		res := f.send(t, request{method: "GET", path: strings.TrimPrefix(next, f.srv.URL)})
		if res.status != http.StatusOK {
			if len(seen) == 0 {
				t.Fatalf("first page with the key in the query: %d %s", res.status, res.body)
			}
			// Following a link without the key: the key must be given
			// again.
			res = f.send(t, request{method: "GET", path: strings.TrimPrefix(next, f.srv.URL), bearer: key})
		}
		var page orgPage
		json.Unmarshal(res.body, &page)
		seen = append(seen, slugsOf(page)...)
		if strings.Contains(string(res.body), key) || strings.Contains(string(res.body), "personal_api_key") {
			t.Errorf("the page echoes the key: %s", res.body)
		}
		if page.Next == nil {
			break
		}
		next = *page.Next
	}
	if !slices.Equal(seen, want) {
		t.Errorf("following next from the first page visited %v, want %v", seen, want)
	}

	for _, tt := range []struct{ query, attr, detail string }{
		{"?limit=0", "limit", `limit must be an integer from 1 to 1000, not "0".`},
		{"?limit=1001", "limit", `limit must be an integer from 1 to 1000, not "1001".`},
		{"?limit=ten", "limit", `limit must be an integer from 1 to 1000, not "ten".`},
		{"?limit=", "limit", `limit must be an integer from 1 to 1000, not "".`},
		{"?offset=-1", "offset", `offset must be an integer 0 or more, not "-1".`},
		{"?offset=1.5", "offset", `offset must be an integer 0 or more, not "1.5".`},
		{"?offset=99999999999999999999", "offset", `offset must be an integer 0 or more, not "99999999999999999999".`},
	} {
		res, _ := f.listOrgs(t, key, tt.query)
		checkError(t, res, apiErr{400, "validation_error", "invalid_input", tt.detail, tt.attr})
	}
}

// TestSlugInPaths: every route kind answers the same through the slug as
// through the UUID, and a changed slug stops naming the organization.
func TestSlugInPaths(t *testing.T) {
	f := newOwnerFixture(t, nil)
	slug := f.org.Slug
	if slug != "acme" {
		t.Fatalf("the fixture's organization has slug %q, want acme", slug)
	}
	res := f.send(t, request{method: "POST", path: listPath(slug), bearer: f.key, body: jsonBody("e.acme.example.com")})
	if res.status != http.StatusCreated {
		t.Fatalf("create through the slug: %d %s", res.status, res.body)
	}
	rec := decodeRecord(t, res.body)
	if rec.TargetCNAME != wantTarget(f.org.ID, "e.acme.example.com") {
		t.Errorf("target_cname %s, want the one made from the organization's id", rec.TargetCNAME)
	}
	f.setStatus(t, rec.ID, store.StatusErroring)
	for _, c := range []struct {
		method, path string
		status       int
	}{
		{"GET", orgPath(slug), 200},
		{"GET", "/api/organizations/" + slug, 200},
		{"GET", listPath(slug), 200},
		{"GET", recPath(slug, rec.ID), 200},
		{"POST", retryPath(slug, rec.ID), 200},
		// This server has no diagnostics: the route answers 503 once it
		// has found the organization and checked the caller.
		{"POST", recPath(slug, rec.ID) + "diagnose/", 503},
		{"DELETE", recPath(slug, rec.ID), 204},
	} {
		if res := f.send(t, request{method: c.method, path: c.path, bearer: f.key}); res.status != c.status {
			t.Errorf("%s %s: %d %s, want %d", c.method, c.path, res.status, res.body, c.status)
		}
	}
	if _, err := f.st.UpdateOrg(f.org.ID, func(o *store.Org) { o.Slug = "acme-corp" }); err != nil {
		t.Fatal(err)
	}
	checkError(t, f.send(t, request{method: "GET", path: orgPath("acme"), bearer: f.key}),
		apiErr{404, "invalid_request", "not_found", "Organization not found.", ""})
	if res := f.send(t, request{method: "GET", path: orgPath("acme-corp"), bearer: f.key}); res.status != 200 {
		t.Errorf("the new slug: %d %s", res.status, res.body)
	}
}

// TestSlugCrossOrg plays a read-only member of one organization naming
// another by its slug: on every route the answer is byte for byte the one
// its UUID gets and the one a slug nobody has gets, 404 Organization not
// found., so a slug neither reaches nor reveals an organization. A key
// limited to one organization, whose user is in both, gets the same 403
// through the other's slug as through its UUID.
func TestSlugCrossOrg(t *testing.T) {
	f := newAPIFixture(t)
	a, b := f.addOrg(t, "Alpha", nil), f.addOrg(t, "Bravo", nil)
	reader, owner, both := f.addUser(t, "reader@alpha.test"), f.addUser(t, "owner@bravo.test"), f.addUser(t, "both@example.com")
	f.addMember(t, a, reader, store.LevelMember)
	f.addMember(t, b, owner, store.LevelOwner)
	f.addMember(t, a, both, store.LevelOwner)
	f.addMember(t, b, both, store.LevelOwner)
	readerKey := f.addKey(t, reader, []string{control.ScopeOrgRead})
	ownerKey := f.addKey(t, owner, []string{control.ScopeAll})
	limited := f.addKey(t, both, []string{control.ScopeAll}, a.ID)
	rec := f.addRecord(t, b, "e.bravo.example.com", store.StatusErroring)

	routes := func(ref string) []request {
		return []request{
			{method: "GET", path: orgPath(ref)},
			{method: "GET", path: listPath(ref)},
			{method: "POST", path: listPath(ref), body: jsonBody("x.bravo.example.com")},
			{method: "GET", path: recPath(ref, rec.ID)},
			{method: "POST", path: retryPath(ref, rec.ID)},
			{method: "POST", path: recPath(ref, rec.ID) + "diagnose/"},
			{method: "DELETE", path: recPath(ref, rec.ID)},
		}
	}
	refused := 0
	for i, bySlug := range routes(b.Slug) {
		for who, key := range map[string]string{"the reader of alpha": readerKey, "a key limited to alpha": limited} {
			bySlug.bearer = key
			byID, unknown := routes(b.ID)[i], routes("nobody-has-this")[i]
			byID.bearer, unknown.bearer = key, key
			got, viaID, viaUnknown := f.send(t, bySlug), f.send(t, byID), f.send(t, unknown)
			if got.status != viaID.status || string(got.body) != string(viaID.body) {
				t.Errorf("%s: %s %s: %d %s; through the UUID %d %s", who, bySlug.method, bySlug.path, got.status, got.body, viaID.status, viaID.body)
			}
			if key == readerKey {
				checkError(t, got, apiErr{404, "invalid_request", "not_found", "Organization not found.", ""})
				if string(got.body) != string(viaUnknown.body) {
					t.Errorf("%s: %s %s answers %s, a slug nobody has %s", who, bySlug.method, bySlug.path, got.body, viaUnknown.body)
				}
			} else {
				checkError(t, got, apiErr{403, "authentication_error", "permission_denied",
					"API key does not have access to the requested organization: ID " + b.ID + ".", ""})
			}
			refused++
		}
	}
	t.Logf("%d requests naming bravo by slug refused exactly as by UUID", refused)
	// Nothing of bravo's changed; its owner still reaches it by slug.
	if r, err := f.st.Record(rec.ID); err != nil || r.Status != store.StatusErroring {
		t.Errorf("bravo's record after the attempts: %+v, %v; want it untouched", r, err)
	}
	if res := f.send(t, request{method: "GET", path: listPath(b.Slug), bearer: ownerKey}); res.status != 200 {
		t.Errorf("bravo's owner through the slug: %d %s", res.status, res.body)
	}
}
