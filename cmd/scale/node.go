package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/procfs"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// shutdownWait bounds a node's exit after SIGTERM: the server drains for
// up to 30 s.
const shutdownWait = 45 * time.Second

// node is one edgeproxy process.
type node struct {
	name      string
	dataDir   string
	apiAddr   string
	httpsAddr string
	logPath   string
	cmd       *exec.Cmd
	began     time.Time // just before exec
	exited    chan struct{}
	exitErr   error // set before exited is closed
}

// nodeEnv is what every node is pointed at.
type nodeEnv struct {
	bin       string
	caURL     string // --acme-ca
	caRoot    string // --acme-ca-root: the PEM file of the fake CA's TLS certificate
	dnsAddr   string // --dns-resolvers
	upstream  string // --upstream and --assets-upstream
	etcdEP    string // --etcd-endpoints, or empty for the bbolt file
	logDir    string
	edgeRoots *x509.CertPool // what the edge's certificates chain to
}

// startNode starts the binary as node name on dataDir.
func startNode(env *nodeEnv, name, dataDir string) (*node, error) {
	ports, err := testbin.FreePorts(3)
	if err != nil {
		return nil, err
	}
	n := &node{
		name:      name,
		dataDir:   dataDir,
		apiAddr:   "127.0.0.1:" + strconv.Itoa(ports[0]),
		httpsAddr: "127.0.0.1:" + strconv.Itoa(ports[2]),
		logPath:   filepath.Join(env.logDir, name+".log"),
		exited:    make(chan struct{}),
	}
	args := []string{"serve",
		"--data-dir", dataDir,
		"--api-addr", n.apiAddr,
		"--http-addr", "127.0.0.1:" + strconv.Itoa(ports[1]),
		"--https-addr", n.httpsAddr,
		"--target-cname-base", targetBase,
		"--acme-ca", env.caURL,
		"--acme-ca-root", env.caRoot,
		"--dns-resolvers", env.dnsAddr,
		"--upstream", env.upstream,
		"--assets-upstream", env.upstream,
		"--node-name", name,
	}
	if env.etcdEP != "" {
		args = append(args, "--etcd-endpoints", env.etcdEP)
	}
	logf, err := os.Create(n.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close() // the child holds its own descriptor
	n.cmd = exec.Command(env.bin, args...)
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	// The environment could hold EDGEPROXY_* settings of the operator's.
	n.cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	setDeathSignal(n.cmd)
	n.began = time.Now()
	if err := n.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", env.bin, err)
	}
	go func() {
		n.exitErr = n.cmd.Wait()
		close(n.exited)
	}()
	return n, nil
}

func (n *node) pid() int { return n.cmd.Process.Pid }

// waitServing waits until /readyz answers 200 and then until a handshake
// for name succeeds, and returns the time from exec to each.
func (n *node) waitServing(ctx context.Context, name string, roots *x509.CertPool, timeout time.Duration) (ready, serving time.Duration, err error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := &http.Client{Timeout: 5 * time.Second}
	pause := func() error {
		select {
		case <-n.exited:
			return fmt.Errorf("%s exited while starting: %v; its log ends:\n%s", n.name, n.exitErr, testbin.FileTail(n.logPath, 4<<10))
		case <-ctx.Done():
			return fmt.Errorf("%s not serving after %v; its log ends:\n%s", n.name, timeout, testbin.FileTail(n.logPath, 4<<10))
		case <-time.After(5 * time.Millisecond):
			return nil
		}
	}
	for {
		resp, err := client.Get("http://" + n.apiAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Since(n.began)
				break
			}
		}
		if err := pause(); err != nil {
			return 0, 0, err
		}
	}
	for {
		if _, err := handshake(n.httpsAddr, name, roots); err == nil {
			return ready, time.Since(n.began), nil
		}
		if err := pause(); err != nil {
			return 0, 0, err
		}
	}
}

// stop sends SIGTERM and waits for the exit, which must be 0.
func (n *node) stop() error {
	select {
	case <-n.exited:
		return fmt.Errorf("%s had already exited: %v", n.name, n.exitErr)
	default:
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.exited:
		if n.exitErr != nil {
			return fmt.Errorf("%s exited with %v after SIGTERM", n.name, n.exitErr)
		}
		return nil
	case <-time.After(shutdownWait):
		n.kill()
		return fmt.Errorf("%s had not exited %v after SIGTERM; killed", n.name, shutdownWait)
	}
}

// kill ends the process at once, if it still runs.
func (n *node) kill() {
	select {
	case <-n.exited:
	default:
		n.cmd.Process.Kill()
		<-n.exited
	}
}

// logProblems returns the WARN and ERROR lines of the node's log.
func (n *node) logProblems() []string {
	f, err := os.Open(n.logPath)
	if err != nil {
		return []string{err.Error()}
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if l := sc.Text(); strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
			out = append(out, l)
		}
	}
	return out
}

// handshakeMetrics reads the edge's edgeproxy_tls_handshakes_total by
// result from /metrics.
func (n *node) handshakeMetrics(ctx context.Context) (map[string]float64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+n.apiAddr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	const prefix = `edgeproxy_tls_handshakes_total{result="`
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			continue
		}
		result, value, ok := strings.Cut(rest, `"} `)
		if !ok {
			continue
		}
		v, err := strconv.ParseFloat(value, 64)
		if err != nil {
			return nil, fmt.Errorf("/metrics: %q: %w", sc.Text(), err)
		}
		out[result] = v
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, errors.New("/metrics: no edgeproxy_tls_handshakes_total")
	}
	return out, nil
}

// memory is a process's memory as /proc/<pid>/status gives it, in bytes.
type memory struct {
	VmRSS, RssAnon, RssFile, VmHWM uint64
}

func readMemory(pid int) (memory, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return memory{}, err
	}
	s, err := p.NewStatus()
	if err != nil {
		return memory{}, err
	}
	return memory{VmRSS: s.VmRSS, RssAnon: s.RssAnon, RssFile: s.RssFile, VmHWM: s.VmHWM}, nil
}

// cpuSeconds is the CPU time (user + system) pid has used.
func cpuSeconds(pid int) (float64, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, err
	}
	s, err := p.Stat()
	if err != nil {
		return 0, err
	}
	return s.CPUTime(), nil
}

// handshakeTimeout bounds one handshake of the tool's.
const handshakeTimeout = 10 * time.Second

// handshake connects to addr and does a full TLS 1.3 handshake for name
// (X25519, no session cache, so no resumption), closes, and returns how
// long connect plus handshake took. The chain is verified against roots
// for name after the clock stops: the time is the server's answer and the
// client's key exchange, not the client's chain verification.
func handshake(addr, name string, roots *x509.CertPool) (time.Duration, error) {
	cfg := &tls.Config{
		ServerName:         name,
		MinVersion:         tls.VersionTLS13,
		MaxVersion:         tls.VersionTLS13,
		CurvePreferences:   []tls.CurveID{tls.X25519},
		InsecureSkipVerify: true, // verified below, outside the timing
	}
	t0 := time.Now()
	raw, err := net.DialTimeout("tcp", addr, handshakeTimeout)
	if err != nil {
		return 0, err
	}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	conn.SetDeadline(t0.Add(handshakeTimeout))
	if err := conn.Handshake(); err != nil {
		return 0, fmt.Errorf("handshake for %s: %w", name, err)
	}
	took := time.Since(t0)
	state := conn.ConnectionState()
	if state.Version != tls.VersionTLS13 || state.DidResume {
		return 0, fmt.Errorf("handshake for %s: version %x, resumed %v; want a full TLS 1.3 handshake", name, state.Version, state.DidResume)
	}
	inter := x509.NewCertPool()
	for _, c := range state.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := state.PeerCertificates[0].Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
		return 0, fmt.Errorf("handshake for %s: %w", name, err)
	}
	return took, nil
}

// sweepResult is a handshake for each of a list of names.
type sweepResult struct {
	names, failed int
	took          time.Duration
	errs          []string // the first few failures
}

// sweep handshakes every name, workers at a time, and counts failures.
func sweep(ctx context.Context, addr string, names []string, roots *x509.CertPool, workers int, timeout time.Duration) sweepResult {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := sweepResult{names: len(names)}
	var (
		next   atomic.Int64
		failed atomic.Int64
		mu     sync.Mutex
		wg     sync.WaitGroup
	)
	t0 := time.Now()
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				err := ctx.Err()
				if err == nil {
					_, err = handshake(addr, names[i], roots)
				}
				if err != nil {
					failed.Add(1)
					mu.Lock()
					if len(res.errs) < 5 {
						res.errs = append(res.errs, err.Error())
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	res.took = time.Since(t0)
	res.failed = int(failed.Load())
	return res
}
