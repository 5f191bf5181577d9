package docs_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/docs"
	"github.com/edgeproxy/edgeproxy/internal/openapitest"
	"github.com/edgeproxy/edgeproxy/store"
)

// operation is one path and method of openapi.yaml, with what the document
// says about it.
type operation struct {
	// path is as written, e.g. /api/organizations/{organization_id}/.
	path   string
	method string // upper case
	// scope and level are x-required-scope and x-required-level; "" for
	// null. hasScope says whether x-required-scope was written at all.
	scope, level string
	hasScope     bool
	// codes are the response statuses listed; refs maps a status to the
	// first schema its response names ("" when none).
	codes []int
	refs  map[int]string
}

// doc is what the tests read from openapi.yaml with a line scan. A YAML
// library is not a dependency of this module, and the document is
// hand-written with two-space indentation, so the shape is fixed:
// path keys at 2 spaces under "paths:", methods at 4, operation fields at
// 6, response statuses at 8; schema names at 4 under "  schemas:", their
// properties at 8, a property's enum values at 12.
type doc struct {
	ops   []operation
	props map[string][]string // schema -> property names, in order
	enums map[string][]string // "Schema.property" -> enum values
}

var (
	pathLine     = regexp.MustCompile(`^  (/\S*):\s*$`)
	methodLine   = regexp.MustCompile(`^    (get|put|post|delete|options|head|patch|trace):\s*$`)
	xLine        = regexp.MustCompile(`^      (x-required-scope|x-required-level):\s*(.*?)\s*$`)
	codeLine     = regexp.MustCompile(`^        '(\d{3})':\s*$`)
	schemaRef    = regexp.MustCompile(`^\s+\$ref: '#/components/schemas/(\w+)'\s*$`)
	schemaLine   = regexp.MustCompile(`^    (\w+):\s*$`)
	propertyLine = regexp.MustCompile(`^        (\w+):\s*$`)
	enumItem     = regexp.MustCompile(`^            - (\S+)\s*$`)
)

func indent(line string) int { return len(line) - len(strings.TrimLeft(line, " ")) }

func readDoc(t *testing.T) doc {
	t.Helper()
	d := doc{props: map[string][]string{}, enums: map[string][]string{}}
	var (
		section     string // the top-level key we are in
		sub         string // the 2-space key under components
		path        string
		op          *operation
		inResponses bool
		code        int
		schema      string
		inProps     bool
		prop        string
		inEnum      bool
	)
	flush := func() {
		if op != nil {
			d.ops = append(d.ops, *op)
			op = nil
		}
	}
	sc := bufio.NewScanner(bytes.NewReader(docs.OpenAPI))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.Contains(line, "\t") {
			t.Errorf("openapi.yaml:%d: a tab; YAML indentation must be spaces", n)
		}
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		ind := indent(line)
		if ind == 0 {
			flush()
			section, _, _ = strings.Cut(trimmed, ":")
			continue
		}
		switch section {
		case "paths":
			if m := pathLine.FindStringSubmatch(line); m != nil {
				flush()
				path = m[1]
				continue
			}
			if ind <= 4 {
				flush()
				if m := methodLine.FindStringSubmatch(line); m != nil {
					op = &operation{path: path, method: strings.ToUpper(m[1]), refs: map[int]string{}}
				}
				continue
			}
			if op == nil {
				continue
			}
			if ind == 6 {
				inResponses = trimmed == "responses:"
				if m := xLine.FindStringSubmatch(line); m != nil {
					v := strings.Trim(m[2], `'"`)
					if v == "null" || v == "~" {
						v = ""
					}
					if m[1] == "x-required-scope" {
						op.scope, op.hasScope = v, true
					} else {
						op.level = v
					}
				}
				continue
			}
			if !inResponses {
				continue
			}
			if m := codeLine.FindStringSubmatch(line); m != nil {
				code, _ = strconv.Atoi(m[1])
				op.codes = append(op.codes, code)
				continue
			}
			if m := schemaRef.FindStringSubmatch(line); m != nil && ind > 8 && op.refs[code] == "" {
				op.refs[code] = m[1]
			}
		case "components":
			if ind == 2 {
				sub = strings.TrimSuffix(trimmed, ":")
				continue
			}
			if sub != "schemas" {
				continue
			}
			switch {
			case ind == 4:
				if m := schemaLine.FindStringSubmatch(line); m != nil {
					schema, inProps, prop, inEnum = m[1], false, "", false
				}
			case ind == 6:
				inProps, prop, inEnum = trimmed == "properties:", "", false
			case inProps && ind == 8:
				if m := propertyLine.FindStringSubmatch(line); m != nil {
					prop, inEnum = m[1], false
					d.props[schema] = append(d.props[schema], prop)
				}
			case inProps && ind == 10:
				inEnum = trimmed == "enum:"
			case inProps && inEnum && ind == 12:
				if m := enumItem.FindStringSubmatch(line); m != nil {
					key := schema + "." + prop
					d.enums[key] = append(d.enums[key], m[1])
				}
			}
		}
	}
	flush()
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(d.ops) == 0 {
		t.Fatal("openapi.yaml: no operations found under paths:")
	}
	return d
}

// pattern turns a path of the document into a pattern of control.Routes.
func pattern(path string) string {
	return strings.TrimSuffix(strings.ReplaceAll(path, "{organization_id}", "{org}"), "/")
}

// TestOpenAPIListsExactlyTheRoutes holds the document's paths and methods
// to the router's, so neither can gain or lose a route alone.
func TestOpenAPIListsExactlyTheRoutes(t *testing.T) {
	d := readDoc(t)
	got := map[string][]string{}
	for _, op := range d.ops {
		if !strings.HasSuffix(op.path, "/") {
			t.Errorf("%s: paths are written with a trailing slash", op.path)
		}
		if !op.hasScope {
			t.Errorf("%s %s: no x-required-scope", op.method, op.path)
		}
		p := pattern(op.path)
		if slices.Contains(got[p], op.method) {
			t.Errorf("%s %s: listed twice", op.method, op.path)
		}
		got[p] = append(got[p], op.method)
		slices.Sort(got[p])
	}
	want := control.Routes()
	want["/api/schema"] = []string{http.MethodGet}
	for _, p := range slices.Sorted(maps.Keys(want)) {
		if !slices.Equal(got[p], want[p]) {
			t.Errorf("%s: openapi.yaml lists %v, the server answers %v", p, got[p], want[p])
		}
	}
	for p, ms := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("%s: openapi.yaml lists %v, the server has no such route", p, ms)
		}
	}
}

// TestAPIMarkdownCoversRoutes checks that API.md has a section for every
// operation of the document, headed by its method and path.
func TestAPIMarkdownCoversRoutes(t *testing.T) {
	md, err := os.ReadFile("API.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, op := range readDoc(t).ops {
		if want := "`" + op.method + " " + op.path + "` — "; !bytes.Contains(md, []byte(want)) {
			t.Errorf("API.md has no section starting %q", want)
		}
	}
}

// TestOpenAPISchemas holds the document's record statuses to the store's,
// and each schema to the fields the server writes, in the order it writes
// them.
func TestOpenAPISchemas(t *testing.T) {
	d := readDoc(t)
	var want []string
	for _, s := range store.Statuses {
		want = append(want, string(s))
	}
	if got := d.enums["ProxyRecord.status"]; !slices.Equal(got, want) {
		t.Errorf("ProxyRecord.status enum = %v, the store's statuses are %v", got, want)
	}
	for schema, props := range map[string][]string{
		"ProxyRecord":               {"id", "domain", "target_cname", "ownership", "dcv_delegation", "status", "message", "created_at", "updated_at", "created_by"},
		"OwnershipRecord":           {"name", "type", "value"},
		"DCVDelegationRecord":       {"name", "type", "value"},
		"ProxyRecordList":           {"results", "max_proxy_records"},
		"Organization":              {"id", "name", "slug", "created_at", "max_proxy_records"},
		"PaginatedOrganizationList": {"count", "next", "previous", "results"},
		"Error":                     {"type", "code", "detail", "attr"},
		"DiagnoseReport":            {"ran_at", "summary", "checks"},
		"DiagnoseSummary":           {"status", "primary_issue", "next_action"},
		"DiagnoseCheck":             {"id", "name", "status", "detail", "remediation"},
		"DNSRecord":                 {"name", "type", "value"},
		"Webhook":                   {"id", "url", "events", "created_at", "disabled_at", "last_delivery"},
		"WebhookWithSecret":         {"id", "url", "events", "created_at", "disabled_at", "secret", "last_delivery"},
		"WebhookList":               {"results"},
		"WebhookPing":               {"event_id"},
	} {
		if got := d.props[schema]; !slices.Equal(got, props) {
			t.Errorf("%s properties = %v, want %v", schema, got, props)
		}
	}
	for key, values := range map[string][]string{
		"DiagnoseSummary.status": {"healthy", "warn", "fail"},
		"DiagnoseCheck.id":       {"cname", "ownership", "dcv_delegation", "caa", "http_challenge", "certificate", "live"},
		"DiagnoseCheck.status":   {"pass", "warn", "fail", "skip"},
	} {
		if got := d.enums[key]; !slices.Equal(got, values) {
			t.Errorf("%s enum = %v, want %v", key, got, values)
		}
	}
	// A check's remediation is written inline (a nullable object), so
	// the line scan does not see it; the parsed document does.
	rem := openapitest.Load(t).Doc().Components.Schemas["DiagnoseCheck"].Value.Properties["remediation"]
	if rem == nil {
		t.Fatal("DiagnoseCheck has no remediation property")
	}
	if got, want := slices.Sorted(maps.Keys(rem.Value.Properties)), []string{"records", "summary", "type"}; !slices.Equal(got, want) {
		t.Errorf("DiagnoseCheck.remediation properties = %v, want %v", got, want)
	}
	var types []string
	if typ := rem.Value.Properties["type"]; typ != nil {
		for _, v := range typ.Value.Enum {
			types = append(types, fmt.Sprint(v))
		}
	}
	if want := []string{"dns", "config", "wait", "retry"}; !slices.Equal(types, want) {
		t.Errorf("DiagnoseCheck.remediation.type enum = %v, want %v", types, want)
	}
	if !rem.Value.Nullable {
		t.Error("DiagnoseCheck.remediation is not nullable; the server sends null when there is nothing to do")
	}
}

// fixture is a management API over a real store, with one organization
// and keys of an owner, a plain member and a read-only owner key; and a
// second organization the fixture's users are not members of. Every
// answer the API gives is validated against the document (check).
type fixture struct {
	st  *store.Store
	srv *httptest.Server
	// check validates every answer srv gives against the document.
	check *openapitest.Checker
	org   store.Org
	// other is an organization none of the keys' users belong to.
	other store.Org
	// record is the id of the organization's one record; see reset.
	record, webhook            string
	ownerKey, memberKey, roKey string
	// otherKey belongs to a user who owns other and is also an owner of
	// org, but the key is limited to other.
	otherKey string
}

// fixtureOptions changes what newFixture builds.
type fixtureOptions struct {
	// noDiagnoser builds the API without diagnostics.
	noDiagnoser bool
}

func newFixture(t *testing.T, opts fixtureOptions) *fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{st: st, check: openapitest.Load(t)}
	if f.org, err = st.CreateOrg("Acme", nil); err != nil {
		t.Fatal(err)
	}
	if f.other, err = st.CreateOrg("Other", nil); err != nil {
		t.Fatal(err)
	}
	f.ownerKey = f.user(t, "owner@example.com", store.LevelOwner, control.ScopeAll, nil)
	f.memberKey = f.user(t, "member@example.com", store.LevelMember, control.ScopeAll, nil)
	f.roKey = f.user(t, "reader@example.com", store.LevelOwner, control.ScopeOrgRead, nil)
	f.otherKey = f.user(t, "other@example.com", store.LevelOwner, control.ScopeAll, []string{f.other.ID})
	cfg := control.Config{
		TargetCNAMEBase: "proxy.example.net",
		MaxProxyRecords: 2,
		Schema:          docs.OpenAPI,
	}
	if !opts.noDiagnoser {
		// A Diagnoser over a real DNS server with no records and a
		// certificate manager that holds none: every diagnosis answers
		// 200 without leaving loopback.
		verifier, err := dnsverify.New([]string{dnstest.Start(t).Addr()}, 500*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		cm, err := certs.New(st, certs.Config{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cm.Close() })
		cfg.Diagnoser = &diagnose.Diagnoser{DNS: verifier, Certs: cm, Probes: &diagnose.Probes{}}
	}
	f.srv = httptest.NewServer(f.check.Handler(t, control.NewAPI(st, cfg)))
	t.Cleanup(f.srv.Close)
	return f
}

// user adds a user at level in the organization and returns the value of a
// new key of theirs with scope, limited to orgs when not nil. A key
// limited to the other organization makes its user an owner of it too.
func (f *fixture) user(t *testing.T, email string, level store.Level, scope string, orgs []string) string {
	t.Helper()
	u, err := f.st.CreateUser(email)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.SetMembership(f.org.ID, u.ID, level); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(orgs, f.other.ID) {
		if _, err := f.st.SetMembership(f.other.ID, u.ID, store.LevelOwner); err != nil {
			t.Fatal(err)
		}
	}
	key, value := control.NewKey(u.ID, "test", []string{scope}, orgs)
	if _, err := f.st.CreateKey(key); err != nil {
		t.Fatal(err)
	}
	return value
}

// reset leaves the organization with exactly one record, in erroring, so
// that every operation on it can succeed: read, delete (at once) and
// retry; and one slot below the limit of 2, so a create can too.
func (f *fixture) reset(t *testing.T) {
	t.Helper()
	recs, err := f.st.OrgRecords(f.org.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		if _, _, err := f.st.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
			t.Fatal(err)
		}
	}
	domain := "r.example.com"
	rec, err := f.st.CreateRecord(store.Record{
		OrgID:       f.org.ID,
		Domain:      domain,
		TargetCNAME: control.TargetCNAME(f.org.ID, domain, "proxy.example.net"),
		Status:      store.StatusWaiting,
	}, 2)
	if err != nil {
		t.Fatal(err)
	}
	msg := "the CA refused the order"
	if _, _, err := f.st.Mutate(rec.ID, func(r *store.Record) (store.Op, error) {
		r.Status, r.Message = store.StatusErroring, &msg
		return store.OpSave, nil
	}); err != nil {
		t.Fatal(err)
	}
	f.record = rec.ID

	// And exactly one webhook, so that every webhook operation can
	// succeed, a create included (the limit is 5).
	hooks, err := f.st.OrgWebhooks(f.org.ID)
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hooks {
		if err := f.st.DeleteWebhook(f.org.ID, h.ID); err != nil {
			t.Fatal(err)
		}
	}
	hook, err := f.st.CreateWebhook(store.Webhook{OrgID: f.org.ID, URL: "https://93.184.215.14/hooks",
		Events: store.EventTypes, Secret: "whsec_c2VjcmV0"}, control.MaxWebhooks)
	if err != nil {
		t.Fatal(err)
	}
	f.webhook = hook.ID
}

// idFor is the {id} of the document's path: the fixture's record for the
// proxy record routes. A route whose {id} names something else needs its
// own fixture here; until it has one the test says so and fails, so a new
// route is never left unchecked.
func (f *fixture) idFor(t *testing.T, path string) string {
	t.Helper()
	switch {
	case !strings.Contains(path, "{id}"):
		return ""
	case strings.Contains(path, "/proxy_records/{id}/"):
		return f.record
	case strings.Contains(path, "/webhooks/{id}/"):
		return f.webhook
	}
	t.Fatalf("%s: no fixture gives this path an {id}; add one to (*fixture).idFor", path)
	return ""
}

// url fills the document's path with the organization (orgRef) and id.
func (f *fixture) url(path, orgRef, id string) string {
	path = strings.ReplaceAll(path, "{organization_id}", orgRef)
	path = strings.ReplaceAll(path, "{id}", id)
	return f.srv.URL + path
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

// Where a request carries its key.
const (
	viaHeader = "header"
	viaBody   = "body"
	viaQuery  = "query"
)

// do sends method to target with key (if not empty) carried via where,
// and fields as a JSON body (none when nil and the key is not in it).
func (f *fixture) do(t *testing.T, method, target, key, via string, fields map[string]string) answer {
	t.Helper()
	if key != "" && via == viaBody {
		fields = maps.Clone(fields)
		if fields == nil {
			fields = map[string]string{}
		}
		fields["personal_api_key"] = key
	}
	var body []byte
	if fields != nil {
		var err error
		if body, err = json.Marshal(fields); err != nil {
			t.Fatal(err)
		}
	}
	return f.send(t, method, target, key, via, body)
}

// send sends method to target with key (if not empty) in the header or
// the query string, and body (if not nil) as JSON.
func (f *fixture) send(t *testing.T, method, target, key, via string, body []byte) answer {
	t.Helper()
	if key != "" && via == viaQuery {
		target += "?personal_api_key=" + key
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequest(method, target, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if key != "" && via == viaHeader {
		req.Header.Set("Authorization", "Bearer "+key)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", method, target, err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

// bodies are the request bodies operations need to succeed, by method and
// document path.
var bodies = map[string]map[string]string{
	"POST /api/organizations/{organization_id}/proxy_records/": {"domain": "e.example.com"},
	"POST /api/organizations/{organization_id}/webhooks/":      {"url": "https://93.184.215.14/hooks"},
}

// success is the one 2xx status the document lists for op.
func success(t *testing.T, op operation) int {
	t.Helper()
	var ok []int
	for _, c := range op.codes {
		if c/100 == 2 {
			ok = append(ok, c)
		}
	}
	if len(ok) != 1 {
		t.Fatalf("%s %s: %d success statuses listed (%v), want 1", op.method, op.path, len(ok), op.codes)
	}
	return ok[0]
}

// responseSchema is the JSON schema the document gives op's answer with
// status, or nil when that answer has no body.
func (f *fixture) responseSchema(t *testing.T, path, method string, status int) *openapi3.SchemaRef {
	t.Helper()
	op := f.check.Doc().Paths.Value(path).GetOperation(method)
	resp := op.Responses.Status(status)
	if resp == nil {
		t.Fatalf("%s %s: no %d response in the document", method, path, status)
	}
	if mt := resp.Value.Content.Get("application/json"); mt != nil {
		return mt.Schema
	}
	return nil
}

// checkShape says whether body (JSON) has exactly the properties the
// document's schema gives it, at every depth: a field the server writes
// and the document leaves out, or one the document lists and the server
// never writes, is an error even where the schema would let it pass.
func checkShape(t *testing.T, what string, body []byte, schema *openapi3.SchemaRef) {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Errorf("%s: answer is not JSON: %v: %s", what, err, body)
		return
	}
	shape(t, what, v, schema.Value)
}

func shape(t *testing.T, what string, v any, s *openapi3.Schema) {
	t.Helper()
	switch v := v.(type) {
	case map[string]any:
		if len(s.Properties) == 0 {
			return
		}
		want := slices.Sorted(maps.Keys(s.Properties))
		if got := slices.Sorted(maps.Keys(v)); !slices.Equal(got, want) {
			t.Errorf("%s: answer has fields %v; the document has %v", what, got, want)
		}
		for k, sub := range s.Properties {
			if fv, ok := v[k]; ok && fv != nil {
				shape(t, what+"."+k, fv, sub.Value)
			}
		}
	case []any:
		if s.Items == nil {
			return
		}
		for _, item := range v {
			shape(t, what+"[]", item, s.Items.Value)
		}
	}
}

// checkError says whether a answers status with an Error body of code and
// detail.
func (f *fixture) checkError(t *testing.T, what string, a answer, status int, code, detail string) {
	t.Helper()
	if a.status != status {
		t.Errorf("%s: status %d, want %d: %s", what, a.status, status, a.body)
		return
	}
	checkShape(t, what, a.body, f.check.Doc().Components.Schemas["Error"])
	var e struct{ Code, Detail string }
	json.Unmarshal(a.body, &e)
	if e.Code != code || e.Detail != detail {
		t.Errorf("%s: %s %q, want %s %q", what, e.Code, e.Detail, code, detail)
	}
}

// routeOps pairs every method and pattern of the server's route table
// (control.Routes) with the document's path for it; a route the
// document lacks fails the test.
func routeOps(t *testing.T, d doc) []operation {
	t.Helper()
	byPattern := map[string]string{}
	for _, op := range d.ops {
		byPattern[pattern(op.path)] = op.path
	}
	var ops []operation
	routes := control.Routes()
	for _, p := range slices.Sorted(maps.Keys(routes)) {
		for _, m := range routes[p] {
			path, ok := byPattern[p]
			if !ok {
				t.Errorf("%s %s: the server's route is not in openapi.yaml", m, p)
				continue
			}
			i := slices.IndexFunc(d.ops, func(op operation) bool { return op.path == path && op.method == m })
			if i < 0 {
				t.Errorf("%s %s: the server answers it, openapi.yaml does not list it", m, path)
				continue
			}
			ops = append(ops, d.ops[i])
		}
	}
	return ops
}

// TestOpenAPIAgainstServer sends a real request for every route of the
// server's route table, every way a key and an organization can be
// given, and every method the document leaves out, to the API over a real
// store; every answer is validated against the document.
func TestOpenAPIAgainstServer(t *testing.T) {
	d := readDoc(t)
	f := newFixture(t, fixtureOptions{})
	ops := routeOps(t, d)

	listed := map[string][]string{}
	for _, op := range d.ops {
		listed[op.path] = append(listed[op.path], op.method)
	}

	t.Run("schema", func(t *testing.T) {
		a := f.do(t, http.MethodGet, f.srv.URL+"/api/schema/", "", "", nil)
		if a.status != http.StatusOK {
			t.Fatalf("GET /api/schema/ without a key: status %d: %s", a.status, a.body)
		}
		if !bytes.Equal(a.body, docs.OpenAPI) {
			t.Errorf("GET /api/schema/ answers %d bytes that differ from docs.OpenAPI (%d bytes)", len(a.body), len(docs.OpenAPI))
		}
		if ct := a.header.Get("Content-Type"); ct != "application/yaml" {
			t.Errorf("GET /api/schema/: Content-Type %q, want application/yaml", ct)
		}
	})

	for _, op := range ops {
		ok := success(t, op)
		fields := bodies[op.method+" "+op.path]
		name := op.method + " " + op.path
		t.Run(name, func(t *testing.T) {
			// Every documented operation succeeds, whichever way the key
			// comes and whichever way the organization is named.
			type way struct{ via, orgRef string }
			ways := []way{{viaHeader, f.org.ID}, {viaQuery, f.org.ID}, {viaHeader, "@current"}, {viaHeader, f.org.Slug}}
			if op.method == http.MethodPost {
				ways = append(ways, way{viaBody, f.org.ID})
			}
			for _, w := range ways {
				f.reset(t)
				what := fmt.Sprintf("%s (key in %s, organization %s)", name, w.via, w.orgRef)
				a := f.do(t, op.method, f.url(op.path, w.orgRef, f.idFor(t, op.path)), f.ownerKey, w.via, fields)
				if a.status == http.StatusNotFound || a.status == http.StatusMethodNotAllowed {
					t.Errorf("%s: status %d: the server does not answer this route: %s", what, a.status, a.body)
					continue
				}
				if !slices.Contains(op.codes, a.status) {
					t.Errorf("%s: status %d is not among the documented %v: %s", what, a.status, op.codes, a.body)
				}
				if a.status != ok {
					t.Errorf("%s: status %d, want %d: %s", what, a.status, ok, a.body)
					continue
				}
				if schema := f.responseSchema(t, op.path, op.method, ok); schema != nil {
					checkShape(t, what, a.body, schema)
				} else if len(a.body) != 0 {
					t.Errorf("%s: %d documents no body, got %q", what, ok, a.body)
				}
			}

			// x-required-scope: a read-only key may do exactly the
			// organization:read operations.
			f.reset(t)
			a := f.do(t, op.method, f.url(op.path, f.org.ID, f.idFor(t, op.path)), f.roKey, viaHeader, fields)
			switch op.scope {
			case control.ScopeOrgRead:
				if a.status != ok {
					t.Errorf("%s with an organization:read key: status %d, want %d: %s", name, a.status, ok, a.body)
				}
			case control.ScopeOrgWrite:
				f.checkError(t, name+" with an organization:read key", a, http.StatusForbidden,
					"permission_denied", "API key missing required scope 'organization:write'")
			default:
				t.Errorf("%s: x-required-scope %q is not a scope the API checks", name, op.scope)
			}

			// x-required-level: a plain member may do exactly the member
			// operations.
			f.reset(t)
			a = f.do(t, op.method, f.url(op.path, f.org.ID, f.idFor(t, op.path)), f.memberKey, viaHeader, fields)
			switch op.level {
			case "member":
				if a.status != ok {
					t.Errorf("%s as a member: status %d, want %d: %s", name, a.status, ok, a.body)
				}
			case "admin":
				f.checkError(t, name+" as a member", a, http.StatusForbidden,
					"permission_denied", "Your organization access level is insufficient.")
			default:
				t.Errorf("%s: x-required-level %q is neither member nor admin", name, op.level)
			}
		})
	}

	// Every method the document does not list at a path answers 405, with
	// the path's methods in Allow; with and without the trailing slash.
	f.reset(t)
	for _, path := range slices.Sorted(maps.Keys(listed)) {
		for _, m := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
			if slices.Contains(listed[path], m) {
				continue
			}
			u := f.url(path, f.org.ID, f.idFor(t, path))
			for _, target := range []string{u, strings.TrimSuffix(u, "/")} {
				what := m + " " + strings.TrimPrefix(target, f.srv.URL)
				a := f.do(t, m, target, f.ownerKey, viaHeader, nil)
				f.checkError(t, what, a, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("Method %q not allowed.", m))
				var allow []string
				for _, s := range strings.Split(a.header.Get("Allow"), ",") {
					if s = strings.TrimSpace(s); s != "" && s != http.MethodHead {
						allow = append(allow, s)
					}
				}
				slices.Sort(allow)
				if want := slices.Sorted(slices.Values(listed[path])); !slices.Equal(allow, want) {
					t.Errorf("%s: Allow %q, want the documented %v", what, a.header.Get("Allow"), want)
				}
			}
		}
	}

	// The route table, not the document, says what must have been
	// covered: every route the server has gave a validated success.
	for _, op := range ops {
		if !f.check.Succeeded(op.method, op.path) {
			t.Errorf("%s %s: no answer of the server's validated as a success", op.method, op.path)
		}
	}
}

// TestOpenAPIErrorAnswers provokes, on every route of the server's route
// table, each refusal that applies to it, and holds the answer to the
// document: its status must be one the operation lists, and its body the
// documented Error. The fixture's checker validates each answer; this test
// checks the codes.
func TestOpenAPIErrorAnswers(t *testing.T) {
	d := readDoc(t)
	f := newFixture(t, fixtureOptions{})
	unknown := store.NewID()
	big := append(append([]byte(`{"domain":"e.example.com","pad":"`), bytes.Repeat([]byte("x"), 1<<20)...), `"}`...)
	for _, op := range routeOps(t, d) {
		name := op.method + " " + op.path
		t.Run(name, func(t *testing.T) {
			f.reset(t)
			id := f.idFor(t, op.path)
			u := f.url(op.path, f.org.ID, id)
			fields := bodies[op.method+" "+op.path]

			f.checkError(t, "no key", f.do(t, op.method, u, "", "", fields),
				http.StatusUnauthorized, "not_authenticated", "Authentication credentials were not provided.")
			for via, where := range map[string]string{viaHeader: "Authorization header", viaQuery: "query string"} {
				f.checkError(t, "a bad key in the "+via, f.do(t, op.method, u, "phx_notakey", via, fields),
					http.StatusUnauthorized, "authentication_failed", "Personal API key found in request "+where+" is invalid.")
			}
			if op.method == http.MethodPost {
				f.checkError(t, "a bad key in the body", f.do(t, op.method, u, "phx_notakey", viaBody, fields),
					http.StatusUnauthorized, "authentication_failed", "Personal API key found in request body is invalid.")
			}
			f.checkError(t, "a body over 1 MiB", f.send(t, op.method, u, f.ownerKey, viaHeader, big),
				http.StatusRequestEntityTooLarge, "request_too_large", "Request body exceeds the limit of 1048576 bytes (1 MiB).")

			if strings.Contains(op.path, "{organization_id}") {
				for what, ref := range map[string]string{
					"an unknown organization":            unknown,
					"an organization the user is not in": f.other.ID,
					"a malformed organization":           "not-a-uuid!",
				} {
					f.checkError(t, what, f.do(t, op.method, f.url(op.path, ref, id), f.ownerKey, viaHeader, fields),
						http.StatusNotFound, "not_found", "Organization not found.")
				}
				f.checkError(t, "a key limited to another organization", f.do(t, op.method, u, f.otherKey, viaHeader, fields),
					http.StatusForbidden, "permission_denied", "API key does not have access to the requested organization: ID "+f.org.ID+".")
			}
			if id != "" {
				f.checkError(t, "an unknown id", f.do(t, op.method, f.url(op.path, f.org.ID, unknown), f.ownerKey, viaHeader, fields),
					http.StatusNotFound, "not_found", "Not found.")
			}
		})
	}

	orgs := "/api/organizations/"
	t.Run("GET "+orgs+" pages", func(t *testing.T) {
		// A user in both organizations, so that a page of one has a next
		// and a previous URL to validate.
		u, err := f.st.CreateUser("two@example.com")
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range []store.Org{f.org, f.other} {
			if _, err := f.st.SetMembership(o.ID, u.ID, store.LevelMember); err != nil {
				t.Fatal(err)
			}
		}
		key, value := control.NewKey(u.ID, "test", []string{control.ScopeOrgRead}, nil)
		if _, err := f.st.CreateKey(key); err != nil {
			t.Fatal(err)
		}
		for _, q := range []string{"?limit=1", "?limit=1&offset=1"} {
			a := f.do(t, http.MethodGet, f.srv.URL+orgs+q, value, viaHeader, nil)
			var page struct{ Next, Previous *string }
			json.Unmarshal(a.body, &page)
			if a.status != http.StatusOK || (page.Next == nil) == (page.Previous == nil) {
				t.Errorf("GET %s%s: %d %s, want one of next and previous set", orgs, q, a.status, a.body)
			}
		}
		for _, q := range []string{"?limit=0", "?offset=x"} {
			if a := f.do(t, http.MethodGet, f.srv.URL+orgs+q, value, viaHeader, nil); a.status != http.StatusBadRequest {
				t.Errorf("GET %s%s: %d %s, want 400", orgs, q, a.status, a.body)
			}
		}
	})

	t.Run("unknown path", func(t *testing.T) {
		f.checkError(t, "GET /api/nothing/", f.do(t, http.MethodGet, f.srv.URL+"/api/nothing/", f.ownerKey, viaHeader, nil),
			http.StatusNotFound, "not_found", "Not found.")
	})

	records := "/api/organizations/{organization_id}/proxy_records/"
	create := func(t *testing.T, body string) answer {
		return f.send(t, http.MethodPost, f.url(records, f.org.ID, ""), f.ownerKey, viaHeader, []byte(body))
	}
	t.Run("POST "+records, func(t *testing.T) {
		f.reset(t)
		f.checkError(t, "a body that does not parse", create(t, `{"domain":`), http.StatusBadRequest,
			"parse_error", "JSON parse error - unexpected end of JSON input.")
		f.checkError(t, "no domain", create(t, `{}`), http.StatusBadRequest, "required", "This field is required.")
		f.checkError(t, "a domain that is not a string", create(t, `{"domain":1}`), http.StatusBadRequest,
			"invalid_input", "Not a valid string.")
		a := create(t, `{"domain":"co.uk"}`)
		if a.status != http.StatusBadRequest || !bytes.Contains(a.body, []byte(`"invalid_input"`)) {
			t.Errorf("a public suffix: %d %s, want 400 invalid_input", a.status, a.body)
		}
		f.checkError(t, "a domain another record holds", create(t, `{"domain":"r.example.com"}`), http.StatusBadRequest,
			"unique", "A proxy record with this domain already exists.")
		if a := create(t, `{"domain":"second.example.com"}`); a.status != http.StatusCreated {
			t.Fatalf("the second record: %d %s", a.status, a.body)
		}
		f.checkError(t, "past the limit", create(t, `{"domain":"third.example.com"}`), http.StatusBadRequest,
			"max_proxy_records", "Maximum of 2 proxy records per organization.")
	})

	retry := "/api/organizations/{organization_id}/proxy_records/{id}/retry/"
	t.Run("POST "+retry, func(t *testing.T) {
		f.reset(t)
		if a := f.do(t, http.MethodPost, f.url(retry, f.org.ID, f.record), f.ownerKey, viaHeader, nil); a.status != http.StatusOK {
			t.Fatalf("the first retry: %d %s", a.status, a.body)
		}
		f.checkError(t, "a retry of a waiting record", f.do(t, http.MethodPost, f.url(retry, f.org.ID, f.record), f.ownerKey, viaHeader, nil),
			http.StatusBadRequest, "invalid_state", "Cannot retry proxy in waiting state.")
	})

	diagnose := "/api/organizations/{organization_id}/proxy_records/{id}/diagnose/"
	t.Run("POST "+diagnose, func(t *testing.T) {
		f.reset(t)
		// The organization's diagnoses per minute run out; the next is
		// refused.
		var last answer
		for range 11 {
			if last = f.do(t, http.MethodPost, f.url(diagnose, f.org.ID, f.record), f.ownerKey, viaHeader, nil); last.status != http.StatusOK {
				break
			}
		}
		if last.status != http.StatusTooManyRequests || last.header.Get("Retry-After") == "" {
			t.Errorf("the eleventh diagnosis in a minute: %d (Retry-After %q) %s, want 429 with Retry-After", last.status, last.header.Get("Retry-After"), last.body)
		}
		nd := newFixture(t, fixtureOptions{noDiagnoser: true})
		nd.reset(t)
		nd.checkError(t, "a server without diagnostics", nd.do(t, http.MethodPost, nd.url(diagnose, nd.org.ID, nd.record), nd.ownerKey, viaHeader, nil),
			http.StatusServiceUnavailable, "unavailable", "Diagnostics are not available on this server.")
	})

	// Last, as it locks this address out of unauthenticated requests: the
	// failed-authentication limit, on every route.
	t.Run("throttled", func(t *testing.T) {
		ops := routeOps(t, d)
		var last answer
		for range 1000 {
			if last = f.do(t, http.MethodGet, f.url(ops[0].path, f.org.ID, f.idFor(t, ops[0].path)), "phx_notakey", viaHeader, nil); last.status == http.StatusTooManyRequests {
				break
			}
		}
		if last.status != http.StatusTooManyRequests {
			t.Fatalf("1000 bad keys from one address: the last got %d, want 429", last.status)
		}
		for _, op := range ops {
			a := f.do(t, op.method, f.url(op.path, f.org.ID, f.idFor(t, op.path)), "phx_notakey", viaHeader, bodies[op.method+" "+op.path])
			if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") == "" {
				t.Errorf("%s %s with a bad key past the limit: %d (Retry-After %q), want 429 with Retry-After", op.method, op.path, a.status, a.header.Get("Retry-After"))
			}
		}
	})
}
