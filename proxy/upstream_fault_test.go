package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// rawUpstream is an upstream on a raw TCP listener on 127.0.0.1: each
// request on a connection goes to the test's handler, which writes the
// answer byte by byte as it likes, so a fault lands exactly where the
// test wants it (a reset after the headers, in the middle of an upload).
// It can go down (its listener closed: connections are refused) and come
// back on the same address.
type rawUpstream struct {
	t    *testing.T
	addr string

	// mu guards ln, conns and handler.
	mu      sync.Mutex
	ln      net.Listener
	conns   map[*net.TCPConn]bool
	handler rawHandler
	// wg counts the accept loop and the connections being served.
	wg sync.WaitGroup
}

// rawHandler answers one request read from conn; br holds what was read
// ahead. It returns whether the connection may carry another request.
type rawHandler func(conn *net.TCPConn, br *bufio.Reader, req *http.Request) (keep bool)

func startRawUpstream(t *testing.T) *rawUpstream {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &rawUpstream{t: t, addr: ln.Addr().String(), conns: map[*net.TCPConn]bool{}, handler: rawAnswerOK}
	u.serve(ln)
	t.Cleanup(u.down)
	return u
}

func (u *rawUpstream) url() *url.URL { return &url.URL{Scheme: "http", Host: u.addr} }

func (u *rawUpstream) handle(h rawHandler) {
	u.mu.Lock()
	u.handler = h
	u.mu.Unlock()
}

func (u *rawUpstream) serve(ln net.Listener) {
	u.mu.Lock()
	u.ln = ln
	u.mu.Unlock()
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // closed by down
			}
			u.wg.Add(1)
			go func() {
				defer u.wg.Done()
				u.serveConn(conn.(*net.TCPConn))
			}()
		}
	}()
}

func (u *rawUpstream) serveConn(conn *net.TCPConn) {
	u.mu.Lock()
	u.conns[conn] = true
	u.mu.Unlock()
	defer func() {
		u.mu.Lock()
		delete(u.conns, conn)
		u.mu.Unlock()
		conn.Close()
	}()
	// Bounds a handler that waits for the test, whatever the test does.
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	for {
		req, err := http.ReadRequest(br)
		if err != nil {
			return
		}
		u.mu.Lock()
		h := u.handler
		u.mu.Unlock()
		if !h(conn, br, req) {
			return
		}
	}
}

// down closes the listener, so new connections are refused, and every
// open connection, as a process that dies would.
func (u *rawUpstream) down() {
	u.mu.Lock()
	if u.ln != nil {
		u.ln.Close()
		u.ln = nil
	}
	for c := range u.conns {
		c.Close()
	}
	u.mu.Unlock()
	u.wg.Wait()
}

// up listens on the upstream's address again.
func (u *rawUpstream) up() {
	u.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ln, err := net.Listen("tcp", u.addr)
		if err == nil {
			u.serve(ln)
			return
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("the upstream's address %s was taken while it was down: %v", u.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// rawAnswerOK reads the request's body and answers 200 "ok", keeping the
// connection.
func rawAnswerOK(conn *net.TCPConn, _ *bufio.Reader, req *http.Request) bool {
	if _, err := io.Copy(io.Discard, req.Body); err != nil {
		return false
	}
	_, err := io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\r\nok")
	return err == nil
}

// resetConn closes conn with a TCP RST rather than a FIN.
func resetConn(conn *net.TCPConn) {
	conn.SetLinger(0)
	conn.Close()
}

// faultHarness is the edge of edge_test.go's harness with its ingest
// upstream replaced by a raw one.
type faultHarness struct {
	*harness
	up  *rawUpstream
	reg *prometheus.Registry
}

func newFaultHarness(t *testing.T, configure ...func(*proxy.Config)) *faultHarness {
	t.Helper()
	up := startRawUpstream(t)
	reg := prometheus.NewRegistry()
	h := newHarness(t, append([]func(*proxy.Config){func(c *proxy.Config) {
		c.Upstream = up.url()
		c.Registerer = reg
	}}, configure...)...)
	return &faultHarness{harness: h, up: up, reg: reg}
}

// wantOK checks that a request through the edge gets the upstream's 200.
func (h *faultHarness) wantOK(t *testing.T, proto string) {
	t.Helper()
	resp, body := do(t, h.client(proto, ""), newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Errorf("%s after the upstream recovered: %d %q, want 200 \"ok\"", proto, resp.StatusCode, body)
	}
}

// inFlight is the edge's edgeproxy_proxy_requests_in_flight.
func (h *faultHarness) inFlight(t *testing.T) float64 { return inFlight(t, h.reg) }

// inFlight is edgeproxy_proxy_requests_in_flight of the edge registered
// with reg.
func inFlight(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "edgeproxy_proxy_requests_in_flight" {
			return f.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatal("no edgeproxy_proxy_requests_in_flight")
	return 0
}

// wantSettled waits until the edge has no request in flight and the
// process holds about as many goroutines as before the faults (baseline):
// what the faults started must end.
func (h *faultHarness) wantSettled(t *testing.T, baseline int, clients ...*http.Client) {
	t.Helper()
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	// Loose: timers and idle connections of the harness come and go.
	const slack = 10
	deadline := time.Now().Add(15 * time.Second)
	for {
		n, flight := runtime.NumGoroutine(), h.inFlight(t)
		if n <= baseline+slack && flight == 0 {
			return
		}
		if time.Now().After(deadline) {
			var dump bytes.Buffer
			pprof.Lookup("goroutine").WriteTo(&dump, 1)
			t.Fatalf("after the faults: %d goroutines (%d before), %v requests in flight (want 0)\n%s",
				n, baseline, flight, dump.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// hungUntilTimeout reports whether err is a client's own timeout: the sign of a
// hang, where a cut response must give any other error.
func hungUntilTimeout(err error) bool {
	var netErr net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) ||
		errors.As(err, &netErr) && netErr.Timeout()
}

// upstreamErrorBody checks an edge error answer naming the cause.
func upstreamErrorBody(t *testing.T, resp *http.Response, body []byte, status int, code string) {
	t.Helper()
	var got struct{ Error, Detail string }
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatalf("%d answer %q is not JSON: %v", resp.StatusCode, body, err)
	}
	if resp.StatusCode != status || got.Error != code || got.Detail == "" {
		t.Errorf("answer %d %s, want %d with error %q and a detail", resp.StatusCode, body, status, code)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
}

// TestUpstreamDownThenBack: with the upstream's listener closed every
// request gets a 502 naming the cause; once it listens again on the same
// address the next request gets through.
func TestUpstreamDownThenBack(t *testing.T) {
	h := newFaultHarness(t)
	h.wantOK(t, "h1")
	h.up.down()
	for _, proto := range []string{"h1", "h2"} {
		resp, body := do(t, h.client(proto, ""), newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
		upstreamErrorBody(t, resp, body, 502, "upstream_unreachable")
		if want := "could not connect"; !strings.Contains(string(body), want) {
			t.Errorf("%s: 502 body %s does not say %q", proto, body, want)
		}
	}
	h.up.up()
	h.wantOK(t, "h1")
	h.wantOK(t, "h2")
	if st := h.edge.Stats(); st.BadGateway != 2 {
		t.Errorf("stats %+v, want two bad gateways", st)
	}
}

// TestUpstreamSlowThenBack: an upstream that reads the request and does
// not answer gets a 504 after UpstreamTimeout; when it answers again, so
// does the edge.
func TestUpstreamSlowThenBack(t *testing.T) {
	h := newFaultHarness(t, func(c *proxy.Config) { c.UpstreamTimeout = 300 * time.Millisecond })
	h.up.handle(func(conn *net.TCPConn, _ *bufio.Reader, req *http.Request) bool {
		io.Copy(io.Discard, req.Body)
		select {
		case <-h.release:
		case <-time.After(20 * time.Second):
		}
		return false
	})
	for _, proto := range []string{"h1", "h2"} {
		resp, body := do(t, h.client(proto, ""), newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
		upstreamErrorBody(t, resp, body, 504, "upstream_timeout")
	}
	h.up.handle(rawAnswerOK)
	h.wantOK(t, "h1")
	h.wantOK(t, "h2")
}

// TestUpstreamResetMidResponse: the upstream sends its headers and part of
// the body, and resets once the client has read some of it. The client's
// read must end in an error (a cut response, never one that looks whole,
// and not its own timeout: no hang), over HTTP/1.1 and HTTP/2, with a
// Content-Length or chunked. Afterwards no request is left in flight, the
// goroutines the faults started have ended, and the edge answers again.
func TestUpstreamResetMidResponse(t *testing.T) {
	const rounds = 10
	h := newFaultHarness(t)
	clients, baseline := h.warmClients(t)

	for _, framing := range []string{"Content-Length: 1048576", "Transfer-Encoding: chunked"} {
		for _, proto := range []string{"h1", "h2"} {
			for i := range rounds {
				// cut is closed by the client once it has read part of the body.
				cut := make(chan struct{})
				h.up.handle(func(conn *net.TCPConn, _ *bufio.Reader, req *http.Request) bool {
					io.Copy(io.Discard, req.Body)
					part := bytes.Repeat([]byte("x"), 32<<10)
					if strings.HasPrefix(framing, "Transfer") {
						part = fmt.Appendf(nil, "%x\r\n%s\r\n", len(part), part)
					}
					io.WriteString(conn, "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"+framing+"\r\n\r\n")
					conn.Write(part)
					select {
					case <-cut:
					case <-time.After(20 * time.Second):
					}
					resetConn(conn)
					return false
				})
				what := fmt.Sprintf("%s, %s, round %d", proto, framing, i+1)
				resp, err := clients[proto].Post("https://"+served+"/i/v0/e/", "application/json", strings.NewReader("{}"))
				if err != nil {
					close(cut)
					t.Fatalf("%s: no response headers although the upstream sent them: %v", what, err)
				}
				if resp.StatusCode != 200 {
					t.Errorf("%s: status %d, want the upstream's 200", what, resp.StatusCode)
				}
				first := make([]byte, 1024)
				if _, err := io.ReadFull(resp.Body, first); err != nil {
					t.Errorf("%s: reading the start of the body: %v", what, err)
				}
				close(cut)
				rest, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				switch {
				case err == nil:
					t.Errorf("%s: the client read a complete response of %d bytes from an upstream that reset", what, len(first)+len(rest))
				case hungUntilTimeout(err):
					t.Errorf("%s: the client's read hung until its timeout: %v", what, err)
				}
			}
		}
	}
	h.wantSettled(t, baseline, clients["h1"], clients["h2"])
	h.up.handle(rawAnswerOK)
	h.wantOK(t, "h1")
	h.wantOK(t, "h2")
}

// TestUpstreamResetDuringUpload: the upstream reads the request's headers
// and the start of its body, then resets while the client is still
// sending. The client gets a 502 or a cut connection, never a hang; the
// edge recovers.
func TestUpstreamResetDuringUpload(t *testing.T) {
	const rounds = 5
	h := newFaultHarness(t)
	clients, baseline := h.warmClients(t)
	h.up.handle(func(conn *net.TCPConn, _ *bufio.Reader, req *http.Request) bool {
		io.CopyN(io.Discard, req.Body, 64<<10)
		resetConn(conn)
		return false
	})
	answers := map[string]int{}
	for _, proto := range []string{"h1", "h2"} {
		for _, length := range []int64{8 << 20, -1} {
			for i := range rounds {
				what := fmt.Sprintf("%s, length %d, round %d", proto, length, i+1)
				req := newRequest(t, "POST", "https://"+served+"/i/v0/e/", io.NopCloser(&patternReader{n: 8 << 20}))
				req.ContentLength = length
				resp, err := clients[proto].Do(req)
				if err != nil {
					if hungUntilTimeout(err) {
						t.Errorf("%s: the client hung until its timeout: %v", what, err)
					}
					answers["cut: "+proto]++
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					if hungUntilTimeout(err) {
						t.Errorf("%s: reading the answer hung until the client's timeout: %v", what, err)
					}
					answers["cut: "+proto]++
					continue
				}
				upstreamErrorBody(t, resp, body, 502, "upstream_unreachable")
				answers["502: "+proto]++
			}
		}
	}
	t.Logf("answers to uploads the upstream reset: %v", answers)
	h.wantSettled(t, baseline, clients["h1"], clients["h2"])
	h.up.handle(rawAnswerOK)
	h.wantOK(t, "h1")
	h.wantOK(t, "h2")
}

// warmClients returns an h1 and an h2 client that have each been answered
// once, so their connections and the edge's upstream pool exist, and the
// goroutine count then: the baseline wantSettled compares with.
func (h *faultHarness) warmClients(t *testing.T) (map[string]*http.Client, int) {
	t.Helper()
	clients := map[string]*http.Client{"h1": h.client("h1", ""), "h2": h.client("h2", "")}
	for _, c := range clients {
		resp, body := do(t, c, newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
		if resp.StatusCode != 200 {
			t.Fatalf("before the faults: %d %q", resp.StatusCode, body)
		}
	}
	return clients, runtime.NumGoroutine()
}
