package store_test

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/edgeproxy/edgeproxy/internal/etcdtest"
	"github.com/edgeproxy/edgeproxy/store"
)

// One suite, two backends. The store's tests open their stores through
// openRaw (and the helpers built on it). By default that is the bbolt
// file; with EDGEPROXY_STORE_BACKEND=etcd it is the etcd backend on a real
// etcd cluster started once for the test binary, each store path mapped to
// a prefix of its own (reopening a path reopens its prefix). TestEtcdSuite
// runs the whole suite again that way, so `go test ./store` covers both.

const backendEnv = "EDGEPROXY_STORE_BACKEND"

var onEtcd = os.Getenv(backendEnv) == "etcd"

var shared struct {
	once    sync.Once
	cluster *etcdtest.Cluster
	client  *clientv3.Client
	err     error

	mu       sync.Mutex
	prefixes map[string]string
	n        atomic.Int64
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cluster != nil {
		shared.client.Close()
		shared.cluster.Close()
	}
	os.Exit(code)
}

func sharedCluster() (*clientv3.Client, error) {
	shared.once.Do(func() {
		shared.cluster, shared.err = etcdtest.Start(1)
		if shared.err != nil {
			return
		}
		shared.client, shared.err = shared.cluster.NewClient()
		shared.prefixes = map[string]string{}
	})
	return shared.client, shared.err
}

// openRaw opens the store of path on the backend under test.
func openRaw(path string, opts store.Options) (*store.Store, error) {
	if !onEtcd {
		return store.Open(path, opts)
	}
	client, err := sharedCluster()
	if err != nil {
		return nil, err
	}
	shared.mu.Lock()
	prefix, ok := shared.prefixes[path]
	if !ok {
		prefix = fmt.Sprintf("/t%d/", shared.n.Add(1))
		shared.prefixes[path] = prefix
	}
	shared.mu.Unlock()
	return store.OpenEtcd(store.EtcdOptions{Client: client, Prefix: prefix, CopyPath: path, Now: opts.Now})
}

// bboltOnly skips a test of the bbolt file itself (its format, its lock,
// its migrations, the disk under it) when the suite runs on etcd.
func bboltOnly(t *testing.T) {
	t.Helper()
	if onEtcd {
		t.Skip("tests the bbolt file itself; the etcd backend's local copy is not that file")
	}
}

// TestEtcdSuite runs every test of the package again on the etcd backend.
func TestEtcdSuite(t *testing.T) {
	if onEtcd {
		t.Skip("already running on etcd")
	}
	if testing.Short() {
		t.Skip("-short: the suite on etcd runs only in full runs")
	}
	args := []string{"-test.run", "^Test", "-test.skip", "^TestEtcd", "-test.count", "1", "-test.timeout", "10m"}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), backendEnv+"=etcd")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the store's tests on etcd failed (%v, after %s):\n%s", err, time.Since(start).Round(time.Millisecond), tail(string(out), 200))
	}
	t.Logf("the store's tests passed on etcd in %s", time.Since(start).Round(time.Millisecond))
}

func tail(s string, lines int) string {
	all := strings.Split(s, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
