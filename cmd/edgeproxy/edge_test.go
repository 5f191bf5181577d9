package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// edgeUpstream is a loopback upstream that records what reaches it.
type edgeUpstream struct {
	*httptest.Server
	name string

	// mu guards seen.
	mu   sync.Mutex
	seen []edgeSeen
}

type edgeSeen struct {
	method, requestURI, host, body string
	header                         http.Header
}

func newEdgeUpstream(t *testing.T, name string) *edgeUpstream {
	u := &edgeUpstream{name: name}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		u.seen = append(u.seen, edgeSeen{r.Method, r.RequestURI, r.Host, string(body), r.Header.Clone()})
		u.mu.Unlock()
		io.WriteString(w, u.name)
	}))
	t.Cleanup(u.Close)
	return u
}

func (u *edgeUpstream) requests() []edgeSeen {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]edgeSeen(nil), u.seen...)
}

// edgeClient connects to the edge's TLS address whatever the URL's host,
// trusting Pebble's issuer, over HTTP/2 when offered.
func (w *acmeWorld) edgeClient(t *testing.T) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", w.httpsAddr)
		},
		TLSClientConfig:    &tls.Config{RootCAs: w.pebble.IssuerRoots(t)},
		ForceAttemptHTTP2:  true,
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// plainGet asks the edge's plain HTTP address for target with Host host,
// without following redirects.
func (w *acmeWorld) plainGet(t *testing.T, host, target string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest("GET", "http://"+w.httpAddr+target, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	client := &http.Client{
		Timeout:       10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp, body
}

// wantNotServed checks the edge's 404 answer for domain.
func wantNotServed(t *testing.T, what string, resp *http.Response, body []byte, domain string) {
	t.Helper()
	var got map[string]string
	json.Unmarshal(body, &got)
	if resp.StatusCode != 404 || got["error"] != "not_served" || !strings.Contains(got["detail"], domain) {
		t.Errorf("%s: %d %q, want 404 not_served", what, resp.StatusCode, body)
	}
}

// TestEdgeServesValidRecordsOnly runs the binary in front of loopback
// upstreams: a record made valid through the API starts being served over
// TLS and redirected to on plain HTTP; after its DELETE the handshake for
// it fails within a second and a connection opened before gets 404.
func TestEdgeServesValidRecordsOnly(t *testing.T) {
	w := newACMEWorld(t)
	ingest := newEdgeUpstream(t, "ingest")
	assets := newEdgeUpstream(t, "assets")
	s := startServer(t, t.TempDir(), append(w.args, "--upstream", ingest.URL, "--assets-upstream", assets.URL)...)
	key := s.key(t)
	const domain = "e.edge.example.com"

	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	if err := w.handshake(t, domain); err == nil {
		t.Error("handshake succeeded for a record that is not valid yet")
	}
	resp, body := w.plainGet(t, domain, "/i/v0/e/")
	wantNotServed(t, "plain HTTP before valid", resp, body, domain)

	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	s.waitStatus(t, key, rec.ID, "valid")
	// The engine serves a domain before it records it valid.
	if err := w.handshake(t, domain); err != nil {
		t.Fatalf("handshake for the valid record: %v\n%s", err, s.stderr)
	}

	client := w.edgeClient(t)
	req, _ := http.NewRequest("POST", "https://"+domain+"/i/v0/e/?ip=1&_=1700000000000", strings.NewReader(`{"event":"$pageview"}`))
	req.Header.Set("Cookie", "ph_phc_x_posthog=%7B%7D")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("POST through the edge: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ingest" {
		t.Fatalf("POST through the edge: %d %q", resp.StatusCode, body)
	}
	seen := ingest.requests()
	if len(seen) != 1 {
		t.Fatalf("ingest upstream received %d requests", len(seen))
	}
	got := seen[0]
	for _, c := range []struct{ name, got, want string }{
		{"method", got.method, "POST"},
		{"request URI", got.requestURI, "/i/v0/e/?ip=1&_=1700000000000"},
		{"body", got.body, `{"event":"$pageview"}`},
		{"Host", got.host, strings.TrimPrefix(ingest.URL, "http://")},
		{"X-Forwarded-Host", strings.Join(got.header.Values("X-Forwarded-Host"), "|"), domain},
		{"X-Forwarded-Proto", strings.Join(got.header.Values("X-Forwarded-Proto"), "|"), "https"},
		{"X-Forwarded-For", strings.Join(got.header.Values("X-Forwarded-For"), "|"), "127.0.0.1"},
		{"Cookie", strings.Join(got.header.Values("Cookie"), "|"), "ph_phc_x_posthog=%7B%7D"},
	} {
		if c.got != c.want {
			t.Errorf("ingest upstream got %s %q, want %q", c.name, c.got, c.want)
		}
	}

	resp, err = client.Get("https://" + domain + "/static/array.js")
	if err != nil {
		t.Fatalf("GET /static/ through the edge: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "assets" {
		t.Errorf("GET /static/ through the edge: %d %q", resp.StatusCode, body)
	}
	if seen := assets.requests(); len(seen) != 1 || seen[0].host != strings.TrimPrefix(assets.URL, "http://") ||
		seen[0].header.Get("X-Forwarded-Host") != domain {
		t.Errorf("assets upstream received %+v", seen)
	}

	resp, _ = w.plainGet(t, domain, "/i/v0/e/?x=1")
	if loc := resp.Header.Get("Location"); resp.StatusCode != 308 || loc != "https://"+domain+"/i/v0/e/?x=1" {
		t.Errorf("plain HTTP for the served domain: %d to %q", resp.StatusCode, loc)
	}
	resp, body = w.plainGet(t, "other.example.com", "/i/v0/e/")
	wantNotServed(t, "plain HTTP for another host", resp, body, "other.example.com")

	// client holds a connection opened while the domain was served.
	if code := s.request(t, key, "DELETE", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	// The DELETE answers once the record is deleting; the engine then
	// takes the domain off the allowlist as it hears of the change, so
	// the handshakes are refused a moment later, not at the 204.
	deleted := time.Now()
	for w.handshake(t, domain) == nil {
		if time.Since(deleted) > 30*time.Second {
			t.Fatalf("handshake still succeeds 30s after the DELETE\n%s", s.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("handshake refused %v after the DELETE answered", time.Since(deleted))

	resp, err = client.Post("https://"+domain+"/i/v0/e/", "application/json", strings.NewReader("{}"))
	if err != nil {
		t.Fatalf("request on the connection opened before the DELETE: %v", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	wantNotServed(t, "kept-alive connection after the DELETE", resp, body, domain)
	if n := len(ingest.requests()); n != 1 {
		t.Errorf("ingest upstream received %d requests, want 1 (none after the DELETE)", n)
	}
	resp, body = w.plainGet(t, domain, "/i/v0/e/")
	wantNotServed(t, "plain HTTP after the DELETE", resp, body, domain)
}
