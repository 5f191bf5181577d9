// Command benchproxy measures edgeproxy's TLS edge against nginx and Caddy
// on one machine, the same way for every peer (`make bench-proxy`; the
// results are in docs/PERFORMANCE.md, "Edge").
//
// Layout: the load generator (wrk, and this tool's own TLS clients) and
// the upstream (an nginx serving a fixed JSON answer and a ~60 KB file)
// share the load CPU; each proxy runs alone on the proxy CPU. Every proxy
// terminates TLS with the same ECDSA P-256 certificate (made here, with its
// own test CA) and forwards to the same upstream over plain HTTP with
// keep-alive. Peers are measured in turn (A B C A B C ...), and each metric
// is reported as min / median / max over the repeats.
//
// Per peer and repeat, the loads browsers and SDKs send, each over TLS
// keep-alive with 64 connections: a 1 KB JSON POST /i/v0/e/ over HTTP/1.1
// (wrk) and over HTTP/2 with 10 streams per connection (h2load), a
// gzip-compressed /e/ batch of ~3 KB, a /flags/ POST, and GET
// /static/array.js (~60 KB); and full TLS 1.3 handshakes from a Go client
// (no resumption: a fresh tls.Config per connection with session tickets
// disabled, X25519 only). For each: operations per second, latency, and
// the proxy's CPU time per operation (utime+stime from /proc/<pid>/stat,
// for nginx the master and its workers), the figure to trust on a shared
// machine.
//
// Every proxy keeps a keep-alive pool to the upstream at least as large as
// the load's concurrency (-upstream-pool), and each measured run counts the
// connections the upstream accepted (nginx's stub_status): a proxy that
// opened more than -max-upstream-conns fails the benchmark, since it was
// measured paying for reconnections, not for proxying.
//
// Once per proxy, on a fresh process: memory per idle keep-alive TLS
// connection, from VmRSS before and after opening -idle-conns connections
// that each carried one request.
//
// Everything listens on 127.0.0.1. Run it through scripts/bench-proxy.sh,
// which installs wrk, nginx and Caddy when missing, builds bin/edgeproxy and
// pins this tool to the load CPU.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"
)

// benchDomain is the customer domain every peer serves.
const benchDomain = "bench.example.com"

type options struct {
	bin        string
	workDir    string
	keep       bool
	duration   time.Duration
	warmup     time.Duration
	repeats    int
	conns      int
	hsConc     int
	idleConns  int
	peers      []string
	memPeers   []string
	loadCPU    string
	proxyCPU   string
	out        string
	jsonOut    string
	nginxBin   string
	caddyBin   string
	wrkBin     string
	etcdBin    string
	staticSize int
	postSize   int
	maxOthers  float64
	retries    int
	quietWait  time.Duration
	cpuProfile string
	hold       time.Duration
	tests      []string
	h2loadBin  string
	h2Streams  int
	batchSize  int
	prewarm    time.Duration
	// upstreamPool is every proxy's idle keep-alive pool to the upstream
	// (nginx keepalive, Caddy keepalive_idle_conns and _per_host).
	upstreamPool int
	caddyPerHost int
	maxUpConns   int64
}

func main() {
	var o options
	var peers, memPeers, tests string
	flag.StringVar(&o.bin, "bin", "bin/edgeproxy", "the edgeproxy binary")
	flag.StringVar(&o.workDir, "workdir", "", "directory for configs, data and logs (default: a new one under $TMPDIR, removed at the end unless -keep)")
	flag.BoolVar(&o.keep, "keep", false, "keep the work directory")
	flag.DurationVar(&o.duration, "duration", 10*time.Second, "length of each measured run")
	flag.DurationVar(&o.warmup, "warmup", 3*time.Second, "unmeasured load of each test on each peer before the first repeat")
	flag.IntVar(&o.repeats, "repeats", 3, "interleaved repeats of every peer")
	flag.IntVar(&o.conns, "c", 64, "wrk connections")
	flag.IntVar(&o.hsConc, "handshake-concurrency", 32, "concurrent handshaking clients")
	flag.IntVar(&o.idleConns, "idle-conns", 10000, "idle keep-alive TLS connections for the memory test (0: skip)")
	flag.StringVar(&peers, "peers", "upstream,upstream-tls,edgeproxy,nginx,caddy",
		"peers in the order measured: upstream (plain HTTP, direct), upstream-tls (TLS, direct), edgeproxy[@BINARY][+ENV=VALUE...] (another build, environment variables), edgeproxy-etcd[@BINARY][+ENV=VALUE...] (the store on a single-member etcd on the load CPU), nginx, caddy")
	flag.StringVar(&tests, "tests", strings.Join(allTests, ","), "tests run on each peer: "+strings.Join(allTests, ", "))
	flag.StringVar(&o.h2loadBin, "h2load", "h2load", "h2load binary (Debian's nghttp2-client)")
	flag.IntVar(&o.h2Streams, "h2-streams", 10, "concurrent streams per connection in the HTTP/2 test")
	flag.IntVar(&o.batchSize, "batch-bytes", 3000, "least size of the gzip-compressed /e/ batch")
	flag.DurationVar(&o.prewarm, "prewarm", 2*time.Second, "unmeasured load of the same test right before each measured run, so that the proxy's upstream pool is full whatever ran before")
	flag.IntVar(&o.upstreamPool, "upstream-pool", 1024, "idle keep-alive connections each proxy keeps to the upstream (at least the load's concurrency: -c × -h2-streams)")
	flag.IntVar(&o.caddyPerHost, "caddy-per-host-pool", 1024, "Caddy's keepalive_idle_conns_per_host (0 leaves it out: Go's default of 2, which makes Caddy reconnect under load)")
	flag.Int64Var(&o.maxUpConns, "max-upstream-conns", 8, "fail when a proxy opens more upstream connections than this during a measured run (-1: do not check)")
	flag.StringVar(&memPeers, "mem-peers", "edgeproxy,nginx,caddy", "peers (as named in -peers) whose memory per idle connection is measured")
	flag.StringVar(&o.loadCPU, "load-cpu", "0", "CPU list (taskset -c) of wrk, the handshake clients and the upstream")
	flag.StringVar(&o.proxyCPU, "proxy-cpu", "1", "CPU list (taskset -c) of the proxy under test")
	flag.StringVar(&o.out, "out", "", "also write the Markdown report here")
	flag.StringVar(&o.jsonOut, "json", "", "also write every raw measurement here as JSON")
	flag.StringVar(&o.nginxBin, "nginx", "nginx", "nginx binary")
	flag.StringVar(&o.caddyBin, "caddy", "caddy", "caddy binary")
	flag.StringVar(&o.wrkBin, "wrk", "wrk", "wrk binary")
	flag.StringVar(&o.etcdBin, "etcd", ".tools/bin/etcd", "etcd binary of the edgeproxy-etcd peers (else etcd on PATH)")
	flag.IntVar(&o.staticSize, "static-bytes", 60*1024, "size of /static/array.js")
	flag.IntVar(&o.postSize, "post-bytes", 1024, "size of the JSON POST body")
	flag.Float64Var(&o.maxOthers, "max-others", 0.25, "a run during which other processes used more than this share of a core is run again (up to -retries times)")
	flag.IntVar(&o.retries, "retries", 2, "how often a disturbed run is run again")
	flag.DurationVar(&o.quietWait, "quiet-wait", 30*time.Second, "before each run, wait up to this long for other processes to use less than -max-others")
	flag.DurationVar(&o.hold, "hold", 0, "only start the upstream and the peers, print how to load them, and keep them up this long (for profiling by hand)")
	flag.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of benchproxy itself (the load generator) here")
	flag.Parse()
	o.peers = splitList(peers)
	o.memPeers = splitList(memPeers)
	o.tests = splitList(tests)
	for _, t := range o.tests {
		if !slices.Contains(allTests, t) {
			fatalf("-tests: unknown test %q (%s)", t, strings.Join(allTests, ", "))
		}
	}
	if o.repeats < 1 || o.duration <= 0 || o.conns < 1 || o.hsConc < 1 || o.h2Streams < 1 {
		fatalf("-repeats, -duration, -c, -h2-streams and -handshake-concurrency must be positive")
	}
	if need := o.conns * o.h2Streams; o.upstreamPool < need && o.maxUpConns >= 0 {
		fatalf("-upstream-pool %d is smaller than the HTTP/2 test's concurrency (-c %d × -h2-streams %d = %d): the proxies would reconnect",
			o.upstreamPool, o.conns, o.h2Streams, need)
	}

	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			fatalf("%v", err)
		}
		pprof.StartCPUProfile(f)
		defer pprof.StopCPUProfile()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, &o); err != nil {
		pprof.StopCPUProfile()
		fatalf("%v", err)
	}
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "benchproxy: "+format+"\n", args...)
	os.Exit(1)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

func run(ctx context.Context, o *options) error {
	bins := []string{o.wrkBin, o.nginxBin, "taskset"}
	if slices.Contains(o.tests, testPostH2) {
		bins = append(bins, o.h2loadBin)
	}
	for _, bin := range bins {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("%s not found (scripts/bench-proxy.sh installs it): %w", bin, err)
		}
	}
	var err error
	if o.workDir == "" {
		o.workDir, err = os.MkdirTemp("", "benchproxy-")
		if err != nil {
			return err
		}
		// nginx's workers run as nobody when started by root: they must be
		// able to reach the static file.
		if err := os.Chmod(o.workDir, 0o755); err != nil {
			return err
		}
		if !o.keep {
			defer os.RemoveAll(o.workDir)
		}
	} else if err := os.MkdirAll(o.workDir, 0o755); err != nil {
		return err
	}
	if o.workDir, err = filepath.Abs(o.workDir); err != nil {
		return err
	}
	if o.bin, err = filepath.Abs(o.bin); err != nil {
		return err
	}
	logf("work directory %s", o.workDir)
	if allowed := cpusAllowed(); allowed != o.loadCPU {
		logf("warning: benchproxy runs on CPUs %s, not on the load CPU %s alone: start it with taskset -c %s", allowed, o.loadCPU, o.loadCPU)
	}

	b := &bench{o: o, ctx: ctx, h2Rate: map[string]float64{}}
	defer b.stopAll()
	if err := b.prepare(); err != nil {
		return err
	}
	if err := b.startUpstream(); err != nil {
		return err
	}
	for _, spec := range o.peers {
		p, err := b.newPeer(spec)
		if err != nil {
			return err
		}
		if err := b.preflight(p); err != nil {
			return fmt.Errorf("%s: preflight: %w", p.name, err)
		}
		b.peers = append(b.peers, p)
	}

	if o.hold > 0 {
		return b.holdPeers()
	}

	if o.warmup > 0 {
		for _, p := range b.peers {
			logf("warm-up %s (%s of each load, not measured)", p.name, o.warmup)
			for _, t := range p.tests(o.tests) {
				if err := b.warm(p, t); err != nil {
					return fmt.Errorf("%s: warm-up: %w", p.name, err)
				}
			}
		}
	}

	var results []result
	for rep := 1; rep <= o.repeats; rep++ {
		for _, p := range b.peers {
			for _, t := range p.tests(o.tests) {
				if err := ctx.Err(); err != nil {
					return err
				}
				r, err := b.measureQuiet(p, t, rep)
				if err != nil {
					return fmt.Errorf("%s %s: %w", p.name, t, err)
				}
				results = append(results, r)
				logf("%s", r.line())
				if err := checkUpstreamConns(r, p.proc != nil, o.maxUpConns); err != nil {
					return err
				}
			}
		}
	}

	var mems []memResult
	if o.idleConns > 0 {
		for _, name := range o.memPeers {
			p := b.peer(name)
			if p == nil || p.proc == nil {
				continue
			}
			m, err := b.idleMemory(p)
			if err != nil {
				return fmt.Errorf("%s: idle connections: %w", p.name, err)
			}
			logf("%s: %d idle TLS connections: RSS %d → %d KB = %.1f KB per connection (%.1f KB after %s more)",
				p.name, m.Conns, m.RSSBeforeKB, m.RSSAfterKB, m.KBPerConn, m.KBPerConnLate, m.LateAfter)
			mems = append(mems, m)
		}
	}

	rep := report(o, b, results, mems)
	fmt.Print(rep)
	if o.out != "" {
		if err := os.WriteFile(o.out, []byte(rep), 0o644); err != nil {
			return err
		}
	}
	if o.jsonOut != "" {
		data, _ := json.MarshalIndent(struct {
			Machine map[string]string
			Results []result
			Memory  []memResult
		}{b.machine(), results, mems}, "", "  ")
		if err := os.WriteFile(o.jsonOut, data, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// machine describes where the numbers come from.
func (b *bench) machine() map[string]string {
	m := map[string]string{
		"go":        runtime.Version(),
		"nproc":     fmt.Sprint(onlineCPUs()),
		"cpu":       cpuModel(),
		"load_cpu":  b.o.loadCPU,
		"proxy_cpu": b.o.proxyCPU,
		"duration":  b.o.duration.String(),
		"conns":     fmt.Sprint(b.o.conns),
		"repeats":   fmt.Sprint(b.o.repeats),
	}
	for name, args := range map[string][]string{
		"nginx":     {b.o.nginxBin, "-v"},
		"caddy":     {b.o.caddyBin, "version"},
		"wrk":       {b.o.wrkBin, "-v"},
		"h2load":    {b.o.h2loadBin, "--version"},
		"edgeproxy": {b.o.bin, "version"},
		"openssl":   {"openssl", "version"},
	} {
		out, _ := exec.Command(args[0], args[1:]...).CombinedOutput()
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		m[name] = line
	}
	return m
}

// onlineCPUs counts the machine's CPUs (runtime.NumCPU counts only those
// this process may run on).
func onlineCPUs() int {
	cpus, err := perCPU()
	if err != nil {
		return runtime.NumCPU()
	}
	return len(cpus)
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// holdPeers keeps the servers up for o.hold (or until interrupted) and
// prints how to load each of them the way the benchmark does.
func (b *bench) holdPeers() error {
	for _, p := range b.peers {
		fmt.Printf("%s: %s pids %v\n", p.name, p.baseURL(), pidsOf(p))
		for _, t := range []string{testPost, testBatch, testFlags, testStatic} {
			l := b.loads[t]
			fmt.Printf("  OPENSSL_CONF=%s taskset -c %s %s -t1 -c%d -d10s --latency -s %s '%s%s'\n",
				b.sslConf, b.o.loadCPU, b.o.wrkBin, b.o.conns, l.script, p.baseURL(), l.path)
		}
		fmt.Printf("  taskset -c %s %s -t1 -c%d -m%d -n100000 --connect-to %s --tls13-ciphers TLS_AES_128_GCM_SHA256 --groups X25519 -d %s -H 'content-type: application/json' %s/i/v0/e/\n",
			b.o.loadCPU, b.o.h2loadBin, b.o.conns, b.o.h2Streams, p.addr(), b.postFile, p.baseURL())
	}
	fmt.Printf("upstream: http://127.0.0.1:%d pids %v\nholding for %s (Ctrl-C stops)\n", b.upstreamPort, b.upstream.pids(), b.o.hold)
	select {
	case <-time.After(b.o.hold):
	case <-b.ctx.Done():
	}
	return nil
}
