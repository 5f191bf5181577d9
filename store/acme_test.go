package store_test

import (
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// TestSpendOrderBudget: an organization gets limit orders per window; the
// next is refused with the time the oldest leaves the window; orders of
// another organization are counted apart; a refund gives the order back;
// and the count survives a reopen.
func TestSpendOrderBudget(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	t0 := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	const limit = 3
	spend := func(s *store.Store, org string, at time.Time) (store.SpentOrder, bool, time.Time) {
		t.Helper()
		o, ok, next, err := s.SpendOrder(org, "e.example.com", at, time.Hour, limit)
		if err != nil {
			t.Fatal(err)
		}
		return o, ok, next
	}
	for i := range limit {
		if _, ok, _ := spend(s, "org-a", t0.Add(time.Duration(i)*time.Minute)); !ok {
			t.Fatalf("order %d refused within the budget", i+1)
		}
	}
	_, ok, next := spend(s, "org-a", t0.Add(10*time.Minute))
	if ok || !next.Equal(t0.Add(time.Hour)) {
		t.Errorf("order over the budget: ok %v, next %v; want refused until %v", ok, next, t0.Add(time.Hour))
	}
	if _, ok, _ := spend(s, "org-b", t0.Add(10*time.Minute)); !ok {
		t.Error("another organization's order refused")
	}
	// Refunded: the slot is free again.
	o, ok, _ := spend(s, "org-b", t0.Add(11*time.Minute))
	if !ok {
		t.Fatal("org-b's second order refused")
	}
	if err := s.RefundOrder(o); err != nil {
		t.Fatal(err)
	}
	for i := range limit - 1 {
		if _, ok, _ := spend(s, "org-b", t0.Add(12*time.Minute)); !ok {
			t.Errorf("org-b order %d after the refund refused", i+2)
		}
	}

	// The history is durable.
	s.Close()
	s = openAt(t, path, store.Options{})
	if _, ok, _ := spend(s, "org-a", t0.Add(59*time.Minute)); ok {
		t.Error("after a reopen, an order over the budget was accepted")
	}
	// The first order leaves the window an hour after it was placed.
	if _, ok, _ := spend(s, "org-a", t0.Add(time.Hour)); !ok {
		t.Error("an order an hour after the first was refused")
	}
	_, ok, next = spend(s, "org-a", t0.Add(time.Hour))
	if ok || !next.Equal(t0.Add(time.Hour+time.Minute)) {
		t.Errorf("next order: ok %v, next %v; want refused until %v", ok, next, t0.Add(time.Hour+time.Minute))
	}
}

// TestSpendOrderConcurrent: orders racing for the last slots of a budget
// cannot overspend it.
func TestSpendOrderConcurrent(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	const limit, tries = 10, 40
	var mu sync.Mutex
	accepted := 0
	var wg sync.WaitGroup
	for range tries {
		wg.Go(func() {
			_, ok, _, err := s.SpendOrder("org", "e.example.com", at, time.Hour, limit)
			if err != nil {
				t.Error(err)
			}
			if ok {
				mu.Lock()
				accepted++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if accepted != limit {
		t.Errorf("%d of %d racing orders accepted, want exactly %d", accepted, tries, limit)
	}
}

// TestCAHolds: a hold replaces the one of the same scope and subject,
// ended holds are neither returned nor kept, and holds survive a reopen.
func TestCAHolds(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	put := func(h store.CAHold, at time.Time) {
		t.Helper()
		if err := s.PutCAHold(h, at); err != nil {
			t.Fatal(err)
		}
	}
	put(store.CAHold{Scope: "account", Until: now.Add(time.Hour), FromCA: true, Reason: "too many new orders", RecordID: "r1"}, now)
	put(store.CAHold{Scope: "name", Subject: "a.example.com", Until: now.Add(10 * time.Minute)}, now)
	put(store.CAHold{Scope: "name", Subject: "a.example.com", Until: now.Add(20 * time.Minute)}, now)
	put(store.CAHold{Scope: "name", Subject: "b.example.com", Until: now.Add(time.Minute)}, now)
	holds, err := s.CAHolds(now)
	if err != nil {
		t.Fatal(err)
	}
	if len(holds) != 3 {
		t.Fatalf("CAHolds = %+v, want 3", holds)
	}
	s.Close()
	s = openAt(t, path, store.Options{})
	// Two minutes on, b's hold has ended: not returned, and dropped by
	// the next write.
	later := now.Add(2 * time.Minute)
	holds, err = s.CAHolds(later)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]store.CAHold{}
	for _, h := range holds {
		got[h.Scope+"/"+h.Subject] = h
	}
	if len(got) != 2 || !got["account/"].Until.Equal(now.Add(time.Hour)) || got["account/"].RecordID != "r1" ||
		!got["name/a.example.com"].Until.Equal(now.Add(20*time.Minute)) {
		t.Errorf("after reopen CAHolds = %+v", holds)
	}
	put(store.CAHold{Scope: "registered_domain", Subject: "example.org", Until: later.Add(time.Hour)}, later)
	if holds, _ := s.CAHolds(now); len(holds) != 3 {
		t.Errorf("an ended hold was kept: %+v", holds)
	}
}

// TestReleasedDomains: deleting a record marks its domain released at the
// deletion, in the same transaction; creating a record for it again
// removes the mark; MarkReleased never marks a held domain and
// ForgetReleased only forgets the mark it was given.
func TestReleasedDomains(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	r := mustRecord(t, s, org.ID, "gone.example.com")
	if _, _, err := s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	released, err := s.ReleasedDomains()
	if err != nil {
		t.Fatal(err)
	}
	at, ok := released["gone.example.com"]
	if !ok || at.Before(r.CreatedAt) {
		t.Fatalf("ReleasedDomains = %v, want gone.example.com released after its creation %v", released, r.CreatedAt)
	}
	if err := s.ForgetReleased("gone.example.com", at.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if released, _ := s.ReleasedDomains(); !released["gone.example.com"].Equal(at) {
		t.Errorf("ForgetReleased with another time forgot the mark: %v", released)
	}
	mustRecord(t, s, org.ID, "gone.example.com")
	if released, _ := s.ReleasedDomains(); len(released) != 0 {
		t.Errorf("after a create for the domain ReleasedDomains = %v, want none", released)
	}
	if err := s.MarkReleased("gone.example.com", at); err != nil {
		t.Fatal(err)
	}
	if released, _ := s.ReleasedDomains(); len(released) != 0 {
		t.Errorf("MarkReleased marked a domain a record holds: %v", released)
	}
	if err := s.MarkReleased("orphan.example.com", at); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkReleased("orphan.example.com", at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if released, _ := s.ReleasedDomains(); !released["orphan.example.com"].Equal(at) {
		t.Errorf("MarkReleased = %v, want the first mark kept", released)
	}
	if err := s.ForgetReleased("orphan.example.com", at); err != nil {
		t.Fatal(err)
	}
	if released, _ := s.ReleasedDomains(); len(released) != 0 {
		t.Errorf("ForgetReleased left %v", released)
	}
}
