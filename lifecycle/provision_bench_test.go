package lifecycle

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	stdlog "log"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/prometheus/procfs"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/cpustat"
	"github.com/edgeproxy/edgeproxy/store"
)

// TestProvisionBurst measures the lifecycle engine on a burst: N records
// created at once, each with its CNAME already in place, until all are
// valid. Everything is real and in this process: the bbolt store, the DNS
// server (dnstest), Pebble (certstest), the certificate manager behind
// loopback HTTP and TLS listeners, and the engine with its production
// defaults (32 workers, 4 talking to the CA). It runs only when
// EDGEPROXY_BENCH_RECORDS is set; docs/PERFORMANCE.md holds the numbers.
//
//	EDGEPROXY_BENCH_RECORDS=1000 go test -run '^TestProvisionBurst$' -count 1 -timeout 30m -v ./control/
//
// EDGEPROXY_BENCH_DEADLINE (a duration, default 20m) bounds the wait for
// valid records; the test fails when it passes. EDGEPROXY_BENCH_WORKERS and
// EDGEPROXY_BENCH_ACME_WORKERS override Config.Workers and
// ACMEWorkers, to see which bound the rate (with 32 ACME workers and
// 10,000 records Pebble v2.10.3 deadlocks; see the doc). With EDGEPROXY_BENCH_MEMPROFILE
// set to a file name, the heap at the end is written there.
//
// certmagic allows 10 orders per 10 s per CA account (RateLimitEvents,
// RateLimitEventsWindow); the test lifts that to 100,000 per second, so the
// engine, the store and Pebble are what is measured. In production the
// CA's own limits come first (see the doc).
func TestProvisionBurst(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("EDGEPROXY_BENCH_RECORDS"))
	if err != nil || n <= 0 {
		t.Skip("set EDGEPROXY_BENCH_RECORDS to the number of records to provision")
	}
	wait := 20 * time.Minute
	if v := os.Getenv("EDGEPROXY_BENCH_DEADLINE"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil {
			t.Fatalf("EDGEPROXY_BENCH_DEADLINE: %v", err)
		}
	}

	oldEvents, oldWindow := certmagic.RateLimitEvents, certmagic.RateLimitEventsWindow
	certmagic.RateLimitEvents, certmagic.RateLimitEventsWindow = 100000, time.Second
	t.Cleanup(func() { certmagic.RateLimitEvents, certmagic.RateLimitEventsWindow = oldEvents, oldWindow })

	logs := &provisionLog{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	dns := dnstest.Start(t)
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpPort, tlsPort := httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port
	pebble := certstest.StartPebble(t, dns.Addr(), httpPort, tlsPort)
	cm, err := certs.New(st, certs.Config{
		CA: pebble.DirectoryURL(), CARoots: pebble.ServerRoots(),
		HTTPPort: httpPort, TLSPort: tlsPort, Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cm.Close() })
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cm.HandleHTTPChallenge(w, r) {
			http.NotFound(w, r)
		}
	})}
	go httpSrv.Serve(httpLn)
	t.Cleanup(func() { httpSrv.Close() })
	tlsSrv := &http.Server{Handler: http.NotFoundHandler(), TLSConfig: cm.TLSConfig(), ErrorLog: stdlog.New(io.Discard, "", 0)}
	go tlsSrv.ServeTLS(tlsLn, "", "")
	t.Cleanup(func() { tlsSrv.Close() })

	verifier, err := dnsverify.New([]string{dns.Addr()}, 0)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		CAAIdentities: []string{certstest.CAAIdentity},
		ProbeAddr:     tlsLn.Addr().String(),
		Logger:        log,
	}
	for _, knob := range []struct {
		env string
		n   *int
	}{{"EDGEPROXY_BENCH_WORKERS", &cfg.Workers}, {"EDGEPROXY_BENCH_ACME_WORKERS", &cfg.ACMEWorkers}} {
		if v := os.Getenv(knob.env); v != "" {
			if *knob.n, err = strconv.Atoi(v); err != nil || *knob.n <= 0 {
				t.Fatalf("%s=%q", knob.env, v)
			}
		}
	}
	engine := NewEngine(st, verifier, cm, cfg)

	org, err := st.CreateOrg("burst", &n)
	if err != nil {
		t.Fatal(err)
	}
	user, err := st.CreateUser("burst@example.com")
	if err != nil {
		t.Fatal(err)
	}
	// Every CNAME is in place before its record exists.
	domains := make([]string, n)
	for i := range domains {
		domains[i] = fmt.Sprintf("r%06d.burst.example.com", i)
		target := control.TargetCNAME(org.ID, domains[i], "proxy.example.net")
		dns.SetCNAME(domains[i], target)
		dns.SetA(target, "127.0.0.1")
	}

	tracker := newProvisionTracker(st)
	defer tracker.stop()
	sampler := startProvisionSampler(engine)
	defer sampler.stop()

	ctx, cancel := context.WithCancel(context.Background())
	engineDone := make(chan struct{})
	go func() {
		defer close(engineDone)
		if err := engine.Run(ctx, false); err != nil {
			t.Errorf("engine: %v", err)
		}
	}()
	defer func() {
		cancel()
		<-engineDone
	}()

	cpuBefore := provisionCPU()
	hwmBefore := provisionHWM(t)
	queriesBefore := dns.Queries()
	start := time.Now()
	tracker.setStart(start)
	// As the API creates them: waiting, with the first DNS check due now.
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				now := st.Now()
				if _, err := st.CreateRecord(store.Record{
					OrgID:        org.ID,
					Domain:       domains[i],
					TargetCNAME:  control.TargetCNAME(org.ID, domains[i], "proxy.example.net"),
					Status:       store.StatusWaiting,
					CreatedBy:    &user.ID,
					NextCheckAt:  now,
					WaitingSince: now,
				}, n); err != nil {
					t.Errorf("creating %s: %v", domains[i], err)
					return
				}
			}
		}()
	}
	wg.Wait()
	created := time.Since(start)

	deadline := start.Add(wait)
	lastReport := start
	for {
		counts := tracker.counts()
		if counts[store.StatusValid]+counts[store.StatusErroring]+counts[store.StatusTimedOut] >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %v; first problems logged:\n%s", wait, counts, logs.problems())
		}
		if time.Since(lastReport) >= 30*time.Second {
			lastReport = time.Now()
			t.Logf("%6.0fs: %v, %d Pebble orders", time.Since(start).Seconds(), counts, pebble.Orders())
		}
		time.Sleep(50 * time.Millisecond)
	}
	total := time.Since(start)
	cpu := provisionCPU().sub(cpuBefore)
	queries := dns.Queries() - queriesBefore
	sampler.stop()
	counts := tracker.counts()

	if counts[store.StatusValid] != n {
		t.Errorf("%d of %d records valid: %v; first problems logged:\n%s", counts[store.StatusValid], n, counts, logs.problems())
	}
	// Spot-check that the valid records are served.
	for _, d := range []string{domains[0], domains[n/2], domains[n-1]} {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", tlsLn.Addr().String(),
			&tls.Config{ServerName: d, RootCAs: pebble.IssuerRoots(t)})
		if err != nil {
			t.Errorf("handshake for %s: %v", d, err)
			continue
		}
		conn.Close()
	}

	lat := tracker.latencies()
	t.Logf("records: %d (%d valid), created in %s (%.0f creates/s)", n, counts[store.StatusValid], created.Round(time.Millisecond), float64(n)/created.Seconds())
	t.Logf("all valid after: %s (%.1f records/s)", total.Round(time.Millisecond), float64(n)/total.Seconds())
	if len(lat) > 0 {
		t.Logf("time to valid from the burst's start: first %s, p50 %s, p90 %s, p99 %s, last %s",
			lat[0].Round(time.Millisecond), lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)*9/10].Round(time.Millisecond),
			lat[len(lat)*99/100].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
		if len(lat) >= 10 {
			a, b := lat[len(lat)/10], lat[len(lat)*9/10]
			t.Logf("steady rate (10th to 90th percentile record): %.1f records/s", float64(len(lat)*8/10)/(b-a).Seconds())
		}
	}
	s := sampler.result()
	t.Logf("peak goroutines: %d (before the burst: %d); peak records in flight: %d (of %d workers); peak ACME slots busy: %d (of %d)",
		s.goroutines, s.goroutinesBefore, s.inflight, engine.cfg.Workers, s.acme, engine.cfg.ACMEWorkers)
	t.Logf("peak Go heap in use: %.1f MiB; VmHWM: %s before the burst, %s after (the whole process: Pebble and the DNS server included)",
		float64(s.heap)/(1<<20), hwmBefore, provisionHWM(t))
	// The engine's share: the checks of one record, alone.
	q0 := dns.Queries()
	verifier.CheckCNAME(context.Background(), domains[0], control.TargetCNAME(org.ID, domains[0], "proxy.example.net"),
		dnsverify.Ownership{Name: "_edgeproxy." + domains[0], Token: store.NewOwnershipToken()})
	verifier.CheckCAA(context.Background(), domains[0], cfg.CAAIdentities)
	t.Logf("DNS queries: %d (%.1f per record; the engine's and Pebble's together, of which the engine's CNAME and CAA checks make %d); Pebble orders: %d",
		queries, float64(queries)/float64(n), dns.Queries()-q0, pebble.Orders())
	t.Logf("CPU: this process %.1f s (%.0f%% of one CPU); the rest of the machine (other processes, and kernel work not charged to this one) %.1f s (%.0f%% of one CPU)",
		cpu.self.Seconds(), 100*cpu.self.Seconds()/total.Seconds(), cpu.others().Seconds(), 100*cpu.others().Seconds()/total.Seconds())
	t.Logf("warnings and errors logged: %d", logs.count())
	if path := os.Getenv("EDGEPROXY_BENCH_MEMPROFILE"); path != "" {
		runtime.GC()
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
	}
}

// provisionCPUTimes is the busy CPU time of the whole machine (from
// /proc/stat, busy as package cpustat defines it) and the CPU time of this
// process (getrusage).
type provisionCPUTimes struct{ machine, self time.Duration }

func provisionCPU() provisionCPUTimes {
	var c provisionCPUTimes
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		c.self = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return c
	}
	stat, err := fs.Stat()
	if err != nil {
		return c
	}
	c.machine = time.Duration(cpustat.Busy(stat.CPUTotal) * float64(time.Second))
	return c
}

func (c provisionCPUTimes) sub(o provisionCPUTimes) provisionCPUTimes {
	return provisionCPUTimes{machine: c.machine - o.machine, self: c.self - o.self}
}

func (c provisionCPUTimes) others() time.Duration { return max(c.machine-c.self, 0) }

// provisionLog is the engine's log: it keeps the count of warnings and
// errors and the first few of them, and drops the rest.
type provisionLog struct {
	// mu guards n and first.
	mu    sync.Mutex
	n     int
	first []string
}

func (l *provisionLog) Write(p []byte) (int, error) {
	if bytes.Contains(p, []byte("level=WARN")) || bytes.Contains(p, []byte("level=ERROR")) {
		l.mu.Lock()
		l.n++
		if len(l.first) < 20 {
			l.first = append(l.first, string(p))
		}
		l.mu.Unlock()
	}
	return len(p), nil
}

func (l *provisionLog) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.n
}

func (l *provisionLog) problems() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.first, "")
}

// provisionTracker follows every record's status through the store's
// change feed, and notes when each became valid.
type provisionTracker struct {
	sub  *store.Subscription
	done chan struct{}
	quit chan struct{}

	// mu guards start, status and validAt.
	mu      sync.Mutex
	start   time.Time
	status  map[string]store.Status
	validAt map[string]time.Duration
}

func newProvisionTracker(st *store.Store) *provisionTracker {
	tr := &provisionTracker{sub: st.Subscribe(), done: make(chan struct{}), quit: make(chan struct{}),
		status: map[string]store.Status{}, validAt: map[string]time.Duration{}}
	go func() {
		defer close(tr.done)
		for {
			select {
			case <-tr.quit:
				return
			case <-tr.sub.Ready():
			}
			changes := tr.sub.Take()
			now := time.Now()
			tr.mu.Lock()
			for _, c := range changes {
				if c.Record == nil {
					delete(tr.status, c.ID)
					continue
				}
				tr.status[c.ID] = c.Record.Status
				if _, seen := tr.validAt[c.ID]; !seen && c.Record.Status == store.StatusValid {
					tr.validAt[c.ID] = now.Sub(tr.start)
				}
			}
			tr.mu.Unlock()
		}
	}()
	return tr
}

func (tr *provisionTracker) setStart(t time.Time) {
	tr.mu.Lock()
	tr.start = t
	tr.mu.Unlock()
}

func (tr *provisionTracker) counts() map[store.Status]int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := map[store.Status]int{}
	for _, s := range tr.status {
		out[s]++
	}
	return out
}

// latencies returns, sorted, how long after the start each record became
// valid.
func (tr *provisionTracker) latencies() []time.Duration {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	out := make([]time.Duration, 0, len(tr.validAt))
	for _, d := range tr.validAt {
		out = append(out, d)
	}
	slices.Sort(out)
	return out
}

func (tr *provisionTracker) stop() {
	select {
	case <-tr.quit:
	default:
		close(tr.quit)
		<-tr.done
	}
	tr.sub.Close()
}

// provisionSampler records, every 50 ms, the peaks of the goroutine count,
// the engine's records in flight, its busy ACME slots and the Go heap.
type provisionSampler struct {
	quit chan struct{}
	done chan struct{}
	once sync.Once

	// Written by the sampling goroutine, read after done is closed.
	goroutinesBefore, goroutines, inflight, acme int
	heap                                         uint64
}

func startProvisionSampler(e *Engine) *provisionSampler {
	s := &provisionSampler{quit: make(chan struct{}), done: make(chan struct{}), goroutinesBefore: runtime.NumGoroutine()}
	go func() {
		defer close(s.done)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		var ms runtime.MemStats
		for i := 0; ; i++ {
			select {
			case <-s.quit:
				return
			case <-tick.C:
			}
			s.goroutines = max(s.goroutines, runtime.NumGoroutine())
			e.mu.Lock()
			s.inflight = max(s.inflight, len(e.inflight))
			e.mu.Unlock()
			s.acme = max(s.acme, len(e.acme))
			if i%10 == 0 { // ReadMemStats stops the world: every 500 ms
				runtime.ReadMemStats(&ms)
				s.heap = max(s.heap, ms.HeapInuse)
			}
		}
	}()
	return s
}

func (s *provisionSampler) stop() {
	s.once.Do(func() { close(s.quit) })
	<-s.done
}

func (s *provisionSampler) result() *provisionSampler {
	s.stop()
	return s
}

// provisionHWM returns the peak resident set size of this process
// (VmHWM), in MiB.
func provisionHWM(t *testing.T) string {
	t.Helper()
	self, err := procfs.Self()
	if err != nil {
		t.Fatal(err)
	}
	status, err := self.NewStatus()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%.1f MiB", float64(status.VmHWM)/(1<<20))
}
