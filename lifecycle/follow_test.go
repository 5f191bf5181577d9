package lifecycle_test

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// otherNode is what another node of the cluster has of the edge: its own
// certificate manager (cache and allowlist) over the shared store, kept by
// a Follower.
func otherNode(t *testing.T, env *lifecycleEnv) *certs.Manager {
	t.Helper()
	log := slog.New(slog.NewTextHandler(env.Logs, nil)).With("node", "other")
	cm, err := certs.New(env.Store, certs.Config{CA: env.Pebble.DirectoryURL(), CARoots: env.Pebble.ServerRoots(), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f := lifecycle.NewFollower(env.Store, cm, log)
	if err := f.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		cm.Close()
	})
	return cm
}

// waitServing waits until cm serves domain (with its certificate cached)
// or, with on false, neither serves nor caches it.
func waitServing(t *testing.T, cm *certs.Manager, domain string, on bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		_, cached := cm.Info(domain)
		if cm.Serving(domain) == on && cached == on {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: serving %t, cached %t 30 s on; want both %t", domain, cm.Serving(domain), cached, on)
		}
	}
}

// TestFollowerServesWhatTheEngineServes: another node's edge, kept by a
// Follower, serves a domain once the engine (on this node) makes it
// valid, with the certificate loaded from the shared storage, and stops
// serving it and drops it from its cache when the record is deleted; a
// node started while the domain is served serves it from Start on.
func TestFollowerServesWhatTheEngineServes(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	other := otherNode(t, env)
	rec := env.Create(t, "e.follow.example.com")
	env.DNS.SetCNAME(rec.Domain, rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	waitServing(t, other, rec.Domain, true)
	notAfter, _ := other.Info(rec.Domain)
	if r, _ := env.Store.Record(rec.ID); !notAfter.Equal(r.CertNotAfter) {
		t.Errorf("the other node caches a certificate valid until %v, the record's until %v", notAfter, r.CertNotAfter)
	}

	late := otherNode(t, env)
	if !late.Serving(rec.Domain) {
		t.Errorf("a node started while %s is valid does not serve it after Start", rec.Domain)
	}

	if code, _ := env.Call(t, "DELETE", rec.ID+"/", ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	env.WaitFor(t, rec.ID, "gone", func(_ store.Record, err error) bool { return errors.Is(err, store.ErrNotFound) })
	waitServing(t, other, rec.Domain, false)
	waitServing(t, late, rec.Domain, false)
}
