package etcdtest

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// opTimeout bounds one client call to a cluster that should answer.
const opTimeout = 10 * time.Second

func put(t *testing.T, cli *clientv3.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	if _, err := cli.Put(ctx, key, val); err != nil {
		t.Fatalf("put %s: %v", key, err)
	}
}

// putEventually retries a write until it succeeds: right after a leader
// is lost a write can fail ("request timed out, possibly due to previous
// leader failure") although the cluster has a quorum again a moment later.
func putEventually(t *testing.T, cli *clientv3.Client, key, val string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	for {
		attempt, stop := context.WithTimeout(ctx, opTimeout)
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

func get(t *testing.T, cli *clientv3.Client, key string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
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

// putFails checks that a write cannot be made: the cluster has no quorum.
func putFails(t *testing.T, cli *clientv3.Client, key string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, key, "x"); err == nil {
		t.Fatalf("put %s succeeded without a quorum", key)
	}
}

// leader returns the index of the member that leads the cluster now.
func leader(t *testing.T, c *Cluster) int {
	t.Helper()
	cli := c.Client(t)
	for i, ep := range c.Endpoints() {
		if !c.Running(i) {
			continue
		}
		ctx, cancel := context.WithTimeout(t.Context(), opTimeout)
		st, err := cli.Status(ctx, ep)
		cancel()
		if err != nil {
			t.Fatalf("status of %s: %v", ep, err)
		}
		if st.Header.MemberId == st.Leader {
			return i
		}
	}
	t.Fatal("no running member is the leader")
	return -1
}

func TestPutGetOnEveryMember(t *testing.T) {
	c := NewCluster(t, 3)
	if got, want := len(c.Endpoints()), 3; got != want {
		t.Fatalf("%d endpoints, want %d", got, want)
	}
	for _, ep := range c.Endpoints() {
		if !strings.HasPrefix(ep, "127.0.0.1:") {
			t.Errorf("endpoint %q is not host:port on loopback", ep)
		}
	}
	put(t, c.Client(t), "/k", "v")
	for _, ep := range c.Endpoints() {
		if got := get(t, c.ClientOf(t, ep), "/k"); got != "v" {
			t.Errorf("get /k through %s = %q, want v", ep, got)
		}
	}
}

func TestSingleMember(t *testing.T) {
	c := NewCluster(t, 1)
	cli := c.Client(t)
	put(t, cli, "/k", "v")
	if got := get(t, cli, "/k"); got != "v" {
		t.Errorf("get /k = %q, want v", got)
	}
}

// TestStopLeaderKeepsWriting stops the leader of three members: the two
// left elect another and go on accepting writes, and the stopped member,
// restarted, catches up with what it missed.
func TestStopLeaderKeepsWriting(t *testing.T) {
	c := NewCluster(t, 3)
	cli := c.Client(t)
	put(t, cli, "/before", "1")

	l := leader(t, c)
	c.StopMember(l)
	if c.Running(l) {
		t.Fatalf("member %d still running after StopMember", l)
	}
	putEventually(t, cli, "/during", "2")

	c.RestartMember(l)
	own := c.ClientOf(t, c.Endpoint(l))
	if got := get(t, own, "/before"); got != "1" {
		t.Errorf("restarted member: /before = %q, want 1", got)
	}
	if got := get(t, own, "/during"); got != "2" {
		t.Errorf("restarted member: /during = %q, want 2", got)
	}
}

// TestStopAllKeepsData takes the whole cluster down, checks that it
// answers nothing, and brings it back with every acknowledged write.
func TestStopAllKeepsData(t *testing.T) {
	c := NewCluster(t, 3)
	cli := c.Client(t)
	for i := range 20 {
		put(t, cli, "/k/"+string(rune('a'+i)), strings.Repeat("v", i+1))
	}

	c.Stop()
	for i := range c.Size() {
		if c.Running(i) {
			t.Fatalf("member %d running after Stop", i)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	_, err := cli.Get(ctx, "/k/a")
	cancel()
	if err == nil {
		t.Fatal("get succeeded with every member stopped")
	}

	c.Start()
	ctx, cancel = context.WithTimeout(t.Context(), opTimeout)
	defer cancel()
	resp, err := cli.Get(ctx, "/k/", clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get after Start: %v", err)
	}
	if got, want := len(resp.Kvs), 20; got != want {
		t.Fatalf("%d keys after Start, want %d", got, want)
	}
	for _, kv := range resp.Kvs {
		i := int(kv.Key[len("/k/")] - 'a')
		if got, want := string(kv.Value), strings.Repeat("v", i+1); got != want {
			t.Errorf("%s = %q, want %q", kv.Key, got, want)
		}
	}
}

// TestQuorumLostAndRegained stops two of three members (no quorum: writes
// fail), then all three, then restarts them one at a time: the first alone
// cannot take writes, the second brings the quorum back.
func TestQuorumLostAndRegained(t *testing.T) {
	c := NewCluster(t, 3)
	cli := c.Client(t)
	put(t, cli, "/k", "1")

	c.StopMember(0)
	c.StopMember(1)
	putFails(t, cli, "/lost")

	c.Stop()
	c.RestartMember(0)
	putFails(t, cli, "/still-lost")
	c.RestartMember(1)
	put(t, cli, "/k", "2")
	if got := get(t, cli, "/k"); got != "2" {
		t.Errorf("/k = %q, want 2", got)
	}
	c.RestartMember(2)
	if got := get(t, c.ClientOf(t, c.Endpoint(2)), "/k"); got != "2" {
		t.Errorf("member 2: /k = %q, want 2", got)
	}
}

func TestTailBuffer(t *testing.T) {
	b := newTailBuffer(8)
	b.Write([]byte("0123"))
	if got, want := b.String(), "0123"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	b.Write([]byte("456789"))
	if got, want := b.String(), "[earlier lines dropped]\n23456789"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
