package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// etcdStartTimeout bounds how long etcd may take to report itself
// healthy.
const etcdStartTimeout = time.Minute

// etcdMember is one etcd server process on loopback: a cluster of one,
// with etcd's defaults (fsync on every commit, 2 GiB quota) but for its
// listeners.
type etcdMember struct {
	endpoint string // host:port of its client URL
	logPath  string
	dataDir  string
	cmd      *exec.Cmd
	exited   chan struct{}
	exitErr  error
}

// startEtcd starts bin with its data in dir and waits until it is healthy.
func startEtcd(ctx context.Context, bin, dir string) (*etcdMember, error) {
	ports, err := testbin.FreePorts(2)
	if err != nil {
		return nil, err
	}
	peer := "127.0.0.1:" + strconv.Itoa(ports[0])
	m := &etcdMember{
		endpoint: "127.0.0.1:" + strconv.Itoa(ports[1]),
		logPath:  filepath.Join(dir, "etcd.log"),
		dataDir:  filepath.Join(dir, "etcd"),
		exited:   make(chan struct{}),
	}
	logf, err := os.Create(m.logPath)
	if err != nil {
		return nil, err
	}
	defer logf.Close()
	m.cmd = exec.Command(bin,
		"--name", "scale",
		"--data-dir", m.dataDir,
		"--listen-peer-urls", "http://"+peer,
		"--initial-advertise-peer-urls", "http://"+peer,
		"--listen-client-urls", "http://"+m.endpoint,
		"--advertise-client-urls", "http://"+m.endpoint,
		"--initial-cluster", "scale=http://"+peer,
		"--initial-cluster-state", "new",
		"--log-level", "warn",
	)
	m.cmd.Stdout, m.cmd.Stderr = logf, logf
	setDeathSignal(m.cmd)
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting etcd %s: %w", bin, err)
	}
	go func() {
		m.exitErr = m.cmd.Wait()
		close(m.exited)
	}()
	ctx, cancel := context.WithTimeout(ctx, etcdStartTimeout)
	defer cancel()
	for {
		err := testbin.EtcdHealth(ctx, m.endpoint)
		if err == nil {
			return m, nil
		}
		select {
		case <-m.exited:
			return nil, fmt.Errorf("etcd exited while starting: %v\n%s", m.exitErr, testbin.FileTail(m.logPath, 4<<10))
		case <-ctx.Done():
			m.stop()
			return nil, fmt.Errorf("etcd not healthy within %v: %v", etcdStartTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func (m *etcdMember) pid() int { return m.cmd.Process.Pid }

// stop ends etcd (SIGTERM, then SIGKILL after 10 s).
func (m *etcdMember) stop() {
	select {
	case <-m.exited:
		return
	default:
	}
	m.cmd.Process.Signal(os.Interrupt)
	select {
	case <-m.exited:
	case <-time.After(10 * time.Second):
		m.cmd.Process.Kill()
		<-m.exited
	}
}

// etcdStatus is what the member says of its data.
type etcdStatus struct {
	keys     int64 // under the deployment's prefix
	dbSize   int64 // bytes of its backend database file
	revision int64
}

func (m *etcdMember) status(ctx context.Context, prefix string) (etcdStatus, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{m.endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return etcdStatus{}, err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := cli.Status(ctx, m.endpoint)
	if err != nil {
		return etcdStatus{}, err
	}
	resp, err := cli.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return etcdStatus{}, err
	}
	return etcdStatus{keys: resp.Count, dbSize: st.DbSize, revision: st.Header.Revision}, nil
}

// migrateSummary is what `edgeproxy migrate` prints when done.
type migrateSummary struct {
	Keys    int     `json:"keys"`
	Records int     `json:"records"`
	Seconds float64 `json:"seconds"`
}

// migrateToEtcd runs `edgeproxy migrate --to-etcd` of the file from into
// the member, and returns its summary and the wall time it took.
func migrateToEtcd(ctx context.Context, bin, from, endpoint string) (migrateSummary, time.Duration, error) {
	cmd := exec.CommandContext(ctx, bin, "migrate", "--to-etcd", "--from", from, "--etcd-endpoints", endpoint)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	setDeathSignal(cmd)
	t0 := time.Now()
	err := cmd.Run()
	took := time.Since(t0)
	if err != nil {
		return migrateSummary{}, took, fmt.Errorf("edgeproxy migrate: %v\n%s", err, tail2(stderr.String(), 4<<10))
	}
	var sum migrateSummary
	if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
		return migrateSummary{}, took, fmt.Errorf("edgeproxy migrate printed %q: %w", stdout.String(), err)
	}
	return sum, took, nil
}

func tail2(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
