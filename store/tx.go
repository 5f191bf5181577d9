package store

import (
	bolt "go.etcd.io/bbolt"
)

// Transactions as the store's methods see them.
//
// Every method of the store reads and writes through txn, bucket and
// cursor, which have the names and meaning of bbolt's Tx, Bucket and
// Cursor. On the bbolt backend they pass straight through. On the etcd
// backend (etcd.go) the same calls run against the node's local copy of the
// data in a bbolt write transaction that is never committed: the wrappers
// note what the method read (single keys, whole buckets) and wrote, and
// the backend turns that into one etcd transaction that commits only if
// nothing read has changed since. So the business rules (a domain is
// unique, an organization stays within its limit) are written once and
// hold on both backends.

// txn is a transaction of the store.
type txn struct {
	btx *bolt.Tx
	// rec is nil on the bbolt backend; on the etcd backend it collects
	// the transaction's reads and writes.
	rec *recorder
}

// Bucket returns the named bucket; every bucket exists from Open on.
func (t *txn) Bucket(name []byte) *bucket {
	b := t.btx.Bucket(name)
	if b == nil {
		return nil
	}
	return &bucket{b: b, name: name, rec: t.rec}
}

// OnCommit runs fn once the transaction is durably committed (on the etcd
// backend: once etcd has accepted it).
func (t *txn) OnCommit(fn func()) {
	if t.rec != nil {
		t.rec.onCommit = append(t.rec.onCommit, fn)
		return
	}
	t.btx.OnCommit(fn)
}

// bucket is a bucket of a txn.
type bucket struct {
	b    *bolt.Bucket
	name []byte
	rec  *recorder
}

// Get returns the value of key, or nil. The slice is valid only during
// the transaction.
func (b *bucket) Get(key []byte) []byte {
	v := b.b.Get(key)
	if b.rec != nil {
		b.rec.readKey(b.name, key, v != nil)
	}
	return v
}

// Put sets key to value.
func (b *bucket) Put(key, value []byte) error {
	if err := b.b.Put(key, value); err != nil {
		return err
	}
	if b.rec != nil {
		b.rec.put(b.name, key, value)
	}
	return nil
}

// Delete removes key; deleting a missing key is not an error.
func (b *bucket) Delete(key []byte) error {
	if err := b.b.Delete(key); err != nil {
		return err
	}
	if b.rec != nil {
		b.rec.del(b.name, key)
	}
	return nil
}

// Cursor returns a cursor over the bucket. Reading through a cursor counts
// as reading the whole bucket.
func (b *bucket) Cursor() *cursor {
	if b.rec != nil {
		b.rec.readBucket(b.name)
	}
	return &cursor{c: b.b.Cursor(), bucket: b}
}

// ForEach calls fn for every key of the bucket in order; it counts as
// reading the whole bucket.
func (b *bucket) ForEach(fn func(k, v []byte) error) error {
	if b.rec != nil {
		b.rec.readBucket(b.name)
	}
	return b.b.ForEach(fn)
}

// NextSequence returns the bucket's next sequence number.
// On etcd it is drawn from the node's own block of the sequence
// (etcdBackend.nextSequence): unique across nodes, increasing on each
// node, and never a point of contention between writes.
func (b *bucket) NextSequence() (uint64, error) {
	if b.rec != nil {
		return b.rec.e.nextSequence(b.name)
	}
	return b.b.NextSequence()
}

// cursor walks a bucket in key order.
type cursor struct {
	c      *bolt.Cursor
	bucket *bucket
}

func (c *cursor) First() ([]byte, []byte)           { return c.c.First() }
func (c *cursor) Last() ([]byte, []byte)            { return c.c.Last() }
func (c *cursor) Next() ([]byte, []byte)            { return c.c.Next() }
func (c *cursor) Prev() ([]byte, []byte)            { return c.c.Prev() }
func (c *cursor) Seek(seek []byte) ([]byte, []byte) { return c.c.Seek(seek) }

// KeyN is the number of keys in the bucket; it counts as reading the whole
// bucket.
func (b *bucket) KeyN() int {
	if b.rec != nil {
		b.rec.readBucket(b.name)
	}
	return b.b.Stats().KeyN
}

// CreateBucketIfNotExists is for schema migrations, which run on a bbolt
// file only (the etcd backend's local copy is built at the current
// schema).
func (t *txn) CreateBucketIfNotExists(name []byte) (*bucket, error) {
	b, err := t.btx.CreateBucketIfNotExists(name)
	if err != nil {
		return nil, err
	}
	return &bucket{b: b, name: name, rec: t.rec}, nil
}
