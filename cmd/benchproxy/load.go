package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/edgeproxy/edgeproxy/internal/cpustat"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// wrkSummary is what the wrk scripts print in done().
type wrkSummary struct {
	DurationUS int64   `json:"duration_us"`
	Requests   int64   `json:"requests"`
	Bytes      int64   `json:"bytes"`
	Connect    int64   `json:"connect"`
	Read       int64   `json:"read"`
	Write      int64   `json:"write"`
	Status     int64   `json:"status"`
	Timeout    int64   `json:"timeout"`
	P50US      int64   `json:"p50_us"`
	P90US      int64   `json:"p90_us"`
	P99US      int64   `json:"p99_us"`
	MaxUS      int64   `json:"max_us"`
	MeanUS     float64 `json:"mean_us"`
}

func (s wrkSummary) errors() int64 { return s.Connect + s.Read + s.Write + s.Status + s.Timeout }

func parseWrkOutput(out string) (wrkSummary, error) {
	var s wrkSummary
	for _, line := range strings.Split(out, "\n") {
		if rest, ok := strings.CutPrefix(line, "BENCHJSON "); ok {
			err := json.Unmarshal([]byte(rest), &s)
			return s, err
		}
	}
	return s, fmt.Errorf("no BENCHJSON line in wrk's output:\n%s", out)
}

// load runs test's load against p for d, unmeasured.
func (b *bench) load(p *peer, test string, d time.Duration) error {
	var err error
	switch test {
	case testHandshake:
		b.handshakes(p, d)
	case testPostH2:
		_, _, err = b.h2load(p, d)
	default:
		_, _, err = b.wrkRusage(p, test, d)
	}
	return err
}

// warmUpRounds bounds the warm-up of one load on one peer.
const warmUpRounds = 6

// warm runs test's load on p for b.o.warmup, again while the proxy keeps
// opening upstream connections (at most warmUpRounds times): a keep-alive
// pool grows to the peak concurrency the load reaches, which can take a
// few runs, and the measured runs must not pay for that growth.
func (b *bench) warm(p *peer, test string) error {
	for round := 1; ; round++ {
		before, err := b.upstreamAccepts()
		if err != nil {
			return err
		}
		if err := b.load(p, test, b.o.warmup); err != nil {
			return err
		}
		after, err := b.upstreamAccepts()
		if err != nil {
			return err
		}
		opened := upstreamConnsOpened(before, after)
		if p.proc == nil || test == testHandshake || opened <= b.o.maxUpConns || b.o.maxUpConns < 0 || round >= warmUpRounds {
			return nil
		}
		logf("warm-up %s %s: %d upstream connections opened; warming up again", p.name, test, opened)
	}
}

// wrkRusage runs wrk on the load CPU against p for d and returns its
// summary and the CPU time wrk used.
func (b *bench) wrkRusage(p *peer, test string, d time.Duration) (wrkSummary, time.Duration, error) {
	l := b.loads[test]
	if l == nil {
		return wrkSummary{}, 0, fmt.Errorf("no wrk load for test %q", test)
	}
	script, path := l.script, l.path
	ctx, cancel := context.WithTimeout(b.ctx, d+30*time.Second)
	defer cancel()
	secs := max(int(d.Round(time.Second)/time.Second), 1)
	cmd := exec.CommandContext(ctx, "taskset", "-c", b.o.loadCPU, b.o.wrkBin,
		"-t1", fmt.Sprintf("-c%d", b.o.conns), fmt.Sprintf("-d%ds", secs), "--timeout", "5s",
		"-s", script, p.baseURL()+path)
	cmd.Env = baseEnv("OPENSSL_CONF=" + b.sslConf)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return wrkSummary{}, 0, fmt.Errorf("wrk: %w\n%s", err, out.String())
	}
	s, err := parseWrkOutput(out.String())
	if err != nil {
		return s, 0, err
	}
	var used time.Duration
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		used = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if s.Requests == 0 {
		return s, used, fmt.Errorf("wrk completed no request:\n%s", out.String())
	}
	return s, used, nil
}

// h2Summary is what h2load reports about one run.
type h2Summary struct {
	Seconds                      float64
	Done, Succeeded, Failed      int64
	Errored, Timeout, Non2xx     int64
	MeanMS                       float64
	Protocol, Cipher, Group, ALP string
}

func (s h2Summary) errors() int64 { return s.Failed + s.Errored + s.Timeout + s.Non2xx }

// parseH2load reads h2load's summary:
//
//	finished in 10.00s, 12345.60 req/s, 2.34MB/s
//	requests: 123456 total, 123456 started, 123456 done, 123456 succeeded, 0 failed, 0 errored, 0 timeout
//	status codes: 123456 2xx, 0 3xx, 0 4xx, 0 5xx
//	time for request:   1.23ms   45.67ms   5.12ms   2.01ms    70.12%
//
// and the TLS lines (TLS Protocol, Cipher, Server Temp Key, Application
// protocol).
func parseH2load(out string) (h2Summary, error) {
	var s h2Summary
	var haveFinished, haveRequests bool
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		k, v, _ := strings.Cut(line, ":")
		v = strings.TrimSpace(v)
		switch {
		case strings.HasPrefix(line, "finished in "):
			d, _, _ := strings.Cut(strings.TrimPrefix(line, "finished in "), ",")
			dur, err := time.ParseDuration(strings.TrimSpace(d))
			if err != nil {
				return s, fmt.Errorf("h2load: %q: %w", line, err)
			}
			s.Seconds, haveFinished = dur.Seconds(), true
		case k == "requests":
			for _, f := range strings.Split(v, ",") {
				var n int64
				var what string
				if _, err := fmt.Sscanf(strings.TrimSpace(f), "%d %s", &n, &what); err != nil {
					return s, fmt.Errorf("h2load: %q: %w", line, err)
				}
				switch what {
				case "done":
					s.Done = n
				case "succeeded":
					s.Succeeded = n
				case "failed":
					s.Failed = n
				case "errored":
					s.Errored = n
				case "timeout":
					s.Timeout = n
				}
			}
			haveRequests = true
		case k == "status codes":
			for _, f := range strings.Split(v, ",") {
				var n int64
				var class string
				fmt.Sscanf(strings.TrimSpace(f), "%d %s", &n, &class)
				if class != "2xx" {
					s.Non2xx += n
				}
			}
		case k == "time for request":
			if fields := strings.Fields(v); len(fields) >= 3 {
				s.MeanMS = durationMS(fields[2])
			}
		case k == "TLS Protocol":
			s.Protocol = v
		case k == "Cipher":
			s.Cipher = v
		case k == "Server Temp Key":
			s.Group, _, _ = strings.Cut(v, " ")
		case k == "Application protocol":
			s.ALP = v
		}
	}
	if !haveFinished || !haveRequests {
		return s, fmt.Errorf("no summary in h2load's output:\n%s", out)
	}
	return s, nil
}

// durationMS reads one of h2load's durations ("850us", "1.23ms", "2.5s")
// in milliseconds; 0 if it is none.
func durationMS(s string) float64 {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0
	}
	return float64(d) / 1e6
}

// h2load runs h2load on the load CPU against p: b.o.conns connections
// with b.o.h2Streams concurrent streams each, POSTing the 1 KB body, for
// about d. It fails unless the connections spoke h2 over TLS 1.3 with
// AES-128-GCM and X25519, the parameters of every other test.
//
// The run is a number of requests (-n), from the rate p last reached, not
// a duration (-D): at the end of a timed run h2load closes its connections
// with hundreds of streams in flight, each proxy then closes the upstream
// connections of the requests it abandons, and the next run would be
// measured reopening them (hundreds, though the pool is right).
func (b *bench) h2load(p *peer, d time.Duration) (h2Summary, time.Duration, error) {
	rate := b.h2Rate[p.name]
	if rate == 0 {
		rate = 5000
	}
	conc := b.o.conns * b.o.h2Streams
	n := max(int(rate*d.Seconds()), 4*conc)
	n = (n + conc - 1) / conc * conc
	ctx, cancel := context.WithTimeout(b.ctx, 4*d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "taskset", "-c", b.o.loadCPU, b.o.h2loadBin,
		"-t1", fmt.Sprintf("-c%d", b.o.conns), fmt.Sprintf("-m%d", b.o.h2Streams), fmt.Sprintf("-n%d", n),
		"--connect-to", p.addr(), "--tls13-ciphers", "TLS_AES_128_GCM_SHA256", "--groups", "X25519",
		"-d", b.postFile, "-H", "content-type: application/json",
		p.baseURL()+"/i/v0/e/")
	cmd.Env = baseEnv()
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return h2Summary{}, 0, fmt.Errorf("h2load: %w\n%s", err, out.String())
	}
	s, err := parseH2load(out.String())
	if err != nil {
		return s, 0, err
	}
	var used time.Duration
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		used = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	if s.Done == 0 || s.Seconds == 0 {
		return s, used, fmt.Errorf("h2load completed no request:\n%s", out.String())
	}
	b.h2Rate[p.name] = float64(s.Done) / s.Seconds
	if s.Protocol != "TLSv1.3" || s.Cipher != "TLS_AES_128_GCM_SHA256" || s.Group != "X25519" || s.ALP != "h2" {
		return s, used, fmt.Errorf("h2load negotiated %q %q %q %q, want TLSv1.3, TLS_AES_128_GCM_SHA256, X25519, h2:\n%s",
			s.Protocol, s.Cipher, s.Group, s.ALP, out.String())
	}
	return s, used, nil
}

// upstreamAccepts is the number of connections the upstream has accepted
// so far (nginx's stub_status), counting the one this query opens.
func (b *bench) upstreamAccepts() (int64, error) {
	tr := &http.Transport{DisableKeepAlives: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://127.0.0.1:%d/status", b.statusPort))
	if err != nil {
		return 0, fmt.Errorf("upstream status: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, fmt.Errorf("upstream status: %w", err)
	}
	return parseStubStatus(string(body))
}

// parseStubStatus reads the accepts counter of nginx's stub_status:
//
//	Active connections: 3
//	server accepts handled requests
//	 17 17 2032
//	Reading: 0 Writing: 1 Waiting: 2
func parseStubStatus(text string) (int64, error) {
	lines := strings.Split(text, "\n")
	for i, line := range lines {
		if strings.TrimSpace(line) == "server accepts handled requests" && i+1 < len(lines) {
			var accepts, handled, requests int64
			if _, err := fmt.Sscanf(strings.TrimSpace(lines[i+1]), "%d %d %d", &accepts, &handled, &requests); err != nil {
				return 0, fmt.Errorf("upstream status: %q: %w", lines[i+1], err)
			}
			return accepts, nil
		}
	}
	return 0, fmt.Errorf("upstream status: no accepts counter in %q", text)
}

// upstreamConnsOpened is how many connections were opened to the upstream
// between two readings of its accepts counter: the later reading counts
// its own query's connection, which no proxy opened.
func upstreamConnsOpened(before, after int64) int64 {
	return max(after-before-1, 0)
}

// checkUpstreamConns fails a measured run in which a proxy opened more
// than limit connections to the upstream. A proxy whose keep-alive pool
// is smaller than the load's concurrency reconnects for most requests and
// is measured paying for TCP setup that a correctly configured one does
// not: such a run measures the configuration, not the proxy. A negative
// limit turns the check off.
func checkUpstreamConns(r result, isProxy bool, limit int64) error {
	if !isProxy || limit < 0 || r.Test == testHandshake || r.UpstreamConns <= limit {
		return nil
	}
	return fmt.Errorf("%s %s: the upstream accepted %d new connections during the measured run (limit %d): "+
		"the proxy reconnects instead of reusing its keep-alive pool; give it a pool of at least the load's concurrency (-upstream-pool)",
		r.Peer, r.Test, r.UpstreamConns, limit)
}

// handshakeConfig is a fresh client configuration for each connection: no
// session cache, tickets disabled, X25519 only (Go servers prefer
// X25519MLKEM768 when offered; nginx's OpenSSL 3.0 does not have it), TLS
// 1.3. The chain is verified once in preflight; here it is not, so that
// the client's CPU (on the load CPU) goes to the handshake itself.
func handshakeConfig() *tls.Config {
	return &tls.Config{
		ServerName:             benchDomain,
		InsecureSkipVerify:     true,
		SessionTicketsDisabled: true,
		CurvePreferences:       []tls.CurveID{tls.X25519},
		MinVersion:             tls.VersionTLS13,
		NextProtos:             []string{"http/1.1"},
	}
}

// handshakes runs b.o.hsConc clients that each connect, complete a full TLS
// handshake and close, until d has passed (or an upper bound of
// handshakes, far above what one core can do). It returns the handshakes
// completed and the failures.
func (b *bench) handshakes(p *peer, d time.Duration) (ok, failed int64) {
	limit := int64(d.Seconds() * 50000)
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	var nOK, nFail atomic.Int64
	for range b.o.hsConc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dialer := net.Dialer{Timeout: 5 * time.Second}
			for time.Now().Before(deadline) && nOK.Load()+nFail.Load() < limit && b.ctx.Err() == nil {
				c, err := dialer.Dial("tcp", p.addr())
				if err != nil {
					nFail.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				tc := tls.Client(c, handshakeConfig())
				tc.SetDeadline(time.Now().Add(5 * time.Second))
				if err := tc.Handshake(); err != nil {
					nFail.Add(1)
				} else {
					nOK.Add(1)
				}
				tc.Close()
			}
		}()
	}
	wg.Wait()
	return nOK.Load(), nFail.Load()
}

// snapshot is the CPU accounting at one instant.
type snapshot struct {
	at            time.Time
	proxy, up     float64 // CPU seconds
	etcd          float64 // CPU seconds of benchproxy's etcd (0 without it)
	cpus          map[int64]procfs.CPUStat
	self          time.Duration
	proxyRSS      int64
	proxyPIDCount int
}

func (b *bench) snapshot(p *peer) (snapshot, error) {
	s := snapshot{at: time.Now()}
	var err error
	if p.proc != nil {
		pids := p.proc.pids()
		s.proxyPIDCount = len(pids)
		if s.proxy, err = cpuSeconds(pids); err != nil {
			return s, fmt.Errorf("%s: %w", p.name, err)
		}
	}
	if s.up, err = cpuSeconds(b.upstream.pids()); err != nil {
		return s, fmt.Errorf("upstream: %w", err)
	}
	if b.etcd != nil {
		if s.etcd, err = cpuSeconds(b.etcd.pids()); err != nil {
			return s, fmt.Errorf("etcd: %w", err)
		}
	}
	if s.cpus, err = perCPU(); err != nil {
		return s, err
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err == nil {
		s.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	return s, nil
}

// result is one measured run of one test on one peer.
type result struct {
	Repeat int
	Peer   string
	Test   string
	// Seconds is the wall time of the load.
	Seconds float64
	// Count is requests (post, static) or handshakes completed.
	Count  int64
	PerSec float64
	Errors int64
	// P50ms, P99ms: wrk's latency percentiles (HTTP/1.1 tests); MeanMS:
	// the mean (every test but handshakes; h2load gives no percentiles).
	P50ms, P99ms, MeanMS float64
	// UpstreamConns is how many connections the upstream accepted from a
	// second into the run to its end: for a proxy, the connections it had
	// to open because its keep-alive pool had none idle.
	UpstreamConns int64
	// BytesPer is the average response size wrk read, headers included.
	BytesPer float64
	// ProxyUS is the proxy's CPU time per request or handshake, in µs.
	ProxyUS float64
	// ProxyBusy is the proxy's CPU time over the wall time (1 = one core).
	ProxyBusy float64
	// LoadBusy and ProxyCPUBusy are how busy the load CPU and the proxy CPU
	// were (/proc/stat, busy as package cpustat defines it), OursLoad what
	// of LoadBusy was wrk, the upstream and benchproxy, Others the busy time
	// on both CPUs that was none of ours (other processes on the machine),
	// all as fractions of one core.
	LoadBusy, ProxyCPUBusy, OursLoad, Others float64
	// EtcdUS is benchproxy's etcd's CPU time per request or handshake, in
	// µs, while an edgeproxy-etcd peer was measured (0 for other peers).
	EtcdUS float64 `json:",omitempty"`
	// Attempts is 1, or more when the run was disturbed and run again.
	Attempts int
	// ProbeMS is how long a fixed piece of work took on the load CPU just
	// before the run: it rises in the slow phases of the machine that
	// -max-others cannot see (the host's other guests).
	ProbeMS float64
}

// speedProbe times a fixed piece of CPU work (SHA-256 of 4 MB), the best of
// three.
func speedProbe() time.Duration {
	buf := make([]byte, 64<<10)
	best := time.Duration(1 << 62)
	for range 3 {
		start := time.Now()
		for range 64 {
			sum := sha256.Sum256(buf)
			buf[0] = sum[0]
		}
		best = min(best, time.Since(start))
	}
	return best
}

func (r result) line() string {
	s := fmt.Sprintf("rep %d  %-28s %-9s %9.0f/s", r.Repeat, r.Peer, r.Test, r.PerSec)
	switch r.Test {
	case testHandshake:
	case testPostH2:
		s += fmt.Sprintf("  mean %6.2f ms %28s", r.MeanMS, "")
	default:
		s += fmt.Sprintf("  p50 %6.2f ms  p99 %6.2f ms  %6.0f B/resp", r.P50ms, r.P99ms, r.BytesPer)
	}
	if r.Test != testHandshake {
		s += fmt.Sprintf("  upstream conns %4d", r.UpstreamConns)
	}
	if r.ProxyBusy > 0 {
		s += fmt.Sprintf("  proxy %5.0f µs/op, %3.0f%% busy", r.ProxyUS, 100*r.ProxyBusy)
	}
	if r.EtcdUS > 0 {
		s += fmt.Sprintf("  etcd %5.1f µs/op", r.EtcdUS)
	}
	s += fmt.Sprintf("  cpu load %3.0f%% proxy %3.0f%%  others %3.0f%%  probe %.1f ms", 100*r.LoadBusy, 100*r.ProxyCPUBusy, 100*r.Others, r.ProbeMS)
	if r.Errors > 0 {
		s += fmt.Sprintf("  ERRORS %d", r.Errors)
	}
	return s
}

// measureQuiet waits (bounded) for the machine to be quiet, measures, and
// measures again (bounded) when other processes disturbed the run.
func (b *bench) measureQuiet(p *peer, test string, rep int) (result, error) {
	var r result
	for attempt := 0; ; attempt++ {
		if b.o.prewarm > 0 && test != testHandshake {
			if err := b.load(p, test, b.o.prewarm); err != nil {
				return r, fmt.Errorf("pre-warm: %w", err)
			}
		}
		b.waitQuiet()
		probe := speedProbe()
		var err error
		r, err = b.measure(p, test)
		if err != nil {
			return r, err
		}
		r.Repeat, r.Attempts, r.ProbeMS = rep, attempt+1, probe.Seconds()*1e3
		if attempt >= b.o.retries {
			return r, nil
		}
		if checkUpstreamConns(r, p.proc != nil, b.o.maxUpConns) != nil {
			// A pool still growing to the load's peak concurrency opens
			// connections once; a proxy that reconnects opens them in
			// every run. The run loop fails the last attempt.
			logf("%s (opened %d upstream connections; running it again)", r.line(), r.UpstreamConns)
			continue
		}
		if r.Others <= b.o.maxOthers {
			return r, nil
		}
		logf("%s (disturbed: other processes used %.0f%% of a core; running it again)", r.line(), 100*r.Others)
	}
}

// waitQuiet waits until other processes use less than b.o.maxOthers of a
// core over half a second (none of benchproxy's servers is loaded between
// runs), or b.o.quietWait has passed.
func (b *bench) waitQuiet() {
	deadline := time.Now().Add(b.o.quietWait)
	for {
		a, err := perCPU()
		if err != nil {
			return
		}
		time.Sleep(500 * time.Millisecond)
		z, err := perCPU()
		if err != nil {
			return
		}
		var busy float64
		for cpu, t := range z {
			if d := cpustat.Total(t) - cpustat.Total(a[cpu]); d > 0 {
				busy += (cpustat.Busy(t) - cpustat.Busy(a[cpu])) / d
			}
		}
		if busy <= b.o.maxOthers || time.Now().After(deadline) || b.ctx.Err() != nil {
			return
		}
	}
}

// measure runs one test on p and accounts for the CPU it took.
func (b *bench) measure(p *peer, test string) (result, error) {
	r := result{Peer: p.name, Test: test}
	if p.proc != nil && p.proc.exited() {
		return r, fmt.Errorf("%s has exited:\n%s", p.name, testbin.FileTail(p.proc.logPath, 2000))
	}
	before, err := b.snapshot(p)
	if err != nil {
		return r, err
	}
	// The upstream connections are counted from a moment into the run to
	// its end: when a load ends, its clients close connections with
	// requests in flight, some proxies then close the upstream connections
	// of the requests they abandon, and reopen them in the first
	// milliseconds of the next run. A proxy that reconnects does so all
	// the way through.
	countFrom := min(time.Second, b.o.duration/4)
	startAccepts := make(chan int64, 1)
	acceptsErr := make(chan error, 1)
	timer := time.AfterFunc(countFrom, func() {
		n, err := b.upstreamAccepts()
		startAccepts <- n
		acceptsErr <- err
	})
	defer timer.Stop()
	var wrkCPU time.Duration
	switch test {
	case testPostH2:
		s, used, err := b.h2load(p, b.o.duration)
		if err != nil {
			return r, err
		}
		wrkCPU = used
		r.Count = s.Done
		r.Errors = s.errors()
		r.MeanMS = s.MeanMS
		r.PerSec = float64(s.Done) / s.Seconds
	case testPost, testBatch, testFlags, testStatic:
		s, used, err := b.wrkRusage(p, test, b.o.duration)
		if err != nil {
			return r, err
		}
		wrkCPU = used
		r.Count = s.Requests
		r.Errors = s.errors()
		r.P50ms = float64(s.P50US) / 1000
		r.P99ms = float64(s.P99US) / 1000
		r.MeanMS = s.MeanUS / 1000
		r.BytesPer = float64(s.Bytes) / float64(s.Requests)
		r.PerSec = float64(s.Requests) / (float64(s.DurationUS) / 1e6)
	case testHandshake:
		ok, failed := b.handshakes(p, b.o.duration)
		r.Count, r.Errors = ok, failed
	}
	after, err := b.snapshot(p)
	if err != nil {
		return r, err
	}
	wall := after.at.Sub(before.at)
	r.Seconds = wall.Seconds()
	if test != testHandshake {
		if err := <-acceptsErr; err != nil {
			return r, err
		}
		endAccepts, err := b.upstreamAccepts()
		if err != nil {
			return r, err
		}
		r.UpstreamConns = upstreamConnsOpened(<-startAccepts, endAccepts)
	}
	if test == testHandshake {
		r.PerSec = float64(r.Count) / r.Seconds
	}
	if p.proc != nil && r.Count > 0 {
		proxy := after.proxy - before.proxy
		r.ProxyUS = proxy * 1e6 / float64(r.Count)
		r.ProxyBusy = proxy / wall.Seconds()
	}
	load, prox := cpuListFirst(b.o.loadCPU), cpuListFirst(b.o.proxyCPU)
	busy := func(cpu int) float64 {
		a, z := before.cpus[int64(cpu)], after.cpus[int64(cpu)]
		d := cpustat.Total(z) - cpustat.Total(a)
		if d <= 0 {
			return 0
		}
		return (cpustat.Busy(z) - cpustat.Busy(a)) / d
	}
	r.LoadBusy, r.ProxyCPUBusy = busy(load), busy(prox)
	// etcd runs on the load CPU whichever peer is measured: its CPU is
	// ours, not another process's.
	ours := (after.up - before.up) + (after.etcd - before.etcd) + wrkCPU.Seconds() + (after.self - before.self).Seconds()
	if p.etcd && r.Count > 0 {
		r.EtcdUS = (after.etcd - before.etcd) * 1e6 / float64(r.Count)
	}
	r.OursLoad = ours / wall.Seconds()
	r.Others = max(r.LoadBusy-r.OursLoad, 0) + max(r.ProxyCPUBusy-r.ProxyBusy, 0)
	return r, nil
}

// preflight checks that p answers both routes correctly over TLS 1.3 with
// AES-128-GCM and X25519, from a client that verifies the chain, and that
// wrk's OpenSSL settings negotiate the same (openssl s_client).
func (b *bench) preflight(p *peer) error {
	if err := p.start(); err != nil {
		return err
	}
	return b.check(p)
}

func (b *bench) check(p *peer) error {
	var transport *http.Transport
	if p.tls {
		cfg := &tls.Config{
			ServerName:       benchDomain,
			RootCAs:          b.certs.pool,
			CurvePreferences: []tls.CurveID{tls.X25519},
			MinVersion:       tls.VersionTLS13,
			NextProtos:       []string{"http/1.1"},
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", p.addr(), cfg)
		if err != nil {
			return fmt.Errorf("handshake: %w", err)
		}
		st := c.ConnectionState()
		c.Close()
		if st.Version != tls.VersionTLS13 || st.CipherSuite != tls.TLS_AES_128_GCM_SHA256 || st.CurveID != tls.X25519 {
			return fmt.Errorf("negotiated %s %s %s, want TLS 1.3, TLS_AES_128_GCM_SHA256, X25519",
				tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID)
		}
		transport = &http.Transport{TLSClientConfig: cfg}
	} else {
		transport = &http.Transport{}
	}
	transport.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		return (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, network, p.addr())
	}
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 10 * time.Second}

	resp, err := client.Post(p.baseURL()+"/i/v0/e/", "application/json", bytes.NewReader(b.postBody))
	if err != nil {
		return fmt.Errorf("POST /i/v0/e/: %w", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != b.postAnswer {
		return fmt.Errorf("POST /i/v0/e/: %s %q", resp.Status, body)
	}
	for _, test := range []string{testBatch, testFlags} {
		l := b.loads[test]
		body, err := os.ReadFile(l.bodyFile)
		if err != nil {
			return err
		}
		resp, err := client.Post(p.baseURL()+l.path, l.contentType, bytes.NewReader(body))
		if err != nil {
			return fmt.Errorf("POST %s: %w", l.path, err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(got)) != l.answer {
			return fmt.Errorf("POST %s: %s %q", l.path, resp.Status, got)
		}
	}
	resp, err = client.Get(p.baseURL() + "/static/array.js")
	if err != nil {
		return fmt.Errorf("GET /static/array.js: %w", err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || len(body) != b.o.staticSize {
		return fmt.Errorf("GET /static/array.js: %s, %d bytes, want 200 and %d", resp.Status, len(body), b.o.staticSize)
	}
	if p.tls {
		if err := b.checkOpenSSL(p); err != nil {
			return err
		}
	}
	logf("%s ready on %s (pid %v, CPU %s): both routes answer", p.name, p.addr(), pidsOf(p), b.cpuOf(p))
	return nil
}

func pidsOf(p *peer) []int {
	if p.proc == nil {
		return nil
	}
	return p.proc.pids()
}

func (b *bench) cpuOf(p *peer) string {
	if p.proc == nil {
		return b.o.loadCPU
	}
	return b.o.proxyCPU
}

// checkOpenSSL connects with wrk's OpenSSL configuration and checks what it
// negotiates.
func (b *bench) checkOpenSSL(p *peer) error {
	if _, err := exec.LookPath("openssl"); err != nil {
		logf("openssl not found: not checking wrk's cipher suite against %s", p.name)
		return nil
	}
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "openssl", "s_client", "-brief", "-connect", p.addr(), "-servername", benchDomain)
	cmd.Env = baseEnv("OPENSSL_CONF=" + b.sslConf)
	cmd.Stdin = strings.NewReader("")
	out, _ := cmd.CombinedOutput()
	text := string(out)
	for _, want := range []string{"TLSv1.3", "TLS_AES_128_GCM_SHA256", "X25519"} {
		if !strings.Contains(text, want) {
			return fmt.Errorf("openssl s_client with wrk's settings did not negotiate %s:\n%s", want, text)
		}
	}
	return nil
}

// memResult is the memory test of one proxy.
type memResult struct {
	Peer                    string
	Conns                   int
	RSSBeforeKB, RSSAfterKB int64
	KBPerConn               float64
	// KBPerConnLate is the same LateAfter later, the connections still idle.
	RSSLateKB     int64
	KBPerConnLate float64
	LateAfter     time.Duration
	OpenSeconds   float64
}

// idleMemory restarts p, then opens b.o.idleConns TLS connections that each
// carry one POST and stay idle, and compares VmRSS (for nginx, master plus
// worker).
func (b *bench) idleMemory(p *peer) (memResult, error) {
	m := memResult{Peer: p.name, LateAfter: 10 * time.Second}
	p.proc.stop()
	if err := b.preflight(p); err != nil {
		return m, err
	}
	time.Sleep(2 * time.Second)
	var err error
	if m.RSSBeforeKB, err = rssKB(p.proc.pids()); err != nil {
		return m, err
	}
	start := time.Now()
	conns, err := b.openIdle(p, b.o.idleConns, 3*time.Minute)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	if err != nil {
		return m, err
	}
	m.OpenSeconds = time.Since(start).Seconds()
	m.Conns = len(conns)
	time.Sleep(5 * time.Second)
	if m.RSSAfterKB, err = rssKB(p.proc.pids()); err != nil {
		return m, err
	}
	time.Sleep(m.LateAfter)
	if m.RSSLateKB, err = rssKB(p.proc.pids()); err != nil {
		return m, err
	}
	m.KBPerConn = float64(m.RSSAfterKB-m.RSSBeforeKB) / float64(m.Conns)
	m.KBPerConnLate = float64(m.RSSLateKB-m.RSSBeforeKB) / float64(m.Conns)
	return m, nil
}

// openIdle opens n TLS connections to p (HTTP/1.1 by ALPN), sends one
// POST on each, reads the answer and leaves the connection open.
func (b *bench) openIdle(p *peer, n int, limit time.Duration) ([]net.Conn, error) {
	req := fmt.Appendf(nil, "POST /i/v0/e/ HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		benchDomain, len(b.postBody), b.postBody)
	deadline := time.Now().Add(limit)
	var (
		mu    sync.Mutex
		conns = make([]net.Conn, 0, n)
		first error
		next  atomic.Int64
		wg    sync.WaitGroup
	)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				c, err := openOne(p.addr(), req, deadline)
				mu.Lock()
				if err != nil {
					if first == nil {
						first = err
					}
					mu.Unlock()
					return
				}
				conns = append(conns, c)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return conns, fmt.Errorf("after %d connections: %w", len(conns), first)
	}
	return conns, nil
}

func openOne(addr string, req []byte, deadline time.Time) (net.Conn, error) {
	if time.Now().After(deadline) {
		return nil, errors.New("time limit reached")
	}
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	tc := tls.Client(c, handshakeConfig())
	tc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := tc.Write(req); err != nil {
		tc.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
	if err != nil {
		tc.Close()
		return nil, err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		tc.Close()
		return nil, fmt.Errorf("POST: %s", resp.Status)
	}
	tc.SetDeadline(time.Time{})
	return tc, nil
}
