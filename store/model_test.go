package store_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

func TestIsID(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"0f8c2f7e-3b1a-4c5d-9e8f-0123456789ab", true},
		{"00000000-0000-0000-0000-000000000000", true},
		{"0F8C2F7E-3B1A-4C5D-9E8F-0123456789AB", false}, // upper case
		{"0f8c2f7e3b1a4c5d9e8f0123456789ab", false},     // no dashes
		{"0f8c2f7e-3b1a-4c5d-9e8f-0123456789a", false},  // short
		{"0f8c2f7e-3b1a-4c5d-9e8f-0123456789abc", false},
		{"0f8c2f7e-3b1a-4c5d-9e8f_0123456789ab", false},
		{"0f8c2f7e-3b1a-4c5d-9e8f-0123456789ag", false},
		{"@current", false},
		{"", false},
	} {
		if got := store.IsID(tt.in); got != tt.want {
			t.Errorf("IsID(%q) = %t, want %t", tt.in, got, tt.want)
		}
	}
}

func TestNewID(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		id := store.NewID()
		if !store.IsID(id) {
			t.Fatalf("NewID() = %q, not a canonical UUID", id)
		}
		if got, want := id[14], byte('4'); got != want {
			t.Errorf("NewID() = %q: version %c, want %c", id, got, want)
		}
		if v := id[19]; v != '8' && v != '9' && v != 'a' && v != 'b' {
			t.Errorf("NewID() = %q: variant %c, want RFC 4122", id, v)
		}
		if seen[id] {
			t.Fatalf("NewID() returned %q twice", id)
		}
		seen[id] = true
	}
}

func TestStatusValid(t *testing.T) {
	t.Parallel()
	for _, st := range store.Statuses {
		if !st.Valid() {
			t.Errorf("Status(%q).Valid() = false", st)
		}
	}
	for _, st := range []store.Status{"", "Valid", "deleted", "timed-out"} {
		if st.Valid() {
			t.Errorf("Status(%q).Valid() = true", st)
		}
	}
	if got, want := len(store.Statuses), 7; got != want {
		t.Errorf("%d statuses, want %d", got, want)
	}
}

func TestRecordServed(t *testing.T) {
	t.Parallel()
	expiry := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		status store.Status
		cert   time.Time
		want   bool
	}{
		{store.StatusValid, expiry, true},
		{store.StatusWarning, expiry, true},
		{store.StatusErroring, expiry, true}, // still holds its certificate
		{store.StatusDeleting, expiry, false},
		{store.StatusValid, time.Time{}, false},
		{store.StatusWaiting, time.Time{}, false},
	} {
		r := store.Record{Status: tt.status, CertNotAfter: tt.cert}
		if got := r.Served(); got != tt.want {
			t.Errorf("Record{Status: %s, CertNotAfter: %v}.Served() = %t, want %t", tt.status, tt.cert, got, tt.want)
		}
	}
}

func TestStoreNow(t *testing.T) {
	t.Parallel()
	local := time.FixedZone("UTC+2", 2*60*60)
	s := openAt(t, filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{
		Now: func() time.Time { return time.Date(2026, 11, 26, 14, 0, 0, 123456789, local) },
	})
	want := time.Date(2026, 11, 26, 12, 0, 0, 123456000, time.UTC)
	if got := s.Now(); !got.Equal(want) || got.Location() != time.UTC {
		t.Errorf("Now() = %v, want %v: UTC, to the microsecond", got, want)
	}
}
