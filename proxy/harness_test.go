package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testcert"
	"github.com/edgeproxy/edgeproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// The names the test certificate covers. served and alsoServed are served
// unless a test says otherwise; notServed has a certificate but is never
// on the host list.
const (
	served     = "a.example.com"
	alsoServed = "b.example.com"
	notServed  = "c.example.com"
)

// maxBody is the default --max-body-bytes.
const maxBody = 64 << 20

// hostSet is the tests' Hosts: a set of names, safe for concurrent use. It
// matches exactly, so a Host the edge forgot to fold is not served.
type hostSet struct {
	// mu guards names.
	mu    sync.Mutex
	names map[string]bool
}

func newHostSet(names ...string) *hostSet {
	h := &hostSet{names: map[string]bool{}}
	for _, n := range names {
		h.names[n] = true
	}
	return h
}

func (h *hostSet) Serving(domain string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.names[domain]
}

func (h *hostSet) set(domain string, on bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.names[domain] = on
}

// selfSigned makes a certificate for names, valid for an hour, and a pool
// that trusts it.
func selfSigned(t testing.TB, names ...string) (tls.Certificate, *x509.CertPool) {
	t.Helper()
	c, pool, err := testcert.SelfSigned(time.Now().Add(-time.Hour), time.Now().Add(time.Hour), names...)
	if err != nil {
		t.Fatal(err)
	}
	return c.TLS, pool
}

// seenRequest is what an upstream received.
type seenRequest struct {
	Method, RequestURI, Path, Host, Proto string
	Header                                http.Header
	Trailer                               http.Header
	ContentLength                         int64
	TransferEncoding                      []string
	Body                                  []byte // the first 4 KiB
	BodyLen                               int64
	BodySum                               [sha256.Size]byte
	BodyErr                               error // from reading the body; nil when it was complete
}

// upstream is an httptest server that records every request it receives
// and checks that it only receives its own paths.
type upstream struct {
	*httptest.Server
	t     *testing.T
	route string // ingest, assets or evil

	arrived atomic.Int64

	// mu guards seen and handler.
	mu      sync.Mutex
	seen    []seenRequest
	handler http.HandlerFunc
}

func newUpstream(t *testing.T, route string) *upstream {
	u := &upstream{t: t, route: route}
	u.Server = httptest.NewServer(u)
	u.Config.ErrorLog = log.New(io.Discard, "", 0)
	t.Cleanup(u.Close)
	return u
}

// hostport is the upstream's host as the edge's Host header names it.
func (u *upstream) hostport() string { return u.Listener.Addr().String() }

// handle replaces the default answer. The request is recorded when it
// arrives, without its body: h reads the body itself.
func (u *upstream) handle(h http.HandlerFunc) {
	u.mu.Lock()
	u.handler = h
	u.mu.Unlock()
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.arrived.Add(1)
	switch static := strings.HasPrefix(r.URL.Path, "/static/"); {
	case u.route == "evil":
		u.t.Errorf("the evil server received %s %s (Host %q)", r.Method, r.RequestURI, r.Host)
	case u.route == "assets" && !static:
		u.t.Errorf("the assets upstream received %s %s", r.Method, r.RequestURI)
	case u.route == "ingest" && static:
		u.t.Errorf("the ingest upstream received %s %s", r.Method, r.RequestURI)
	}
	seen := seenRequest{
		Method: r.Method, RequestURI: r.RequestURI, Path: r.URL.Path, Host: r.Host, Proto: r.Proto,
		Header: r.Header.Clone(), ContentLength: r.ContentLength, TransferEncoding: r.TransferEncoding,
	}
	u.mu.Lock()
	h := u.handler
	u.mu.Unlock()
	if h != nil {
		u.record(seen)
		h(w, r)
		return
	}
	sum := sha256.New()
	head := &prefixWriter{max: 4 << 10}
	seen.BodyLen, seen.BodyErr = io.Copy(io.MultiWriter(sum, head), r.Body)
	seen.Body = head.buf.Bytes()
	copy(seen.BodySum[:], sum.Sum(nil))
	seen.Trailer = r.Trailer.Clone()
	u.record(seen)
	if seen.BodyErr != nil {
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Upstream", u.route)
	fmt.Fprintf(w, `{"upstream":%q,"body_bytes":%d}`, u.route, seen.BodyLen)
}

func (u *upstream) record(s seenRequest) {
	u.mu.Lock()
	u.seen = append(u.seen, s)
	u.mu.Unlock()
}

// requests returns what the upstream received, once every request that
// arrived has been recorded.
func (u *upstream) requests(t *testing.T) []seenRequest {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		u.mu.Lock()
		n := len(u.seen)
		done := int64(n) == u.arrived.Load()
		seen := slices.Clone(u.seen)
		u.mu.Unlock()
		if done {
			return seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s upstream: %d requests arrived, %d recorded after 10s", u.route, u.arrived.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// only is the one request the upstream received since the harness started.
func (u *upstream) only(t *testing.T) seenRequest {
	t.Helper()
	seen := u.requests(t)
	if len(seen) != 1 {
		t.Fatalf("%s upstream received %d requests, want 1", u.route, len(seen))
	}
	return seen[0]
}

type prefixWriter struct {
	buf bytes.Buffer
	max int
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	if room := p.max - p.buf.Len(); room > 0 {
		p.buf.Write(b[:min(room, len(b))])
	}
	return len(b), nil
}

// logRecorder is an slog.Handler that keeps what the edge logs.
type logRecorder struct {
	// mu guards records.
	mu      sync.Mutex
	records []slog.Record
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.records = append(l.records, r.Clone())
	l.mu.Unlock()
	return nil
}
func (l *logRecorder) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logRecorder) WithGroup(string) slog.Handler      { return l }

func (l *logRecorder) messages(level slog.Level) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, r := range l.records {
		if r.Level >= level {
			out = append(out, r.Message)
		}
	}
	return out
}

// harness is an Edge served over real TLS on loopback, in front of two
// recording upstreams, with a third server standing for every host a
// request might try to reach instead.
type harness struct {
	t                    *testing.T
	hosts                *hostSet
	edge                 *proxy.Edge
	ingest, assets, evil *upstream
	addr                 string // the edge's TLS listener
	roots                *x509.CertPool
	logs                 *logRecorder
	// release unblocks upstream handlers that wait for the test to end.
	release chan struct{}
}

// newHarness starts an edge serving served and alsoServed. configure may
// change the Config before New, upstreams included.
func newHarness(t *testing.T, configure ...func(*proxy.Config)) *harness {
	t.Helper()
	h := &harness{
		t: t, hosts: newHostSet(served, alsoServed), logs: &logRecorder{},
		ingest: newUpstream(t, "ingest"), assets: newUpstream(t, "assets"), evil: newUpstream(t, "evil"),
		release: make(chan struct{}),
	}
	t.Cleanup(func() { close(h.release) })
	cfg := proxy.Config{
		Upstream:       mustParse(t, h.ingest.URL),
		AssetsUpstream: mustParse(t, h.assets.URL),
		Logger:         slog.New(h.logs),
		// As serve configures it, so that every test runs the metrics
		// and the access log too.
		AccessLogEvery:   1,
		Registerer:       prometheus.NewRegistry(),
		PerDomainMetrics: true,
	}
	for _, c := range configure {
		c(&cfg)
	}
	edge, err := proxy.New(h.hosts, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h.edge = edge
	cert, roots := selfSigned(t, served, alsoServed, notServed)
	h.roots = roots
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	// The server serve runs, with its timeouts and header limit.
	srv := proxy.NewTLSServer(edge, &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if h.hosts.Serving(strings.ToLower(hello.ServerName)) {
				return &cert, nil
			}
			return nil, errors.New("not served")
		},
	}, slog.New(slog.DiscardHandler))
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return h
}

func mustParse(t testing.TB, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// client returns a client speaking proto ("h1" or "h2") that connects to
// the edge whatever the URL's host, with SNI sni (the URL's host if "").
func (h *harness) client(proto, sni string) *http.Client {
	var protocols http.Protocols
	switch proto {
	case "h1":
		protocols.SetHTTP1(true)
	case "h2":
		protocols.SetHTTP2(true)
	default:
		h.t.Fatalf("unknown protocol %q", proto)
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", h.addr)
		},
		TLSClientConfig:    &tls.Config{RootCAs: h.roots, ServerName: sni},
		Protocols:          &protocols,
		DisableCompression: true,
	}
	h.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{
		Transport:     tr,
		Timeout:       60 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// do sends req and reads the whole answer.
func do(t *testing.T, c *http.Client, req *http.Request) (*http.Response, []byte) {
	t.Helper()
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", req.Method, req.URL, err)
	}
	return resp, body
}

func newRequest(t testing.TB, method, url string, body io.Reader) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	return req
}

// dialRaw opens an HTTP/1.1 TLS connection to the edge with SNI sni.
func (h *harness) dialRaw(sni string) *tls.Conn {
	h.t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", h.addr,
		&tls.Config{ServerName: sni, RootCAs: h.roots, NextProtos: []string{"http/1.1"}})
	if err != nil {
		h.t.Fatalf("handshake for %q: %v", sni, err)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	h.t.Cleanup(func() { conn.Close() })
	return conn
}

// exchange writes a hand-made request on conn and reads one answer.
func exchange(t *testing.T, conn net.Conn, request string) (*http.Response, []byte) {
	t.Helper()
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatalf("writing %q: %v", request, err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the answer to %q: %v", request, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading the body of the answer to %q: %v", request, err)
	}
	return resp, body
}

// wantError checks an error answer of the edge: the status, a JSON body
// of exactly error and detail (detail unchecked when "").
func wantError(t *testing.T, resp *http.Response, body []byte, status int, code, detail string) {
	t.Helper()
	if resp.StatusCode != status {
		t.Errorf("status %d, want %d (body %q)", resp.StatusCode, status, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	var got map[string]any
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("body %q is not JSON: %v", body, err)
	}
	want := map[string]any{"error": code, "detail": detail}
	if detail == "" {
		if d, ok := got["detail"].(string); ok && d != "" {
			want["detail"] = d
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("body %s, want %v", body, want)
	}
}

// wantCounts checks how many requests each upstream received since the
// harness started; the evil server must never receive one.
func (h *harness) wantCounts(t *testing.T, ingest, assets int) {
	t.Helper()
	if got := len(h.ingest.requests(t)); got != ingest {
		t.Errorf("ingest upstream received %d requests, want %d", got, ingest)
	}
	if got := len(h.assets.requests(t)); got != assets {
		t.Errorf("assets upstream received %d requests, want %d", got, assets)
	}
	if got := h.evil.arrived.Load(); got != 0 {
		t.Errorf("evil server received %d requests", got)
	}
}
