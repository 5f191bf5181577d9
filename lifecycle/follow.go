package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// DefaultResyncInterval is how often a Follower compares the whole
// allowlist with the served records.
const DefaultResyncInterval = time.Minute

// Follower keeps one node's edge equal to the served records when several
// nodes share a store on etcd: on every node, whether or not it runs the
// engine (Lead), it loads the certificate of each record that becomes
// served from storage (the store's blobs, which every node shares) and
// serves it, and stops serving a domain whose record stops being served
// or goes. It learns of changes from the store's change feed, which on
// etcd carries every node's commits, so a domain the leader makes served
// is served by every node as soon as its local copy has the change.
//
// The feed's changes coalesce but are never lost while the copy follows
// etcd; a copy listed again after etcd compacted its history reports the
// records that exist, not the ones deleted meanwhile, so the follower
// also compares the whole allowlist with the served records every
// ResyncInterval.
type Follower struct {
	store *store.Store
	certs Certs
	log   *slog.Logger
	sub   *store.Subscription

	// ResyncInterval: see the type's doc. If zero, DefaultResyncInterval.
	ResyncInterval time.Duration
}

// NewFollower returns a follower of st's served records for the edge
// whose certificates cm holds. Call Start, then Run.
func NewFollower(st *store.Store, cm Certs, log *slog.Logger) *Follower {
	if log == nil {
		log = slog.Default()
	}
	return &Follower{store: st, certs: cm, log: log}
}

// Start subscribes to the store's changes, then loads the certificate of
// every served record from storage (no ACME traffic) and makes the
// allowlist exactly those domains. The server reports ready only after
// it. It needs no write, so a node starts from its local copy while etcd
// is out of reach.
func (f *Follower) Start(ctx context.Context) error {
	f.sub = f.store.Subscribe()
	if err := f.resync(ctx); err != nil {
		f.sub.Close()
		f.sub = nil
		return err
	}
	return nil
}

// Run applies the store's changes to the allowlist until ctx is done.
// Call Start first.
func (f *Follower) Run(ctx context.Context) {
	if f.sub == nil {
		panic("lifecycle: Follower.Run before Start")
	}
	defer f.sub.Close()
	interval := f.ResyncInterval
	if interval <= 0 {
		interval = DefaultResyncInterval
	}
	resync := time.NewTicker(interval)
	defer resync.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.sub.Ready():
			f.apply(ctx, f.sub.Take())
		case <-resync.C:
			if err := f.resync(ctx); err != nil {
				f.log.Warn("follower: comparing the allowlist with the served records", "err", err)
			}
		}
	}
}

// resync makes the allowlist exactly the served records whose certificate
// is cached or can be loaded.
func (f *Follower) resync(ctx context.Context) error {
	records, err := f.store.Records(nil)
	if err != nil {
		return fmt.Errorf("follower: listing records: %w", err)
	}
	var (
		served []string
		toLoad []store.Record
	)
	for _, r := range records {
		if !r.Served() {
			continue
		}
		if f.cached(r) {
			served = append(served, r.Domain)
		} else {
			toLoad = append(toLoad, r)
		}
	}
	served = append(served, loadServed(ctx, f.certs, f.log, toLoad)...)
	f.certs.ServeOnly(served)
	return nil
}

// cached reports whether the cache holds r's certificate, or a newer one.
func (f *Follower) cached(r store.Record) bool {
	notAfter, ok := f.certs.Info(r.Domain)
	return ok && !notAfter.Before(r.CertNotAfter)
}

// apply brings the allowlist in line with the changed records: a record
// served now gets its certificate loaded (unless cached) and served; one
// not served any more is taken off; when the last record of a domain is
// gone, its certificate leaves the cache (it stays in storage for the
// retention, which the leader keeps).
func (f *Follower) apply(ctx context.Context, changes []store.Change) {
	for _, c := range changes {
		r, err := f.store.Record(c.ID)
		switch {
		case err == nil && r.Served():
			if !f.cached(r) {
				if _, err := f.certs.Load(ctx, r.Domain); err != nil {
					// The next resync tries again; the leader's monitor
					// gets a new one if it is really missing.
					f.log.Warn("follower: certificate of a served record not in storage", "record_id", r.ID, "domain", r.Domain, "err", err)
					continue
				}
			}
			f.certs.Serve(r.Domain, true)
		case err == nil:
			f.certs.Serve(r.Domain, false)
		case errors.Is(err, store.ErrNotFound):
			f.certs.Serve(c.Domain, false)
			if _, err := f.store.RecordByDomain(c.Domain); errors.Is(err, store.ErrNotFound) {
				dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
				if err := f.certs.Release(dctx, c.Domain); err != nil {
					f.log.Warn("follower: releasing certificate of deleted record", "domain", c.Domain, "err", err)
				}
				cancel()
			}
		default:
			f.log.Error("follower: reading changed record", "record_id", c.ID, "err", err)
		}
	}
}

// certLoaders is how many certificates loadServed loads at once. On the
// bbolt file a load is mostly parsing (certificate and key), and one
// loader per CPU would do. On etcd each of the few storage reads of a
// load first waits for a round trip to the cluster (the barrier that makes
// a read see every write committed before it), and concurrent reads share
// one round trip: with one loader per CPU, 20,000 certificates took
// 30–110 s to load on 2 CPUs, waiting, not computing; 64 loaders share
// each round 32 times as widely.
const certLoaders = 64

// loadServed loads the certificates of records from storage, certLoaders
// (or, if more, one per CPU) at a time, and returns the domains whose
// certificate it loaded.
func loadServed(ctx context.Context, cm Certs, log *slog.Logger, records []store.Record) []string {
	var (
		mu     sync.Mutex
		served []string
		wg     sync.WaitGroup
		next   = make(chan store.Record)
	)
	for range max(certLoaders, runtime.GOMAXPROCS(0)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range next {
				if !r.Served() {
					continue
				}
				if _, err := cm.Load(ctx, r.Domain); err != nil {
					// The monitor finds it missing and gets a new one.
					log.Warn("certificate of a served record not in storage", "record_id", r.ID, "domain", r.Domain, "err", err)
					continue
				}
				mu.Lock()
				served = append(served, r.Domain)
				mu.Unlock()
			}
		}()
	}
	for _, r := range records {
		next <- r
	}
	close(next)
	wg.Wait()
	return served
}
