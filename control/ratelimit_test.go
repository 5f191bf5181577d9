package control

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

func TestFailLimiterBucket(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	l := newFailLimiter(func() time.Time { return now })
	for i := 0; i < authFailBurst; i++ {
		if w := l.wait("192.0.2.1"); w != 0 {
			t.Fatalf("failure %d: must wait %v before the burst is used up", i, w)
		}
		l.fail("192.0.2.1")
	}
	if w := l.wait("192.0.2.1"); w != authFailRefill {
		t.Errorf("after the burst: wait %v, want %v", w, authFailRefill)
	}
	if w := l.wait("192.0.2.2"); w != 0 {
		t.Errorf("another address must not wait: %v", w)
	}
	now = now.Add(authFailRefill)
	if w := l.wait("192.0.2.1"); w != 0 {
		t.Errorf("after one refill period: wait %v, want 0", w)
	}
}

// newThrottleAPI is an API over a real store with one organization, its
// owner and a live key, whose failed-authentication limiter runs on a
// stopped clock: no token comes back while the test runs, however slowly
// (-race) it runs.
func newThrottleAPI(t *testing.T) (api *API, good string) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	org, _ := st.CreateOrg("A", nil)
	user, _ := st.CreateUser("a@a.example.com")
	st.SetMembership(org.ID, user.ID, store.LevelOwner)
	k, good := NewKey(user.ID, "t", []string{ScopeAll}, nil)
	if _, err := st.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	api = NewAPI(st, Config{TargetCNAMEBase: "proxy.example.net", MaxProxyRecords: 2})
	stopped := time.Now()
	api.fails = newFailLimiter(func() time.Time { return stopped })
	return api, good
}

// throttleReq is one API request from addr; key goes where says (header,
// body, query, or nowhere when key is empty).
func throttleReq(api *API, addr, method, where, key string, body io.Reader) *httptest.ResponseRecorder {
	target := "/api/organizations/@current/proxy_records/"
	if where == "query" {
		target += "?personal_api_key=" + key
	}
	if where == "body" {
		body = strings.NewReader(`{"personal_api_key":"` + key + `"}`)
	}
	r := httptest.NewRequest(method, target, body)
	r.RemoteAddr = addr + ":4242"
	if where == "header" {
		r.Header.Set("Authorization", "Bearer "+key)
	}
	w := httptest.NewRecorder()
	api.ServeHTTP(w, r)
	return w
}

func checkThrottled(t *testing.T, what string, w *httptest.ResponseRecorder) {
	t.Helper()
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("%s: answered %d, want 429", what, w.Code)
	}
	if ra := w.Header().Get("Retry-After"); ra != "1" {
		t.Errorf("%s: Retry-After = %q, want 1", what, ra)
	}
	var body map[string]any
	json.Unmarshal(w.Body.Bytes(), &body)
	if body["type"] != "throttled_error" || body["code"] != "throttled" || body["attr"] != nil ||
		body["detail"] != "Request was throttled. Expected available in 1 seconds." {
		t.Errorf("%s: 429 body = %v", what, body)
	}
}

// TestBadKeysNeverLockOutValidKey replays the lock-out: one client behind
// a shared address (a reverse proxy, a tunnel, a CI runner) sends 300 bad
// keys; the limiter used to answer 429 to every request from that address
// afterwards, valid keys included. A valid key, wherever the request
// carries it, must still be served, while bad keys get 429.
func TestBadKeysNeverLockOutValidKey(t *testing.T) {
	api, good := newThrottleAPI(t)
	const addr = "198.51.100.7"
	refused := 0
	for i := 0; i < 300; i++ {
		w := throttleReq(api, addr, "GET", "header", "phx_revoked_or_wrong", nil)
		switch {
		case i < authFailBurst && w.Code != 401:
			t.Fatalf("bad key %d answered %d, want 401 while the burst lasts", i, w.Code)
		case i >= authFailBurst && w.Code != 429:
			t.Fatalf("bad key %d answered %d, want 429 past the burst", i, w.Code)
		case w.Code == 429:
			refused++
		}
	}
	checkThrottled(t, "bad key past the limit", throttleReq(api, addr, "GET", "header", "phx_wrong", nil))
	for _, where := range []string{"header", "query"} {
		if w := throttleReq(api, addr, "GET", where, good, nil); w.Code != 200 {
			t.Errorf("valid key in the %s after 300 bad keys: %d %s, want 200", where, w.Code, w.Body)
		}
	}
	if w := throttleReq(api, addr, "POST", "body", good, nil); w.Code == 429 || w.Code == 401 {
		t.Errorf("valid key in the body after 300 bad keys: %d %s", w.Code, w.Body)
	}
	t.Logf("300 bad keys: %d refused with 429; valid keys served", refused)
}

// TestMissingKeysCounted: requests with no key at all used not to be
// counted, so a client could send them without limit. They count like bad
// keys, and past the limit get 429.
func TestMissingKeysCounted(t *testing.T) {
	api, good := newThrottleAPI(t)
	const addr = "198.51.100.8"
	for i := 0; i < authFailBurst; i++ {
		if w := throttleReq(api, addr, "GET", "", "", nil); w.Code != 401 {
			t.Fatalf("request %d without a key answered %d, want 401", i, w.Code)
		}
	}
	checkThrottled(t, "no key past the limit", throttleReq(api, addr, "GET", "", "", nil))
	if w := throttleReq(api, "198.51.100.9", "GET", "", "", nil); w.Code != 401 {
		t.Errorf("another address without a key: %d, want 401 (not throttled)", w.Code)
	}
	if w := throttleReq(api, addr, "GET", "header", good, nil); w.Code != 200 {
		t.Errorf("valid key from the throttled address: %d, want 200", w.Code)
	}
}

// countingBody counts the bytes read from a request body.
type countingBody struct {
	r io.Reader
	n int
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// TestKeylessBodiesNotParsed: a request without a key used to have its
// body (up to 1 MiB) read and parsed whatever its method. A GET body is
// never read for a key, and once the address is throttled a body that does
// not even contain the field name is not decoded.
func TestKeylessBodiesNotParsed(t *testing.T) {
	api, _ := newThrottleAPI(t)
	big := bytes.Repeat([]byte("x"), maxAPIBody-10)
	body := &countingBody{r: bytes.NewReader(big)}
	if w := throttleReq(api, "198.51.100.10", "GET", "", "", body); w.Code != 401 {
		t.Fatalf("GET without a key: %d, want 401", w.Code)
	}
	if body.n != 0 {
		t.Errorf("GET without a key: %d body bytes read, want 0", body.n)
	}

	for i := 0; i < authFailBurst; i++ {
		throttleReq(api, "198.51.100.11", "GET", "", "", nil)
	}
	r := httptest.NewRequest("POST", "/api/organizations/@current/proxy_records/", bytes.NewReader(append([]byte(`{"domain":`), big...)))
	lb := newLazyBody(r)
	if _, _, aerr := keyFrom(r, lb, true); aerr != nil {
		t.Fatal(aerr)
	}
	if lb.decoded {
		t.Error("a throttled address's body without personal_api_key was decoded")
	}
	checkThrottled(t, "throttled address, 1 MiB body without a key",
		throttleReq(api, "198.51.100.11", "POST", "", "", bytes.NewReader(append([]byte(`{"domain":`), big...))))
}
