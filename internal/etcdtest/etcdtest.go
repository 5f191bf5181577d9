// Package etcdtest runs a real etcd cluster inside a test process, for the
// tests of edgeproxy's multi-node mode: NewCluster starts n members of
// go.etcd.io/etcd/server/v3/embed on loopback, each with its own data
// directory under t.TempDir(), and returns once the cluster has a leader
// and has accepted a write. Members can be stopped and started again, one
// at a time or all together, with their data kept, so a test can take
// etcd's quorum away and give it back.
//
// Only tests import this package: it links the etcd server, which the
// edgeproxy binary must not (internal/layering checks that).
//
// The members fsync as a production etcd does (etcd's unsafe no-fsync
// mode is never used), so a test may claim durability from what a write
// acknowledged by this cluster survives. Only the raft timings are made
// short (a 50 ms heartbeat, a 500 ms election timeout) so that startup and
// leader changes take a fraction of a second; they are still loose enough
// for a shared, busy test machine running with -race.
//
// NewTLSCluster does the same with TLS and client certificate
// authentication on the client URLs, and hands out the PEM files a
// program is given to reach it (--etcd-ca, --etcd-cert, --etcd-key).
//
// etcd's own log (and the clients') goes to a bounded buffer that the test
// log gets only when the test fails.
package etcdtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// Raft timings of every member: short for fast elections, loose enough
// that a busy machine does not make the leader flap.
const (
	tickMs     = 50
	electionMs = 500
)

// readyTimeout bounds how long a start waits for members to be ready and
// for the first write to be accepted. It is generous: it is only reached
// when something is wrong.
const readyTimeout = 60 * time.Second

// startAttempts is how many times NewCluster tries fresh ports when one of
// the free ports it was given was taken by another process before etcd
// could listen on it.
const startAttempts = 3

// A Cluster is a set of etcd members running in this process. Its methods
// are safe for concurrent use, but a test should not stop and start the
// same member from two goroutines at once.
type Cluster struct {
	// detached is set by Start: the cluster outlives any one test.
	detached *detached
	tb       testing.TB
	token    string
	logs     *tailBuffer
	logger   *zap.Logger
	// tls is nil unless NewTLSCluster made the cluster.
	tls *TLSFiles

	// mu guards members' running state (the etcd field of each member).
	mu      sync.Mutex
	members []*member
}

// A member is one etcd server: its identity and addresses are fixed for
// the life of the cluster; etcd is nil while it is stopped.
type member struct {
	name      string
	dir       string
	peerURL   url.URL
	clientURL url.URL
	etcd      *embed.Etcd
}

// NewCluster starts an etcd cluster of n members (1, 3 and 5 are the
// sizes that make sense) on loopback and returns once it has a leader and
// has accepted a write. The test's cleanup stops every member.
func NewCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	return newCluster(tb, n, nil)
}

// newCluster starts a cluster whose client URLs use TLS with files, or
// plain HTTP when files is nil.
func newCluster(tb testing.TB, n int, files *TLSFiles) *Cluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("etcdtest: a cluster needs at least one member, not %d", n)
	}
	logs := newTailBuffer(256 << 10)
	logger := zap.New(zapcore.NewCore(
		zapcore.NewConsoleEncoder(zap.NewDevelopmentEncoderConfig()),
		zapcore.AddSync(logs),
		zap.InfoLevel,
	))
	tb.Cleanup(func() {
		if tb.Failed() {
			tb.Logf("etcdtest: the last %d bytes of etcd's log:\n%s", logs.max, logs.String())
		}
	})
	var err error
	for attempt := 1; attempt <= startAttempts; attempt++ {
		c := &Cluster{tb: tb, token: "etcdtest-" + randomHex(8), logs: logs, logger: logger, tls: files}
		err = c.init(n)
		if err == nil {
			err = c.startAll()
		}
		if err == nil {
			tb.Cleanup(c.Stop)
			return c
		}
		c.Stop()
		if !addrInUse(err) {
			break
		}
	}
	tb.Fatalf("etcdtest: starting a cluster of %d: %v", n, err)
	return nil
}

// init picks the members' names, ports and data directories.
func (c *Cluster) init(n int) error {
	ports, err := testbin.FreePorts(2 * n)
	if err != nil {
		return err
	}
	base := c.tb.TempDir()
	for i := range n {
		c.members = append(c.members, &member{
			name:      "m" + strconv.Itoa(i),
			dir:       filepath.Join(base, "m"+strconv.Itoa(i)),
			peerURL:   url.URL{Scheme: "http", Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i]))},
			clientURL: url.URL{Scheme: c.clientScheme(), Host: net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[2*i+1]))},
		})
	}
	return nil
}

// Endpoints returns the members' client addresses as host:port, the form
// edgeproxy's --etcd-endpoints takes (joined with commas). Stopped members
// are included: a client is expected to find the ones that answer.
func (c *Cluster) Endpoints() []string {
	eps := make([]string, len(c.members))
	for i, m := range c.members {
		eps[i] = m.clientURL.Host
	}
	return eps
}

// Endpoint returns member i's client address as host:port.
func (c *Cluster) Endpoint(i int) string {
	return c.members[i].clientURL.Host
}

// Size returns the number of members, running or not.
func (c *Cluster) Size() int { return len(c.members) }

// Client returns a client of every member, closed by tb's cleanup.
func (c *Cluster) Client(tb testing.TB) *clientv3.Client {
	tb.Helper()
	return c.ClientOf(tb, c.Endpoints()...)
}

// ClientOf returns a client of the given endpoints only (from Endpoints
// or Endpoint), closed by tb's cleanup: a test that wants to talk to one
// member in particular uses it.
func (c *Cluster) ClientOf(tb testing.TB, endpoints ...string) *clientv3.Client {
	tb.Helper()
	cli, err := clientv3.New(c.clientConfig(endpoints, "client"))
	if err != nil {
		tb.Fatalf("etcdtest: client of %v: %v", endpoints, err)
	}
	tb.Cleanup(func() { cli.Close() })
	return cli
}

// clientConfig is the configuration of a client of endpoints, with the
// cluster's TLS when it has some; its log goes to etcd's, named logName.
func (c *Cluster) clientConfig(endpoints []string, logName string) clientv3.Config {
	cfg := clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 5 * time.Second,
		Logger:      c.logger.Named(logName),
	}
	if c.tls != nil {
		cfg.TLS = c.tls.client.Clone()
	}
	return cfg
}

func (c *Cluster) clientScheme() string {
	if c.tls != nil {
		return "https"
	}
	return "http"
}

// Running reports whether member i is running.
func (c *Cluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.members[i].etcd != nil
}

// StopMember stops member i; its data stays. It stops at once, without
// handing its leadership over first, so its peers see what they would see
// of a crash (though its files are closed cleanly; a kill -9 needs etcd
// processes, which this package does not run). Stopping a member that is
// not running does nothing.
func (c *Cluster) StopMember(i int) {
	c.tb.Helper()
	c.mu.Lock()
	e := c.members[i].etcd
	c.members[i].etcd = nil
	c.mu.Unlock()
	if e != nil {
		halt(e)
	}
}

// halt stops e without the leadership transfer that etcd's graceful stop
// attempts, which waits for the request timeout (seconds) when the other
// members are stopping too. The raft loop stops first; Close then finds it
// stopped and only releases listeners and files.
func halt(e *embed.Etcd) {
	e.Server.HardStop()
	e.Close()
}

// RestartMember starts member i again from its data directory (it must be
// stopped). When that makes a quorum of members run, it waits until the
// member is ready and the cluster accepts a write; otherwise (a member
// started while the quorum is still down) it returns once the member
// listens, since no member can be ready before a quorum is back.
func (c *Cluster) RestartMember(i int) {
	c.tb.Helper()
	c.mu.Lock()
	if c.members[i].etcd != nil {
		c.mu.Unlock()
		c.tb.Fatalf("etcdtest: RestartMember(%d): the member is running", i)
	}
	c.mu.Unlock()
	e, err := c.startMember(i)
	if err != nil {
		c.tb.Fatalf("etcdtest: restarting member %d: %v", i, err)
	}
	c.mu.Lock()
	running := 0
	for _, m := range c.members {
		if m.etcd != nil {
			running++
		}
	}
	c.mu.Unlock()
	if running < len(c.members)/2+1 {
		return
	}
	if err := c.waitReady([]*embed.Etcd{e}); err != nil {
		c.tb.Fatalf("etcdtest: restarting member %d: %v", i, err)
	}
}

// Stop stops every running member; their data stays, and Start brings
// them back. Until then every client call fails: this is how a test takes
// etcd away.
func (c *Cluster) Stop() {
	c.mu.Lock()
	var running []*embed.Etcd
	for _, m := range c.members {
		if m.etcd != nil {
			running = append(running, m.etcd)
			m.etcd = nil
		}
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, e := range running {
		wg.Go(func() { halt(e) })
	}
	wg.Wait()
}

// Start starts every stopped member and waits until the cluster has a
// leader and accepts a write.
func (c *Cluster) Start() {
	c.tb.Helper()
	if err := c.startAll(); err != nil {
		c.tb.Fatalf("etcdtest: starting the cluster again: %v", err)
	}
}

// startAll starts every stopped member at once (a member of a cluster of
// several cannot be ready alone) and waits until all are ready and a write
// goes through.
func (c *Cluster) startAll() error {
	var stopped []int
	c.mu.Lock()
	for i, m := range c.members {
		if m.etcd == nil {
			stopped = append(stopped, i)
		}
	}
	c.mu.Unlock()
	started := make([]*embed.Etcd, len(stopped))
	errs := make([]error, len(stopped))
	var wg sync.WaitGroup
	for k, i := range stopped {
		wg.Go(func() { started[k], errs[k] = c.startMember(i) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	return c.waitReady(started)
}

// startMember starts member i's etcd server and records it as running.
// The server is not yet ready: that needs a quorum.
func (c *Cluster) startMember(i int) (*embed.Etcd, error) {
	m := c.members[i]
	cfg := embed.NewConfig()
	cfg.Name = m.name
	cfg.Dir = m.dir
	cfg.ListenPeerUrls = []url.URL{m.peerURL}
	cfg.AdvertisePeerUrls = []url.URL{m.peerURL}
	cfg.ListenClientUrls = []url.URL{m.clientURL}
	cfg.AdvertiseClientUrls = []url.URL{m.clientURL}
	if c.tls != nil {
		cfg.ClientTLSInfo = c.tls.serverTLSInfo()
	}
	// A member restarted from its data directory takes the cluster from
	// its WAL and ignores these two.
	cfg.InitialCluster = c.initialCluster()
	cfg.InitialClusterToken = c.token
	cfg.ClusterState = embed.ClusterStateFlagNew
	cfg.TickMs = tickMs
	cfg.ElectionMs = electionMs
	cfg.UnsafeNoFsync = false
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(c.logger.Named(m.name))
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("member %s: %w", m.name, err)
	}
	c.mu.Lock()
	m.etcd = e
	c.mu.Unlock()
	return e, nil
}

func (c *Cluster) initialCluster() string {
	parts := make([]string, len(c.members))
	for i, m := range c.members {
		parts[i] = m.name + "=" + m.peerURL.String()
	}
	return strings.Join(parts, ",")
}

// waitReady waits until each of the given servers has joined the cluster
// (which takes a leader) and then until the cluster commits a write.
func (c *Cluster) waitReady(servers []*embed.Etcd) error {
	deadline := time.NewTimer(readyTimeout)
	defer deadline.Stop()
	for _, e := range servers {
		select {
		case <-e.Server.ReadyNotify():
		case err := <-e.Err():
			return fmt.Errorf("member %s stopped while starting: %v", e.Config().Name, err)
		case <-deadline.C:
			return fmt.Errorf("member %s not ready after %v", e.Config().Name, readyTimeout)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	cli, err := clientv3.New(c.clientConfig(c.Endpoints(), "ready"))
	if err != nil {
		return err
	}
	defer cli.Close()
	for {
		attempt, stop := context.WithTimeout(ctx, 2*time.Second)
		// A delete goes through raft as a put does, and leaves no key
		// behind in the keyspace the test will look at.
		_, err := cli.Delete(attempt, "/etcdtest/ready")
		stop()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no write accepted within %v: %w", readyTimeout, err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// addrInUse reports whether err comes from a port taken by another
// process between testbin.FreePorts and etcd's listen.
func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// tailBuffer keeps the last max bytes written to it: etcd's log for a
// failed test, without letting a long test's log grow without bound.
type tailBuffer struct {
	max int

	// mu guards buf and dropped.
	mu      sync.Mutex
	buf     []byte
	dropped bool
}

func newTailBuffer(max int) *tailBuffer { return &tailBuffer{max: max} }

func (b *tailBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.buf = append(b.buf, p...)
	if over := len(b.buf) - b.max; over > 0 {
		b.buf = append(b.buf[:0], b.buf[over:]...)
		b.dropped = true
	}
	return len(p), nil
}

func (b *tailBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.dropped {
		return "[earlier lines dropped]\n" + string(b.buf)
	}
	return string(b.buf)
}
