package main

import (
	"bufio"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// staticSize is the size of every /static/ answer.
const staticSize = 8 << 10

// shutdownWait bounds the server's exit after SIGTERM: its drain of
// in-flight requests (up to 30 s) plus margin.
const shutdownWait = 40 * time.Second

// env is what one run sets up: the CA, the DNS, the upstreams and the
// running binary.
type env struct {
	dir       string
	dns       *dnstest.Server
	pebble    *certstest.Pebble
	ingest    *httptest.Server
	assets    *httptest.Server
	ingested  atomic.Int64 // requests the ingestion upstream received
	faults    atomic.Int64 // of which upstreamFault turned into 500s
	cmd       *exec.Cmd
	exited    chan struct{} // closed when cmd.Wait returns
	exitErr   error         // cmd.Wait's result, set before exited closes
	logPath   string
	api       string // http://host:port
	httpsAddr string
	key       string
	roots     *x509.CertPool // Pebble's issuing root: the edge's certificates verify against it
}

// run performs one soak and returns its result; err is for a soak that
// could not be carried out at all (the binary would not start, no
// certificate for the stable domains), not for a soak that found problems.
func run(ctx context.Context, c config, log io.Writer) (*result, error) {
	if c.Provoked == 0 {
		c.Provoked = defaultConfig().Provoked
	}
	if c.RestWait == 0 {
		c.RestWait = defaultConfig().RestWait
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	res := &result{cfg: c, machine: machine(), loadStart: loadavg()}
	e, err := start(ctx, c, log)
	if e != nil {
		defer e.close()
	}
	if err != nil {
		return nil, err
	}
	res.binVersion = binVersion(c.Bin)
	fails := newFailures()
	api := &apiClient{base: e.api, key: e.key, http: &http.Client{Timeout: 30 * time.Second}}

	// The stable domains are valid before the clock starts, so traffic
	// has somewhere to go from its first request.
	setupStart := time.Now()
	tg := &targets{newClient: func() *http.Client { return newEdgeClient(e.httpsAddr, e.roots, true) }}
	defer tg.removeAll()
	for i := 1; i <= c.Stable; i++ {
		domain := fmt.Sprintf("s%d.soak.example.com", i)
		rec, err := api.create(ctx, domain)
		if err != nil {
			return nil, fmt.Errorf("creating stable domain %s: %w", domain, err)
		}
		e.dns.SetA(rec.TargetCNAME, "127.0.0.1")
		e.dns.SetCNAME(domain, rec.TargetCNAME)
		if err := api.waitValid(ctx, rec.ID, nil, validWait); err != nil {
			return nil, fmt.Errorf("stable domain %s: %w; server log:\n%s", domain, err, tail(e.logPath, 40))
		}
		tg.add(domain)
	}
	res.setup = time.Since(setupStart)
	progress(log, "%d stable domain(s) valid after %v; traffic at %d req/s for %v", c.Stable, res.setup.Round(time.Millisecond), c.Rate, c.Duration)

	t0 := time.Now()
	end := t0.Add(c.Duration)
	res.started = t0
	traffic := newTraffic(t0, c.Period, c.Duration, fails)
	fresh := newEdgeClient(e.httpsAddr, e.roots, false)

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	smp := &sampler{pid: e.cmd.Process.Pid, metricsURL: e.api + "/metrics", healthzURL: e.api + "/healthz", probeURL: e.ingest.URL + "/probe", fails: fails}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		smp.run(runCtx, t0, end, c.SampleEvery, log, traffic)
	}()
	ch := &churn{cfg: c, api: api, dns: e.dns, targets: tg, traffic: traffic, fresh: fresh, httpsPort: port(e.httpsAddr), fails: fails, end: end, log: log}
	for range c.Churners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ch.worker(runCtx)
		}()
	}
	gen := &generator{rate: c.Rate, targets: tg, traffic: traffic, httpsPort: port(e.httpsAddr)}
	gen.run(runCtx, t0, end)
	progress(log, "traffic done; waiting for the churn workers to finish their cycle")
	wg.Wait()

	// At rest: the soak's connections closed, so only what the server
	// kept on its own remains.
	tg.removeAll()
	fresh.CloseIdleConnections()
	api.http.CloseIdleConnections()
	if len(smp.samples) > 0 && smp.samples[0].at == 0 && ctx.Err() == nil {
		progress(log, "traffic and churn done; waiting up to %v for the server to come back to rest", c.RestWait)
		res.rest = restCheck(ctx, smp, smp.samples[0], c.Stable, c.RestWait)
	} else {
		res.rest.why = "no sample before traffic started, or interrupted"
	}
	res.traffic = traffic
	res.churn = ch.stats()
	res.samples = smp.samples
	res.flat = judgeFlat(smp.samples, c.Warmup, c.Period, c.Duration)
	res.upstreamFaults = e.faults.Load()
	res.loadEnd = loadavg()
	res.shutdown, res.shutdownErr = e.stop()
	res.logIssues = logIssues(e.logPath, 8)
	if c.ServerLog != "" {
		if data, err := os.ReadFile(e.logPath); err == nil {
			os.WriteFile(c.ServerLog, data, 0o644)
		}
	}
	res.failures = fails.snapshot()
	if ctx.Err() != nil {
		res.interrupted = true
	}
	return res, nil
}

// start brings up DNS, Pebble, the upstreams and the binary, and waits for
// /readyz. The returned env is non-nil whenever something was started, so
// the caller can close it even on error.
func start(ctx context.Context, c config, log io.Writer) (*env, error) {
	dir, err := os.MkdirTemp("", "edgeproxy-soak")
	if err != nil {
		return nil, err
	}
	e := &env{dir: dir, exited: make(chan struct{})}
	if e.dns, err = dnstest.New(); err != nil {
		return e, err
	}
	e.ingest = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/probe" { // the sampler's direct probe, not proxied traffic
			return
		}
		n, err := io.Copy(io.Discard, r.Body)
		if err != nil {
			http.Error(w, "reading body: "+err.Error(), http.StatusBadRequest)
			return
		}
		if n := e.ingested.Add(1); c.upstreamFault != nil && c.upstreamFault(n) {
			e.faults.Add(1)
			http.Error(w, "fault injected by the soak's upstream", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(upstreamAnswer{Upstream: "ingest", Host: r.Header.Get("X-Forwarded-Host"), Path: r.URL.Path, Bytes: n})
	}))
	e.assets = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Soak-Upstream", "assets")
		w.Header().Set("X-Soak-Host", r.Header.Get("X-Forwarded-Host"))
		w.Header().Set("Content-Type", "application/javascript")
		w.Write(staticBody)
	}))

	ports, err := testbin.FreePorts(3)
	if err != nil {
		return e, err
	}
	apiAddr, httpAddr := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	e.httpsAddr = fmt.Sprintf("127.0.0.1:%d", ports[2])
	e.pebble = certstest.NewPebble(e.dns.Addr(), ports[1], ports[2])
	caRoot := filepath.Join(dir, "pebble-server.pem")
	if err := os.WriteFile(caRoot, e.pebble.ServerCertPEM(), 0o600); err != nil {
		return e, err
	}
	e.roots = x509.NewCertPool()
	if !e.roots.AppendCertsFromPEM(e.pebble.IssuerRootPEM()) {
		return e, errors.New("pebble: no issuing root")
	}

	e.cmd = exec.Command(c.Bin, serverArgs(dir, apiAddr, httpAddr, e.httpsAddr, caRoot, e)...)
	e.logPath = filepath.Join(dir, "edgeproxy.log")
	logFile, err := os.Create(e.logPath)
	if err != nil {
		return e, err
	}
	defer logFile.Close() // the child holds its own descriptor
	e.cmd.Stdout, e.cmd.Stderr = logFile, logFile
	if err := e.cmd.Start(); err != nil {
		e.cmd = nil
		return e, fmt.Errorf("starting %s: %w", c.Bin, err)
	}
	go func() {
		e.exitErr = e.cmd.Wait()
		close(e.exited)
	}()
	progress(log, "edgeproxy pid %d: api http://%s, edge https://%s; Pebble %s; DNS %s", e.cmd.Process.Pid, apiAddr, e.httpsAddr, e.pebble.DirectoryURL(), e.dns.Addr())

	e.api = "http://" + apiAddr
	if err := waitReady(ctx, e); err != nil {
		return e, fmt.Errorf("%w; server log:\n%s", err, tail(e.logPath, 40))
	}
	key, err := os.ReadFile(filepath.Join(dir, "data", "bootstrap-key"))
	if err != nil {
		return e, err
	}
	e.key = strings.TrimSpace(string(key))
	return e, nil
}

// serverArgs are the flags the binary runs with: all of its listeners on
// loopback, Pebble and the loopback DNS, a short recheck so churned records
// go valid within seconds, and a monitor every 30 s so the stable records
// are re-checked (DNS, certificate, a TLS probe) many times during the run.
func serverArgs(dir, apiAddr, httpAddr, httpsAddr, caRoot string, e *env) []string {
	return []string{"serve", "--dev",
		"--data-dir", filepath.Join(dir, "data"),
		"--api-addr", apiAddr, "--http-addr", httpAddr, "--https-addr", httpsAddr,
		"--acme-ca", e.pebble.DirectoryURL(), "--acme-ca-root", caRoot,
		"--acme-caa-identities", certstest.CAAIdentity,
		"--dns-resolvers", e.dns.Addr(),
		"--upstream", e.ingest.URL, "--assets-upstream", e.assets.URL,
		"--recheck-max", "2s",
		"--monitor-interval", "30s",
		"--max-proxy-records", "1000",
		// The churn orders far more than the default budget of 10 an hour.
		"--org-orders-per-hour", "100000",
	}
}

// serverFlagsText is serverArgs as the report shows them.
const serverFlagsText = "`--dev --recheck-max 2s --monitor-interval 30s --max-proxy-records 1000 --org-orders-per-hour 100000`, listeners, CA and resolvers on loopback"

// stop sends SIGTERM and waits for the exit. It says how the server ended;
// err is set when it did not exit 0 within shutdownWait.
func (e *env) stop() (string, error) {
	if e.cmd == nil {
		return "not started", errors.New("not started")
	}
	select {
	case <-e.exited:
		return "", fmt.Errorf("the server had already exited during the run: %v", e.exitErr)
	default:
	}
	t := time.Now()
	e.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-e.exited:
		took := time.Since(t).Round(time.Millisecond)
		if e.exitErr != nil {
			return "", fmt.Errorf("after SIGTERM the server exited with %v (after %v)", e.exitErr, took)
		}
		return fmt.Sprintf("exit 0, %v after SIGTERM", took), nil
	case <-time.After(shutdownWait):
		e.cmd.Process.Kill()
		<-e.exited
		return "", fmt.Errorf("the server had not exited %v after SIGTERM; killed", shutdownWait)
	}
}

func (e *env) close() {
	if e.cmd != nil {
		select {
		case <-e.exited:
		default:
			e.cmd.Process.Kill()
			<-e.exited
		}
	}
	if e.pebble != nil {
		e.pebble.Close()
	}
	if e.ingest != nil {
		e.ingest.Close()
	}
	if e.assets != nil {
		e.assets.Close()
	}
	if e.dns != nil {
		e.dns.Stop()
	}
	os.RemoveAll(e.dir)
}

func waitReady(ctx context.Context, e *env) error {
	deadline := time.After(time.Minute)
	for {
		resp, err := http.Get(e.api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-e.exited:
			return fmt.Errorf("edgeproxy exited before it was ready: %v", e.exitErr)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errors.New("edgeproxy not ready after 1m")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// port is the port of a host:port address.
func port(addr string) int {
	a, err := net.ResolveTCPAddr("tcp", addr)
	if err != nil {
		return 0
	}
	return a.Port
}

// tail is the last n lines of the file at path.
func tail(path string, n int) string {
	data, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// logIssues counts the server's WARN and ERROR lines and keeps up to max
// distinct messages of them.
func logIssues(path string, max int) logSummary {
	var s logSummary
	f, err := os.Open(path)
	if err != nil {
		return s
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		s.lines++
		var level string
		switch {
		case strings.Contains(line, "level=ERROR"):
			level = "ERROR"
			s.errors++
		case strings.Contains(line, "level=WARN"):
			level = "WARN"
			s.warnings++
		default:
			continue
		}
		msg := line
		if i := strings.Index(line, "msg="); i >= 0 {
			msg = line[i:]
		}
		if len(msg) > 160 {
			msg = msg[:160] + "…"
		}
		key := level + " " + msg
		if !seen[key] && len(s.examples) < max {
			seen[key] = true
			s.examples = append(s.examples, key)
		}
	}
	return s
}

type logSummary struct {
	lines, warnings, errors int
	examples                []string
}

func binVersion(bin string) string {
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	return strings.TrimSpace(string(out))
}

func machine() string {
	model := "unknown CPU"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%d CPUs (%s), %s", runtime.NumCPU(), model, runtime.Version())
}

func loadavg() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(data))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
