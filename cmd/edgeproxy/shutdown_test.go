package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/internal/testcert"
)

// TestShutdownUnderLoad runs the binary on a data dir of valid records
// (with certificates, as startup_bench_test.go seeds them) in front of a
// loopback upstream, with TLS traffic flowing through the edge and some
// requests held by the upstream, and sends SIGTERM. Every listener closes
// at once (new connections are refused while the held requests are still
// running), every request the upstream received is answered 200 to its
// client, and the process exits 0. Then the binary is started again on the
// same data dir and timed from exec to the first proxied HTTPS 200.
//
// make test runs it with a few hundred records and the race-built binary,
// and asserts only that the restart serves. The figure of the issue
// (10,000 records) comes from a binary built without the race detector:
//
//	EDGEPROXY_SHUTDOWN_RECORDS=10000 go test -run '^TestShutdownUnderLoad$' -count 1 -timeout 20m -v ./cmd/edgeproxy/
//
// which restarts it three times and logs each restart-to-serving time.
func TestShutdownUnderLoad(t *testing.T) {
	n, restarts, bin := 200, 1, ""
	if v := os.Getenv("EDGEPROXY_SHUTDOWN_RECORDS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			t.Fatalf("EDGEPROXY_SHUTDOWN_RECORDS=%q: want a whole number of records above 0", v)
		}
		restarts = 3
		bin = testbin.Build(t, false)
	} else {
		bin = testbin.Build(t, true)
	}

	w := newACMEWorld(t)
	ca := newStartupCA(t)
	dir := t.TempDir()
	began := time.Now()
	domains := buildStartupDataDir(t, dir, w.pebble.DirectoryURL(), n, ca)
	t.Logf("data dir: %d valid records with certificates, built in %s", n, time.Since(began).Round(time.Millisecond))
	up := newHoldingUpstream(t)
	api := testbin.FreeAddr(t)
	args := append([]string{"serve", "--data-dir", dir, "--api-addr", api, "--target-cname-base", startupBase,
		"--upstream", up.URL, "--assets-upstream", up.URL}, w.args...)

	s := launch(t, bin, args)
	h1, h2 := shutdownClient(t, w, ca, "h1"), shutdownClient(t, w, ca, "h2")
	took := s.waitServing(t, h1, domains[n-1])
	t.Logf("first start: serving after %s", took.Round(time.Millisecond))
	arrivedBefore := up.arrived.Load()

	// Traffic: workers sending short requests over kept-alive connections,
	// HTTP/1.1 and HTTP/2, across the records.
	var (
		load      loadTally
		stop      = make(chan struct{})
		workers   sync.WaitGroup
		sigtermAt atomic.Int64 // unix nanoseconds; 0 before SIGTERM
	)
	for i := range 4 {
		c := []*http.Client{h1, h2}[i%2]
		workers.Add(1)
		go func() {
			defer workers.Done()
			for j := 0; ; j++ {
				select {
				case <-stop:
					return
				default:
				}
				d := domains[(i*7919+j*104729)%n]
				load.record(c.Get("https://" + d + "/i/v0/e/?w=" + strconv.Itoa(i)))
				if load.failedAfter(sigtermAt.Load()) {
					time.Sleep(10 * time.Millisecond) // refused: the listeners are closed
				}
			}
		}()
	}
	// Requests the upstream holds until released: in flight at SIGTERM.
	const held = 8
	heldDone := make(chan heldResult, held)
	for i := range held {
		c := []*http.Client{h1, h2}[i%2]
		go func() {
			resp, err := c.Get("https://" + domains[i*n/held] + "/slow")
			if err != nil {
				heldDone <- heldResult{err: err}
				return
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			heldDone <- heldResult{status: resp.StatusCode, body: string(body), err: err}
		}()
	}
	up.waitHeld(t, held)
	heldSince := time.Now()
	for load.ok.Load() < 50 {
		if time.Since(heldSince) > 30*time.Second {
			t.Fatalf("only %d requests answered in 30s of traffic; failures: %v", load.ok.Load(), load.failures())
		}
		time.Sleep(10 * time.Millisecond)
	}

	sigtermAt.Store(time.Now().UnixNano())
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// Every listener closes, and stays closed, while the held requests
	// still run: none waits for another server's drain.
	for _, addr := range []string{w.httpsAddr, w.httpAddr, api} {
		waitRefused(t, addr, 10*time.Second)
	}
	for _, addr := range []string{w.httpsAddr, w.httpAddr, api} {
		for range 5 {
			if err := refused(addr); err != nil {
				t.Errorf("%s after it was closed: %v", addr, err)
				break
			}
		}
	}
	select {
	case err := <-s.done:
		t.Fatalf("exited (%v) with %d requests still held by the upstream\n%s", err, held, s.stderr)
	default:
	}
	// Held about a second, then answered.
	time.Sleep(time.Until(heldSince.Add(time.Second)))
	close(up.release)
	for range held {
		r := <-heldDone
		if r.err != nil || r.status != 200 || r.body != "held ok" {
			t.Errorf("request in flight at SIGTERM: status %d, body %q, err %v; want 200 \"held ok\"", r.status, r.body, r.err)
		}
	}
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v, want status 0\n%s", err, s.stderr)
		}
		s.done <- err
	case <-time.After(40 * time.Second):
		t.Fatalf("no exit 40s after the held requests were answered\n%s", s.stderr)
	}
	close(stop)
	workers.Wait()

	ok, arrived := load.ok.Load()+held, up.arrived.Load()-arrivedBefore
	t.Logf("traffic: %d answered 200 (%d held), %d refused or cut after SIGTERM; the upstream received %d",
		ok, held, len(load.failures()), arrived)
	if bad := load.badStatuses(); len(bad) > 0 {
		t.Errorf("answers other than 200: %v", bad)
	}
	if early := load.failedBefore(sigtermAt.Load()); len(early) > 0 {
		t.Errorf("requests failed before SIGTERM: %v", early)
	}
	// A request the upstream received and whose answer was lost is one the
	// drain dropped.
	if arrived != ok {
		kinds := map[string]int{}
		for _, f := range load.failures() {
			var uerr *url.Error
			if errors.As(f.err, &uerr) {
				f.err = uerr.Err
			}
			kinds[f.err.Error()]++
		}
		t.Errorf("the upstream received %d requests, their clients got %d answers; failures after SIGTERM: %v", arrived, ok, kinds)
	}
	for _, bad := range []string{"drain incomplete", "level=ERROR"} {
		if strings.Contains(s.stderr.String(), bad) {
			t.Errorf("the server logged %q during shutdown:\n%s", bad, s.stderr)
		}
	}

	// Restart on the same data dir.
	for i := range restarts {
		s := launch(t, bin, args)
		c := shutdownClient(t, w, ca, "h1")
		took := s.waitServing(t, c, domains[n-1])
		t.Logf("restart %d with %d records: exec to the first proxied HTTPS 200 in %s", i+1, n, took.Round(time.Millisecond))
		for _, d := range []string{domains[0], domains[n/2]} {
			resp, err := c.Get("https://" + d + "/i/v0/e/")
			if err != nil {
				t.Errorf("%s after restart: %v", d, err)
				continue
			}
			resp.Body.Close()
			if resp.StatusCode != 200 {
				t.Errorf("%s after restart: %d", d, resp.StatusCode)
			}
		}
		c.CloseIdleConnections()
		s.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-s.done:
			if err != nil {
				t.Errorf("restart %d: exit after SIGTERM: %v\n%s", i+1, err, s.stderr)
			}
			s.done <- err
		case <-time.After(40 * time.Second):
			t.Fatalf("restart %d: no exit 40s after SIGTERM\n%s", i+1, s.stderr)
		}
	}
	if got := w.pebble.Orders(); got != 0 {
		t.Errorf("serving valid records made %d ACME orders", got)
	}
}

// holdingUpstream answers "ok", except /slow, which it holds until release
// is closed and then answers "held ok".
type holdingUpstream struct {
	*httptest.Server
	arrived atomic.Int64
	held    atomic.Int64
	release chan struct{}
}

func newHoldingUpstream(t *testing.T) *holdingUpstream {
	u := &holdingUpstream{release: make(chan struct{})}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.arrived.Add(1)
		if r.URL.Path != "/slow" {
			io.WriteString(w, "ok")
			return
		}
		u.held.Add(1)
		select {
		case <-u.release:
		case <-time.After(30 * time.Second):
		}
		io.WriteString(w, "held ok")
	}))
	t.Cleanup(u.Close)
	t.Cleanup(func() {
		select {
		case <-u.release:
		default:
			close(u.release)
		}
	})
	return u
}

func (u *holdingUpstream) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for u.held.Load() < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d held requests reached the upstream in 30s", u.held.Load(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

type heldResult struct {
	status int
	body   string
	err    error
}

// loadTally is what the traffic workers saw.
type loadTally struct {
	ok atomic.Int64

	// mu guards bad and failed.
	mu     sync.Mutex
	bad    []string
	failed []timedErr
}

type timedErr struct {
	at  time.Time
	err error
}

func (l *loadTally) record(resp *http.Response, err error) {
	if err == nil {
		var body []byte
		body, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		if err == nil {
			if resp.StatusCode == 200 && string(body) == "ok" {
				l.ok.Add(1)
				return
			}
			l.mu.Lock()
			l.bad = append(l.bad, fmt.Sprintf("%d %q", resp.StatusCode, body))
			l.mu.Unlock()
			return
		}
	}
	l.mu.Lock()
	l.failed = append(l.failed, timedErr{time.Now(), err})
	l.mu.Unlock()
}

func (l *loadTally) failures() []timedErr {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]timedErr(nil), l.failed...)
}

func (l *loadTally) badStatuses() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.bad...)
}

// failedBefore is the failures that came before sigterm (unix ns; 0 for
// "not sent yet", when every failure counts).
func (l *loadTally) failedBefore(sigterm int64) []error {
	var out []error
	for _, f := range l.failures() {
		if sigterm == 0 || f.at.UnixNano() < sigterm {
			out = append(out, f.err)
		}
	}
	return out
}

// failedAfter reports whether the last request failed after SIGTERM.
func (l *loadTally) failedAfter(sigterm int64) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return sigterm != 0 && len(l.failed) > 0 && l.failed[len(l.failed)-1].at.UnixNano() >= sigterm
}

// waitServing polls the edge for domain until a proxied request is
// answered 200 and returns the time since the process was started.
func (s *server) waitServing(t *testing.T, c *http.Client, domain string) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(2 * time.Minute)
	for {
		resp, err := c.Get("https://" + domain + "/i/v0/e/")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return time.Since(start)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served 2 minutes after exec (last: %v)\n%s", domain, err, s.stderr)
		}
		select {
		case err := <-s.done:
			t.Fatalf("server exited during start: %v\n%s", err, s.stderr)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// shutdownClient connects to the edge whatever the URL's host, trusting the
// seeded certificates' CA, speaking proto ("h1" or "h2").
func shutdownClient(t *testing.T, w *acmeWorld, ca *testcert.CA, proto string) *http.Client {
	var protocols http.Protocols
	protocols.SetHTTP1(proto == "h1")
	protocols.SetHTTP2(proto == "h2")
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second}
			return d.DialContext(ctx, "tcp", w.httpsAddr)
		},
		TLSClientConfig:    &tls.Config{RootCAs: ca.Pool},
		Protocols:          &protocols,
		DisableCompression: true,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 60 * time.Second}
}

// refused returns nil when a TCP connection to addr is refused, and an
// error saying what happened otherwise.
func refused(addr string) error {
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err == nil {
		conn.Close()
		return errors.New("a new connection was accepted")
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("connecting failed, but not refused: %w", err)
	}
	return nil
}

// waitRefused waits until connections to addr are refused.
func waitRefused(t *testing.T, addr string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for refused(addr) != nil {
		if time.Now().After(deadline) {
			t.Fatalf("%s still accepts connections %s after SIGTERM, while requests are in flight", addr, within)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
