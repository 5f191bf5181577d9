package etcdtest

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Start starts a cluster that outlives any one test: for a test binary's
// TestMain, where a whole suite shares one cluster. Close stops it and
// removes its data.
func Start(n int) (c *Cluster, err error) {
	dir, err := os.MkdirTemp("", "etcdtest-")
	if err != nil {
		return nil, err
	}
	d := &detached{dir: dir}
	defer func() {
		if r := recover(); r != nil {
			d.close()
			c, err = nil, fmt.Errorf("etcdtest: %v", r)
		}
	}()
	c = NewCluster(d, n)
	c.detached = d
	return c, nil
}

// Close stops a cluster made by Start and removes its data.
func (c *Cluster) Close() {
	if c.detached != nil {
		c.detached.close()
	}
}

// NewClient returns a client of every member; the caller closes it.
func (c *Cluster) NewClient() (*clientv3.Client, error) {
	return clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second})
}

// detached is the testing.TB of a cluster made by Start: its failures
// panic (Start turns the panic into an error), its cleanups run at Close.
// The embedded interface is nil: only the methods below are called.
type detached struct {
	testing.TB
	dir string

	mu       sync.Mutex
	cleanups []func()
	n        int
}

func (d *detached) Helper()                           {}
func (d *detached) Failed() bool                      { return false }
func (d *detached) Logf(format string, args ...any)   {}
func (d *detached) Fatalf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (d *detached) Errorf(format string, args ...any) { panic(fmt.Sprintf(format, args...)) }
func (d *detached) Cleanup(f func()) {
	d.mu.Lock()
	d.cleanups = append(d.cleanups, f)
	d.mu.Unlock()
}

func (d *detached) TempDir() string {
	d.mu.Lock()
	d.n++
	n := d.n
	d.mu.Unlock()
	dir := fmt.Sprintf("%s/%03d", d.dir, n)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		panic(err)
	}
	return dir
}

func (d *detached) close() {
	d.mu.Lock()
	fns := slices.Clone(d.cleanups)
	d.cleanups = nil
	d.mu.Unlock()
	for _, f := range slices.Backward(fns) {
		f()
	}
	os.RemoveAll(d.dir)
}
