package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// The store on etcd.
//
// # Layout
//
// Under the prefix P, the bucket/key pairs of the bbolt layout become etcd
// keys P+"d/"+bucket+"/"+key with the same values; a bucket's sequence
// (NextSequence) is P+"s/"+bucket, the highest number handed to any node
// (each node takes blocks of it, see nextSequence); P+"v/"+bucket is
// rewritten by every transaction that writes into the bucket (its
// modification revision is the bucket's version); P+"leader/" holds the
// election of the node that runs the lifecycle engine.
//
// # The local copy
//
// Every node keeps a copy of all of P's data in a bbolt file in its data
// directory, in the bbolt layout, plus the etcd revision it reflects. A
// watch from that revision keeps it current: each watch response is
// applied in one bbolt transaction, so the copy always equals the data at
// one etcd revision. If etcd has compacted the history the watch needs,
// the node lists the whole prefix again at one revision and replaces the
// copy with it (a missed event is impossible: the copy is then the
// revision's complete state). Reads (view) run on the copy, so an API key
// lookup or a record read costs no etcd round trip of its own; they first
// wait for a shared barrier (sync) that makes them see every write
// committed anywhere before they began. While etcd cannot be reached, reads
// serve the copy as it is, and the node starts from the copy across its
// own restart: that is what lets every node go on terminating TLS and
// proxying through an etcd outage. The copy is written without fsync
// (etcd holds the truth; a copy damaged by a machine crash is listed
// again from etcd).
//
// # Writes
//
// A write runs the store's ordinary transaction code against the copy in
// a bbolt write transaction that is rolled back, never committed. The
// wrappers of tx.go record what it read and wrote; the commit is one etcd
// transaction whose comparisons say that nothing read has changed since
// the copy's revision: every key read has a modification revision at most
// that revision (an absent key counts as revision 0, so a key created
// meanwhile fails the comparison), every key the copy held when read
// still exists (a deleted key also counts as revision 0: without this a
// write that read a record another node deleted meanwhile would put it
// back), and every bucket read through a cursor has an unchanged version.
// If any changed, etcd applies nothing; the node waits until its copy has caught
// up and runs the transaction again. So a domain stays unique and an
// organization within its limit when creates race on different nodes:
// both read the same keys, and only one commit can succeed. Concurrent
// small writes of one node are gathered into one etcd transaction
// (batch), as bbolt's Batch gathers them into one fsync.
//
// A write that fails or changes nothing (a broken rule) sends nothing for
// etcd to compare, so it first waits, as a read does, until the copy
// reflects every write committed before it began, and runs again on the
// newer copy if there is one.
//
// A write returns once etcd has committed it and the node's copy holds
// it, so the writer's next read sees it. A write that cannot reach etcd
// returns ErrUnavailable and, etcd transactions being atomic, leaves
// nothing half-written. A commit that gets no answer (the etcd leader it
// was forwarded to died) is given up after half the store's timeout; the
// node looks whether it was applied and sends it again if not.
//
// # Leadership
//
// Campaign makes the node a candidate for running the lifecycle engine.
// The winner's writes go through a handle fenced on its leadership
// (WithFence): each of its transactions also compares the leader key's
// creation revision, so a node that has lost leadership without knowing
// it yet cannot overwrite its successor's work. certmagic's locks
// (TryLock) are put under the node's session lease, so a dead node's
// locks vanish with its lease.

// ErrUnavailable: the etcd cluster could not be reached in time. Nothing
// of the write was applied, unless etcd applied all of it (a commit whose
// answer was lost); reads go on from the local copy.
var ErrUnavailable = errors.New("store: the cluster store (etcd) cannot be reached")

// ErrNotLeader: the write was fenced on a leadership this node no longer
// holds, and nothing of it was applied.
var ErrNotLeader = errors.New("store: this node is no longer the leader")

// Fence is a leadership a write is conditioned on: the etcd key Key still
// exists with creation revision Rev.
type Fence struct {
	Key string
	Rev int64
}

// WithFence returns a handle on the same store whose writes commit only
// while f holds, and otherwise fail with ErrNotLeader. On bbolt, which one
// process owns, it returns s.
func (s *Store) WithFence(f Fence) *Store {
	if s.etcd == nil {
		return s
	}
	return &Store{core: s.core, fence: &f}
}

// EtcdOptions configures OpenEtcd.
type EtcdOptions struct {
	// Client talks to the cluster; the caller owns it and closes it
	// after the store.
	Client *clientv3.Client
	// Prefix is the key prefix of this deployment, e.g. "/edgeproxy/".
	Prefix string
	// CopyPath is the file of the node's local copy.
	CopyPath string
	// Now is the store's clock; time.Now if nil.
	Now func() time.Time
	// Logger; slog.Default() if nil.
	Logger *slog.Logger
	// Timeout bounds every etcd request; 5 s if zero.
	Timeout time.Duration
	// SessionTTL is the lease of the node's session (locks, leadership);
	// 5 s if zero.
	SessionTTL time.Duration
}

const (
	defaultEtcdTimeout = 5 * time.Second
	defaultSessionTTL  = 5 * time.Second
	// maxTxnOps keeps every etcd transaction within etcd's default
	// --max-txn-ops of 128 comparisons and 128 operations.
	maxTxnOps = 120
	// maxBatchCalls bounds how many writes one etcd transaction gathers.
	maxBatchCalls = 64
	// conflictRetries bounds how many times a write runs again after
	// another write changed what it read.
	conflictRetries = 64
	// listPage is the page size of a full listing of the prefix.
	listPage = 2000
	// barrierTimeout bounds a read's wait for the cluster's revision:
	// past it (etcd slow or gone) the read serves the local copy.
	barrierTimeout = 2 * time.Second
	// healEvery is how often a node that lost etcd asks again.
	healEvery = time.Second
)

// bucketCopyMeta holds, in the local copy only, the etcd revision it
// reflects and the cluster and prefix it came from.
var bucketCopyMeta = []byte("etcd_copy")

type etcdBackend struct {
	// s is the unfenced handle, for publishing changes.
	s       *Store
	client  *clientv3.Client
	prefix  string
	timeout time.Duration
	ttl     time.Duration
	log     *slog.Logger

	// applied is the etcd revision the local copy reflects.
	applied atomic.Int64
	// appliedMu and appliedCond wake waiters when applied grows.
	appliedMu   sync.Mutex
	appliedCond *sync.Cond

	// up is whether the last etcd request succeeded.
	up atomic.Bool
	// closed is set by Close: no etcd request is made after it.
	closed atomic.Bool

	// barrier state: see sync.
	bmu      sync.Mutex
	bnext    *barrierRound
	brunning bool

	// pending batches, by fence.
	batchMu sync.Mutex
	batches map[*Fence]*etcdBatch
	turns   map[*Fence]*sync.Mutex

	// seqs are the node's blocks of the buckets' sequences.
	seqMu sync.Mutex
	seqs  map[string]*seqRange

	sessMu  sync.Mutex
	session *concurrency.Session

	watchCancel context.CancelFunc
	watchDone   chan struct{}
}

// OpenEtcd opens the store on the etcd cluster of opts.Client under
// opts.Prefix, with the node's local copy at opts.CopyPath. It starts
// from the local copy if etcd cannot be reached (reads work, writes fail
// with ErrUnavailable) and catches up by itself once etcd answers. An
// empty prefix is initialised at the current schema; a prefix with data
// but no schema (an interrupted migration) is refused.
func OpenEtcd(opts EtcdOptions) (*Store, error) {
	if opts.Client == nil {
		return nil, errors.New("store: OpenEtcd: no etcd client")
	}
	if opts.Prefix == "" {
		return nil, errors.New("store: OpenEtcd: empty prefix")
	}
	if opts.Timeout == 0 {
		opts.Timeout = defaultEtcdTimeout
	}
	if opts.SessionTTL == 0 {
		opts.SessionTTL = defaultSessionTTL
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(opts.CopyPath), 0o700); err != nil {
		return nil, fmt.Errorf("store: creating directory for %s: %w", opts.CopyPath, err)
	}
	db, err := bolt.Open(opts.CopyPath, 0o600, &bolt.Options{Timeout: time.Second, NoFreelistSync: true})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("store: opening %s: file is locked by another process (is another edgeproxy running on this data dir?)", opts.CopyPath)
		}
		return nil, fmt.Errorf("store: opening %s: %w", opts.CopyPath, err)
	}
	// etcd holds the truth; the copy needs no fsync of its own.
	db.NoSync = true
	c := &core{db: db, now: opts.Now, subs: map[*Subscription]struct{}{}, outbox: make(chan struct{}, 1)}
	if c.now == nil {
		c.now = time.Now
	}
	e := &etcdBackend{
		client: opts.Client, prefix: opts.Prefix, timeout: opts.Timeout, ttl: opts.SessionTTL,
		log: opts.Logger, batches: map[*Fence]*etcdBatch{}, turns: map[*Fence]*sync.Mutex{}, seqs: map[string]*seqRange{},
	}
	e.appliedCond = sync.NewCond(&e.appliedMu)
	c.etcd = e
	s := &Store{core: c}
	e.s = s

	fresh := false
	err = db.Update(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketCopyMeta)
		if err != nil {
			return err
		}
		if p := meta.Get([]byte("prefix")); p != nil && string(p) != opts.Prefix {
			fresh = true // a copy of another prefix: start over
		}
		if v := meta.Get([]byte("revision")); len(v) == 8 && !fresh {
			e.applied.Store(int64(binary.BigEndian.Uint64(v)))
		} else {
			fresh = true
		}
		return migrate(&txn{btx: tx})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("store: preparing the local copy %s: %w", opts.CopyPath, err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), opts.Timeout)
	err = e.initPrefix(ctx)
	if err == nil && !fresh {
		// A copy of another cluster, or of this one before its data was
		// replaced (revisions then start again lower), is listed afresh.
		var resp *clientv3.GetResponse
		resp, err = e.client.Get(ctx, e.schemaKey(), clientv3.WithKeysOnly())
		if err != nil {
			err = e.unavailable(err)
		} else if resp.Header.Revision < e.applied.Load() || clusterOf(db) != resp.Header.ClusterId {
			fresh = true
		}
	}
	cancel()
	switch {
	case err == nil:
		e.up.Store(true)
		if fresh || e.applied.Load() == 0 {
			// A copy that has a revision (of another cluster, or of this
			// one before its data were replaced) is replaced in one
			// transaction, so that a listing cut short leaves it as it was
			// for a start during an etcd outage; a copy without one has
			// nothing to keep and is written a page at a time.
			if err := e.relist(e.applied.Load() == 0); err != nil {
				db.Close()
				return nil, err
			}
		}
	case errors.Is(err, ErrUnavailable) && !fresh:
		e.log.Warn("etcd cannot be reached: serving from the local copy", "revision", e.applied.Load(), "err", err)
	default:
		db.Close()
		return nil, err
	}
	wctx, wcancel := context.WithCancel(context.Background())
	e.watchCancel = wcancel
	e.watchDone = make(chan struct{})
	go e.follow(wctx)
	go e.heal(wctx)
	return s, nil
}

// heal notices etcd's return while nothing else asks it: reads skip the
// barrier while etcd is down, so without it they would serve the copy
// without waiting for other nodes' writes after etcd came back.
func (e *etcdBackend) heal(ctx context.Context) {
	t := time.NewTicker(healEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if e.up.Load() {
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, healEvery)
		_, err := e.client.Get(pctx, e.schemaKey(), clientv3.WithKeysOnly())
		cancel()
		if err == nil {
			e.up.Store(true)
		}
	}
}

func (e *etcdBackend) dataKey(bucket, key []byte) string {
	return e.prefix + "d/" + string(bucket) + "/" + string(key)
}
func (e *etcdBackend) versionKey(bucket []byte) string { return e.prefix + "v/" + string(bucket) }
func (e *etcdBackend) seqKey(bucket []byte) string     { return e.prefix + "s/" + string(bucket) }
func (e *etcdBackend) schemaKey() string               { return e.dataKey(bucketMeta, keySchema) }

// LeaderKey is the election prefix of the lifecycle engine's leader.
func (e *etcdBackend) leaderPrefix() string { return e.prefix + "leader/" }

// unavailable wraps an etcd request's error: a context deadline or a
// closed connection is the cluster being out of reach.
func (e *etcdBackend) unavailable(err error) error {
	if err == nil {
		e.up.Store(true)
		return nil
	}
	e.up.Store(false)
	return fmt.Errorf("%w: %w", ErrUnavailable, err)
}

// initPrefix checks the prefix's schema, writing it into an empty prefix.
func (e *etcdBackend) initPrefix(ctx context.Context) error {
	resp, err := e.client.Get(ctx, e.schemaKey())
	if err != nil {
		return e.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		// At the same revision: a node initialising the prefix writes
		// the schema before any data, so data without a schema at one
		// revision is an interrupted migration, not a node starting.
		any, err := e.client.Get(ctx, e.prefix+"d/", clientv3.WithPrefix(), clientv3.WithCountOnly(), clientv3.WithRev(resp.Header.Revision))
		if err != nil {
			return e.unavailable(err)
		}
		if any.Count > 0 {
			return fmt.Errorf("store: etcd prefix %s holds data but no schema version: an interrupted migration? Empty it and migrate again", e.prefix)
		}
		if _, err := e.client.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(e.schemaKey()), "=", 0)).
			Then(clientv3.OpPut(e.schemaKey(), string(u64(SchemaVersion)))).Commit(); err != nil {
			return e.unavailable(err)
		}
		resp, err = e.client.Get(ctx, e.schemaKey())
		if err != nil {
			return e.unavailable(err)
		}
	}
	if len(resp.Kvs[0].Value) != 8 {
		return fmt.Errorf("store: etcd prefix %s: corrupt schema version", e.prefix)
	}
	v := binary.BigEndian.Uint64(resp.Kvs[0].Value)
	switch {
	case v > SchemaVersion:
		return fmt.Errorf("%w: etcd prefix %s has version %d, this program knows up to %d", ErrNewerSchema, e.prefix, v, SchemaVersion)
	case v < SchemaVersion:
		return fmt.Errorf("store: etcd prefix %s has schema version %d and this program needs %d; upgrading a schema on etcd is not supported: back it up (edgeproxy backup), open the backup with this program once, and migrate it into an empty prefix", e.prefix, v, SchemaVersion)
	}
	return nil
}

// setApplied records that the local copy reflects rev and wakes waiters.
func (e *etcdBackend) setApplied(rev int64) {
	e.appliedMu.Lock()
	if rev > e.applied.Load() {
		e.applied.Store(rev)
	}
	e.appliedMu.Unlock()
	e.appliedCond.Broadcast()
}

// waitApplied waits until the local copy reflects rev, or timeout.
func (e *etcdBackend) waitApplied(rev int64, timeout time.Duration) bool {
	if e.applied.Load() >= rev {
		return true
	}
	deadline := time.Now().Add(timeout)
	timer := time.AfterFunc(timeout, func() {
		e.appliedMu.Lock()
		e.appliedMu.Unlock()
		e.appliedCond.Broadcast()
	})
	defer timer.Stop()
	e.appliedMu.Lock()
	defer e.appliedMu.Unlock()
	for e.applied.Load() < rev {
		if !time.Now().Before(deadline) {
			return false
		}
		e.appliedCond.Wait()
	}
	return true
}

// relist replaces the local copy with the whole prefix at one revision,
// in pieces (see fill) when nobody reads the copy yet and it holds nothing
// worth keeping.
func (e *etcdBackend) relist(inPieces bool) error {
	rev, err := e.fill(e.s.db, 0, inPieces)
	if err != nil {
		return err
	}
	// The listed revision replaces the old one even when lower: a copy of
	// a cluster whose data were restored into a new one (revisions then
	// start lower) would otherwise watch from its old revision and miss
	// every write in between. Nothing watches while a listing runs.
	e.appliedMu.Lock()
	e.applied.Store(rev)
	e.appliedMu.Unlock()
	e.appliedCond.Broadcast()
	// Every record may have changed: tell the subscribers to look again.
	var changes []Change
	_ = e.s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketRecords).ForEach(func(k, v []byte) error {
			var r Record
			if decodeRecord(v, &r) == nil {
				changes = append(changes, Change{ID: r.ID, OrgID: r.OrgID, Domain: r.Domain, Record: &r})
			}
			return nil
		})
	})
	for _, c := range changes {
		e.s.publish(c)
	}
	e.s.wakeOutbox()
	return nil
}

// fill replaces the data of db with the prefix's data at revision rev (the
// current revision if 0), listed page by page at that one revision, and
// returns the revision.
//
// Without inPieces, everything is written in one transaction, so that a
// reader of db sees the old data or the new, never a mix, and a fill cut
// short leaves the old data as it was; but the whole listing, and then
// every page of the new file, is held in memory until the commit (with
// 100,000 records and 20,000 certificates, 405,000 keys, the process
// peaked at about 1.2 GiB). With inPieces, a first transaction empties db
// and removes the copy's revision, each page of the listing is written in
// a transaction of its own, and the revision last: memory holds one page
// at a time. That is only for a db nobody reads yet and whose data is not
// worth keeping (a new local copy, a backup's file): a fill cut short
// leaves it without a revision, so it is listed again at the next open.
func (e *etcdBackend) fill(db *bolt.DB, rev int64, inPieces bool) (int64, error) {
	type kv struct{ k, v []byte }
	var data, seqs []kv
	var clusterID uint64
	empty := func(tx *bolt.Tx) error {
		var names [][]byte
		if err := tx.ForEach(func(name []byte, _ *bolt.Bucket) error {
			if !bytes.Equal(name, bucketCopyMeta) {
				names = append(names, bytes.Clone(name))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, name := range names {
			if err := tx.DeleteBucket(name); err != nil {
				return err
			}
			if _, err := tx.CreateBucket(name); err != nil {
				return err
			}
		}
		return nil
	}
	put := func(tx *bolt.Tx, data, seqs []kv) error {
		for _, item := range data {
			name, key, ok := bytes.Cut(item.k, []byte("/"))
			if !ok {
				continue
			}
			b, err := tx.CreateBucketIfNotExists(name)
			if err != nil {
				return err
			}
			if err := b.Put(key, item.v); err != nil {
				return err
			}
		}
		for _, item := range seqs {
			b, err := tx.CreateBucketIfNotExists(item.k)
			if err != nil {
				return err
			}
			n, err := strconv.ParseUint(string(item.v), 10, 64)
			if err != nil {
				return fmt.Errorf("store: sequence of %s: %w", item.k, err)
			}
			if err := b.SetSequence(n); err != nil {
				return err
			}
		}
		return nil
	}
	if inPieces {
		err := db.Update(func(tx *bolt.Tx) error {
			if meta := tx.Bucket(bucketCopyMeta); meta != nil {
				if err := meta.Delete([]byte("revision")); err != nil {
					return err
				}
			}
			return empty(tx)
		})
		if err != nil {
			return 0, fmt.Errorf("store: writing the local copy: %w", err)
		}
	}
	for _, part := range []string{"d/", "s/"} {
		start := e.prefix + part
		end := clientv3.GetPrefixRangeEnd(start)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
			opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
			if rev != 0 {
				opts = append(opts, clientv3.WithRev(rev))
			}
			resp, err := e.client.Get(ctx, start, opts...)
			cancel()
			if err != nil {
				return 0, e.unavailable(err)
			}
			e.up.Store(true)
			if rev == 0 {
				rev = resp.Header.Revision
			}
			clusterID = resp.Header.ClusterId
			var page []kv
			for _, item := range resp.Kvs {
				page = append(page, kv{item.Key[len(e.prefix)+2:], item.Value})
			}
			switch {
			case inPieces && part == "d/":
				err = db.Update(func(tx *bolt.Tx) error { return put(tx, page, nil) })
			case inPieces:
				err = db.Update(func(tx *bolt.Tx) error { return put(tx, nil, page) })
			case part == "d/":
				data = append(data, page...)
			default:
				seqs = append(seqs, page...)
			}
			if err != nil {
				return 0, fmt.Errorf("store: writing the local copy: %w", err)
			}
			if !resp.More || len(resp.Kvs) == 0 {
				break
			}
			start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}
	err := db.Update(func(tx *bolt.Tx) error {
		if !inPieces {
			if err := empty(tx); err != nil {
				return err
			}
			if err := put(tx, data, seqs); err != nil {
				return err
			}
		}
		if err := setCopyRevision(tx, e.prefix, rev); err != nil {
			return err
		}
		return tx.Bucket(bucketCopyMeta).Put([]byte("cluster_id"), u64(clusterID))
	})
	if err != nil {
		return 0, fmt.Errorf("store: writing the local copy: %w", err)
	}
	return rev, nil
}

// clusterOf is the etcd cluster id the copy came from (0 if unknown).
func clusterOf(db *bolt.DB) uint64 {
	var id uint64
	_ = db.View(func(tx *bolt.Tx) error {
		if meta := tx.Bucket(bucketCopyMeta); meta != nil {
			if v := meta.Get([]byte("cluster_id")); len(v) == 8 {
				id = binary.BigEndian.Uint64(v)
			}
		}
		return nil
	})
	return id
}

func setCopyRevision(tx *bolt.Tx, prefix string, rev int64) error {
	meta, err := tx.CreateBucketIfNotExists(bucketCopyMeta)
	if err != nil {
		return err
	}
	if err := meta.Put([]byte("prefix"), []byte(prefix)); err != nil {
		return err
	}
	return meta.Put([]byte("revision"), u64(uint64(rev)))
}

// follow keeps the local copy current until ctx ends: a watch from the
// copy's revision, a full listing again when etcd has compacted the
// history the watch needs, and a new watch after any failure.
func (e *etcdBackend) follow(ctx context.Context) {
	defer close(e.watchDone)
	for ctx.Err() == nil {
		err := e.watch(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, rpctypes.ErrCompacted) {
			e.log.Info("etcd compacted the history the local copy needs: listing it again")
			if err := e.relist(false); err != nil {
				e.log.Warn("listing the etcd prefix again", "err", err)
			} else {
				continue
			}
		} else if err != nil {
			e.log.Warn("watching etcd", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func (e *etcdBackend) watch(ctx context.Context) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	from := e.applied.Load() + 1
	ch := e.client.Watch(wctx, e.prefix, clientv3.WithPrefix(), clientv3.WithRev(from),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	for resp := range ch {
		if resp.CompactRevision != 0 {
			return rpctypes.ErrCompacted
		}
		if err := resp.Err(); err != nil {
			return err
		}
		e.up.Store(true)
		if len(resp.Events) == 0 {
			// A progress notification says every event up to the
			// header's revision has been delivered; the created notice
			// comes before the history and says nothing.
			if resp.IsProgressNotify() {
				e.setApplied(resp.Header.Revision)
			}
			continue
		}
		if err := e.apply(resp.Events); err != nil {
			return err
		}
	}
	return ctx.Err()
}

// apply writes a watch response's events into the local copy in one
// transaction and tells subscribers about changed records.
func (e *etcdBackend) apply(events []*clientv3.Event) error {
	var (
		changes []Change
		outbox  bool
		rev     int64
	)
	err := e.s.db.Update(func(tx *bolt.Tx) error {
		for _, ev := range events {
			rev = max(rev, ev.Kv.ModRevision)
			key := string(ev.Kv.Key[len(e.prefix):])
			switch {
			case len(key) > 2 && key[:2] == "d/":
				name, k, ok := bytes.Cut([]byte(key[2:]), []byte("/"))
				if !ok {
					continue
				}
				b, err := tx.CreateBucketIfNotExists(name)
				if err != nil {
					return err
				}
				isRecord := bytes.Equal(name, bucketRecords)
				if ev.Type == mvccpb.PUT {
					if err := b.Put(bytes.Clone(k), ev.Kv.Value); err != nil {
						return err
					}
					if isRecord {
						var r Record
						if decodeRecord(ev.Kv.Value, &r) == nil {
							changes = append(changes, Change{ID: r.ID, OrgID: r.OrgID, Domain: r.Domain, Record: &r})
						}
					}
					if bytes.Equal(name, bucketDeliveryDue) {
						outbox = true
					}
				} else {
					if isRecord {
						var r Record
						if old := b.Get(k); old != nil && decodeRecord(old, &r) == nil {
							changes = append(changes, Change{ID: r.ID, OrgID: r.OrgID, Domain: r.Domain})
						}
					}
					if err := b.Delete(k); err != nil {
						return err
					}
				}
			case len(key) > 2 && key[:2] == "s/" && ev.Type == mvccpb.PUT:
				b, err := tx.CreateBucketIfNotExists([]byte(key[2:]))
				if err != nil {
					return err
				}
				n, err := strconv.ParseUint(string(ev.Kv.Value), 10, 64)
				if err != nil {
					return fmt.Errorf("store: sequence %s: %w", key, err)
				}
				if err := b.SetSequence(n); err != nil {
					return err
				}
			}
		}
		return setCopyRevision(tx, e.prefix, rev)
	})
	if err != nil {
		return fmt.Errorf("store: applying etcd changes to the local copy: %w", err)
	}
	// Published before the copy counts as at rev: a writer waiting for
	// rev then returns after its change reached the subscribers, as on
	// bbolt, so a subscription made after the write never hears of it.
	for _, c := range changes {
		e.s.publish(c)
	}
	if outbox {
		e.s.wakeOutbox()
	}
	e.setApplied(rev)
	return nil
}

// barrierRound is one linearizable read of etcd's revision, shared by
// every reader that arrived before it started.
type barrierRound struct {
	done chan struct{}
}

// sync waits until the local copy reflects every write committed before
// the call, on any node: it reads etcd's current revision (one request
// shared by all readers waiting meanwhile) and waits for the watch to
// deliver up to it. While etcd is out of reach it returns at once, and
// reads serve the copy as it is.
func (e *etcdBackend) sync() {
	if !e.up.Load() {
		return
	}
	e.bmu.Lock()
	if e.bnext == nil {
		e.bnext = &barrierRound{done: make(chan struct{})}
	}
	r := e.bnext
	if !e.brunning {
		e.brunning = true
		go e.runBarriers()
	}
	e.bmu.Unlock()
	<-r.done
}

func (e *etcdBackend) runBarriers() {
	for {
		e.bmu.Lock()
		r := e.bnext
		e.bnext = nil
		if r == nil {
			e.brunning = false
			e.bmu.Unlock()
			return
		}
		e.bmu.Unlock()
		e.barrier()
		close(r.done)
	}
}

func (e *etcdBackend) barrier() {
	if !e.up.Load() {
		// The round before found etcd out of reach: the readers queued
		// behind it read the copy rather than wait as long again.
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), barrierTimeout)
	defer cancel()
	resp, err := e.client.Get(ctx, e.schemaKey(), clientv3.WithKeysOnly())
	if e.unavailable(err) != nil {
		return
	}
	e.catchUp(resp.Header.Revision, barrierTimeout)
}

// catchUp waits until the local copy reflects rev. The watch delivers the
// prefix's events; that nothing else happened up to rev (a revision that
// changed only other keys) arrives as a progress notification, which it
// asks for.
func (e *etcdBackend) catchUp(rev int64, timeout time.Duration) bool {
	if e.applied.Load() >= rev {
		return true
	}
	// The progress request must travel on the watch's own stream, which
	// the client picks by the context's metadata: the same as watch's.
	ctx, cancel := context.WithTimeout(clientv3.WithRequireLeader(context.Background()), timeout)
	defer cancel()
	if err := e.client.RequestProgress(ctx); err != nil {
		e.log.Debug("requesting watch progress", "err", err)
	}
	return e.waitApplied(rev, timeout)
}

// seqBlock is how many sequence numbers a node takes at a time.
const seqBlock = 256

// seqRange is a node's block of a bucket's sequence: next up to last.
type seqRange struct{ next, last uint64 }

// nextSequence returns the next number of the node's block of bucket's
// sequence, taking a new block from etcd when the block is used up: the
// sequence key holds the highest number handed to any node, and a block
// is taken by raising it with a compare-and-swap. Numbers are unique
// across nodes and increase on each node; a number drawn by a transaction
// that then fails is skipped.
func (e *etcdBackend) nextSequence(bucket []byte) (uint64, error) {
	e.seqMu.Lock()
	defer e.seqMu.Unlock()
	r := e.seqs[string(bucket)]
	if r == nil || r.next > r.last {
		key := e.seqKey(bucket)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
			resp, err := e.client.Get(ctx, key)
			if err != nil {
				cancel()
				return 0, e.unavailable(err)
			}
			var top uint64
			var modRev int64
			if len(resp.Kvs) == 1 {
				modRev = resp.Kvs[0].ModRevision
				if top, err = strconv.ParseUint(string(resp.Kvs[0].Value), 10, 64); err != nil {
					cancel()
					return 0, fmt.Errorf("store: sequence of %s: %w", bucket, err)
				}
			}
			tr, err := e.client.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", modRev)).
				Then(clientv3.OpPut(key, strconv.FormatUint(top+seqBlock, 10))).Commit()
			cancel()
			if err != nil {
				return 0, e.unavailable(err)
			}
			if tr.Succeeded {
				r = &seqRange{next: top + 1, last: top + seqBlock}
				e.seqs[string(bucket)] = r
				break
			}
		}
	}
	n := r.next
	r.next++
	return n, nil
}

// recorder notes a transaction's reads and writes on the etcd backend.
type recorder struct {
	// reads maps each key read to whether the copy held it when first
	// read (before this transaction wrote it).
	reads   map[string]bool
	buckets map[string]struct{}
	// writes, in order of first write; values nil for deletes.
	order    []string
	writes   map[string]*write
	written  map[string]struct{}
	onCommit []func()
	e        *etcdBackend
}

type write struct {
	value  []byte
	delete bool
	lock   bool
}

func newRecorder(e *etcdBackend) *recorder {
	return &recorder{
		reads: map[string]bool{}, buckets: map[string]struct{}{},
		writes: map[string]*write{}, written: map[string]struct{}{}, e: e,
	}
}

// readKey notes a read of key, found or not in the copy. Only the first
// read counts, and only when this transaction had not written the key
// yet: a read of its own write says nothing of what etcd holds.
func (r *recorder) readKey(bucket, key []byte, found bool) {
	k := r.e.dataKey(bucket, key)
	if _, ok := r.reads[k]; ok {
		return
	}
	_, wrote := r.writes[k]
	r.reads[k] = found && !wrote
}

func (r *recorder) readBucket(bucket []byte) { r.buckets[string(bucket)] = struct{}{} }

func (r *recorder) put(bucket, key, value []byte) {
	r.note(bucket, key, &write{value: bytes.Clone(value), lock: bytes.Equal(bucket, bucketCertLocks)})
}

func (r *recorder) del(bucket, key []byte) { r.note(bucket, key, &write{delete: true}) }

func (r *recorder) note(bucket, key []byte, w *write) {
	k := r.e.dataKey(bucket, key)
	if _, ok := r.writes[k]; !ok {
		r.order = append(r.order, k)
	}
	r.writes[k] = w
	r.written[string(bucket)] = struct{}{}
}

// ops returns the transaction's comparisons and operations as of the
// local copy's revision rev.
func (r *recorder) ops(rev int64, lease clientv3.LeaseID) ([]clientv3.Cmp, []clientv3.Op) {
	var cmps []clientv3.Cmp
	for k, found := range r.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "<", rev+1))
		if found {
			// A key deleted since rev has ModRevision 0, as one never
			// written: only its version tells that it is gone, and a write
			// that read it must not put it back.
			cmps = append(cmps, clientv3.Compare(clientv3.Version(k), ">", 0))
		}
	}
	for b := range r.buckets {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(r.e.versionKey([]byte(b))), "<", rev+1))
	}
	var ops []clientv3.Op
	for _, k := range r.order {
		w := r.writes[k]
		switch {
		case w.delete:
			ops = append(ops, clientv3.OpDelete(k))
		case w.lock && lease != clientv3.NoLease:
			ops = append(ops, clientv3.OpPut(k, string(w.value), clientv3.WithLease(lease)))
		default:
			ops = append(ops, clientv3.OpPut(k, string(w.value)))
		}
	}
	for b := range r.written {
		ops = append(ops, clientv3.OpPut(r.e.versionKey([]byte(b)), ""))
	}
	return cmps, ops
}

// call is one write waiting in a batch.
type call struct {
	fn  func(*txn) error
	err chan error
}

type etcdBatch struct {
	fence *Fence
	// turn is the fence's commit turn: one batch of a node in flight at
	// a time, while the next gathers. Batches in flight together would
	// only conflict with each other (creates all read the same
	// sequence).
	turn  *sync.Mutex
	calls []call
	timer *time.Timer
}

// update commits fn alone.
func (e *etcdBackend) update(fence *Fence, fn func(*txn) error) error {
	errs := e.commit(fence, []call{{fn: fn}}, true)
	return errs[0]
}

// batch gathers fn with the node's other concurrent writes into one etcd
// transaction. As with bbolt's Batch, fn may run more than once. A batch
// stays open to new writes until it is full or has its turn to commit.
func (e *etcdBackend) batch(fence *Fence, fn func(*txn) error) error {
	c := call{fn: fn, err: make(chan error, 1)}
	e.batchMu.Lock()
	b := e.batches[fence]
	if b == nil {
		turn := e.turns[fence]
		if turn == nil {
			turn = &sync.Mutex{}
			e.turns[fence] = turn
		}
		b = &etcdBatch{fence: fence, turn: turn}
		e.batches[fence] = b
		b.timer = time.AfterFunc(batchDelay, func() { e.runBatch(b) })
	}
	b.calls = append(b.calls, c)
	if len(b.calls) >= maxBatchCalls {
		// Full: sealed, and the next write starts another.
		delete(e.batches, fence)
	}
	e.batchMu.Unlock()
	return <-c.err
}

func (e *etcdBackend) runBatch(b *etcdBatch) {
	b.turn.Lock()
	defer b.turn.Unlock()
	e.batchMu.Lock()
	if e.batches[b.fence] == b {
		delete(e.batches, b.fence)
	}
	calls := b.calls
	e.batchMu.Unlock()
	errs := e.commit(b.fence, calls, false)
	for i, c := range calls {
		c.err <- errs[i]
	}
}

// commit runs calls in one transaction on the local copy and commits what
// they wrote to etcd, again and again while what they read changes
// under them. With solo false, a call that fails is taken out of the
// transaction and run alone, so one caller's error fails no other.
func (e *etcdBackend) commit(fence *Fence, calls []call, solo bool) []error {
	errs := make([]error, len(calls))
	live := make([]int, len(calls))
	for i := range live {
		live[i] = i
	}
	if e.closed.Load() {
		return fill(errs, live, ErrClosed)
	}
	var lease clientv3.LeaseID = clientv3.NoLease
	// The whole write, retries after transient failures included, takes
	// at most the store's timeout.
	deadline := time.Now().Add(e.timeout)
	// uncertain are the attempts sent without an answer and not found
	// applied after a later, answered sending of the same transaction
	// (see resend below): etcd should have decided their fate by then,
	// but if one is found applied later all the same, the write is not
	// run again (it would find its own changes in the way), and since the
	// callers' functions have run again since, what they returned no
	// longer matches what landed: the outcome is reported unknown.
	var (
		uncertain []*recorder
		landedRec *recorder
		// synced is set once the write has waited for the cluster's
		// revision (see below).
		synced bool
		// resend is an attempt sent without an answer and not found
		// applied: the same transaction (same comparisons, same
		// operations) is sent again rather than the callers' functions
		// run again, so that whichever sending lands, the values the
		// functions left in their callers' variables are the ones stored.
		resend    *recorder
		resendRev int64
	)
	for attempt := 0; ; attempt++ {
		if len(live) == 0 {
			return errs
		}
		if attempt > conflictRetries {
			for _, i := range live {
				errs[i] = fmt.Errorf("store: the write kept conflicting with others (%d tries)", attempt)
			}
			return errs
		}
		rec := newRecorder(e)
		var (
			rev    int64
			failed = -1
			ferr   error
		)
		if resend != nil {
			rec, rev = resend, resendRev
			goto send
		}
		{
			err := e.s.db.Update(func(tx *bolt.Tx) error {
				rev = e.applied.Load()
				for _, u := range uncertain {
					if e.landedIn(tx, u) {
						landedRec = u
						return errRollback
					}
				}
				t := &txn{btx: tx, rec: rec}
				for n, i := range live {
					if err := calls[i].fn(t); err != nil {
						failed, ferr = n, err
						break
					}
				}
				return errRollback
			})
			if err != nil && !errors.Is(err, errRollback) {
				for _, i := range live {
					errs[i] = closedErr(err)
				}
				return errs
			}
			if landedRec != nil {
				return fill(errs, live, fmt.Errorf("%w: an earlier sending of the write was applied after it was given up on, and its result is lost", ErrUnavailable))
			}
			// A write that failed, or wrote nothing (a broken rule is
			// reported that way), is not sent, so no comparison checks what it
			// read: the copy may not have heard yet of a write committed on
			// another node before this one began. It waits for the cluster's
			// revision, as a read does, and runs again if the copy moved.
			if (failed >= 0 || len(rec.writes) == 0) && !synced {
				synced = true
				e.sync()
				if e.applied.Load() > rev {
					attempt--
					continue
				}
			}
			if failed >= 0 {
				i := live[failed]
				if solo || len(live) == 1 {
					errs[i] = ferr
				} else {
					errs[i] = e.commit(fence, []call{calls[i]}, true)[0]
				}
				live = append(live[:failed:failed], live[failed+1:]...)
				attempt--
				continue
			}
		}
	send:
		if lease == clientv3.NoLease && len(rec.writes) > 0 && hasLock(rec) {
			sess, err := e.Session()
			if err != nil {
				return fill(errs, live, err)
			}
			lease = sess.Lease()
		}
		cmps, ops := rec.ops(rev, lease)
		if fence != nil {
			cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(fence.Key), "=", fence.Rev))
		}
		if len(ops) == 0 && fence == nil {
			// A transaction that wrote nothing: its reads were of the
			// copy at rev, which is a state etcd had.
			runOnCommit(rec)
			return errs
		}
		if len(cmps) > maxTxnOps || len(ops) > maxTxnOps {
			if len(live) > 1 {
				// Too big together: each half in a transaction of its
				// own, one after the other.
				for _, half := range [][]int{live[:len(live)/2], live[len(live)/2:]} {
					part := make([]call, len(half))
					for n, i := range half {
						part[n] = calls[i]
					}
					for n, err := range e.commit(fence, part, solo) {
						errs[half[n]] = err
					}
				}
				return errs
			}
			return fill(errs, live, fmt.Errorf("store: one write of %d operations exceeds etcd's transaction limit", len(ops)))
		}
		// One sending gets part of the write's time: a request forwarded
		// to an etcd leader that dies before replicating it is never
		// answered, and the members left elect another leader in about a
		// second; the rest of the time looks for it and sends it again.
		sendBy := time.Now().Add(e.timeout / 2)
		if sendBy.After(deadline) {
			sendBy = deadline
		}
		ctx, cancel := context.WithDeadline(context.Background(), sendBy)
		var failure []clientv3.Op
		if fence != nil {
			failure = append(failure, clientv3.OpGet(fence.Key))
		}
		resp, err := e.client.Txn(ctx).If(cmps...).Then(ops...).Else(failure...).Commit()
		cancel()
		if err != nil {
			// A member lost or a leader changing fails a request that
			// etcd may or may not have applied; quorum is usually back
			// within moments. Within the write's time, look whether it
			// was applied, and send it again if not.
			if !transient(err) || time.Now().Add(transientPause).After(deadline) {
				return fill(errs, live, e.unavailable(err))
			}
			time.Sleep(transientPause)
			if e.landed(rec, deadline) {
				runOnCommit(rec)
				return errs
			}
			resend, resendRev = rec, rev
			attempt--
			continue
		}
		e.up.Store(true)
		if resp.Succeeded {
			e.waitApplied(resp.Header.Revision, e.timeout)
			runOnCommit(rec)
			return errs
		}
		if resend != nil {
			// The same transaction failed its comparisons: either an
			// earlier sending landed first (its own changes are in the
			// way) or another write came between.
			resend = nil
			if e.landed(rec, deadline) {
				runOnCommit(rec)
				return errs
			}
			uncertain = append(uncertain, rec)
		}
		if fence != nil {
			got := resp.Responses[0].GetResponseRange()
			if got == nil || len(got.Kvs) == 0 || got.Kvs[0].CreateRevision != fence.Rev {
				return fill(errs, live, ErrNotLeader)
			}
		}
		// Something read changed: catch up and run again.
		if !e.catchUp(resp.Header.Revision, e.timeout) {
			return fill(errs, live, fmt.Errorf("%w: the local copy did not catch up with revision %d", ErrUnavailable, resp.Header.Revision))
		}
	}
}

// transientPause is the wait before looking again after a transient
// failure of a commit.
const transientPause = 200 * time.Millisecond

// transient reports whether err may be etcd (or the way to it) failing
// for a moment: no leader, a leader change, a member stopping or gone, a
// timeout. Sending the write again is safe (landed looks first), so
// every error is taken for a moment's but those that say the request
// itself is refused.
func transient(err error) bool {
	switch {
	case errors.Is(err, context.Canceled),
		errors.Is(err, rpctypes.ErrRequestTooLarge),
		errors.Is(err, rpctypes.ErrTooManyOps),
		errors.Is(err, rpctypes.ErrDuplicateKey),
		errors.Is(err, rpctypes.ErrPermissionDenied),
		errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrAuthFailed),
		errors.Is(err, rpctypes.ErrNoSpace),
		// A lock put under a session lease that has expired: sending it
		// again with the same lease cannot succeed.
		errors.Is(err, rpctypes.ErrLeaseNotFound):
		return false
	}
	switch status.Code(err) {
	case codes.InvalidArgument, codes.PermissionDenied, codes.Unauthenticated, codes.ResourceExhausted, codes.Canceled:
		return false
	}
	return true
}

// landed reports whether etcd applied a commit whose answer was lost:
// once the local copy has caught up with etcd, every key the commit wrote
// holds what it wrote. The values a write puts carry fresh ids and
// times, so another write leaving exactly the same is not a concern.
func (e *etcdBackend) landed(rec *recorder, deadline time.Time) bool {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	resp, err := e.client.Get(ctx, e.schemaKey(), clientv3.WithKeysOnly())
	cancel()
	if err != nil || !e.catchUp(resp.Header.Revision, time.Until(deadline)) {
		return false
	}
	landed := false
	_ = e.s.db.View(func(tx *bolt.Tx) error {
		landed = e.landedIn(tx, rec)
		return nil
	})
	return landed
}

// landedIn reports whether the local copy tx holds every key rec wrote
// as rec wrote it (and none it deleted).
func (e *etcdBackend) landedIn(tx *bolt.Tx, rec *recorder) bool {
	if len(rec.writes) == 0 {
		return false
	}
	for k, w := range rec.writes {
		name, key, ok := strings.Cut(strings.TrimPrefix(k, e.prefix+"d/"), "/")
		if !ok {
			continue
		}
		b := tx.Bucket([]byte(name))
		var got []byte
		if b != nil {
			got = b.Get([]byte(key))
		}
		if w.delete != (got == nil) || !w.delete && !bytes.Equal(got, w.value) {
			return false
		}
	}
	return true
}

// errRollback rolls back the local transaction of a write on etcd.
var errRollback = errors.New("store: rolled back")

func hasLock(rec *recorder) bool {
	for _, w := range rec.writes {
		if w.lock && !w.delete {
			return true
		}
	}
	return false
}

func runOnCommit(rec *recorder) {
	for _, fn := range rec.onCommit {
		fn()
	}
}

func fill(errs []error, live []int, err error) []error {
	for _, i := range live {
		errs[i] = err
	}
	return errs
}

// Session is the node's etcd session: its lease carries the node's locks
// and its leadership, and ends when the node stops renewing it.
func (e *etcdBackend) Session() (*concurrency.Session, error) {
	e.sessMu.Lock()
	defer e.sessMu.Unlock()
	if e.session != nil {
		select {
		case <-e.session.Done():
			e.session = nil
		default:
			return e.session, nil
		}
	}
	// The lease is granted here, within the store's timeout (a session
	// would grant it with its own context, which bounds its whole life);
	// the session then keeps it alive in the background until Close.
	ctx, cancel := context.WithTimeout(context.Background(), e.timeout)
	lease, err := e.client.Grant(ctx, int64(max(e.ttl/time.Second, 1)))
	cancel()
	if err != nil {
		return nil, e.unavailable(err)
	}
	sess, err := concurrency.NewSession(e.client, concurrency.WithLease(lease.ID))
	if err != nil {
		return nil, e.unavailable(err)
	}
	e.session = sess
	return sess, nil
}

// Up reports whether the store's last request reached it: always on
// bbolt; on etcd, whether etcd answered the last request.
func (s *Store) Up() bool {
	if s.etcd == nil {
		return true
	}
	return s.etcd.up.Load()
}

// Clustered reports whether the store is on etcd.
func (s *Store) Clustered() bool { return s.etcd != nil }

// Ping asks etcd for its revision (bbolt: nil), updating Up.
func (s *Store) Ping(ctx context.Context) error {
	if s.etcd == nil {
		return nil
	}
	if s.etcd.closed.Load() {
		return ErrClosed
	}
	ctx, cancel := context.WithTimeout(ctx, s.etcd.timeout)
	defer cancel()
	_, err := s.etcd.client.Get(ctx, s.etcd.schemaKey(), clientv3.WithKeysOnly())
	return s.etcd.unavailable(err)
}

// closeEtcd stops following etcd and ends the node's session (its locks
// and leadership go at once rather than when the lease expires).
func (e *etcdBackend) close() {
	if e.closed.Swap(true) {
		return
	}
	e.watchCancel()
	<-e.watchDone
	e.sessMu.Lock()
	if e.session != nil {
		e.session.Close()
	}
	e.sessMu.Unlock()
}

// etcdBackup writes a bbolt file of the prefix's data at one revision.
func (s *Store) etcdBackup(w io.Writer) (int64, error) {
	if s.etcd.closed.Load() {
		return 0, ErrClosed
	}
	dir, err := os.MkdirTemp("", "edgeproxy-backup-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	db, err := bolt.Open(filepath.Join(dir, "edgeproxy.db"), 0o600, nil)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	if err := db.Update(func(tx *bolt.Tx) error { return migrate(&txn{btx: tx}) }); err != nil {
		return 0, err
	}
	if _, err := s.etcd.fill(db, 0, true); err != nil {
		return 0, fmt.Errorf("store: writing backup: %w", err)
	}
	// The backup is a plain bbolt store, without the copy's bookkeeping.
	if err := db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketCopyMeta) }); err != nil {
		return 0, err
	}
	var n int64
	err = db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	})
	return n, err
}

func decodeRecord(data []byte, r *Record) error { return json.Unmarshal(data, r) }

var debugConflicts, debugCommits, debugOps atomic.Int64

func DebugCounts() (int64, int64, int64) {
	return debugConflicts.Load(), debugCommits.Load(), debugOps.Load()
}
