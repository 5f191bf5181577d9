package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// shortConfig is the short form of `make soak` that `make test` runs, on
// the binary built without -race, as `make soak` builds it.
func shortConfig(t *testing.T) config {
	return config{
		Bin:         testbin.Build(t, false),
		Duration:    20 * time.Second,
		Warmup:      5 * time.Second,
		Period:      5 * time.Second,
		SampleEvery: time.Second,
		Rate:        50,
		Stable:      1,
		Churners:    2,
		LiveFor:     3 * time.Second,
		Provoked:    2,
		RestWait:    2 * time.Minute,
	}
}

// TestSoakShort runs the whole soak for 20 s at 50 req/s with two churn
// loops and checks that it passes (flatness judged but not required), that
// the server came back to rest, that the open loop sent exactly
// rate × duration requests whatever their latency, that records went
// through the whole cycle with traffic, and that every request to a
// deleted domain was refused.
func TestSoakShort(t *testing.T) {
	c := shortConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := run(ctx, c, testLog{t})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	report := res.markdown()
	t.Logf("report:\n%s", report)
	// Flatness over 20 s says little and a stall of the busy machine in
	// the last 5 s could fail it; its rule is tested by TestJudgeFlat, and
	// here only that it was judged on samples from both windows.
	for _, p := range res.problems() {
		if !strings.HasPrefix(p, "not flat: ") {
			t.Errorf("soak did not pass: %s", p)
		}
	}
	if len(res.flat) != len(flatRules) {
		t.Errorf("%d resources judged, want %d", len(res.flat), len(flatRules))
	}
	for _, f := range res.flat {
		if f.nBase == 0 || f.nLast == 0 {
			t.Errorf("%s judged on %d base and %d last samples", f.rule.name, f.nBase, f.nLast)
		}
	}
	tot := res.traffic.totals()
	if want := c.Rate * int(c.Duration/time.Second); tot.sent != want || tot.ok != want {
		t.Errorf("sent %d, ok %d; want %d of each (rate × duration, open loop)", tot.sent, tot.ok, want)
	}
	for i, p := range res.traffic.periods {
		if want := c.Rate * int(c.Period/time.Second); p.sent != want {
			t.Errorf("period %d: sent %d, want %d", i, p.sent, want)
		}
	}
	ch := res.churn
	if ch.served < 1 || ch.requests < 1 {
		t.Errorf("churn: %d records served with %d requests; want at least one record with traffic", ch.served, ch.requests)
	}
	if ch.deleted < ch.served || ch.created < ch.deleted {
		t.Errorf("churn: created %d, valid %d, served %d, deleted %d: every served record must be deleted", ch.created, ch.valid, ch.served, ch.deleted)
	}
	if tot.provoked < c.Provoked*ch.served || tot.provokedFailed != tot.provoked {
		t.Errorf("provoked requests: %d sent, %d refused; want %d per served record, all refused", tot.provoked, tot.provokedFailed, c.Provoked)
	}
	if n := len(res.samples); n < 15 {
		t.Errorf("%d resource samples over 20 s at 1 s; want at least 15", n)
	}
	for _, s := range res.samples {
		if s.rssKB <= 0 || s.goroutines <= 0 || s.fds <= 0 || s.records < c.Stable {
			t.Errorf("implausible sample %+v", s)
		}
	}
	if !res.rest.ok || res.rest.after.records != c.Stable {
		t.Errorf("not back at rest: %s", res.rest.why)
	}
	for _, want := range []string{"#### Traffic per period of 5s", "#### At rest after the run", "#### Record churn", "#### Server resources", "#### Flatness after a 5s warm-up", "Shutdown: exit 0", "**Verdict: "} {
		if !strings.Contains(report, want) {
			t.Errorf("report lacks %q", want)
		}
	}
}

// TestSoakCountsFailures makes the ingestion upstream answer 500 to every
// 7th request and checks the soak fails, counting exactly those requests
// as unprovoked failures: the harness sees failures, and only real ones.
func TestSoakCountsFailures(t *testing.T) {
	c := shortConfig(t)
	c.Duration, c.Warmup, c.Period, c.Rate, c.Churners = 6*time.Second, 2*time.Second, 2*time.Second, 40, 0
	c.upstreamFault = func(n int64) bool { return n%7 == 0 }
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	res, err := run(ctx, c, testLog{t})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	report := res.markdown()
	t.Logf("report:\n%s", report)
	if res.passed() {
		t.Fatal("the soak passed although the upstream answered 500 on purpose")
	}
	if res.upstreamFaults == 0 {
		t.Fatal("no fault was injected")
	}
	tot := res.traffic.totals()
	if int64(tot.failed) != res.upstreamFaults || res.unprovoked() != tot.failed {
		t.Errorf("%d requests failed, %d unprovoked failures; want both %d, the injected faults", tot.failed, res.unprovoked(), res.upstreamFaults)
	}
	if len(res.failures) != 1 || res.failures[0].cause != "status 500 (ingest)" {
		t.Errorf("failures = %+v; want one cause, status 500 (ingest)", res.failures)
	}
	if !strings.Contains(report, "**Verdict: FAIL**") || !strings.Contains(report, "unprovoked failures") {
		t.Error("report does not say FAIL for the unprovoked failures")
	}
}

func TestJudgeFlat(t *testing.T) {
	mk := func(f func(sec int) (rssMiB, goroutines, fds int)) []sample {
		var out []sample
		for s := 0; s <= 60; s += 5 {
			r, g, fd := f(s)
			out = append(out, sample{at: time.Duration(s) * time.Second, rssKB: int64(r) << 10, goroutines: g, fds: fd})
		}
		return out
	}
	judge := func(s []sample) map[string]flatResult {
		m := map[string]flatResult{}
		for _, r := range judgeFlat(s, 20*time.Second, 10*time.Second, 60*time.Second) {
			m[r.rule.name] = r
		}
		return m
	}

	flat := judge(mk(func(s int) (int, int, int) { return 50 + s%3, 40 + s%7, 30 + s%5 }))
	for name, r := range flat {
		if !r.ok {
			t.Errorf("flat series: %s judged %q", name, r.why)
		}
	}

	// Before the warm-up anything goes. After it RSS climbs 2 MiB per 5 s
	// from 46 (floor 46 in the base period 20–30 s, 82 in the last
	// 50–60 s, over the limit 46 + max(20 %, 16) = 62); goroutines jump by
	// 30 (over the +20 allowance); fds creep by 1 and then burst to 900 in
	// one sample of the last period, which a floor does not see.
	grow := judge(mk(func(s int) (int, int, int) {
		if s < 20 {
			return 10 * s, 500, 500
		}
		g, fd := 40, 30+s/30
		if s >= 50 {
			g = 70
		}
		if s == 55 {
			fd = 900
		}
		return 6 + 2*s, g, fd
	}))
	if r := grow["RSS"]; r.ok || r.baseline != 46 || r.last != 106 || r.limit != 62 {
		t.Errorf("RSS: ok %v, base %.1f, last %.1f, limit %.1f; want not ok, 46, 106, 62", r.ok, r.baseline, r.last, r.limit)
	}
	if r := grow["goroutines"]; r.ok || !strings.Contains(r.why, "goroutines floor grew from 40.0 to 70.0") {
		t.Errorf("goroutines: ok %v, why %q", r.ok, r.why)
	}
	if r := grow["open fds"]; !r.ok || r.last-r.baseline != 1 {
		t.Errorf("fds: ok %v, floor %.1f → %.1f; want a growth of 1 and the burst ignored", r.ok, r.baseline, r.last)
	}

	// A run too short to have both windows cannot be judged flat.
	short := judgeFlat(mk(func(int) (int, int, int) { return 1, 1, 1 })[:4], 20*time.Second, 10*time.Second, 60*time.Second)
	for _, r := range short {
		if r.ok || !strings.Contains(r.why, "not enough samples") {
			t.Errorf("%s with no sample after the warm-up: ok %v, why %q", r.rule.name, r.ok, r.why)
		}
	}
}

func TestPercentile(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 200; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	for _, c := range []struct {
		q    float64
		want time.Duration
	}{{0.5, 100 * time.Millisecond}, {0.99, 198 * time.Millisecond}, {1, 200 * time.Millisecond}} {
		if got := percentile(d, c.q); got != c.want {
			t.Errorf("percentile(1..200 ms, %v) = %v, want %v", c.q, got, c.want)
		}
	}
	if got := percentile(nil, 0.5); got != 0 {
		t.Errorf("percentile of nothing = %v", got)
	}
}

func TestParseMetrics(t *testing.T) {
	text := `# HELP go_goroutines Number of goroutines that currently exist.
# TYPE go_goroutines gauge
go_goroutines 42
edgeproxy_records{status="valid"} 3
edgeproxy_records{status="waiting"} 2
edgeproxy_records_scrape_errors_total 0
`
	g, r, err := parseMetrics(strings.NewReader(text))
	if err != nil || g != 42 || r != 5 {
		t.Errorf("parseMetrics = %d goroutines, %d records, %v; want 42, 5, nil", g, r, err)
	}
	if _, _, err := parseMetrics(strings.NewReader("edgeproxy_records{status=\"valid\"} 3\n")); err == nil {
		t.Error("a scrape without go_goroutines parsed")
	}
}

func TestValidate(t *testing.T) {
	c := defaultConfig()
	if err := c.validate(); err != nil {
		t.Errorf("the defaults: %v", err)
	}
	c.Duration = 3 * time.Minute // warm-up 2 min + 2 periods of 1 min is 4 min
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "-duration 3m0s") {
		t.Errorf("3 min with a 2 min warm-up: %v", err)
	}
	c = defaultConfig()
	c.SampleEvery = 2 * time.Minute
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "-sample") {
		t.Errorf("sampling slower than the period: %v", err)
	}
}

// testLog sends the soak's progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// TestRestCheck holds 30 idle keep-alive connections to the server's API
// and checks that the check at rest sees them (30 goroutines and fds over
// the state before, more than the allowance), then that it passes once
// they are closed: the check can fail, and fails on what the server holds.
func TestRestCheck(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	e, err := start(ctx, shortConfig(t), testLog{t})
	if e != nil {
		defer e.close()
	}
	if err != nil {
		t.Fatal(err)
	}
	smp := &sampler{pid: e.cmd.Process.Pid, metricsURL: e.api + "/metrics", fails: newFailures()}
	noKeepAlive := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	before, err := smp.take(ctx, noKeepAlive)
	if err != nil {
		t.Fatal(err)
	}

	const held = restAllowance + 10
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range held {
		c, err := net.Dial("tcp", strings.TrimPrefix(e.api, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// A whole request, answered, leaves the connection idle and open
		// (the API's idle timeout is 2 min).
		fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: api\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	r := restCheck(ctx, smp, before, 0, 3*time.Second)
	if r.ok || r.after.fds <= before.fds+restAllowance || r.after.goroutines <= before.goroutines+restAllowance {
		t.Errorf("with %d connections held: ok %v, %d → %d fds, %d → %d goroutines; want not ok and both up by more than %d",
			held, r.ok, before.fds, r.after.fds, before.goroutines, r.after.goroutines, restAllowance)
	}
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	if r := restCheck(ctx, smp, before, 0, 30*time.Second); !r.ok {
		t.Errorf("with the connections closed: %s", r.why)
	}
}
