package control

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
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

// TestBruteForceThrottled sends bad keys from one address through the API
// until it answers 429, then checks that a good key from that address is
// throttled too, with Retry-After and the exact body.
func TestBruteForceThrottled(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	org, _ := st.CreateOrg("A", nil)
	user, _ := st.CreateUser("a@a.test")
	st.SetMembership(org.ID, user.ID, store.LevelOwner)
	k, good := NewKey(user.ID, "t", []string{ScopeAll}, nil)
	st.CreateKey(k)
	api := NewAPI(st, Config{TargetCNAMEBase: "proxy.example.net", MaxProxyRecords: 2})
	// A stopped clock: no token comes back while the test runs, however
	// slowly (-race) it runs.
	stopped := time.Now()
	api.fails = newFailLimiter(func() time.Time { return stopped })

	send := func(key string) *httptest.ResponseRecorder {
		r := httptest.NewRequest("GET", "/api/organizations/@current/proxy_records/", nil)
		r.RemoteAddr = "198.51.100.7:4242"
		r.Header.Set("Authorization", "Bearer "+key)
		w := httptest.NewRecorder()
		api.ServeHTTP(w, r)
		return w
	}
	if got := send(good).Code; got != 200 {
		t.Fatalf("good key before any failure: %d", got)
	}
	for i := 0; i < authFailBurst; i++ {
		if got := send("phx_wrong").Code; got != 401 {
			t.Fatalf("bad key %d answered %d, want 401 while the burst lasts", i, got)
		}
	}
	w := send(good)
	if w.Code != http.StatusTooManyRequests {
		t.Fatalf("after %d failures a good key answered %d, want 429", authFailBurst, w.Code)
	}
	if ra := w.Header().Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1", ra)
	}
	var body map[string]any
	json.Unmarshal(w.Body.Bytes(), &body)
	if body["type"] != "throttled_error" || body["code"] != "throttled" || body["attr"] != nil ||
		body["detail"] != "Request was throttled. Expected available in 1 seconds." {
		t.Errorf("429 body = %v", body)
	}
}
