package store_test

import (
	"testing"

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
