package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/edgeproxy/edgeproxy/internal/etcdtest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

// Tests of what only the etcd backend has: several nodes on one prefix,
// leadership fences, an etcd outage, a compacted history, migration and
// backup. Each starts its own real etcd cluster on loopback; a "node" is
// a Store of its own (its own client and local copy) on the shared prefix.

type node struct {
	s    *store.Store
	path string
}

func openNode(t *testing.T, c *etcdtest.Cluster, prefix string, dir string, opts ...func(*store.EtcdOptions)) *store.Store {
	t.Helper()
	o := store.EtcdOptions{
		Client:   c.Client(t),
		Prefix:   prefix,
		CopyPath: filepath.Join(dir, "copy.db"),
		Timeout:  2 * time.Second,
	}
	for _, f := range opts {
		f(&o)
	}
	s, err := store.OpenEtcd(o)
	if err != nil {
		t.Fatalf("OpenEtcd(%s): %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// TestEtcdReadYourWritesAcrossNodes: a record created through node A is
// returned by node B right after the create returns, every time, with no
// wait in between.
func TestEtcdReadYourWritesAcrossNodes(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	a := openNode(t, c, "/ryw/", t.TempDir())
	b := openNode(t, c, "/ryw/", t.TempDir())
	org := mustOrg(t, a, "acme", nil)
	for i := range 50 {
		r := mustRecord(t, a, org.ID, fmt.Sprintf("e%d.example.com", i))
		got, err := b.Record(r.ID)
		if err != nil {
			t.Fatalf("record %d created on A, read on B: %v", i, err)
		}
		if got.Domain != r.Domain {
			t.Fatalf("B read %q, want %q", got.Domain, r.Domain)
		}
		// And the other way round, through an update.
		if _, _, err := b.Mutate(r.ID, func(rec *store.Record) (store.Op, error) {
			rec.Message = ptr("seen by B")
			return store.OpSave, nil
		}); err != nil {
			t.Fatalf("Mutate on B: %v", err)
		}
		if got, err := a.Record(r.ID); err != nil || deref(got.Message) != "seen by B" {
			t.Fatalf("A read %q, %v after B's update", deref(got.Message), err)
		}
	}
}

// TestEtcdWriteAfterWriteAcrossNodes pins writes that ran on a stale
// local copy: an organization created through node A, then a record
// created in it through node B right after, failed with "organization not
// found" when B's copy had not yet heard of the organization. A write
// must see every write committed before it began, on any node, as a read
// does.
func TestEtcdWriteAfterWriteAcrossNodes(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	a := openNode(t, c, "/waw/", t.TempDir())
	b := openNode(t, c, "/waw/", t.TempDir())
	for i := range 100 {
		org := mustOrg(t, a, fmt.Sprintf("org-%d", i), nil)
		r, err := b.CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("e%d.example.com", i), Status: store.StatusWaiting}, noLimit)
		if err != nil {
			t.Fatalf("record %d created through B in the organization A created just before: %v", i, err)
		}
		if _, _, err := a.Mutate(r.ID, func(rec *store.Record) (store.Op, error) {
			rec.Message = ptr("updated by A")
			return store.OpSave, nil
		}); err != nil {
			t.Fatalf("record %d updated through A right after B created it: %v", i, err)
		}
	}
}

// TestEtcdRacingCreates: creates racing on three nodes keep a domain
// unique and an organization within its limit.
func TestEtcdRacingCreates(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	nodes := []*store.Store{
		openNode(t, c, "/race/", t.TempDir()),
		openNode(t, c, "/race/", t.TempDir()),
		openNode(t, c, "/race/", t.TempDir()),
	}
	limit := 7
	org := mustOrg(t, nodes[0], "limited", &limit)
	other := mustOrg(t, nodes[0], "other", nil)

	// 3 nodes × 10 goroutines create 30 distinct domains in a
	// 7-record organization, and all 30 race for one domain elsewhere.
	var (
		wg                 sync.WaitGroup
		mu                 sync.Mutex
		created, refused   int
		sameWins, sameLose int
	)
	for n := range nodes {
		for g := range 10 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s := nodes[n]
				_, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("d%d-%d.example.com", n, g), Status: store.StatusWaiting}, noLimit)
				var le *store.LimitError
				mu.Lock()
				switch {
				case err == nil:
					created++
				case errors.As(err, &le):
					refused++
				default:
					t.Errorf("create: %v", err)
				}
				mu.Unlock()
				_, err = s.CreateRecord(store.Record{OrgID: other.ID, Domain: "contested.example.com", Status: store.StatusWaiting}, noLimit)
				mu.Lock()
				switch {
				case err == nil:
					sameWins++
				case errors.Is(err, store.ErrDomainTaken):
					sameLose++
				default:
					t.Errorf("contested create: %v", err)
				}
				mu.Unlock()
			}()
		}
	}
	wg.Wait()
	if created != limit || refused != 30-limit {
		t.Errorf("created %d and refused %d of 30, want %d and %d", created, refused, limit, 30-limit)
	}
	if sameWins != 1 || sameLose != 29 {
		t.Errorf("contested domain: %d winners and %d losers, want 1 and 29", sameWins, sameLose)
	}
	for i, s := range nodes {
		recs, err := s.OrgRecords(org.ID)
		if err != nil || len(recs) != limit {
			t.Errorf("node %d lists %d records (%v), want %d", i, len(recs), err, limit)
		}
	}
}

// TestEtcdFence: a leader deposed without knowing it (its election key
// gone, another node elected) cannot write through its fenced handle, and
// its attempt changes nothing.
func TestEtcdFence(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	ctx := context.Background()
	a := openNode(t, c, "/fence/", t.TempDir())
	b := openNode(t, c, "/fence/", t.TempDir())
	org := mustOrg(t, a, "acme", nil)
	r := mustRecord(t, a, org.ID, "e.example.com")

	fenceA, _, _, err := a.Campaign(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	leaderA := a.WithFence(fenceA)
	if _, _, err := leaderA.Mutate(r.ID, func(rec *store.Record) (store.Op, error) {
		rec.Message = ptr("by A")
		return store.OpSave, nil
	}); err != nil {
		t.Fatalf("the leader's fenced write: %v", err)
	}
	// A's leadership ends behind its back (as when its lease expires
	// while it is paused), and B wins the election.
	if _, err := c.Client(t).Delete(ctx, fenceA.Key); err != nil {
		t.Fatal(err)
	}
	fenceB, _, _, err := b.Campaign(ctx, "b")
	if err != nil {
		t.Fatal(err)
	}
	if fenceB.Rev == fenceA.Rev {
		t.Fatal("B's leadership has A's revision")
	}
	_, _, err = leaderA.Mutate(r.ID, func(rec *store.Record) (store.Op, error) {
		rec.Message = ptr("by deposed A")
		return store.OpSave, nil
	})
	if !errors.Is(err, store.ErrNotLeader) {
		t.Fatalf("deposed leader's write: %v, want ErrNotLeader", err)
	}
	if _, _, err := b.WithFence(fenceB).Mutate(r.ID, func(rec *store.Record) (store.Op, error) {
		rec.Message = ptr("by B")
		return store.OpSave, nil
	}); err != nil {
		t.Fatalf("the new leader's write: %v", err)
	}
	got, err := a.Record(r.ID)
	if err != nil || deref(got.Message) != "by B" {
		t.Fatalf("record says %q (%v), want the new leader's write", deref(got.Message), err)
	}
	// An unfenced write (the API's) goes on as before.
	if _, _, err := a.Mutate(r.ID, func(rec *store.Record) (store.Op, error) { return store.OpSave, nil }); err != nil {
		t.Fatalf("unfenced write on A: %v", err)
	}
}

// TestEtcdOutage: with every etcd member down, a node reads from its
// local copy, also after its own restart; a write fails with
// ErrUnavailable and leaves nothing behind; once etcd is back, writes work
// and the nodes converge.
func TestEtcdOutage(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	dirA := t.TempDir()
	a := openNode(t, c, "/outage/", dirA)
	b := openNode(t, c, "/outage/", t.TempDir())
	org := mustOrg(t, a, "acme", nil)
	r := mustRecord(t, a, org.ID, "e.example.com")

	c.Stop()
	if got, err := a.Record(r.ID); err != nil || got.Domain != r.Domain {
		t.Fatalf("read during the outage: %+v, %v", got, err)
	}
	_, err := a.CreateRecord(store.Record{OrgID: org.ID, Domain: "new.example.com", Status: store.StatusWaiting}, noLimit)
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("create during the outage: %v, want ErrUnavailable", err)
	}
	// A restarts while etcd is still down: it starts from its copy.
	a.Close()
	a = openNode(t, c, "/outage/", dirA)
	if got, err := a.RecordByDomain("e.example.com"); err != nil || got.ID != r.ID {
		t.Fatalf("read after a restart during the outage: %+v, %v", got, err)
	}
	if _, err := a.RecordByDomain("new.example.com"); !errors.Is(err, store.ErrNotFound) {
		t.Fatalf("the refused create left %v", err)
	}

	c.Start()
	var r2 store.Record
	waitFor(t, 30*time.Second, "a create after etcd is back", func() bool {
		var err error
		r2, err = a.CreateRecord(store.Record{OrgID: org.ID, Domain: "new.example.com", Status: store.StatusWaiting}, noLimit)
		return err == nil
	})
	// B's own connection comes back in its own time; meanwhile it
	// serves its copy. It catches up by itself.
	waitFor(t, 30*time.Second, "B to catch up", func() bool { _, err := b.Record(r2.ID); return err == nil })
	if got, err := b.Record(r2.ID); err != nil || got.Domain != "new.example.com" {
		t.Fatalf("B after the outage: %+v, %v", got, err)
	}
}

// TestEtcdCompactedHistory: a node that was away while etcd compacted the
// history it needs lists the prefix again and misses nothing, deletions
// included.
func TestEtcdCompactedHistory(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	dirA := t.TempDir()
	a := openNode(t, c, "/compact/", dirA)
	b := openNode(t, c, "/compact/", t.TempDir())
	org := mustOrg(t, a, "acme", nil)
	gone := mustRecord(t, a, org.ID, "gone.example.com")
	a.Close()

	if _, _, err := b.Mutate(gone.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	added := mustRecord(t, b, org.ID, "added.example.com")
	cli := c.Client(t)
	resp, err := cli.Get(context.Background(), "/compact/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Compact(context.Background(), resp.Header.Revision); err != nil {
		t.Fatal(err)
	}

	a = openNode(t, c, "/compact/", dirA)
	sub := a.Subscribe()
	defer sub.Close()
	if _, err := a.Record(gone.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("record deleted while A was away: %v, want ErrNotFound", err)
	}
	if got, err := a.Record(added.ID); err != nil || got.Domain != added.Domain {
		t.Errorf("record added while A was away: %+v, %v", got, err)
	}
}

// TestEtcdNewCopy: a node with no local copy lists the prefix over many
// pages (a new copy is written a page at a time, to bound the memory of a
// large prefix) and then holds every key; a copy whose listing was cut
// short (no revision, some keys of the listing and some of an older copy)
// is listed again, whole, at the next open.
func TestEtcdNewCopy(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	a := openNode(t, c, "/newcopy/", t.TempDir())
	org := mustOrg(t, a, "acme", nil)
	r := mustRecord(t, a, org.ID, "e.example.com")
	// More keys than one page of a listing (2,000).
	const blobs = 2500
	var wg sync.WaitGroup
	var next atomic.Int64
	errs := make(chan error, 64)
	for range 64 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < blobs; i = int(next.Add(1)) - 1 {
				if err := a.PutBlob(fmt.Sprintf("bulk/b%04d", i), []byte(fmt.Sprint(i))); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	dirB := t.TempDir()
	b := openNode(t, c, "/newcopy/", dirB)
	keys, err := b.ListBlobs("bulk", true)
	if err != nil || len(keys) != blobs {
		t.Fatalf("new node lists %d blobs, %v; want %d", len(keys), err, blobs)
	}
	if v, err := b.GetBlob(fmt.Sprintf("bulk/b%04d", blobs-1)); err != nil || string(v) != fmt.Sprint(blobs-1) {
		t.Fatalf("the last blob on the new node: %q, %v", v, err)
	}
	if got, err := b.Record(r.ID); err != nil || got.Domain != r.Domain {
		t.Fatalf("the record on the new node: %+v, %v", got, err)
	}
	b.Close()

	// What a listing cut short leaves: no revision, a key etcd does not
	// have (from a copy of other data), and a key missing.
	db, err := bolt.Open(filepath.Join(dirB, "copy.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("etcd_copy")).Delete([]byte("revision")); err != nil {
			return err
		}
		recs := tx.Bucket([]byte("records"))
		if err := recs.Put([]byte("leftover"), []byte(`{"id":"leftover","domain":"leftover.example.com"}`)); err != nil {
			return err
		}
		return tx.Bucket([]byte("certmagic_data")).Delete([]byte("bulk/b0000"))
	})
	if err == nil {
		err = db.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	b = openNode(t, c, "/newcopy/", dirB)
	if _, err := b.Record("leftover"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("a key of the cut-short copy survived the listing: %v", err)
	}
	if keys, err := b.ListBlobs("bulk", true); err != nil || len(keys) != blobs {
		t.Errorf("after listing again: %d blobs, %v; want %d", len(keys), err, blobs)
	}
}

// TestEtcdLockLease: certmagic's locks are leased: a lock held by a node
// that dies (its session ends) is free for another node without waiting
// for the lock's own expiry.
func TestEtcdLockLease(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	a := openNode(t, c, "/locks/", t.TempDir(), func(o *store.EtcdOptions) { o.SessionTTL = time.Second })
	b := openNode(t, c, "/locks/", t.TempDir())
	if ok, err := a.TryLock("issue_cert_e.example.com", "a", time.Hour); !ok || err != nil {
		t.Fatalf("A TryLock = %v, %v", ok, err)
	}
	if ok, err := b.TryLock("issue_cert_e.example.com", "b", time.Hour); ok || err != nil {
		t.Fatalf("B TryLock while A holds it = %v, %v", ok, err)
	}
	// A dies: its session ends without unlocking.
	a.Close()
	waitFor(t, 30*time.Second, "B to take the dead node's lock", func() bool {
		ok, err := b.TryLock("issue_cert_e.example.com", "b", time.Hour)
		return ok && err == nil
	})
}

// TestMigrateToEtcd: a bbolt store's data arrives whole in an empty prefix
// and a node serves it; a second migration into the same prefix is refused.
func TestMigrateToEtcd(t *testing.T) {
	src, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	org := mustOrg(t, src, "acme", nil)
	u := mustUser(t, src, "a@example.com")
	if _, err := src.SetMembership(org.ID, u.ID, store.LevelOwner); err != nil {
		t.Fatal(err)
	}
	r := mustRecord(t, src, org.ID, "e.example.com")
	if err := src.PutBlob("certificates/ca/e.example.com/e.example.com.crt", []byte("PEM")); err != nil {
		t.Fatal(err)
	}
	c := etcdtest.NewCluster(t, 1)
	var last, total int
	if err := store.MigrateToEtcd(context.Background(), src, c.Client(t), "/mig/", func(d, n int) { last, total = d, n }); err != nil {
		t.Fatal(err)
	}
	if last != total || total == 0 {
		t.Errorf("progress ended at %d of %d", last, total)
	}
	n := openNode(t, c, "/mig/", t.TempDir())
	if got, err := n.Record(r.ID); err != nil || got.Domain != r.Domain {
		t.Errorf("migrated record: %+v, %v", got, err)
	}
	if got, err := n.GetBlob("certificates/ca/e.example.com/e.example.com.crt"); err != nil || string(got) != "PEM" {
		t.Errorf("migrated blob: %q, %v", got, err)
	}
	if m, err := n.Membership(org.ID, u.ID); err != nil || m.Level != store.LevelOwner {
		t.Errorf("migrated membership: %+v, %v", m, err)
	}
	// Sequences came along: the next user does not reuse an id.
	if u2 := mustUser(t, n, "b@example.com"); u2.ID <= u.ID {
		t.Errorf("next user id %d after %d", u2.ID, u.ID)
	}
	err = store.MigrateToEtcd(context.Background(), src, c.Client(t), "/mig/", nil)
	if err == nil {
		t.Fatal("a second migration into a non-empty prefix succeeded")
	}
}

// TestEtcdBackup: a backup taken from an etcd node is a bbolt store with
// the same data.
func TestEtcdBackup(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	n := openNode(t, c, "/backup/", t.TempDir())
	org := mustOrg(t, n, "acme", nil)
	r := mustRecord(t, n, org.ID, "e.example.com")
	var buf bytes.Buffer
	if _, err := n.Backup(&buf); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "restored.db")
	if err := writeFile(path, buf.Bytes()); err != nil {
		t.Fatal(err)
	}
	restored, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer restored.Close()
	if got, err := restored.Record(r.ID); err != nil || got.Domain != r.Domain {
		t.Errorf("restored record: %+v, %v", got, err)
	}
	if err := restored.Check(); err != nil {
		t.Error(err)
	}
	if err := restored.CheckOutbox(); err != nil {
		t.Error(err)
	}
}

// TestEtcdChangeFeed: a node's subscribers hear of changes made through
// another node.
func TestEtcdChangeFeed(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	a := openNode(t, c, "/feed/", t.TempDir())
	b := openNode(t, c, "/feed/", t.TempDir())
	sub := b.Subscribe()
	defer sub.Close()
	org := mustOrg(t, a, "acme", nil)
	r := mustRecord(t, a, org.ID, "e.example.com")
	select {
	case <-sub.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("B heard of no change")
	}
	found := false
	for _, ch := range sub.Take() {
		found = found || ch.ID == r.ID
	}
	if !found {
		t.Error("B's feed does not name the record created on A")
	}
}

func waitFor(t *testing.T, bound time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("waited %s for %s", bound, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func writeFile(path string, data []byte) error { return os.WriteFile(path, data, 0o600) }

func ptr(s string) *string { return &s }

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// TestEtcdMemberLoss: one etcd member of three stops (each in turn, so one
// of them is the raft leader) while writes go on: no write fails.
func TestEtcdMemberLoss(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	n := openNode(t, c, "/memberloss/", t.TempDir(), func(o *store.EtcdOptions) { o.Timeout = 10 * time.Second })
	org := mustOrg(t, n, "acme", nil)
	for m := range 3 {
		var wg sync.WaitGroup
		stopped := make(chan struct{})
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				if _, err := n.CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("m%d-%d.example.com", m, i), Status: store.StatusWaiting}, noLimit); err != nil {
					t.Errorf("create while member %d stops: %v", m, err)
					return
				}
				select {
				case <-stopped:
					if i > 20 {
						return
					}
				default:
					if i > 2000 {
						t.Errorf("member %d never stopped", m)
						return
					}
				}
			}
		}()
		c.StopMember(m)
		close(stopped)
		wg.Wait()
		c.RestartMember(m)
	}
}

// TestEtcdBootstrapOnce: nodes bootstrapping an empty prefix at the same
// time create one organization, and exactly one of them reports it did.
func TestEtcdBootstrapOnce(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	for round := range 5 {
		prefix := fmt.Sprintf("/boot%d/", round)
		nodes := []*store.Store{openNode(t, c, prefix, t.TempDir()), openNode(t, c, prefix, t.TempDir()), openNode(t, c, prefix, t.TempDir())}
		var (
			wg      sync.WaitGroup
			mu      sync.Mutex
			created int
		)
		for i, n := range nodes {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ok, _, err := n.BootstrapIfEmpty(store.Bootstrap{OrgName: "Default", Email: "admin@localhost", Key: store.APIKey{Hash: fmt.Sprintf("hash-%d", i)}})
				if err != nil {
					t.Errorf("node %d: %v", i, err)
				}
				if ok {
					mu.Lock()
					created++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		orgs, err := nodes[0].Orgs()
		if err != nil {
			t.Fatal(err)
		}
		if created != 1 || len(orgs) != 1 {
			t.Fatalf("round %d: %d nodes report the bootstrap, %d organizations; want 1 and 1", round, created, len(orgs))
		}
	}
}

// TestEtcdLeaderKilledMidWrite pins a write that hung on a dead etcd
// leader: the node's client reaches only a follower, which forwards each
// write to the leader; when the leader process is killed (kill -9), the
// writes it had not yet replicated are lost without an answer, and such a
// write waited for the whole of the store's timeout and failed
// (ErrUnavailable) although the two members left elect a new leader in
// about a second. Every write must succeed, within the store's timeout.
func TestEtcdLeaderKilledMidWrite(t *testing.T) {
	c := testbin.StartEtcd(t, 3)
	probe, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	leaderOf := func(among []int) int {
		for _, i := range among {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			st, err := probe.Status(ctx, c.Endpoints()[i])
			cancel()
			if err == nil && st.Header.MemberId == st.Leader {
				return i
			}
		}
		return -1
	}
	leader := -1
	waitFor(t, 30*time.Second, "an etcd leader", func() bool { leader = leaderOf([]int{0, 1, 2}); return leader >= 0 })
	follower := (leader + 1) % 3
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{c.Endpoints()[follower]}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	s, err := store.OpenEtcd(store.EtcdOptions{Client: cli, Prefix: "/leaderkilled/", CopyPath: filepath.Join(t.TempDir(), "copy.db")})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	org := mustOrg(t, s, "acme", nil)

	var (
		mu      sync.Mutex
		slowest time.Duration
		wrote   int
	)
	killed := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			after := 0
			for i := 0; after < 10; i++ {
				select {
				case <-killed:
					after++
				default:
				}
				start := time.Now()
				_, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("w%d-%d.example.com", w, i), Status: store.StatusWaiting}, noLimit)
				took := time.Since(start)
				if err != nil {
					t.Errorf("create %d of writer %d, %v after it was sent: %v", i, w, took.Round(time.Millisecond), err)
					return
				}
				mu.Lock()
				slowest, wrote = max(slowest, took), wrote+1
				mu.Unlock()
			}
		})
	}
	waitFor(t, 30*time.Second, "writes before the kill", func() bool { mu.Lock(); defer mu.Unlock(); return wrote >= 50 })
	c.Kill(leader)
	close(killed)
	wg.Wait()
	t.Logf("%d creates through a follower across the kill of the etcd leader; the slowest took %v", wrote, slowest.Round(time.Millisecond))
}

// TestEtcdUpdateOfDeletedRecord: a write that read a record, committed
// after another node deleted it, must not put it back. An absent key's
// modification revision is 0, which passed the comparison "not changed
// since the copy's revision": the engine's update of a record the API had
// just deleted through another node resurrected it, without its indexes
// (found by the cluster tests of cmd/edgeproxy: a GET after the 204 of
// its DELETE still answered the record).
func TestEtcdUpdateOfDeletedRecord(t *testing.T) {
	c := etcdtest.NewCluster(t, 1)
	a := openNode(t, c, "/deleted/", t.TempDir())
	b := openNode(t, c, "/deleted/", t.TempDir())
	org := mustOrg(t, a, "acme", nil)
	r := mustRecord(t, a, org.ID, "e.example.com")
	var once sync.Once
	_, _, err := a.Mutate(r.ID, func(rec *store.Record) (store.Op, error) {
		// Between A's read of its copy and A's commit, B deletes it.
		once.Do(func() {
			if _, _, err := b.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
				t.Errorf("delete through B: %v", err)
			}
		})
		rec.Message = ptr("updated by A")
		return store.OpSave, nil
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("A's update of the record B deleted meanwhile: %v, want ErrNotFound", err)
	}
	for name, s := range map[string]*store.Store{"A": a, "B": b} {
		if got, err := s.Record(r.ID); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("%s reads the deleted record: %+v, %v; want ErrNotFound", name, got, err)
		}
	}
}
