package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"

	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/edgeproxy/edgeproxy/webhooks"
)

// Several nodes on etcd.
//
// With --etcd-endpoints every node opens the store on the etcd cluster,
// with its local copy in <data-dir>/etcd-copy.db, and serves the API, the
// admin socket, the ACME challenges and the edge. Each node runs a
// lifecycle.Follower that keeps its edge's allowlist and certificate cache
// equal to the served records; one node at a time, elected on etcd, runs
// the lifecycle engine (Engine.Lead) and the webhook deliveries, writing
// through a store handle fenced on its leadership. A node that loses its
// leadership (its session lease could not be renewed: etcd out of reach,
// or the process stalled) stops that work at once and campaigns again.

// Files and timing of the cluster mode.
const (
	// etcdCopyFile is the node's local copy of the cluster's data.
	etcdCopyFile = "etcd-copy.db"
	// etcdDialTimeout bounds the connection to an etcd member; the
	// client does not wait for it at start, so a node starts from its
	// local copy while etcd is down.
	etcdDialTimeout = 5 * time.Second
	// storeCloseTimeout bounds the store's close at shutdown before the
	// etcd connection is closed under it: a close that revokes the node's
	// session waits for an etcd that may be out of reach.
	storeCloseTimeout = 5 * time.Second
	// clusterStopWait bounds how long shutdown waits for the leadership
	// loop and the follower, which may be waiting on an etcd out of reach
	// (a new session's lease is granted without a deadline).
	clusterStopWait = 5 * time.Second
	// etcdReconnectMax is the longest pause between two attempts to
	// connect to an etcd member that cannot be reached (before gRPC's
	// jitter of 20 %): it bounds how long a node takes to notice that etcd
	// is back, with an attempt that hangs taking up to gRPC's connect
	// timeout on top.
	etcdReconnectMax = 2 * time.Second
	// campaignBackoffMax is the longest pause between two failed
	// campaigns.
	campaignBackoffMax = 10 * time.Second
)

// client connects to the etcd cluster of c. It does not wait for the
// connection: requests do, each within the store's timeout.
func (c *etcdConfig) client() (*clientv3.Client, error) {
	var tlsCfg *tls.Config
	if c.CA != nil || c.Cert != nil {
		tlsCfg = &tls.Config{RootCAs: c.CA, MinVersion: tls.VersionTLS12}
		if c.Cert != nil {
			tlsCfg.Certificates = []tls.Certificate{*c.Cert}
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:            c.Endpoints,
		DialTimeout:          etcdDialTimeout,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		TLS:                  tlsCfg,
		// gRPC's default pause between two connection attempts grows to
		// two minutes: after a long etcd outage a node would answer 503
		// that long after etcd is back. A few seconds at most costs an
		// unreachable etcd a connection attempt per member now and then.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: time.Second, Multiplier: 1.6, Jitter: 0.2, MaxDelay: etcdReconnectMax},
			MinConnectTimeout: etcdDialTimeout,
		})},
		// The store reports what fails (ErrUnavailable, the watch's
		// warnings); the client would log its own retries once per
		// request all through an outage.
		Logger: zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("--etcd-endpoints: %w", err)
	}
	return cli, nil
}

// openedStore is the store serve runs on, and how to let go of it.
type openedStore struct {
	*store.Store
	// close closes the store, then the etcd connection.
	close func()
	// abandon closes the etcd connection at once (nothing on the bbolt
	// file): at a shutdown during an etcd outage, what waits for etcd
	// (a resignation, a new session's lease) gives up instead.
	abandon func()
}

// openStore opens the store cfg names, the bbolt file or the etcd
// cluster.
func openStore(cfg *config, log *slog.Logger) (*openedStore, error) {
	if !cfg.clustered() {
		st, err := store.Open(filepath.Join(cfg.DataDir, dbFile), store.Options{})
		if err != nil {
			return nil, err
		}
		return &openedStore{Store: st, close: func() { st.Close() }, abandon: func() {}}, nil
	}
	cli, err := cfg.Etcd.client()
	if err != nil {
		return nil, err
	}
	opts := store.EtcdOptions{
		Client:   cli,
		Prefix:   cfg.Etcd.Prefix,
		CopyPath: filepath.Join(cfg.DataDir, etcdCopyFile),
		Logger:   log,
	}
	st, err := store.OpenEtcd(opts)
	if err != nil && !errors.Is(err, store.ErrUnavailable) && !errors.Is(err, store.ErrNewerSchema) {
		// Nodes starting together on an empty prefix: one writes the
		// schema version between another's two reads of the prefix
		// (the version, then whether anything is there), which then
		// looks like data without a version. A second look settles it;
		// a prefix that really is in that state fails again.
		log.Info("opening the store on etcd failed; trying once more", "err", err)
		time.Sleep(time.Second)
		st, err = store.OpenEtcd(opts)
	}
	if err != nil {
		cli.Close()
		return nil, err
	}
	var once sync.Once
	closeClient := func() { once.Do(func() { cli.Close() }) }
	closeStore := func() {
		done := make(chan struct{})
		go func() {
			st.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(storeCloseTimeout):
			log.Warn("closing the store is waiting for etcd; closing the etcd connection under it", "waited", storeCloseTimeout)
			closeClient()
			<-done
		}
		closeClient()
	}
	return &openedStore{Store: st, close: closeStore, abandon: closeClient}, nil
}

// reachable reports whether the store answers within a second (always,
// on the bbolt file).
func (s *openedStore) reachable() bool {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	return s.Ping(ctx) == nil
}

// storeProbe answers whether the cluster store answers, as the store saw
// it last (store.Up), and has it asked again (store.Ping) at most once a
// second. The ping runs in the background: a readiness check or a scrape
// never waits for an etcd out of reach.
type storeProbe struct {
	store *store.Store

	// mu guards at and pinging.
	mu      sync.Mutex
	at      time.Time
	pinging bool
}

func (p *storeProbe) up() bool {
	if !p.store.Clustered() {
		return true
	}
	p.mu.Lock()
	if !p.pinging && time.Since(p.at) >= time.Second {
		p.pinging, p.at = true, time.Now()
		go func() {
			p.store.Ping(context.Background())
			p.mu.Lock()
			p.pinging = false
			p.mu.Unlock()
		}()
	}
	p.mu.Unlock()
	return p.store.Up()
}

// leadership runs the engine's work and the webhook deliveries on this
// node whenever it is elected, until ctx ends: campaign, lead until the
// leadership is lost, campaign again. On the way out it resigns, so
// another node takes over at once rather than when the lease expires.
// leader is true while this node leads.
func leadership(ctx context.Context, st *store.Store, node string, engine *lifecycle.Engine, hooks *webhooks.Worker, leader *atomic.Bool, log *slog.Logger) {
	backoff := time.Second
	pause := func() bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, campaignBackoffMax)
		return true
	}
	for ctx.Err() == nil {
		fence, lost, resign, err := st.Campaign(ctx, node)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			log.Warn("campaigning to run the lifecycle engine", "err", err, "retry_in", backoff.String())
			if !pause() {
				return
			}
			continue
		}
		backoff = time.Second
		log.Info("elected: running the lifecycle engine and the webhook deliveries")
		leader.Store(true)
		term, endTerm := context.WithCancel(ctx)
		go func() {
			select {
			case <-lost:
				endTerm()
			case <-term.Done():
			}
		}()
		hooksDone := make(chan struct{})
		go func() {
			defer close(hooksDone)
			hooks.Run(term)
		}()
		err = engine.Lead(term, st.WithFence(fence))
		endTerm()
		<-hooksDone
		leader.Store(false)
		resign()
		switch {
		case ctx.Err() != nil:
			log.Info("resigned the leadership: shutting down")
			return
		case err != nil && !errors.Is(err, store.ErrNotLeader):
			log.Error("the lifecycle engine stopped; resigned the leadership", "err", err)
			if !pause() {
				return
			}
		default:
			log.Warn("leadership lost: the lifecycle engine and the webhook deliveries stopped on this node; campaigning again")
		}
	}
}

// waitBounded waits for done, at most d, and says so when it gives up.
func waitBounded(done <-chan struct{}, d time.Duration, what string, log *slog.Logger) {
	select {
	case <-done:
	case <-time.After(d):
		log.Warn(what+" did not stop in time (etcd out of reach?); going on with the shutdown", "waited", d.String())
	}
}
