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

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/docs"
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

// TestOpenAPISchemas holds the document's record statuses to the store's.
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
		"ProxyRecord":         {"id", "domain", "target_cname", "status", "message", "created_at", "updated_at", "created_by"},
		"ProxyRecordList":     {"results", "max_proxy_records"},
		"Organization":        {"id", "name", "created_at", "max_proxy_records"},
		"Error":               {"type", "code", "detail", "attr"},
		"DiagnoseReport":      {"ran_at", "summary", "checks"},
		"DiagnoseSummary":     {"status", "primary_issue", "next_action"},
		"DiagnoseCheck":       {"id", "name", "status", "detail", "remediation"},
		"DiagnoseRemediation": {"type", "summary", "records"},
		"DNSRecord":           {"name", "type", "value"},
		"Webhook":             {"id", "url", "events", "created_at", "disabled_at", "last_delivery"},
		"WebhookWithSecret":   {"id", "url", "events", "created_at", "disabled_at", "secret", "last_delivery"},
		"WebhookList":         {"results"},
		"WebhookPing":         {"event_id"},
	} {
		if got := d.props[schema]; !slices.Equal(got, props) {
			t.Errorf("%s properties = %v, want %v", schema, got, props)
		}
	}
	for key, values := range map[string][]string{
		"DiagnoseSummary.status":   {"healthy", "warn", "fail"},
		"DiagnoseCheck.id":         {"cname", "caa", "http_challenge", "certificate", "live"},
		"DiagnoseCheck.status":     {"pass", "warn", "fail", "skip"},
		"DiagnoseRemediation.type": {"dns", "config", "wait", "retry"},
	} {
		if got := d.enums[key]; !slices.Equal(got, values) {
			t.Errorf("%s enum = %v, want %v", key, got, values)
		}
	}
}

// fixture is a management API over a real store, with one organization
// and keys of an owner, a plain member and a read-only owner key.
type fixture struct {
	st  *store.Store
	srv *httptest.Server
	org store.Org
	// record and webhook are the ids of the organization's one record and
	// one webhook; see reset.
	record, webhook            string
	ownerKey, memberKey, roKey string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f := &fixture{st: st}
	if f.org, err = st.CreateOrg("Acme", nil); err != nil {
		t.Fatal(err)
	}
	f.ownerKey = f.user(t, "owner@example.com", store.LevelOwner, control.ScopeAll)
	f.memberKey = f.user(t, "member@example.com", store.LevelMember, control.ScopeAll)
	f.roKey = f.user(t, "reader@example.com", store.LevelOwner, control.ScopeOrgRead)
	// A Diagnoser over a real DNS server with no records and a
	// certificate manager that holds none: every diagnosis answers 200
	// without leaving loopback.
	verifier, err := dnsverify.New([]string{dnstest.Start(t).Addr()}, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cm, err := certs.New(st, certs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cm.Close() })
	f.srv = httptest.NewServer(control.NewAPI(st, control.Config{
		TargetCNAMEBase: "proxy.example.net",
		MaxProxyRecords: 2,
		Schema:          docs.OpenAPI,
		Diagnoser:       &diagnose.Diagnoser{DNS: verifier, Certs: cm, Probes: &diagnose.Probes{}},
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// user adds a user at level in the organization and returns the value of a
// new key of theirs with scope.
func (f *fixture) user(t *testing.T, email string, level store.Level, scope string) string {
	t.Helper()
	u, err := f.st.CreateUser(email)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.st.SetMembership(f.org.ID, u.ID, level); err != nil {
		t.Fatal(err)
	}
	key, value := control.NewKey(u.ID, "test", []string{scope}, nil)
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

// url fills the document's path with the organization (orgRef) and the
// record or the webhook.
func (f *fixture) url(path, orgRef string) string {
	path = strings.ReplaceAll(path, "{organization_id}", orgRef)
	path = strings.ReplaceAll(path, "/webhooks/{id}/", "/webhooks/"+f.webhook+"/")
	path = strings.ReplaceAll(path, "{id}", f.record)
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
	if key != "" && via == viaQuery {
		target += "?personal_api_key=" + key
	}
	var body io.Reader
	if fields != nil {
		b, err := json.Marshal(fields)
		if err != nil {
			t.Fatal(err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, target, body)
	if err != nil {
		t.Fatal(err)
	}
	if fields != nil {
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

// checkShape says whether body (JSON) has exactly the properties the
// document gives schema.
func checkShape(t *testing.T, d doc, what string, body []byte, schema string) {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil {
		t.Errorf("%s: answer is not a JSON object: %v: %s", what, err, body)
		return
	}
	want := slices.Sorted(slices.Values(d.props[schema]))
	if got := slices.Sorted(maps.Keys(obj)); !slices.Equal(got, want) {
		t.Errorf("%s: answer has fields %v; the document's %s has %v", what, got, schema, want)
	}
	// Nested objects are held to their own schemas.
	switch schema {
	case "ProxyRecordList":
		var list struct{ Results []json.RawMessage }
		json.Unmarshal(body, &list)
		for _, r := range list.Results {
			checkShape(t, d, what+" results[]", r, "ProxyRecord")
		}
	case "WebhookList":
		var list struct{ Results []json.RawMessage }
		json.Unmarshal(body, &list)
		if len(list.Results) == 0 {
			t.Errorf("%s: no webhooks listed", what)
		}
		for _, r := range list.Results {
			checkShape(t, d, what+" results[]", r, "Webhook")
		}
	case "DiagnoseReport":
		checkShape(t, d, what+" summary", obj["summary"], "DiagnoseSummary")
		var checks []json.RawMessage
		json.Unmarshal(obj["checks"], &checks)
		if len(checks) == 0 {
			t.Errorf("%s: no checks", what)
		}
		for _, c := range checks {
			checkShape(t, d, what+" checks[]", c, "DiagnoseCheck")
		}
	case "DiagnoseCheck":
		if rem := obj["remediation"]; string(rem) != "null" {
			checkShape(t, d, what+" remediation", rem, "DiagnoseRemediation")
		}
	case "DiagnoseRemediation":
		var records []json.RawMessage
		json.Unmarshal(obj["records"], &records)
		for _, r := range records {
			checkShape(t, d, what+" records[]", r, "DNSRecord")
		}
	}
}

// checkError says whether a answers status with an Error body of code and
// detail.
func checkError(t *testing.T, d doc, what string, a answer, status int, code, detail string) {
	t.Helper()
	if a.status != status {
		t.Errorf("%s: status %d, want %d: %s", what, a.status, status, a.body)
		return
	}
	checkShape(t, d, what, a.body, "Error")
	var e struct{ Code, Detail string }
	json.Unmarshal(a.body, &e)
	if e.Code != code || e.Detail != detail {
		t.Errorf("%s: %s %q, want %s %q", what, e.Code, e.Detail, code, detail)
	}
}

// TestOpenAPIAgainstServer sends a real request for every operation of the
// document and every method it leaves out, to the API over a real store.
func TestOpenAPIAgainstServer(t *testing.T) {
	d := readDoc(t)
	f := newFixture(t)

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

	for _, op := range d.ops {
		if op.path == "/api/schema/" {
			continue
		}
		ok := success(t, op)
		fields := bodies[op.method+" "+op.path]
		name := op.method + " " + op.path
		t.Run(name, func(t *testing.T) {
			// Every documented operation succeeds, whichever way the key
			// comes and whichever way the organization is named.
			type way struct{ via, orgRef string }
			ways := []way{{viaHeader, f.org.ID}, {viaQuery, f.org.ID}, {viaHeader, "@current"}}
			if op.method == http.MethodPost {
				ways = append(ways, way{viaBody, f.org.ID})
			}
			for _, w := range ways {
				f.reset(t)
				what := fmt.Sprintf("%s (key in %s, organization %s)", name, w.via, w.orgRef)
				a := f.do(t, op.method, f.url(op.path, w.orgRef), f.ownerKey, w.via, fields)
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
				if schema := op.refs[ok]; schema != "" {
					checkShape(t, d, what, a.body, schema)
				} else if len(a.body) != 0 {
					t.Errorf("%s: %d documents no body, got %q", what, ok, a.body)
				}
			}

			// x-required-scope: a read-only key may do exactly the
			// organization:read operations.
			f.reset(t)
			a := f.do(t, op.method, f.url(op.path, f.org.ID), f.roKey, viaHeader, fields)
			switch op.scope {
			case control.ScopeOrgRead:
				if a.status != ok {
					t.Errorf("%s with an organization:read key: status %d, want %d: %s", name, a.status, ok, a.body)
				}
			case control.ScopeOrgWrite:
				checkError(t, d, name+" with an organization:read key", a, http.StatusForbidden,
					"permission_denied", "API key missing required scope 'organization:write'")
			default:
				t.Errorf("%s: x-required-scope %q is not a scope the API checks", name, op.scope)
			}

			// x-required-level: a plain member may do exactly the member
			// operations.
			f.reset(t)
			a = f.do(t, op.method, f.url(op.path, f.org.ID), f.memberKey, viaHeader, fields)
			switch op.level {
			case "member":
				if a.status != ok {
					t.Errorf("%s as a member: status %d, want %d: %s", name, a.status, ok, a.body)
				}
			case "admin":
				checkError(t, d, name+" as a member", a, http.StatusForbidden,
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
			for _, target := range []string{f.url(path, f.org.ID), strings.TrimSuffix(f.url(path, f.org.ID), "/")} {
				what := m + " " + strings.TrimPrefix(target, f.srv.URL)
				a := f.do(t, m, target, f.ownerKey, viaHeader, nil)
				checkError(t, d, what, a, http.StatusMethodNotAllowed, "method_not_allowed", fmt.Sprintf("Method %q not allowed.", m))
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
}
