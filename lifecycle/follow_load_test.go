package lifecycle

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// loadGate is a Certs whose Load holds each call until certLoaders calls
// have been in flight at once (or, if that never happens, until a generous
// deadline), and records the most it saw. Only Load is used by
// loadServed.
type loadGate struct {
	Certs
	until time.Time

	// mu guards inflight, most and loaded; cond wakes the waiting loads.
	mu       sync.Mutex
	cond     *sync.Cond
	inflight int
	most     int
	loaded   []string
}

func (g *loadGate) Load(_ context.Context, domain string) (time.Time, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.inflight++
	g.most = max(g.most, g.inflight)
	g.cond.Broadcast()
	for g.most < certLoaders && time.Now().Before(g.until) {
		// Wake up now and then to notice the bound has passed.
		t := time.AfterFunc(50*time.Millisecond, g.cond.Broadcast)
		g.cond.Wait()
		t.Stop()
	}
	g.inflight--
	g.loaded = append(g.loaded, domain)
	return time.Now().Add(24 * time.Hour), nil
}

// TestLoadServedLoadsManyAtOnce pins the fix of slow starts on etcd:
// loading the served certificates one per CPU left a node waiting on one
// etcd round trip after another (each storage read waits for a barrier
// that concurrent reads share), 30–110 s for 20,000 certificates on 2
// CPUs. loadServed must keep certLoaders loads in flight whatever the
// number of CPUs, and still load each served record once and skip the
// others.
func TestLoadServedLoadsManyAtOnce(t *testing.T) {
	g := &loadGate{until: time.Now().Add(10 * time.Second)}
	g.cond = sync.NewCond(&g.mu)
	var records []store.Record
	var want []string
	for i := range 3 * certLoaders {
		r := store.Record{ID: fmt.Sprint(i), Domain: fmt.Sprintf("e%d.example.com", i), Status: store.StatusValid, CertNotAfter: time.Now().Add(time.Hour)}
		if i%3 == 0 {
			r.Status = store.StatusDeleting // has a certificate, not served
		} else {
			want = append(want, r.Domain)
		}
		records = append(records, r)
	}
	served := loadServed(context.Background(), g, slog.New(slog.DiscardHandler), records)
	if g.most < certLoaders {
		t.Errorf("at most %d loads in flight at once, want %d", g.most, certLoaders)
	}
	slices.Sort(served)
	slices.Sort(want)
	slices.Sort(g.loaded)
	if !slices.Equal(served, want) || !slices.Equal(g.loaded, want) {
		t.Errorf("served %d domains and loaded %d; want the %d served records each loaded once", len(served), len(g.loaded), len(want))
	}
}
