package control

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

// FuzzAdmin feeds the admin socket's handler arbitrary methods, paths and
// bodies against a real store. It must never panic or answer 5xx (the
// store is healthy, so no failure is the server's), and every refusal
// must be a JSON object whose "error" names the problem.
func FuzzAdmin(f *testing.F) {
	st, err := store.Open(filepath.Join(f.TempDir(), "fuzz.db"), store.Options{})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { st.Close() })
	_, key, err := st.BootstrapIfEmpty(store.Bootstrap{OrgName: "Fuzz", Email: "fuzz@example.com",
		Key: store.APIKey{Hash: HashKey(fuzzLiveKey), Scopes: []string{ScopeAll}}})
	if err != nil {
		f.Fatal(err)
	}
	orgs, err := st.Orgs()
	if err != nil {
		f.Fatal(err)
	}
	org := orgs[0].ID
	admin := NewAdmin(st, Config{MaxProxyRecords: 2})

	f.Add("POST", "/orgs", []byte(`{"name":"Acme","max_proxy_records":5}`))
	f.Add("GET", "/orgs", []byte(nil))
	f.Add("PATCH", "/orgs/"+org, []byte(`{"name":"Renamed"}`))
	f.Add("POST", "/users", []byte(`{"email":"ops@acme.example"}`))
	f.Add("POST", "/members", []byte(`{"org":"`+org+`","user":1,"level":"admin"}`))
	f.Add("DELETE", "/orgs/"+org+"/members/1", []byte(nil))
	f.Add("DELETE", "/orgs/"+org+"/members/x", []byte(nil))
	f.Add("POST", "/keys", []byte(`{"user":1,"scopes":["organization:read"],"orgs":["`+org+`"],"label":"ci"}`))
	f.Add("GET", "/keys?user=1", []byte(nil))
	f.Add("POST", "/keys/"+key.ID+"/revoke", []byte(nil))
	f.Add("GET", "/records?org="+org+"&status=waiting", []byte(nil))
	f.Add("PUT", "/orgs", []byte(`{}`))
	f.Add("GET", "/nowhere", []byte(nil))
	f.Fuzz(func(t *testing.T, method, target string, body []byte) {
		if strings.HasSuffix(strings.SplitN(target, "?", 2)[0], "/backup") {
			// The database itself: binary, and as large as the store.
			return
		}
		u, err := url.ParseRequestURI(target)
		if err != nil {
			u = &url.URL{Path: target}
		}
		r := &http.Request{
			Method: method, URL: u, RequestURI: target, Host: "admin", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{"Content-Type": {"application/json"}}, Body: io.NopCloser(bytes.NewReader(body)),
			ContentLength: int64(len(body)),
		}
		w := httptest.NewRecorder()
		admin.ServeHTTP(w, r)
		status, answer := w.Code, w.Body.Bytes()
		if status >= 500 {
			t.Fatalf("%q %q %q: %d %s", method, target, body, status, answer)
		}
		if status >= 300 && status < 400 {
			return // net/http's redirect to the cleaned path
		}
		if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
			t.Fatalf("%q %q %q: %d with Content-Type %q: %q", method, target, body, status, ct, answer)
		}
		if status < 400 {
			if !json.Valid(answer) {
				t.Fatalf("%q %q %q: %d with a body that is not JSON: %q", method, target, body, status, answer)
			}
			return
		}
		var e map[string]any
		if err := json.Unmarshal(answer, &e); err != nil {
			t.Fatalf("%q %q %q: %d with a body that is not a JSON object: %q", method, target, body, status, answer)
		}
		if msg, _ := e["error"].(string); msg == "" || len(e) != 1 {
			t.Fatalf("%q %q %q: %d %s, want {\"error\": why}", method, target, body, status, answer)
		}
	})
}
