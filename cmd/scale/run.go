package main

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/procfs"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/cpustat"
	"github.com/edgeproxy/edgeproxy/internal/testcert"
	"github.com/edgeproxy/edgeproxy/store"
)

// etcdPrefix is the nodes' --etcd-prefix (the default).
const etcdPrefix = "/edgeproxy/"

// Scenarios, as the report names them.
const (
	scenarioStart   = "start"
	scenarioFirst   = "first node, empty data dir"
	scenarioCatchUp = "new node, empty data dir, while another runs"
	scenarioRestart = "restart on its local copy, while another runs"
)

// result is everything one invocation measured.
type result struct {
	cfg      config
	args     []string
	machine  machine
	seed     seedSummary
	migrate  *migrateResult
	nodes    []nodeResult
	acmeReqs int64
	// interrupted: the context ended before every scenario ran.
	interrupted bool
}

type seedSummary struct {
	counts map[store.Status]int
	size   int64
	took   time.Duration
}

type migrateResult struct {
	keys         int
	took         time.Duration
	before       etcdStatus // after the migration
	after        etcdStatus // at the end of the runs
	etcdMem      memory     // the member's, at the end of the runs
	etcdMemAfter memory
}

// nodeResult is one node's measurement.
type nodeResult struct {
	store, scenario string
	run             int
	// ready and serving run from exec to /readyz 200 and to the first
	// successful handshake for a valid name.
	ready, serving time.Duration
	// cpu is the node's CPU time from exec to serving, in seconds; others
	// is what every other process of the machine used meanwhile, in CPUs
	// (this tool, etcd and other nodes excluded).
	cpu, others float64
	mem         memory // once serving
	latency     []time.Duration
	latFailed   int
	latErrs     []string
	sweep       sweepResult
	// allServed runs from exec to the end of the sweep over every valid
	// name.
	allServed  time.Duration
	memAfter   memory // after the sweep
	handshakes map[string]float64
	logIssues  []string
	stopErr    error
}

// env is what the nodes run against; close stops it all.
type env struct {
	node   nodeEnv
	dns    *dnstest.Server
	ca     *httptest.Server
	acme   atomic.Int64
	etcd   *etcdMember
	valid  []string
	probe  string
	nextAt int // where the next node's latency names start in valid
}

func (e *env) close() {
	if e.etcd != nil {
		e.etcd.stop()
	}
	if e.ca != nil {
		e.ca.Close()
	}
	if e.dns != nil {
		e.dns.Stop()
	}
}

// run seeds the data, then measures each store's scenarios c.Runs times.
// On error the result holds what was measured before it.
func run(ctx context.Context, c config, log io.Writer) (*result, error) {
	res := &result{cfg: c, args: os.Args, machine: describeMachine(c)}
	work, err := os.MkdirTemp(c.WorkDir, "edgeproxy-scale-")
	if err != nil {
		return nil, err
	}
	if c.Keep {
		progress(log, "data and logs in %s (kept)", work)
	} else {
		defer os.RemoveAll(work)
	}
	e := &env{}
	defer e.close()
	defer func() { res.acmeReqs = e.acme.Load() }()

	// The "ACME CA": anything sent to it is ACME traffic, which nothing
	// here should cause.
	e.ca = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e.acme.Add(1)
		http.Error(w, "scale: no ACME here", http.StatusServiceUnavailable)
	}))
	e.ca.StartTLS()
	caRoot := filepath.Join(work, "acme-ca.pem")
	if err := os.WriteFile(caRoot, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: e.ca.Certificate().Raw}), 0o600); err != nil {
		return res, err
	}
	if e.dns, err = dnstest.New(); err != nil {
		return res, err
	}
	root, err := testcert.NewCA("scale root")
	if err != nil {
		return res, err
	}
	issuer, err := root.Intermediate("scale intermediate")
	if err != nil {
		return res, err
	}
	logDir := filepath.Join(work, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return res, err
	}
	e.node = nodeEnv{
		bin:       c.Bin,
		caURL:     e.ca.URL + "/directory",
		caRoot:    caRoot,
		dnsAddr:   e.dns.Addr(),
		upstream:  "http://127.0.0.1:1",
		logDir:    logDir,
		edgeRoots: root.Pool,
	}

	progress(log, "seed: %d records (%d valid with certificates, %d waiting) in %d organizations", c.Records, c.Valid, c.Waiting, c.Orgs)
	sd, err := seed(ctx, filepath.Join(work, "seed"), c, e.node.caURL, issuer, log)
	if err != nil {
		return res, err
	}
	res.seed = seedSummary{counts: sd.counts, size: sd.size, took: sd.took}
	e.valid, e.probe = sd.valid, sd.valid[0]
	progress(log, "seed: done in %v; %s is %.1f MiB", sd.took.Round(time.Millisecond), dbFile, float64(sd.size)/(1<<20))

	for _, s := range c.Stores {
		switch s {
		case storeBbolt:
			for r := 1; r <= c.Runs; r++ {
				if err := runBbolt(ctx, res, e, sd, r, filepath.Join(work, fmt.Sprintf("bbolt-%d", r)), log); err != nil {
					return res, checkInterrupt(ctx, res, err)
				}
			}
		case storeEtcd:
			if err := runEtcd(ctx, res, e, sd, filepath.Join(work, "etcd"), log); err != nil {
				return res, checkInterrupt(ctx, res, err)
			}
		}
	}
	return res, nil
}

func checkInterrupt(ctx context.Context, res *result, err error) error {
	if ctx.Err() != nil {
		res.interrupted = true
	}
	return err
}

// runBbolt measures a node on a fresh copy of the seeded file.
func runBbolt(ctx context.Context, res *result, e *env, sd *seeded, run int, dir string, log io.Writer) error {
	data := filepath.Join(dir, "data")
	if err := copyFile(filepath.Join(data, dbFile), sd.dbPath); err != nil {
		return err
	}
	e.node.etcdEP = ""
	n, nr, err := measureNode(ctx, e, fmt.Sprintf("bbolt-%d", run), data, nil, res.cfg, log)
	if n != nil {
		finishNode(n, &nr)
	}
	nr.store, nr.scenario, nr.run = storeBbolt, scenarioStart, run
	res.nodes = append(res.nodes, nr)
	return err
}

// runEtcd starts etcd, migrates the seeded file into it, and runs the
// three etcd scenarios c.Runs times.
func runEtcd(ctx context.Context, res *result, e *env, sd *seeded, dir string, log io.Writer) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	var err error
	progress(log, "etcd: starting %s", res.cfg.EtcdBin)
	if e.etcd, err = startEtcd(ctx, res.cfg.EtcdBin, dir); err != nil {
		return err
	}
	e.node.etcdEP = e.etcd.endpoint
	progress(log, "etcd: edgeproxy migrate --to-etcd of the seeded file")
	sum, took, err := migrateToEtcd(ctx, res.cfg.Bin, sd.dbPath, e.etcd.endpoint)
	if err != nil {
		return err
	}
	m := &migrateResult{keys: sum.Keys, took: took}
	res.migrate = m
	if m.before, err = e.etcd.status(ctx, etcdPrefix); err != nil {
		return err
	}
	if m.etcdMem, err = readMemory(e.etcd.pid()); err != nil {
		return err
	}
	progress(log, "etcd: %d keys migrated in %v; etcd's database %.1f MiB", sum.Keys, took.Round(time.Millisecond), float64(m.before.dbSize)/(1<<20))

	for r := 1; r <= res.cfg.Runs; r++ {
		runDir := filepath.Join(dir, fmt.Sprintf("run-%d", r))
		aData, bData := filepath.Join(runDir, "a"), filepath.Join(runDir, "b")

		a, ar, err := measureNode(ctx, e, fmt.Sprintf("etcd-%d-a", r), aData, nil, res.cfg, log)
		ar.store, ar.scenario, ar.run = storeEtcd, scenarioFirst, r
		if err != nil {
			if a != nil {
				finishNode(a, &ar)
			}
			res.nodes = append(res.nodes, ar)
			return err
		}
		b, br, err := measureNode(ctx, e, fmt.Sprintf("etcd-%d-b", r), bData, []int{a.pid()}, res.cfg, log)
		br.store, br.scenario, br.run = storeEtcd, scenarioCatchUp, r
		if err != nil {
			if b != nil {
				finishNode(b, &br)
			}
			finishNode(a, &ar)
			res.nodes = append(res.nodes, ar, br)
			return err
		}
		finishNode(a, &ar)
		a2, a2r, err := measureNode(ctx, e, fmt.Sprintf("etcd-%d-a-restart", r), aData, []int{b.pid()}, res.cfg, log)
		a2r.store, a2r.scenario, a2r.run = storeEtcd, scenarioRestart, r
		if a2 != nil {
			finishNode(a2, &a2r)
		}
		finishNode(b, &br)
		res.nodes = append(res.nodes, ar, br, a2r)
		if err != nil {
			return err
		}
	}
	if m.after, err = e.etcd.status(ctx, etcdPrefix); err != nil {
		return err
	}
	if m.etcdMemAfter, err = readMemory(e.etcd.pid()); err != nil {
		return err
	}
	return nil
}

// measureNode starts a node on dataDir and measures it (see the command's
// doc), leaving it running. others are the pids of the other nodes
// running meanwhile, whose CPU does not count as the machine's other
// load. The node is returned whenever it was started, for the caller to
// stop.
func measureNode(ctx context.Context, e *env, name, dataDir string, others []int, c config, log io.Writer) (*node, nodeResult, error) {
	var nr nodeResult
	ours := append(slices.Clone(others), os.Getpid())
	if e.etcd != nil && e.node.etcdEP != "" {
		ours = append(ours, e.etcd.pid())
	}
	before, err := sampleCPU(ours)
	if err != nil {
		return nil, nr, err
	}
	n, err := startNode(&e.node, name, dataDir)
	if err != nil {
		return nil, nr, err
	}
	progress(log, "%s: pid %d started", name, n.pid())
	if nr.ready, nr.serving, err = n.waitServing(ctx, e.probe, e.node.edgeRoots, c.ServeTimeout); err != nil {
		return n, nr, err
	}
	after, err := sampleCPU(ours)
	if err != nil {
		return n, nr, err
	}
	if nr.cpu, err = cpuSeconds(n.pid()); err != nil {
		return n, nr, err
	}
	if nr.mem, err = readMemory(n.pid()); err != nil {
		return n, nr, err
	}
	wall := after.at.Sub(before.at).Seconds()
	nr.others = max(0, (after.busy-before.busy)-(after.ours-before.ours)-nr.cpu) / wall
	progress(log, "%s: ready after %v, serving after %v; VmRSS %.0f MiB", name,
		nr.ready.Round(time.Millisecond), nr.serving.Round(time.Millisecond), mib(nr.mem.VmRSS))

	// Names this process has not handshaken: a window of the valid names
	// that moves from node to node.
	names := make([]string, c.Names)
	for i := range names {
		names[i] = e.valid[1+(e.nextAt+i)%(len(e.valid)-1)]
	}
	e.nextAt = (e.nextAt + c.Names) % (len(e.valid) - 1)
	for _, name := range names {
		if err := ctx.Err(); err != nil {
			return n, nr, err
		}
		d, err := handshake(n.httpsAddr, name, e.node.edgeRoots)
		if err != nil {
			nr.latFailed++
			if len(nr.latErrs) < 5 {
				nr.latErrs = append(nr.latErrs, err.Error())
			}
			continue
		}
		nr.latency = append(nr.latency, d)
	}
	nr.sweep = sweep(ctx, n.httpsAddr, e.valid, e.node.edgeRoots, c.Sweepers, c.ServeTimeout)
	nr.allServed = time.Since(n.began)
	if nr.memAfter, err = readMemory(n.pid()); err != nil {
		return n, nr, err
	}
	if nr.handshakes, err = n.handshakeMetrics(ctx); err != nil {
		return n, nr, err
	}
	progress(log, "%s: %d of %d valid names served (sweep %v); VmRSS %.0f MiB", name,
		nr.sweep.names-nr.sweep.failed, nr.sweep.names, nr.sweep.took.Round(time.Millisecond), mib(nr.memAfter.VmRSS))
	return n, nr, ctx.Err()
}

// finishNode stops n and notes how it ended and what it logged.
func finishNode(n *node, nr *nodeResult) {
	nr.stopErr = n.stop()
	nr.logIssues = n.logProblems()
}

// cpuSample is the machine's busy CPU time and that of some processes, at
// a moment.
type cpuSample struct {
	at         time.Time
	busy, ours float64 // seconds
}

func sampleCPU(pids []int) (cpuSample, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return cpuSample{}, err
	}
	st, err := fs.Stat()
	if err != nil {
		return cpuSample{}, err
	}
	s := cpuSample{at: time.Now(), busy: cpustat.Busy(st.CPUTotal)}
	for _, pid := range pids {
		v, err := cpuSeconds(pid)
		if err != nil {
			return cpuSample{}, err
		}
		s.ours += v
	}
	return s, nil
}

// machine describes where the run happened.
type machine struct {
	cpus      int
	cpuModel  string
	memTotal  uint64
	goVersion string
	binary    string // `edgeproxy version`
	etcd      string // `etcd --version`, first line
	commit    string // git describe of the working tree, if any
}

func describeMachine(c config) machine {
	m := machine{cpus: runtime.NumCPU(), goVersion: runtime.Version()}
	if info, err := procfs.NewDefaultFS(); err == nil {
		if cpus, err := info.CPUInfo(); err == nil && len(cpus) > 0 {
			m.cpuModel = cpus[0].ModelName
		}
		if mi, err := info.Meminfo(); err == nil && mi.MemTotal != nil {
			m.memTotal = *mi.MemTotal * 1024
		}
	}
	m.binary = firstLine(exec.Command(c.Bin, "version").Output())
	if slices.Contains(c.Stores, storeEtcd) {
		m.etcd = firstLine(exec.Command(c.EtcdBin, "--version").Output())
	}
	m.commit = firstLine(exec.Command("git", "describe", "--always", "--dirty").Output())
	return m
}

func firstLine(out []byte, err error) string {
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "unknown (" + strings.TrimSpace(string(ee.Stderr)) + ")"
		}
		return "unknown (" + err.Error() + ")"
	}
	l, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return l
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }
