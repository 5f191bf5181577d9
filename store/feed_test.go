package store_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

// The feed is published when the write commits, before the write method
// returns, so these tests can look at a subscription right after a write
// without waiting.

// ready reports whether sub's Ready channel holds a signal, consuming it.
func ready(sub *store.Subscription) bool {
	select {
	case <-sub.Ready():
		return true
	default:
		return false
	}
}

func TestSubscriptionCreateSaveDelete(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	sub := s.Subscribe()
	defer sub.Close()

	r := mustRecord(t, s, org.ID, "e.example.com")
	if !ready(sub) {
		t.Error("Ready not signalled after a create")
	}
	want := []store.Change{{ID: r.ID, OrgID: org.ID, Domain: r.Domain, Record: &r}}
	if got := sub.Take(); !reflect.DeepEqual(got, want) {
		t.Errorf("after create: Take() = %+v, want %+v", got, want)
	}

	saved, _, err := s.Mutate(r.ID, func(r *store.Record) (store.Op, error) {
		r.Status = store.StatusIssuing
		return store.OpSave, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !ready(sub) {
		t.Error("Ready not signalled after a save")
	}
	want = []store.Change{{ID: r.ID, OrgID: org.ID, Domain: r.Domain, Record: &saved}}
	if got := sub.Take(); !reflect.DeepEqual(got, want) {
		t.Errorf("after save: Take() = %+v, want %+v", got, want)
	}

	if _, _, err := s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	if !ready(sub) {
		t.Error("Ready not signalled after a delete")
	}
	want = []store.Change{{ID: r.ID, OrgID: org.ID, Domain: r.Domain}}
	if got := sub.Take(); !reflect.DeepEqual(got, want) {
		t.Errorf("after delete: Take() = %+v, want %+v (no Record)", got, want)
	}

	// Take empties the queue.
	if got := sub.Take(); len(got) != 0 {
		t.Errorf("a second Take() = %+v, want nothing", got)
	}
}

// TestSubscriptionNoChange: writes that change no record publish nothing.
func TestSubscriptionNoChange(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", intp(1))
	r := mustRecord(t, s, org.ID, "e.example.com")
	other := mustOrg(t, s, "other", nil)
	sub := s.Subscribe()
	defer sub.Close()

	for _, tt := range []struct {
		name  string
		write func() error
	}{
		{"keep", func() error {
			_, _, err := s.Mutate(r.ID, func(r *store.Record) (store.Op, error) {
				r.Status = store.StatusValid
				return store.OpKeep, nil
			})
			return err
		}},
		{"fn error", func() error {
			_, _, err := s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, errAny })
			if errors.Is(err, errAny) {
				return nil
			}
			return err
		}},
		{"domain taken", func() error {
			_, err := s.CreateRecord(store.Record{OrgID: other.ID, Domain: r.Domain}, 10)
			if errors.Is(err, store.ErrDomainTaken) {
				return nil
			}
			return err
		}},
		{"limit", func() error {
			_, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: "f.example.com"}, 10)
			var le *store.LimitError
			if errors.As(err, &le) {
				return nil
			}
			return err
		}},
		{"org and user writes", func() error {
			if _, err := s.CreateOrg("x", nil); err != nil {
				return err
			}
			_, err := s.CreateUser("x@example.com")
			return err
		}},
	} {
		if err := tt.write(); err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if ready(sub) {
			t.Errorf("%s: Ready signalled", tt.name)
		}
		if got := sub.Take(); len(got) != 0 {
			t.Errorf("%s: Take() = %+v, want nothing", tt.name, got)
		}
	}
}

func TestSubscriptionCoalesces(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	sub := s.Subscribe()
	defer sub.Close()

	a := mustRecord(t, s, org.ID, "a.example.com")
	b := mustRecord(t, s, org.ID, "b.example.com")
	var lastA store.Record
	for _, st := range []store.Status{store.StatusIssuing, store.StatusValid, store.StatusWarning} {
		var err error
		lastA, _, err = s.Mutate(a.ID, func(r *store.Record) (store.Op, error) {
			r.Status = st
			return store.OpSave, nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	c := mustRecord(t, s, org.ID, "c.example.com")
	if _, _, err := s.Mutate(c.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}

	// One change per record, in the order each record first changed,
	// carrying its newest state.
	want := []store.Change{
		{ID: a.ID, OrgID: org.ID, Domain: a.Domain, Record: &lastA},
		{ID: b.ID, OrgID: org.ID, Domain: b.Domain, Record: &b},
		{ID: c.ID, OrgID: org.ID, Domain: c.Domain},
	}
	if got := sub.Take(); !reflect.DeepEqual(got, want) {
		t.Errorf("Take() =\n %+v\nwant\n %+v", got, want)
	}
}

func TestSubscriptionClose(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	before := mustRecord(t, s, org.ID, "before.example.com") // not seen: made before Subscribe
	closed := s.Subscribe()
	open := s.Subscribe()
	defer open.Close()

	r := mustRecord(t, s, org.ID, "a.example.com")
	closed.Close()
	mustRecord(t, s, org.ID, "b.example.com")

	if got := closed.Take(); len(got) != 1 || got[0].ID != r.ID {
		t.Errorf("closed subscription: Take() = %+v, want only the change made before Close", got)
	}
	ready(closed) // the signal of the change before Close
	mustRecord(t, s, org.ID, "c.example.com")
	if ready(closed) {
		t.Error("closed subscription: Ready signalled after Close")
	}
	if got := closed.Take(); len(got) != 0 {
		t.Errorf("closed subscription: Take() = %+v, want nothing", got)
	}

	// Another subscription is not affected.
	got := open.Take()
	var ds []string
	for _, c := range got {
		if c.ID == before.ID {
			t.Error("a change made before Subscribe was delivered")
		}
		ds = append(ds, c.Domain)
	}
	if want := []string{"a.example.com", "b.example.com", "c.example.com"}; !reflect.DeepEqual(ds, want) {
		t.Errorf("open subscription got changes to %v, want %v", ds, want)
	}
}
