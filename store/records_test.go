package store_test

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

func TestCreateRecordFillsStoreFields(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	msg := "hello"
	by := int64(42)
	in := store.Record{
		ID: "caller-id", Seq: 999, // the store's to set
		OrgID: org.ID, Domain: "e.example.com", TargetCNAME: "abc.proxy.example.net",
		Status: store.StatusWaiting, Message: &msg, CreatedBy: &by,
	}
	got, err := s.CreateRecord(in, 10)
	if err != nil {
		t.Fatal(err)
	}
	if !store.IsID(got.ID) || got.ID == in.ID {
		t.Errorf("ID = %q, want a fresh UUID", got.ID)
	}
	if got.Seq == in.Seq || got.Seq == 0 {
		t.Errorf("Seq = %d, want one the store chose", got.Seq)
	}
	if got.CreatedAt.IsZero() || !got.UpdatedAt.Equal(got.CreatedAt) {
		t.Errorf("CreatedAt = %v, UpdatedAt = %v; want both set and equal", got.CreatedAt, got.UpdatedAt)
	}
	want := in
	want.ID, want.Seq, want.CreatedAt, want.UpdatedAt = got.ID, got.Seq, got.CreatedAt, got.UpdatedAt
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CreateRecord kept\n %+v\nwant\n %+v", got, want)
	}
	if stored, err := s.Record(got.ID); err != nil || !reflect.DeepEqual(stored, got) {
		t.Errorf("Record(%s) = %+v, %v; want %+v", got.ID, stored, err, got)
	}
	if stored, err := s.RecordByDomain(got.Domain); err != nil || !reflect.DeepEqual(stored, got) {
		t.Errorf("RecordByDomain(%s) = %+v, %v; want %+v", got.Domain, stored, err, got)
	}
}

func TestCreateRecordRules(t *testing.T) {
	t.Parallel()
	type create struct {
		org    int // index into the test's organizations
		domain string
	}
	for _, tt := range []struct {
		name         string
		orgMax       []*int // one organization per entry, with its own limit
		defaultLimit int
		creates      []create // all must succeed
		then         create
		wantErr      error // compared with errors.Is
		wantLimit    bool  // want a *LimitError with Max wantMax
		wantMax      int
	}{
		{
			name: "domain taken in the same org", orgMax: []*int{nil}, defaultLimit: 10,
			creates: []create{{0, "e.example.com"}}, then: create{0, "e.example.com"}, wantErr: store.ErrDomainTaken,
		},
		{
			name: "domain taken in another org", orgMax: []*int{nil, nil}, defaultLimit: 10,
			creates: []create{{0, "e.example.com"}}, then: create{1, "e.example.com"}, wantErr: store.ErrDomainTaken,
		},
		{
			name: "default limit", orgMax: []*int{nil}, defaultLimit: 2,
			creates: []create{{0, "a.example.com"}, {0, "b.example.com"}}, then: create{0, "c.example.com"}, wantLimit: true, wantMax: 2,
		},
		{
			name: "default limit zero", orgMax: []*int{nil}, defaultLimit: 0,
			then: create{0, "a.example.com"}, wantLimit: true, wantMax: 0,
		},
		{
			name: "limit is per org", orgMax: []*int{nil, nil}, defaultLimit: 1,
			creates: []create{{0, "a.example.com"}}, then: create{1, "b.example.com"},
		},
		{
			name: "org override above the default", orgMax: []*int{intp(3)}, defaultLimit: 1,
			creates: []create{{0, "a.example.com"}, {0, "b.example.com"}, {0, "c.example.com"}}, then: create{0, "d.example.com"}, wantLimit: true, wantMax: 3,
		},
		{
			name: "org override below the default", orgMax: []*int{intp(1)}, defaultLimit: 100,
			creates: []create{{0, "a.example.com"}}, then: create{0, "b.example.com"}, wantLimit: true, wantMax: 1,
		},
		{
			name: "org override zero", orgMax: []*int{intp(0)}, defaultLimit: 100,
			then: create{0, "a.example.com"}, wantLimit: true, wantMax: 0,
		},
		{
			name: "limit checked before the domain", orgMax: []*int{nil, intp(1)}, defaultLimit: 10,
			creates: []create{{0, "a.example.com"}, {1, "b.example.com"}}, then: create{1, "a.example.com"}, wantLimit: true, wantMax: 1,
		},
		{
			name: "unknown org", orgMax: []*int{nil}, defaultLimit: 10,
			then: create{-1, "a.example.com"}, wantErr: store.ErrNotFound,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t)
			var orgIDs []string
			for i, max := range tt.orgMax {
				orgIDs = append(orgIDs, mustOrg(t, s, fmt.Sprintf("org-%d", i), max).ID)
			}
			orgID := func(i int) string {
				if i < 0 {
					return store.NewID()
				}
				return orgIDs[i]
			}
			for _, c := range tt.creates {
				if _, err := s.CreateRecord(store.Record{OrgID: orgID(c.org), Domain: c.domain}, tt.defaultLimit); err != nil {
					t.Fatalf("CreateRecord(%s in org %d): %v", c.domain, c.org, err)
				}
			}
			before, err := s.Records(nil)
			if err != nil {
				t.Fatal(err)
			}

			_, err = s.CreateRecord(store.Record{OrgID: orgID(tt.then.org), Domain: tt.then.domain}, tt.defaultLimit)
			switch {
			case tt.wantLimit:
				var le *store.LimitError
				if !errors.As(err, &le) {
					t.Fatalf("err = %v, want a *LimitError", err)
				}
				if got, want := le.Max, tt.wantMax; got != want {
					t.Errorf("LimitError.Max = %d, want %d", got, want)
				}
				if got, want := le.Error(), fmt.Sprintf("maximum of %d proxy records", tt.wantMax); !strings.Contains(got, want) {
					t.Errorf("LimitError.Error() = %q, want it to contain %q", got, want)
				}
			case !errors.Is(err, tt.wantErr):
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if err == nil {
				return
			}
			// A refused create writes nothing.
			after, err := s.Records(nil)
			if err != nil {
				t.Fatal(err)
			}
			if got, want := len(after), len(before); got != want {
				t.Errorf("a refused create left %d records, want %d", got, want)
			}
			if got, want := domains(after), domains(before); !reflect.DeepEqual(got, want) {
				t.Errorf("after a refused create the store holds %v, want %v", got, want)
			}
			if !slices.Contains(domains(before), tt.then.domain) {
				if _, err := s.RecordByDomain(tt.then.domain); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("RecordByDomain(%s) after a refused create: %v, want ErrNotFound", tt.then.domain, err)
				}
			}
		})
	}
}

// TestCreateRecordConcurrentLimit: creates racing for the last slots of an
// organization cannot overshoot its limit, however they are batched.
func TestCreateRecordConcurrentLimit(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name         string
		orgMax       *int
		defaultLimit int
	}{
		{"default limit", nil, 2},
		{"org override", intp(2), 1000},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t)
			org := mustOrg(t, s, "acme", tt.orgMax)
			const n = 50
			errs := make([]error, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					_, errs[i] = s.CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("r%d.example.com", i)}, tt.defaultLimit)
				}()
			}
			wg.Wait()
			ok := 0
			for i, err := range errs {
				var le *store.LimitError
				switch {
				case err == nil:
					ok++
				case errors.As(err, &le) && le.Max == 2:
				default:
					t.Errorf("create %d: %v, want nil or a *LimitError with Max 2", i, err)
				}
			}
			if got, want := ok, 2; got != want {
				t.Errorf("%d of %d concurrent creates succeeded, want %d", got, n, want)
			}
			if recs, err := s.OrgRecords(org.ID); err != nil || len(recs) != 2 {
				t.Errorf("OrgRecords: %d records, %v; want 2", len(recs), err)
			}
		})
	}
}

// TestCreateRecordConcurrentDomain: of many organizations racing for one
// domain, exactly one gets it.
func TestCreateRecordConcurrentDomain(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	const n = 50
	var orgs []store.Org
	for i := range n {
		orgs = append(orgs, mustOrg(t, s, fmt.Sprintf("org-%d", i), nil))
	}
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = s.CreateRecord(store.Record{OrgID: orgs[i].ID, Domain: "contested.example.com"}, 10)
		}()
	}
	wg.Wait()
	winner := -1
	for i, err := range errs {
		switch {
		case err == nil && winner >= 0:
			t.Errorf("orgs %d and %d both created the domain", winner, i)
		case err == nil:
			winner = i
		case !errors.Is(err, store.ErrDomainTaken):
			t.Errorf("org %d: %v, want nil or ErrDomainTaken", i, err)
		}
	}
	if winner < 0 {
		t.Fatal("no org got the domain")
	}
	r, err := s.RecordByDomain("contested.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := r.OrgID, orgs[winner].ID; got != want {
		t.Errorf("the domain belongs to %s, want the winner %s", got, want)
	}
}

func TestMutate(t *testing.T) {
	t.Parallel()
	errFn := errors.New("fn says no")
	for _, tt := range []struct {
		name   string
		fn     func(r *store.Record) (store.Op, error)
		wantOp store.Op
		// wantErr is compared with ==: Mutate returns fn's error unchanged.
		wantErr error
		// check looks at the store after the call; before is the record
		// as created, got what Mutate returned.
		check func(t *testing.T, s *store.Store, before, got store.Record)
	}{
		{
			name: "keep",
			fn: func(r *store.Record) (store.Op, error) {
				r.Status = store.StatusValid // discarded
				return store.OpKeep, nil
			},
			wantOp: store.OpKeep,
			check: func(t *testing.T, s *store.Store, before, got store.Record) {
				if !reflect.DeepEqual(got, before) {
					t.Errorf("returned %+v, want the record as it was %+v", got, before)
				}
				unchanged(t, s, before)
			},
		},
		{
			name: "save",
			fn: func(r *store.Record) (store.Op, error) {
				msg := "certificate issued"
				r.Status, r.Message = store.StatusValid, &msg
				return store.OpSave, nil
			},
			wantOp: store.OpSave,
			check: func(t *testing.T, s *store.Store, before, got store.Record) {
				if got.Status != store.StatusValid || got.Message == nil || *got.Message != "certificate issued" {
					t.Errorf("returned status %s, message %v; want the saved ones", got.Status, got.Message)
				}
				if !got.UpdatedAt.After(before.UpdatedAt) {
					t.Errorf("UpdatedAt = %v, want after %v", got.UpdatedAt, before.UpdatedAt)
				}
				if !got.CreatedAt.Equal(before.CreatedAt) {
					t.Errorf("CreatedAt changed from %v to %v", before.CreatedAt, got.CreatedAt)
				}
				if stored, err := s.Record(before.ID); err != nil || !reflect.DeepEqual(stored, got) {
					t.Errorf("Record() = %+v, %v; want what Mutate returned %+v", stored, err, got)
				}
				if stored, err := s.RecordByDomain(before.Domain); err != nil || !reflect.DeepEqual(stored, got) {
					t.Errorf("RecordByDomain() = %+v, %v; want %+v", stored, err, got)
				}
			},
		},
		{
			name: "save cannot change identity",
			fn: func(r *store.Record) (store.Op, error) {
				r.ID = store.NewID()
				r.OrgID = store.NewID()
				r.Domain = "other.example.com"
				r.Seq += 100
				r.CreatedAt = r.CreatedAt.Add(-1e9)
				r.TargetCNAME = "new.proxy.example.net" // not identity: kept
				return store.OpSave, nil
			},
			wantOp: store.OpSave,
			check: func(t *testing.T, s *store.Store, before, got store.Record) {
				want := before
				want.TargetCNAME = "new.proxy.example.net"
				want.UpdatedAt = got.UpdatedAt
				if !reflect.DeepEqual(got, want) {
					t.Errorf("returned\n %+v\nwant\n %+v", got, want)
				}
				if stored, err := s.Record(before.ID); err != nil || !reflect.DeepEqual(stored, want) {
					t.Errorf("Record() = %+v, %v; want %+v", stored, err, want)
				}
				if _, err := s.RecordByDomain("other.example.com"); !errors.Is(err, store.ErrNotFound) {
					t.Errorf("RecordByDomain(the domain fn tried) = %v, want ErrNotFound", err)
				}
				if recs, err := s.OrgRecords(before.OrgID); err != nil || len(recs) != 1 || recs[0].ID != before.ID {
					t.Errorf("OrgRecords(the record's org) = %+v, %v; want the record", recs, err)
				}
			},
		},
		{
			name:   "delete",
			fn:     func(*store.Record) (store.Op, error) { return store.OpDelete, nil },
			wantOp: store.OpDelete,
			check: func(t *testing.T, s *store.Store, before, got store.Record) {
				if !reflect.DeepEqual(got, before) {
					t.Errorf("returned %+v, want the record as it was %+v", got, before)
				}
				gone(t, s, before)
			},
		},
		{
			name: "delete after fn changed the domain",
			fn: func(r *store.Record) (store.Op, error) {
				r.Domain = "other.example.com"
				r.Seq++
				return store.OpDelete, nil
			},
			wantOp: store.OpDelete,
			check: func(t *testing.T, s *store.Store, before, _ store.Record) {
				gone(t, s, before)
			},
		},
		{
			name: "fn error",
			fn: func(r *store.Record) (store.Op, error) {
				r.Status = store.StatusValid
				return store.OpSave, errFn
			},
			wantOp:  store.OpKeep,
			wantErr: errFn,
			check: func(t *testing.T, s *store.Store, before, _ store.Record) {
				unchanged(t, s, before)
			},
		},
		{
			name:    "unknown op",
			fn:      func(*store.Record) (store.Op, error) { return store.Op(99), nil },
			wantOp:  store.OpKeep,
			wantErr: errAny,
			check: func(t *testing.T, s *store.Store, before, _ store.Record) {
				unchanged(t, s, before)
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := openStore(t)
			org := mustOrg(t, s, "acme", nil)
			before := mustRecord(t, s, org.ID, "e.example.com")
			got, op, err := s.Mutate(before.ID, tt.fn)
			switch {
			case tt.wantErr == errAny && err == nil:
				t.Fatalf("Mutate: nil error, want one")
			case tt.wantErr != errAny && err != tt.wantErr:
				t.Fatalf("Mutate: err = %v, want %v", err, tt.wantErr)
			}
			if op != tt.wantOp {
				t.Errorf("Mutate: op = %v, want %v", op, tt.wantOp)
			}
			tt.check(t, s, before, got)
		})
	}
}

// errAny stands for "some error" in a table.
var errAny = errors.New("any error")

// unchanged checks that the store still holds r exactly, in every index.
func unchanged(t *testing.T, s *store.Store, r store.Record) {
	t.Helper()
	if got, err := s.Record(r.ID); err != nil || !reflect.DeepEqual(got, r) {
		t.Errorf("Record(%s) = %+v, %v; want it unchanged: %+v", r.ID, got, err, r)
	}
	if got, err := s.RecordByDomain(r.Domain); err != nil || !reflect.DeepEqual(got, r) {
		t.Errorf("RecordByDomain(%s) = %+v, %v; want it unchanged: %+v", r.Domain, got, err, r)
	}
	if got, err := s.OrgRecords(r.OrgID); err != nil || len(got) != 1 || !reflect.DeepEqual(got[0], r) {
		t.Errorf("OrgRecords(%s) = %+v, %v; want just %+v", r.OrgID, got, err, r)
	}
}

// gone checks that r is in no index and that its domain and its slot in
// its organization are free again.
func gone(t *testing.T, s *store.Store, r store.Record) {
	t.Helper()
	if _, err := s.Record(r.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Record(%s) after delete: %v, want ErrNotFound", r.ID, err)
	}
	if _, err := s.RecordByDomain(r.Domain); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RecordByDomain(%s) after delete: %v, want ErrNotFound", r.Domain, err)
	}
	if got, err := s.OrgRecords(r.OrgID); err != nil || len(got) != 0 {
		t.Errorf("OrgRecords(%s) after delete = %+v, %v; want none", r.OrgID, got, err)
	}
	// The org's only slot (limit 1) and the domain are free again.
	if _, err := s.CreateRecord(store.Record{OrgID: r.OrgID, Domain: r.Domain}, 1); err != nil {
		t.Errorf("re-creating %s in the same org with limit 1: %v", r.Domain, err)
	}
}

func TestMutateUnknownRecord(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	called := false
	_, _, err := s.Mutate(store.NewID(), func(*store.Record) (store.Op, error) {
		called = true
		return store.OpSave, nil
	})
	if !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Mutate of an unknown id: %v, want ErrNotFound", err)
	}
	if called {
		t.Error("fn was called for an unknown record")
	}
}

// TestDeleteFreesDomainForAnotherOrg: after a delete the domain can be
// registered by a different organization.
func TestDeleteFreesDomainForAnotherOrg(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	a, b := mustOrg(t, s, "a", nil), mustOrg(t, s, "b", nil)
	r := mustRecord(t, s, a.ID, "e.example.com")
	if _, err := s.CreateRecord(store.Record{OrgID: b.ID, Domain: r.Domain}, 10); !errors.Is(err, store.ErrDomainTaken) {
		t.Fatalf("before the delete: %v, want ErrDomainTaken", err)
	}
	if _, _, err := s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	got, err := s.CreateRecord(store.Record{OrgID: b.ID, Domain: r.Domain}, 10)
	if err != nil {
		t.Fatalf("after the delete: %v", err)
	}
	if byDomain, err := s.RecordByDomain(r.Domain); err != nil || byDomain.OrgID != b.ID {
		t.Errorf("RecordByDomain = %+v, %v; want the record of org b", byDomain, err)
	}
	if recs, err := s.OrgRecords(a.ID); err != nil || len(recs) != 0 {
		t.Errorf("OrgRecords(a) = %+v, %v; want none", recs, err)
	}
	if recs, err := s.OrgRecords(b.ID); err != nil || len(recs) != 1 || recs[0].ID != got.ID {
		t.Errorf("OrgRecords(b) = %+v, %v; want the new record", recs, err)
	}
}

func TestOrgRecordsNewestFirstAndOnlyThatOrg(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	// Several organizations, so that whichever sorts first, in the middle
	// or last in the index is listed; their records are interleaved.
	const orgs, perOrg = 4, 3
	var orgList []store.Org
	for i := range orgs {
		orgList = append(orgList, mustOrg(t, s, fmt.Sprintf("org-%d", i), nil))
	}
	empty := mustOrg(t, s, "empty", nil)
	want := map[string][]string{} // org id -> domains, newest first
	for i := range perOrg {
		for _, org := range orgList {
			d := fmt.Sprintf("r%d.%s.example.com", i, org.Name)
			mustRecord(t, s, org.ID, d)
			want[org.ID] = append([]string{d}, want[org.ID]...)
		}
	}
	for _, org := range append(orgList, empty) {
		recs, err := s.OrgRecords(org.ID)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, r := range recs {
			if r.OrgID != org.ID {
				t.Errorf("OrgRecords(%s) lists a record of %s", org.Name, r.OrgID)
			}
			got = append(got, r.Domain)
		}
		if !reflect.DeepEqual(got, want[org.ID]) {
			t.Errorf("OrgRecords(%s) = %v, want %v", org.Name, got, want[org.ID])
		}
	}
	if recs, err := s.OrgRecords(store.NewID()); err != nil || len(recs) != 0 {
		t.Errorf("OrgRecords(unknown org) = %v, %v; want none and no error", recs, err)
	}
}

func TestRecordsFilter(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	a := mustRecord(t, s, org.ID, "a.example.com")
	mustRecord(t, s, org.ID, "b.example.com")
	c := mustRecord(t, s, org.ID, "c.example.com")
	for _, id := range []string{a.ID, c.ID} {
		if _, _, err := s.Mutate(id, func(r *store.Record) (store.Op, error) {
			r.Status = store.StatusValid
			return store.OpSave, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, tt := range []struct {
		name string
		keep func(*store.Record) bool
		want []string
	}{
		{"nil keeps all", nil, []string{"a.example.com", "b.example.com", "c.example.com"}},
		{"by status", func(r *store.Record) bool { return r.Status == store.StatusValid }, []string{"a.example.com", "c.example.com"}},
		{"none", func(*store.Record) bool { return false }, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			recs, err := s.Records(tt.keep)
			if err != nil {
				t.Fatal(err)
			}
			got := domains(recs)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Records() = %v, want %v", got, tt.want)
			}
		})
	}
}

// domains lists the records' domains, sorted (Records has no order).
func domains(recs []store.Record) []string {
	var ds []string
	for _, r := range recs {
		ds = append(ds, r.Domain)
	}
	slices.Sort(ds)
	return ds
}

func TestCountRecordsByStatus(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	zeros := map[store.Status]int{}
	for _, st := range store.Statuses {
		zeros[st] = 0
	}
	got, err := s.CountRecordsByStatus()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, zeros) {
		t.Errorf("empty store: CountRecordsByStatus() = %v, want %v", got, zeros)
	}

	org := mustOrg(t, s, "acme", nil)
	set := map[string]store.Status{
		"a": store.StatusWaiting, "b": store.StatusWaiting, "c": store.StatusValid,
		"d": store.StatusTimedOut, "e": store.StatusDeleting, "f": store.StatusValid,
	}
	want := maps.Clone(zeros)
	for name, st := range set {
		r := mustRecord(t, s, org.ID, name+".example.com")
		if _, _, err := s.Mutate(r.ID, func(r *store.Record) (store.Op, error) {
			r.Status = st
			return store.OpSave, nil
		}); err != nil {
			t.Fatal(err)
		}
		want[st]++
	}
	got, err = s.CountRecordsByStatus()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("CountRecordsByStatus() = %v, want %v", got, want)
	}
}

// at is a fixed instant plus d, for scheduling records in tests.
func at(d time.Duration) time.Time {
	return time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC).Add(d)
}

// scheduled creates a record due at when (zero: not scheduled).
func scheduled(t *testing.T, s *store.Store, orgID, domain string, when time.Time) store.Record {
	t.Helper()
	r, err := s.CreateRecord(store.Record{OrgID: orgID, Domain: domain, Status: store.StatusWaiting, NextCheckAt: when}, noLimit)
	if err != nil {
		t.Fatalf("CreateRecord(%s): %v", domain, err)
	}
	return r
}

func TestDueRecords(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	// Created out of time order, so the index, not creation, orders them.
	c := scheduled(t, s, org.ID, "c.example.com", at(3*time.Minute))
	a := scheduled(t, s, org.ID, "a.example.com", at(time.Minute))
	scheduled(t, s, org.ID, "never.example.com", time.Time{})
	b := scheduled(t, s, org.ID, "b.example.com", at(2*time.Minute))
	d := scheduled(t, s, org.ID, "d.example.com", at(time.Hour))

	ids := func(rs []store.Record) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Domain)
		}
		return out
	}
	for _, tt := range []struct {
		name  string
		now   time.Time
		limit int
		skip  func(string) bool
		want  []string
	}{
		{"nothing due yet", at(0), 10, nil, nil},
		{"due at exactly now", at(time.Minute), 10, nil, []string{"a.example.com"}},
		{"soonest first", at(3 * time.Minute), 10, nil, []string{"a.example.com", "b.example.com", "c.example.com"}},
		{"limit", at(3 * time.Minute), 2, nil, []string{"a.example.com", "b.example.com"}},
		{"limit zero", at(3 * time.Minute), 0, nil, nil},
		{"skip", at(3 * time.Minute), 2, func(id string) bool { return id == a.ID }, []string{"b.example.com", "c.example.com"}},
		{"all", at(24 * time.Hour), 10, nil, []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			rs, err := s.DueRecords(tt.now, tt.limit, tt.skip)
			if err != nil {
				t.Fatal(err)
			}
			if got := ids(rs); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("DueRecords(%v, %d) = %v, want %v", tt.now, tt.limit, got, tt.want)
			}
		})
	}

	next, ok, err := s.NextDue(nil)
	if err != nil || !ok || !next.Equal(a.NextCheckAt) {
		t.Errorf("NextDue(nil) = %v, %t, %v; want %v", next, ok, err, a.NextCheckAt)
	}
	next, ok, err = s.NextDue(func(id string) bool { return id == a.ID || id == b.ID })
	if err != nil || !ok || !next.Equal(c.NextCheckAt) {
		t.Errorf("NextDue(skipping a and b) = %v, %t, %v; want %v", next, ok, err, c.NextCheckAt)
	}
	if _, ok, err := s.NextDue(func(string) bool { return true }); err != nil || ok {
		t.Errorf("NextDue(skipping all) = %t, %v; want false", ok, err)
	}

	// Rescheduling moves the entry, unscheduling and deleting drop it.
	for _, m := range []struct {
		id string
		fn func(r *store.Record) (store.Op, error)
	}{
		{a.ID, func(r *store.Record) (store.Op, error) { r.NextCheckAt = at(2 * time.Hour); return store.OpSave, nil }},
		{b.ID, func(r *store.Record) (store.Op, error) { r.NextCheckAt = time.Time{}; return store.OpSave, nil }},
		{c.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }},
		{d.ID, func(r *store.Record) (store.Op, error) { r.NextCheckAt = at(3 * time.Hour); return store.OpKeep, nil }},
	} {
		if _, _, err := s.Mutate(m.id, m.fn); err != nil {
			t.Fatal(err)
		}
	}
	rs, err := s.DueRecords(at(24*time.Hour), 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(rs), []string{"d.example.com", "a.example.com"}; !reflect.DeepEqual(got, want) {
		t.Errorf("after rescheduling: DueRecords = %v, want %v", got, want)
	}
	if next, ok, err := s.NextDue(nil); err != nil || !ok || !next.Equal(at(time.Hour)) {
		t.Errorf("after rescheduling: NextDue = %v, %t, %v; want %v", next, ok, err, at(time.Hour))
	}
}

func TestNextDueEmpty(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	if at, ok, err := s.NextDue(nil); err != nil || ok || !at.IsZero() {
		t.Errorf("NextDue on an empty store = %v, %t, %v; want zero, false, nil", at, ok, err)
	}
}
