package openapitest_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/internal/openapitest"
)

const (
	orgID    = "0b6f5d0e-3c1a-4d8e-9f7a-2e4c6b8d1a3f"
	recordID = "497f6eca-6276-4993-bfeb-53cbbbba6f08"
)

// healthy is a diagnosis with every null the server writes: no primary
// issue, no next action, no remediation.
const healthy = `{"ran_at":"2025-11-26T12:35:10.481516Z",
 "summary":{"status":"healthy","primary_issue":null,"next_action":null},
 "checks":[
  {"id":"cname","name":"DNS points at the target","status":"pass","detail":"ok","remediation":null},
  {"id":"caa","name":"CAA","status":"pass","detail":"ok","remediation":null},
  {"id":"http_challenge","name":"HTTP","status":"pass","detail":"ok","remediation":null},
  {"id":"certificate","name":"Certificate","status":"pass","detail":"ok","remediation":null},
  {"id":"live","name":"Live","status":"pass","detail":"ok","remediation":null}]}`

const failing = `{"ran_at":"2025-11-26T12:35:10.481516Z",
 "summary":{"status":"fail","primary_issue":"no CNAME","next_action":"add it"},
 "checks":[
  {"id":"cname","name":"DNS points at the target","status":"fail","detail":"no CNAME",
   "remediation":{"type":"dns","summary":"add it","records":[{"name":"e.example.com","type":"CNAME","value":"x.proxy.example.net"}]}},
  {"id":"caa","name":"CAA","status":"pass","detail":"ok","remediation":null},
  {"id":"http_challenge","name":"HTTP","status":"skip","detail":"later","remediation":null},
  {"id":"certificate","name":"Certificate","status":"skip","detail":"later","remediation":{"type":"wait","summary":"wait","records":[]}},
  {"id":"live","name":"Live","status":"skip","detail":"later","remediation":null}]}`

const record = `{"id":"` + recordID + `","domain":"e.example.com","target_cname":"64016eff57d031801127.proxy.example.net",
 "ownership":{"name":"_edgeproxy.e.example.com","type":"TXT","value":"edgeproxy-verification=q4hzmlq3kivhjxqptwyk6e2ctm"},
 "dcv_delegation":{"name":"_acme-challenge.e.example.com","type":"CNAME","value":"_acme-challenge.64016eff57d031801127.proxy.example.net"},
 "status":"waiting","message":null,"created_at":"2025-11-26T12:31:07.123456Z","updated_at":"2025-11-26T12:31:07.123456Z","created_by":1}`

const notFound = `{"type":"invalid_request","code":"not_found","detail":"Not found.","attr":null}`

// TestCheck shows what the checker accepts and what it refuses, on answers
// written by hand: each refused one breaks one rule of the document.
func TestCheck(t *testing.T) {
	c := openapitest.Load(t)
	diagnose := "/api/organizations/" + orgID + "/proxy_records/" + recordID + "/diagnose/"
	recordPath := "/api/organizations/" + orgID + "/proxy_records/" + recordID + "/"
	for _, tt := range []struct {
		name, method, path string
		status             int
		ct, body           string
		// want is a piece of the error, or "" for none.
		want string
	}{
		{"a healthy diagnosis, nulls and all", "POST", diagnose, 200, "application/json", healthy, ""},
		{"a failing diagnosis", "POST", diagnose, 200, "application/json", failing, ""},
		{"the path without its trailing slash", "POST", strings.TrimSuffix(diagnose, "/"), 200, "application/json", healthy, ""},
		{"a record", "GET", recordPath, 200, "application/json", record, ""},
		{"a deleted record", "DELETE", recordPath, 204, "", "", ""},
		{"an unknown path, refused", "GET", "/api/nothing/", 404, "application/json", notFound, ""},
		{"a method the path lacks, refused", "PUT", recordPath, 405, "application/json",
			`{"type":"invalid_request","code":"method_not_allowed","detail":"Method \"PUT\" not allowed.","attr":null}`, ""},

		{"null where the summary must be", "POST", diagnose, 200, "application/json",
			strings.Replace(healthy, `"summary":{"status":"healthy","primary_issue":null,"next_action":null}`, `"summary":null`, 1), "summary"},
		{"a remediation type outside the enum", "POST", diagnose, 200, "application/json",
			strings.Replace(failing, `"type":"wait"`, `"type":"pray"`, 1), "pray"},
		{"a remediation without records", "POST", diagnose, 200, "application/json",
			strings.Replace(failing, `,"records":[]`, ``, 1), "records"},
		{"a time that is not RFC 3339", "POST", diagnose, 200, "application/json",
			strings.Replace(healthy, `2025-11-26T12:35:10.481516Z`, `yesterday`, 1), "date-time"},
		{"a field the document does not have", "GET", recordPath, 200, "application/json",
			strings.Replace(record, `"created_by":1`, `"created_by":1,"org_id":"`+orgID+`"`, 1), "org_id"},
		{"a field missing", "GET", recordPath, 200, "application/json",
			strings.Replace(record, `"message":null,`, ``, 1), "message"},
		{"an id that is not a UUID", "GET", recordPath, 200, "application/json",
			strings.Replace(record, recordID, "record-1", 1), "uuid"},
		{"an ownership token of another form", "GET", recordPath, 200, "application/json",
			strings.Replace(record, `edgeproxy-verification=q4hzmlq3kivhjxqptwyk6e2ctm`, `q4hzmlq3kivhjxqptwyk6e2ctm`, 1), "pattern"},
		{"a record without its ownership record", "GET", recordPath, 200, "application/json",
			strings.Replace(record, `"ownership":{"name":"_edgeproxy.e.example.com","type":"TXT","value":"edgeproxy-verification=q4hzmlq3kivhjxqptwyk6e2ctm"},`, ``, 1), "ownership"},
		{"a string where an integer or null must be", "GET", recordPath, 200, "application/json",
			strings.Replace(record, `"created_by":1`, `"created_by":"1"`, 1), "created_by"},
		{"a status the operation does not list", "GET", recordPath, 418, "application/json", notFound, "status is not supported"},
		{"a JSON body sent as text", "GET", recordPath, 200, "text/plain", record, "text/plain"},
		{"a body where the document gives none", "DELETE", recordPath, 204, "application/json", notFound, "no body"},
		{"a success on an undocumented path", "GET", "/api/nothing/", 200, "application/json", record, "no operation"},
		{"an error body that is not the Error schema", "GET", "/api/nothing/", 404, "application/json", `{"error":"no"}`, "error"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "http://127.0.0.1:8080"+tt.path, nil)
			h := http.Header{}
			if tt.ct != "" {
				h.Set("Content-Type", tt.ct)
			}
			err := c.Check(req, tt.status, h, []byte(tt.body))
			t.Logf("Check: %v", err)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.want != "" && err == nil:
				t.Errorf("accepted, want a refusal naming %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Errorf("refused with %q, which does not name %q", err, tt.want)
			}
		})
	}
}

// TestHandlerRecordsSuccesses: the wrapped handler's answers pass through
// unchanged, and a validated success is remembered per operation.
func TestHandlerRecordsSuccesses(t *testing.T) {
	c := openapitest.Load(t)
	path := "/api/organizations/{organization_id}/proxy_records/{id}/"
	srv := httptest.NewServer(c.Handler(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(record))
	})))
	defer srv.Close()
	if c.Succeeded("GET", path) {
		t.Fatal("Succeeded before any request")
	}
	resp, err := http.Get(srv.URL + "/api/organizations/@current/proxy_records/" + recordID)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("answer %d %q, want it passed through", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !c.Succeeded("GET", path) || c.Succeeded("DELETE", path) {
		t.Errorf("Succeeded(GET) = %t, Succeeded(DELETE) = %t; want true, false", c.Succeeded("GET", path), c.Succeeded("DELETE", path))
	}
}
