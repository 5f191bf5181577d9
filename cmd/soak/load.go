package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// maxInFlight bounds the requests outstanding at once. Past it a due
// request is not sent but counted as a failure, so a stalled server cannot
// make the soak itself grow without bound.
const maxInFlight = 2000

// requestTimeout is the most one request may take, due time excluded.
const requestTimeout = 15 * time.Second

// upstreamAnswer is the ingestion upstream's answer: what it received, so
// the soak checks each proxied answer instead of only its status.
type upstreamAnswer struct {
	Upstream string `json:"upstream"`
	Host     string `json:"host"` // the X-Forwarded-Host it got
	Path     string `json:"path"`
	Bytes    int64  `json:"bytes"`
}

// postBody holds the largest POST body; request i sends a prefix of it.
var postBody = func() []byte {
	b := make([]byte, 4<<10)
	for i := range b {
		b[i] = 'a' + byte(i%26)
	}
	return b
}()

// staticBody is every /static/ answer.
var staticBody = bytes.Repeat([]byte("/*soak*/\n"), staticSize/9+1)[:staticSize]

// postSize is the body size of POST number i: 1 KiB to 4 KiB, spread.
func postSize(i int64) int { return 1024 + int(i*7919%3073) }

// target is a domain traffic goes to, with its own keep-alive client so
// its connections can be closed when it leaves: the server's fds and
// goroutines then track the connections of the domains served now, and a
// leak on the server is not hidden among idle connections the soak kept.
type target struct {
	domain   string
	client   *http.Client
	requests atomic.Int64
	inflight sync.WaitGroup
}

// targets is the set of domains served right now. A domain leaves the set
// before its record is deleted, and only once the requests already picked
// for it have finished, so no request can meet a domain being deleted
// unless the soak means it to.
type targets struct {
	newClient func() *http.Client
	mu        sync.Mutex
	live      []*target
}

func (t *targets) add(domain string) *target {
	tg := &target{domain: domain, client: t.newClient()}
	t.mu.Lock()
	t.live = append(t.live, tg)
	t.mu.Unlock()
	return tg
}

// pick chooses the target of request i, round-robin, and counts the
// request in flight for it; the caller calls tg.inflight.Done. nil when no
// domain is served.
func (t *targets) pick(i int64) *target {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.live) == 0 {
		return nil
	}
	tg := t.live[int(i%int64(len(t.live)))]
	tg.inflight.Add(1)
	tg.requests.Add(1)
	return tg
}

// remove takes tg out of the set, waits for its requests in flight and
// closes its connections. Every inflight.Add happens under mu while tg is
// in the set, so none can race with the Wait.
func (t *targets) remove(tg *target) {
	t.mu.Lock()
	t.live = slices.DeleteFunc(t.live, func(x *target) bool { return x == tg })
	t.mu.Unlock()
	tg.inflight.Wait()
	tg.client.CloseIdleConnections()
}

// removeAll removes every target.
func (t *targets) removeAll() {
	t.mu.Lock()
	all := slices.Clone(t.live)
	t.mu.Unlock()
	for _, tg := range all {
		t.remove(tg)
	}
}

// generator sends requests at a fixed rate, open loop.
type generator struct {
	rate      int
	targets   *targets
	traffic   *trafficStats
	httpsPort int
}

// run sends request i at t0 + i/rate until end. When the loop wakes late
// (a busy machine) it sends every request already due at once; each keeps
// its due time, from which its latency is measured.
func (g *generator) run(ctx context.Context, t0, end time.Time) {
	var wg sync.WaitGroup
	var inflight atomic.Int64
	for i := int64(0); ctx.Err() == nil; i++ {
		due := t0.Add(time.Duration(i * int64(time.Second) / int64(g.rate)))
		if !due.Before(end) {
			break
		}
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		g.traffic.sendLag(due, time.Since(due))
		tg := g.targets.pick(i)
		if tg == nil {
			g.traffic.request(due, 0, "not sent: no domain served", "")
			continue
		}
		if inflight.Load() >= maxInFlight {
			tg.inflight.Done()
			g.traffic.request(due, 0, fmt.Sprintf("not sent: %d requests already in flight", maxInFlight), "")
			continue
		}
		inflight.Add(1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer inflight.Add(-1)
			defer tg.inflight.Done()
			cause, detail := g.one(ctx, tg.client, i, tg.domain)
			g.traffic.request(due, time.Since(due), cause, detail)
		}()
	}
	wg.Wait()
}

// one sends request i to domain and checks the answer: status 200, from
// the right upstream, which saw the right customer domain and the whole
// body. It returns "" or the failure's cause (a short, bounded text) and
// its detail.
func (g *generator) one(ctx context.Context, client *http.Client, i int64, domain string) (cause, detail string) {
	base := fmt.Sprintf("https://%s:%d", domain, g.httpsPort)
	static := i%5 == 4
	var req *http.Request
	var err error
	if static {
		req, err = http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("%s/static/soak-%d.js", base, i%16), nil)
	} else {
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, base+"/i/v0/e/", bytes.NewReader(postBody[:postSize(i)]))
		if req != nil {
			req.Header.Set("Content-Type", "application/json")
		}
	}
	if err != nil {
		return "building request", err.Error()
	}
	// 1 in 50 on a new connection: handshakes and connection churn too.
	req.Close = i%50 == 49
	resp, err := client.Do(req)
	if err != nil {
		return classify(err), err.Error()
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "reading answer: " + classify(err), err.Error()
	}
	route := "ingest"
	if static {
		route = "static"
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Sprintf("status %d (%s)", resp.StatusCode, route), strings.TrimSpace(string(body))
	}
	if static {
		if got := resp.Header.Get("X-Soak-Upstream"); got != "assets" {
			return "static answer not from the assets upstream", fmt.Sprintf("X-Soak-Upstream %q", got)
		}
		if got := resp.Header.Get("X-Soak-Host"); got != domain {
			return "wrong X-Forwarded-Host", fmt.Sprintf("assets upstream saw %q for %s", got, domain)
		}
		if !bytes.Equal(body, staticBody) {
			return "static answer corrupted", fmt.Sprintf("%d bytes, want %d", len(body), len(staticBody))
		}
		return "", ""
	}
	var a upstreamAnswer
	if err := json.Unmarshal(body, &a); err != nil {
		return "ingest answer not JSON", fmt.Sprintf("%v: %.200q", err, body)
	}
	switch {
	case a.Upstream != "ingest":
		return "ingest answer not from the ingestion upstream", string(body)
	case a.Host != domain:
		return "wrong X-Forwarded-Host", fmt.Sprintf("ingestion upstream saw %q for %s", a.Host, domain)
	case a.Bytes != int64(postSize(i)):
		return "body not passed whole", fmt.Sprintf("upstream got %d bytes, sent %d", a.Bytes, postSize(i))
	}
	return "", ""
}

// classify turns a client error into a short cause, so failures group.
func classify(err error) string {
	var verr *tls.CertificateVerificationError
	var nerr net.Error
	msg := err.Error()
	switch {
	case errors.As(err, &verr):
		return "certificate not verified"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled (soak interrupted)"
	case strings.Contains(msg, "remote error: tls:"):
		return "TLS handshake refused"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, syscall.ECONNRESET):
		return "connection reset"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "connection closed early (EOF)"
	}
	return "other error"
}

// newEdgeClient is an HTTPS client that reaches every domain at the edge's
// address and verifies the edge's certificates against Pebble's root. Its
// idle connections close after 30 s, before the edge's 2 min idle timeout,
// so the client never sends on a connection the edge is closing.
func newEdgeClient(httpsAddr string, roots *x509.CertPool, keepAlive bool) *http.Client {
	d := &net.Dialer{Timeout: 5 * time.Second}
	return &http.Client{
		Timeout: requestTimeout,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				return d.DialContext(ctx, "tcp", httpsAddr)
			},
			TLSClientConfig:     &tls.Config{RootCAs: roots},
			TLSHandshakeTimeout: 10 * time.Second,
			DisableKeepAlives:   !keepAlive,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     30 * time.Second,
		},
	}
}

// trafficStats holds what happened to the requests, by period of their
// due time.
type trafficStats struct {
	t0      time.Time
	period  time.Duration
	fails   *failures
	mu      sync.Mutex
	periods []periodStats
}

type periodStats struct {
	sent, ok, failed         int
	provoked, provokedFailed int
	latencies                []time.Duration // every sent request's, failed ones included
	// maxLag is how late the generator sent a request, at worst: large
	// when the soak itself was starved of CPU, small when a latency spike
	// was the server's (or the upstream's).
	maxLag time.Duration
}

func newTraffic(t0 time.Time, period, duration time.Duration, fails *failures) *trafficStats {
	n := int((duration + period - 1) / period)
	return &trafficStats{t0: t0, period: period, fails: fails, periods: make([]periodStats, n)}
}

// bucket is the period holding time at; times after the run (provoked
// requests of the last cycle) go to the last one.
func (s *trafficStats) bucket(at time.Time) *periodStats {
	i := int(at.Sub(s.t0) / s.period)
	i = max(0, min(i, len(s.periods)-1))
	return &s.periods[i]
}

// request records one request due at due: cause "" is a success.
func (s *trafficStats) request(due time.Time, latency time.Duration, cause, detail string) {
	s.mu.Lock()
	p := s.bucket(due)
	p.sent++
	if latency > 0 {
		p.latencies = append(p.latencies, latency)
	}
	if cause == "" {
		p.ok++
	} else {
		p.failed++
	}
	s.mu.Unlock()
	if cause != "" {
		s.fails.add("request", cause, detail)
	}
}

// sendLag records how late the request due at due was sent.
func (s *trafficStats) sendLag(due time.Time, lag time.Duration) {
	s.mu.Lock()
	p := s.bucket(due)
	p.maxLag = max(p.maxLag, lag)
	s.mu.Unlock()
}

// provoked records a request to a deleted domain; asExpected says it
// failed the way it must, else cause says how it went instead.
func (s *trafficStats) provoked(at time.Time, asExpected bool, cause, detail string) {
	s.mu.Lock()
	p := s.bucket(at)
	p.provoked++
	if asExpected {
		p.provokedFailed++
	}
	s.mu.Unlock()
	if !asExpected {
		s.fails.add("provoked", cause, detail)
	}
}

// counts sums the counters of every period so far.
func (s *trafficStats) counts() (sent, failed, provoked int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, p := range s.periods {
		sent += p.sent
		failed += p.failed
		provoked += p.provoked
	}
	return sent, failed, provoked
}

// totals sums every period.
func (s *trafficStats) totals() periodStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	var t periodStats
	for _, p := range s.periods {
		t.sent += p.sent
		t.ok += p.ok
		t.failed += p.failed
		t.provoked += p.provoked
		t.provokedFailed += p.provokedFailed
		t.latencies = append(t.latencies, p.latencies...)
		t.maxLag = max(t.maxLag, p.maxLag)
	}
	return t
}

// percentile is the q-quantile (0 < q ≤ 1) of sorted durations, by the
// nearest-rank method; 0 for none.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(q*float64(len(sorted)) + 0.999999999)
	return sorted[max(0, min(rank, len(sorted))-1)]
}

// failures collects everything that went wrong unprovoked, grouped by
// kind and cause, with the first example of each.
type failures struct {
	mu sync.Mutex
	m  map[string]*failure
}

type failure struct {
	kind, cause, example string
	count                int
}

func newFailures() *failures { return &failures{m: map[string]*failure{}} }

func (f *failures) add(kind, cause, example string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := kind + "\x00" + cause
	if x := f.m[k]; x != nil {
		x.count++
		return
	}
	if len(example) > 300 {
		example = example[:300] + "…"
	}
	f.m[k] = &failure{kind: kind, cause: cause, example: example, count: 1}
}

// snapshot lists the failures, most frequent first.
func (f *failures) snapshot() []failure {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]failure, 0, len(f.m))
	for _, x := range f.m {
		out = append(out, *x)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].count != out[j].count {
			return out[i].count > out[j].count
		}
		return out[i].kind+out[i].cause < out[j].kind+out[j].cause
	})
	return out
}
