//go:build unix

package testbin

import (
	"context"
	"fmt"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func etcdClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// putEventually retries a write until it commits: right after the leader
// is killed a write can time out although a quorum is back a moment later.
func putEventually(t *testing.T, cli *clientv3.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for {
		attempt, stop := context.WithTimeout(ctx, 10*time.Second)
		_, err := cli.Put(attempt, key, val)
		stop()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("put %s: no success within a minute, last error: %v", key, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func getValue(t *testing.T, cli *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatalf("get %s: %v", key, err)
	}
	if len(resp.Kvs) != 1 {
		t.Fatalf("get %s: %d keys, want 1", key, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

// TestEtcdKillMembers kills the leader of three etcd processes with
// SIGKILL (the others go on taking writes, and the restarted one catches
// up), then all three at once: every write acknowledged before is there
// when they come back.
func TestEtcdKillMembers(t *testing.T) {
	c := StartEtcd(t, 3)
	cli := etcdClient(t, c.Endpoints())
	for i := range 10 {
		putEventually(t, cli, fmt.Sprintf("/k/%d", i), fmt.Sprint(i))
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	leader := -1
	for i, ep := range c.Endpoints() {
		st, err := cli.Status(ctx, ep)
		if err != nil {
			t.Fatalf("status of %s: %v", ep, err)
		}
		if st.Header.MemberId == st.Leader {
			leader = i
		}
	}
	if leader < 0 {
		t.Fatal("no member is the leader")
	}
	pid := c.Pid(leader)
	c.Kill(leader)
	if c.Pid(leader) != 0 {
		t.Fatalf("member %d still has a pid after Kill", leader)
	}
	if err := processAlive(pid); err == nil {
		t.Fatalf("process %d of the killed member is still alive", pid)
	}
	putEventually(t, cli, "/during", "x")

	c.Restart(leader)
	own := etcdClient(t, []string{c.Endpoints()[leader]})
	if got := getValue(t, own, "/during"); got != "x" {
		t.Errorf("restarted member: /during = %q, want x", got)
	}

	c.KillAll()
	c.RestartAll()
	for i := range 10 {
		if got, want := getValue(t, cli, fmt.Sprintf("/k/%d", i)), fmt.Sprint(i); got != want {
			t.Errorf("/k/%d = %q after kill -9 of every member, want %q", i, got, want)
		}
	}
}

// processAlive returns nil while a process with that pid exists.
func processAlive(pid int) error { return syscall.Kill(pid, 0) }
