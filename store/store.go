package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Errors returned by the store. Callers compare with errors.Is.
var (
	// ErrNotFound: the entity asked for does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrDomainTaken: another record (in any organization) holds the domain.
	ErrDomainTaken = errors.New("store: domain already registered")
	// ErrSlugTaken: another organization has the slug.
	ErrSlugTaken = errors.New("store: slug already taken")
	// ErrInvalidSlug: the slug breaks CheckSlug's rule; the error is a
	// *SlugError, which states the rule.
	ErrInvalidSlug = errors.New("store: invalid slug")
	// ErrEmailTaken: another user has the email.
	ErrEmailTaken = errors.New("store: email already registered")
	// ErrLastOwner: the membership to remove is the organization's only
	// owner; an organization is never left without one.
	ErrLastOwner = errors.New("store: the organization's last owner")
	// ErrInvalidChallenge: a challenge TXT name or value breaks a rule of
	// challenges.go; the error's text states it.
	ErrInvalidChallenge = errors.New("store: invalid challenge TXT")
	// ErrNewerSchema: the file was written by a newer edgeproxy.
	ErrNewerSchema = errors.New("store: database schema is newer than this program")
	// ErrClosed: the store has been closed.
	ErrClosed = errors.New("store: closed")
	// ErrUnwritable: the disk refused the write (disk full, quota, file
	// size limit, read-only file system, I/O error). The transaction was
	// rolled back: nothing of it is stored, and what was stored before is
	// intact. The error also wraps the errno (errors.Is(err,
	// syscall.ENOSPC)) and bbolt's own error. Retrying later can succeed.
	ErrUnwritable = errors.New("store: the data file cannot be written")
)

// LimitError says an organization already holds its maximum of records.
type LimitError struct{ Max int }

func (e *LimitError) Error() string {
	return fmt.Sprintf("store: organization already holds its maximum of %d proxy records", e.Max)
}

// batchDelay is how long a batch of writes waits for more writers.
const batchDelay = 2 * time.Millisecond

// SchemaVersion is the version of the file layout this program writes.
const SchemaVersion = 6

// migrations[i] moves a file from schema version i to i+1. Version 0 is an
// empty file. Each runs inside the one transaction that also records the new
// version, so a crash leaves the file at the old version or the new one.
var migrations = []func(tx *txn) error{
	0: func(tx *txn) error {
		for _, name := range v1Buckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("creating bucket %s: %w", name, err)
			}
		}
		return nil
	},
	// 2: the lifecycle engine's due index, per-organization record counts
	// and certmagic's storage. Records
	// written by version 1 were all waiting and never checked: they are
	// due at once, and their DNS wait starts now.
	1: func(tx *txn) error {
		for _, name := range [][]byte{bucketRecordsDue, bucketOrgRecordCounts, bucketCertData, bucketCertLocks} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("creating bucket %s: %w", name, err)
			}
		}
		// Count each organization's records once; creates and deletes
		// keep the counts from then on.
		if err := tx.Bucket(bucketRecordsByOrg).ForEach(func(k, _ []byte) error {
			return addOrgCount(tx, string(k[:len(k)-8]), 1)
		}); err != nil {
			return err
		}
		now := time.Now().UTC().Truncate(time.Microsecond)
		records := tx.Bucket(bucketRecords)
		return records.ForEach(func(k, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("decoding record %s: %w", k, err)
			}
			if r.Status != StatusWaiting || !r.NextCheckAt.IsZero() {
				return nil
			}
			r.NextCheckAt, r.WaitingSince = now, now
			if err := putJSON(records, k, r); err != nil {
				return err
			}
			return tx.Bucket(bucketRecordsDue).Put(dueKey(r.NextCheckAt, r.ID), nil)
		})
	},
	// 3: the engine's ACME bookkeeping (acme.go): orders placed, the CA's
	// rate limits in force, released domains. All start empty.
	2: func(tx *txn) error {
		for _, name := range [][]byte{bucketACMEOrders, bucketCAHolds, bucketReleasedDomains} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("creating bucket %s: %w", name, err)
			}
		}
		return nil
	},
	// 4: organization slugs and their index. Every organization gets the
	// slug made from its name, the oldest first, so that of two
	// organizations with one name the older keeps the plain slug.
	3: func(tx *txn) error {
		if _, err := tx.CreateBucketIfNotExists(bucketOrgsBySlug); err != nil {
			return fmt.Errorf("creating bucket %s: %w", bucketOrgsBySlug, err)
		}
		var orgs []Org
		if err := tx.Bucket(bucketOrgs).ForEach(func(k, v []byte) error {
			var org Org
			if err := json.Unmarshal(v, &org); err != nil {
				return fmt.Errorf("decoding organization %s: %w", k, err)
			}
			orgs = append(orgs, org)
			return nil
		}); err != nil {
			return err
		}
		sortOrgs(orgs)
		for i := range orgs {
			if err := indexSlugTx(tx, &orgs[i]); err != nil {
				return fmt.Errorf("organization %s: %w", orgs[i].ID, err)
			}
			if err := putJSON(tx.Bucket(bucketOrgs), []byte(orgs[i].ID), orgs[i]); err != nil {
				return err
			}
		}
		return nil
	},
	// 5: webhooks and their outbox (webhooks.go).
	4: func(tx *txn) error {
		for _, name := range webhookBuckets {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("creating bucket %s: %w", name, err)
			}
		}
		return nil
	},
	// 6: ACME DNS-01 challenge tokens (challenges.go). It starts empty.
	5: func(tx *txn) error {
		if _, err := tx.CreateBucketIfNotExists(bucketChallenges); err != nil {
			return fmt.Errorf("creating bucket %s: %w", bucketChallenges, err)
		}
		return nil
	},
}

var (
	bucketMeta            = []byte("meta")
	bucketOrgs            = []byte("orgs")
	bucketOrgsBySlug      = []byte("orgs_by_slug")
	bucketUsers           = []byte("users")
	bucketUsersByEmail    = []byte("users_by_email")
	bucketMembers         = []byte("members")
	bucketUserOrgs        = []byte("user_orgs")
	bucketKeys            = []byte("keys")
	bucketKeysByHash      = []byte("keys_by_hash")
	bucketRecords         = []byte("records")
	bucketRecordsByDomain = []byte("records_by_domain")
	bucketRecordsByOrg    = []byte("records_by_org")
	bucketRecordsDue      = []byte("records_due")
	bucketOrgRecordCounts = []byte("org_record_counts")
	bucketCertData        = []byte("certmagic_data")
	bucketCertLocks       = []byte("certmagic_locks")
	bucketACMEOrders      = []byte("acme_orders")
	bucketCAHolds         = []byte("ca_holds")
	bucketReleasedDomains = []byte("released_domains")
	bucketChallenges      = []byte("acme_challenges")

	v1Buckets = [][]byte{bucketMeta, bucketOrgs, bucketUsers, bucketUsersByEmail, bucketMembers,
		bucketUserOrgs, bucketKeys, bucketKeysByHash, bucketRecords, bucketRecordsByDomain, bucketRecordsByOrg}

	keySchema = []byte("schema_version")
)

// Options configures Open. The zero value works.
type Options struct {
	// Now is the clock used for created_at and updated_at. If nil,
	// time.Now is used.
	Now func() time.Time
	// Timeout bounds the wait for the file lock held by another process.
	// If zero, one second.
	Timeout time.Duration
}

// Store is the store, on bbolt (Open) or on etcd (OpenEtcd). It is safe
// for concurrent use. A Store value is a handle: WithFence returns another
// handle on the same data whose writes are fenced.
type Store struct {
	*core
	// fence, if set, is a condition every write through this handle
	// commits under (etcd only).
	fence *Fence
}

// core is the state a Store's handles share.
type core struct {
	// db is the data file; on etcd, the node's local copy.
	db  *bolt.DB
	now func() time.Time

	// etcd is nil on the bbolt backend.
	etcd *etcdBackend

	// subsMu guards subs.
	subsMu sync.Mutex
	subs   map[*Subscription]struct{}

	// outbox is signalled after a commit that queued webhook deliveries.
	outbox chan struct{}

	// unwritable is set when a write fails with ErrUnwritable and cleared
	// by the first Writable that proves the file can grow again.
	unwritable atomic.Bool
}

// Open opens (creating if needed) the database file at path and brings its
// schema up to date. The file is created with mode 0600 and its directory
// with 0700.
func Open(path string, opts Options) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: creating directory for %s: %w", path, err)
	}
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if err != nil {
		if errors.Is(err, bolt.ErrTimeout) {
			return nil, fmt.Errorf("store: opening %s: file is locked by another process (is another edgeproxy running on this data dir?)", path)
		}
		return nil, fmt.Errorf("store: opening %s: %w", path, err)
	}
	// bbolt's default waits 10 ms to gather a batch; at the API's rates
	// that wait, not the fsync, bounded creates per second. 2 ms still
	// gathers the concurrent writers of one fsync.
	db.MaxBatchDelay = batchDelay
	s := &Store{core: &core{db: db, now: opts.Now, subs: map[*Subscription]struct{}{}, outbox: make(chan struct{}, 1)}}
	if s.now == nil {
		s.now = time.Now
	}
	if err := db.Update(func(tx *bolt.Tx) error { return migrate(&txn{btx: tx}) }); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: migrating %s: %w", path, err)
	}
	if err := db.Update(releaseLocks); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: releasing stale locks in %s: %w", path, err)
	}
	return s, nil
}

// releaseLocks drops every lock in the file. Only one process can have
// the file open (bbolt's file lock), so any lock found at Open belongs to
// a process that died holding it: waiting for it to expire would only
// delay the work it guarded.
func releaseLocks(tx *bolt.Tx) error {
	if err := tx.DeleteBucket(bucketCertLocks); err != nil {
		return err
	}
	_, err := tx.CreateBucket(bucketCertLocks)
	return err
}

func migrate(tx *txn) error {
	var version uint64
	if meta := tx.Bucket(bucketMeta); meta != nil {
		if v := meta.Get(keySchema); len(v) == 8 {
			version = binary.BigEndian.Uint64(v)
		}
	}
	if version > SchemaVersion {
		return fmt.Errorf("%w: file has version %d, this program knows up to %d", ErrNewerSchema, version, SchemaVersion)
	}
	if version == SchemaVersion {
		return nil
	}
	for v := version; v < SchemaVersion; v++ {
		if err := migrations[v](tx); err != nil {
			return fmt.Errorf("schema %d to %d: %w", v, v+1, err)
		}
	}
	return tx.Bucket(bucketMeta).Put(keySchema, u64(SchemaVersion))
}

// Close closes the database file. Subscriptions stay valid but receive
// nothing more.
func (s *Store) Close() error {
	if s.etcd != nil {
		s.etcd.close()
	}
	return s.db.Close()
}

// Path is the database file's path.
func (s *Store) Path() string { return s.db.Path() }

// SchemaVersionOf reports the schema version recorded in the file.
func (s *Store) SchemaVersionOf() (uint64, error) {
	var v uint64
	err := s.view(func(tx *txn) error {
		v = binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get(keySchema))
		return nil
	})
	return v, err
}

// Backup writes a consistent copy of the whole database to w while other
// reads and writes go on, and returns the number of bytes written.
func (s *Store) Backup(w io.Writer) (int64, error) {
	var n int64
	if s.etcd != nil {
		return s.etcdBackup(w)
	}
	err := closedErr(s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(w)
		return err
	}))
	if err != nil {
		return n, fmt.Errorf("store: writing backup: %w", err)
	}
	return n, nil
}

// Check runs bbolt's consistency check over the whole file and returns the
// problems it finds, if any.
func (s *Store) Check() error {
	return closedErr(s.db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	}))
}

// Now is the store's clock, to the precision the store records.
func (s *Store) Now() time.Time { return s.stamp() }

// view, update and batch run fn in a read, write or batched write
// transaction (bolt's View, Update and Batch) and report a closed store as
// ErrClosed and a write the disk refused as ErrUnwritable, as the error
// block promises, rather than as bbolt's own errors.
//
// On etcd, view first waits until the local copy holds every write any
// node committed before the call (see etcdBackend.sync), and update and
// batch commit through etcd (etcdBackend.commit).
func (s *Store) view(fn func(*txn) error) error {
	if s.etcd != nil {
		s.etcd.sync()
	}
	return closedErr(s.db.View(func(tx *bolt.Tx) error { return fn(&txn{btx: tx}) }))
}

func (s *Store) update(fn func(*txn) error) error {
	if s.etcd != nil {
		return s.etcd.update(s.fence, fn)
	}
	return s.writeErr(closedErr(s.db.Update(func(tx *bolt.Tx) error { return fn(&txn{btx: tx}) })))
}

func (s *Store) batch(fn func(*txn) error) error {
	if s.etcd != nil {
		return s.etcd.batch(s.fence, fn)
	}
	return s.writeErr(closedErr(s.db.Batch(func(tx *bolt.Tx) error { return fn(&txn{btx: tx}) })))
}

func closedErr(err error) error {
	if errors.Is(err, berrors.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

// stamp is the current time as the store records it: UTC, to the
// microsecond (what the API shows).
func (s *Store) stamp() time.Time {
	return s.now().UTC().Truncate(time.Microsecond)
}

func u64(v uint64) []byte {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], v)
	return b[:]
}

func getJSON(b *bucket, key []byte, v any) error {
	data := b.Get(key)
	if data == nil {
		return ErrNotFound
	}
	if err := json.Unmarshal(data, v); err != nil {
		return fmt.Errorf("store: decoding %q: %w", key, err)
	}
	return nil
}

func putJSON(b *bucket, key []byte, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encoding %s: %w", key, err)
	}
	return b.Put(key, data)
}
