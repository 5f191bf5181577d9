package testbin

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// etcdReadyTimeout bounds how long a start waits for etcd processes to
// report themselves healthy: only reached when something is wrong.
const etcdReadyTimeout = 60 * time.Second

// EtcdBinary returns the path of the etcd server binary that
// scripts/ensure-etcd.sh builds (.tools/bin/etcd at the root of this
// module), or else of an etcd on PATH. When there is neither, the test is
// skipped, or fails when RequireToolsEnv is 1.
func EtcdBinary(tb testing.TB) string {
	tb.Helper()
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			p := filepath.Join(filepath.Dir(gomod), ".tools", "bin", "etcd")
			if _, err := os.Stat(p); err == nil {
				return p
			}
		}
	}
	if p, err := exec.LookPath("etcd"); err == nil {
		return p
	}
	Missing(tb, "the etcd server binary is neither in .tools/bin nor on PATH", "tools")
	return ""
}

// An EtcdCluster is a cluster of etcd server processes on loopback, for
// tests that need what only a separate process gives: a member killed
// with SIGKILL mid-write. Each member has its data directory and log file
// under the test's temporary directory; the test's cleanup kills every
// member still running. Members fsync as a production etcd does; only the
// raft timings are short (50 ms heartbeat, 500 ms election).
//
// Its methods are safe for concurrent use, but a test should not kill and
// start the same member from two goroutines at once.
type EtcdCluster struct {
	tb      testing.TB
	bin     string
	members []*etcdMember
}

type etcdMember struct {
	name       string
	dir        string
	logPath    string
	peerAddr   string
	clientAddr string
	initial    string // --initial-cluster
	token      string

	// mu guards cmd and exited.
	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// StartEtcd starts a cluster of n etcd processes from EtcdBinary and
// returns once every member reports itself healthy (it has a leader and
// answers a linearizable read).
func StartEtcd(tb testing.TB, n int) *EtcdCluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("testbin: an etcd cluster needs at least one member, not %d", n)
	}
	bin := EtcdBinary(tb)
	ports, err := FreePorts(2 * n)
	if err != nil {
		tb.Fatal(err)
	}
	base := tb.TempDir()
	c := &EtcdCluster{tb: tb, bin: bin}
	var initial []string
	for i := range n {
		m := &etcdMember{
			name:       "e" + strconv.Itoa(i),
			dir:        filepath.Join(base, "e"+strconv.Itoa(i)),
			logPath:    filepath.Join(base, "e"+strconv.Itoa(i)+".log"),
			peerAddr:   net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i])),
			clientAddr: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i+1])),
			token:      "testbin-" + filepath.Base(base),
		}
		initial = append(initial, m.name+"=http://"+m.peerAddr)
		c.members = append(c.members, m)
	}
	for _, m := range c.members {
		m.initial = strings.Join(initial, ",")
	}
	tb.Cleanup(func() {
		c.KillAll()
		if tb.Failed() {
			for _, m := range c.members {
				tb.Logf("testbin: the end of etcd member %s's log:\n%s", m.name, FileTail(m.logPath, 8<<10))
			}
		}
	})
	for i := range n {
		if err := c.start(i); err != nil {
			tb.Fatal(err)
		}
	}
	if err := c.waitHealthy(c.indexes()); err != nil {
		tb.Fatal(err)
	}
	return c
}

// Endpoints returns the members' client addresses as host:port, running
// or not: the form edgeproxy's --etcd-endpoints takes, joined by commas.
func (c *EtcdCluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientAddr
	}
	return eps
}

// Size returns the number of members, running or not.
func (c *EtcdCluster) Size() int { return len(c.members) }

// Pid returns member i's process id, or 0 when it is not running.
func (c *EtcdCluster) Pid(i int) int {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd == nil {
		return 0
	}
	return m.cmd.Process.Pid
}

// Kill sends member i SIGKILL and waits for the process to be gone. Its
// data directory stays, as a crashed machine's disk would. Killing a
// member that is not running does nothing.
func (c *EtcdCluster) Kill(i int) {
	m := c.members[i]
	m.mu.Lock()
	cmd, exited := m.cmd, m.exited
	m.cmd = nil
	m.mu.Unlock()
	if cmd == nil {
		return
	}
	cmd.Process.Kill()
	<-exited
}

// KillAll kills every running member at once.
func (c *EtcdCluster) KillAll() {
	var wg sync.WaitGroup
	for i := range c.members {
		wg.Go(func() { c.Kill(i) })
	}
	wg.Wait()
}

// Restart starts member i again from its data directory (it must not be
// running). When that makes a quorum of members run, it waits until the
// member reports itself healthy; otherwise it returns once the process
// runs, since no member is healthy before a quorum is back.
func (c *EtcdCluster) Restart(i int) {
	c.tb.Helper()
	if err := c.start(i); err != nil {
		c.tb.Fatal(err)
	}
	if len(c.indexes()) < len(c.members)/2+1 {
		return
	}
	if err := c.waitHealthy([]int{i}); err != nil {
		c.tb.Fatal(err)
	}
}

// RestartAll starts every member that is not running and waits until
// all are healthy.
func (c *EtcdCluster) RestartAll() {
	c.tb.Helper()
	var stopped []int
	for i, m := range c.members {
		m.mu.Lock()
		if m.cmd == nil {
			stopped = append(stopped, i)
		}
		m.mu.Unlock()
	}
	for _, i := range stopped {
		if err := c.start(i); err != nil {
			c.tb.Fatal(err)
		}
	}
	if err := c.waitHealthy(c.indexes()); err != nil {
		c.tb.Fatal(err)
	}
}

// indexes returns the indexes of the running members.
func (c *EtcdCluster) indexes() []int {
	var running []int
	for i, m := range c.members {
		m.mu.Lock()
		if m.cmd != nil {
			running = append(running, i)
		}
		m.mu.Unlock()
	}
	return running
}

// start runs member i's process. A restarted member takes the cluster
// from its data directory and ignores the --initial-* flags.
func (c *EtcdCluster) start(i int) error {
	m := c.members[i]
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd != nil {
		return fmt.Errorf("testbin: etcd member %s is already running", m.name)
	}
	logf, err := os.OpenFile(m.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("testbin: etcd member %s: %w", m.name, err)
	}
	cmd := exec.Command(c.bin,
		"--name", m.name,
		"--data-dir", m.dir,
		"--listen-peer-urls", "http://"+m.peerAddr,
		"--initial-advertise-peer-urls", "http://"+m.peerAddr,
		"--listen-client-urls", "http://"+m.clientAddr,
		"--advertise-client-urls", "http://"+m.clientAddr,
		"--initial-cluster", m.initial,
		"--initial-cluster-token", m.token,
		"--initial-cluster-state", "new",
		"--heartbeat-interval", "50",
		"--election-timeout", "500",
		"--log-level", "info",
	)
	cmd.Stdout = logf
	cmd.Stderr = logf
	setDeathSignal(cmd)
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("testbin: starting etcd member %s: %w", m.name, err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		logf.Close()
		close(exited)
	}()
	m.cmd, m.exited = cmd, exited
	return nil
}

// waitHealthy waits until each of the given members answers /health with
// health true (etcd's check: a leader, no alarm, a linearizable read).
func (c *EtcdCluster) waitHealthy(idx []int) error {
	ctx, cancel := context.WithTimeout(context.Background(), etcdReadyTimeout)
	defer cancel()
	for _, i := range idx {
		m := c.members[i]
		var last error
		for {
			m.mu.Lock()
			exited := m.exited
			m.mu.Unlock()
			select {
			case <-exited:
				return fmt.Errorf("testbin: etcd member %s exited while starting:\n%s", m.name, FileTail(m.logPath, 4<<10))
			default:
			}
			if last = EtcdHealth(ctx, m.clientAddr); last == nil {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("testbin: etcd member %s not healthy within %v: %v", m.name, etcdReadyTimeout, last)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	return nil
}

// EtcdHealth asks the etcd member whose client URL is http://addr for its
// /health: nil once it has a leader and answers a linearizable read.
func EtcdHealth(ctx context.Context, addr string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/health", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	if err != nil {
		return err
	}
	var h struct {
		Health string `json:"health"`
		Reason string `json:"reason"`
	}
	if err := json.Unmarshal(body, &h); err != nil {
		return fmt.Errorf("/health: %s: %v", bytes.TrimSpace(body), err)
	}
	if resp.StatusCode != http.StatusOK || h.Health != "true" {
		return fmt.Errorf("/health: %s %s", resp.Status, bytes.TrimSpace(body))
	}
	return nil
}

// FileTail returns the last n bytes of the file at path (a process's log,
// for an error message), or why it cannot.
func FileTail(path string, n int64) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.Size() > n {
		f.Seek(st.Size()-n, io.SeekStart)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return err.Error()
	}
	return string(b)
}
