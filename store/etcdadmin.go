package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// Campaign waits until this node is elected to run the lifecycle engine,
// or ctx ends. It returns the fence of the leadership (for WithFence) and
// a channel closed when the leadership is lost: the node's session lease
// expired or could not be renewed. resign gives the leadership up at
// once. On bbolt the one process always leads: Campaign returns at once
// and the channel never closes.
func (s *Store) Campaign(ctx context.Context, node string) (fence Fence, lost <-chan struct{}, resign func(), err error) {
	if s.etcd == nil {
		return Fence{}, nil, func() {}, nil
	}
	sess, err := s.etcd.Session()
	if err != nil {
		return Fence{}, nil, nil, err
	}
	el := concurrency.NewElection(sess, s.etcd.leaderPrefix())
	if err := el.Campaign(ctx, node); err != nil {
		if ctx.Err() != nil {
			return Fence{}, nil, nil, ctx.Err()
		}
		return Fence{}, nil, nil, s.etcd.unavailable(err)
	}
	resign = func() {
		rctx, cancel := context.WithTimeout(context.Background(), s.etcd.timeout)
		defer cancel()
		_ = el.Resign(rctx)
	}
	return Fence{Key: el.Key(), Rev: el.Rev()}, sess.Done(), resign, nil
}

// Leader names the node that leads now ("" if none, or on bbolt).
func (s *Store) Leader(ctx context.Context) (string, error) {
	if s.etcd == nil {
		return "", nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.etcd.timeout)
	defer cancel()
	resp, err := s.etcd.client.Get(ctx, s.etcd.leaderPrefix(), clientv3.WithFirstCreate()...)
	if err != nil {
		return "", s.etcd.unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return "", nil
	}
	return string(resp.Kvs[0].Value), nil
}

// migrateRequestTimeout bounds each request of a migration: an etcd that
// goes away midway fails the migration instead of stalling it.
const migrateRequestTimeout = 30 * time.Second

// MigrateProgress reports a migration's progress: keys copied of total.
type MigrateProgress func(done, total int)

// MigrateToEtcd copies everything in the bbolt store src (organizations,
// users, keys, records, certificates, the ACME account, webhooks and their
// outbox, the engine's bookkeeping) into the empty prefix of the etcd
// cluster, and refuses a prefix that holds anything. Locks are not copied:
// they belong to the process that held them. The schema version is
// written last, so a node refuses a prefix whose migration was cut short.
func MigrateToEtcd(ctx context.Context, src *Store, client *clientv3.Client, prefix string, progress MigrateProgress) error {
	if src.etcd != nil {
		return errors.New("store: migrate: the source is already on etcd")
	}
	if prefix == "" {
		return errors.New("store: migrate: empty prefix")
	}
	gctx, cancel := context.WithTimeout(ctx, migrateRequestTimeout)
	resp, err := client.Get(gctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if resp.Count > 0 {
		return fmt.Errorf("store: migrate: etcd prefix %s is not empty (%d keys); migrate only into an empty prefix", prefix, resp.Count)
	}
	e := &etcdBackend{prefix: prefix}
	var ops []clientv3.Op
	var schema []byte
	err = src.db.View(func(tx *bolt.Tx) error {
		return tx.ForEach(func(name []byte, b *bolt.Bucket) error {
			if bytes.Equal(name, bucketCertLocks) {
				return nil
			}
			if seq := b.Sequence(); seq != 0 {
				ops = append(ops, clientv3.OpPut(e.seqKey(name), strconv.FormatUint(seq, 10)))
			}
			return b.ForEach(func(k, v []byte) error {
				if bytes.Equal(name, bucketMeta) && bytes.Equal(k, keySchema) {
					schema = bytes.Clone(v)
					return nil
				}
				ops = append(ops, clientv3.OpPut(e.dataKey(name, k), string(v)))
				return nil
			})
		})
	})
	if err != nil {
		return fmt.Errorf("store: migrate: reading the source: %w", err)
	}
	if schema == nil {
		return errors.New("store: migrate: the source has no schema version")
	}
	total := len(ops) + 1
	for done := 0; done < len(ops); {
		n := min(maxTxnOps, len(ops)-done)
		rctx, cancel := context.WithTimeout(ctx, migrateRequestTimeout)
		_, err := client.Txn(rctx).Then(ops[done : done+n]...).Commit()
		cancel()
		if err != nil {
			return fmt.Errorf("store: migrate: writing keys %d to %d: %w: %w", done, done+n, ErrUnavailable, err)
		}
		done += n
		if progress != nil {
			progress(done, total)
		}
	}
	rctx, cancel := context.WithTimeout(ctx, migrateRequestTimeout)
	defer cancel()
	if _, err := client.Txn(rctx).If(clientv3.Compare(clientv3.CreateRevision(e.schemaKey()), "=", 0)).
		Then(clientv3.OpPut(e.schemaKey(), string(schema))).Commit(); err != nil {
		return fmt.Errorf("store: migrate: writing the schema version: %w: %w", ErrUnavailable, err)
	}
	if progress != nil {
		progress(total, total)
	}
	return nil
}
