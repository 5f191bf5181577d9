package store_test

import (
	"errors"
	"reflect"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

func mustKey(t *testing.T, s *store.Store, userID int64, hash string) store.APIKey {
	t.Helper()
	k, err := s.CreateKey(store.APIKey{UserID: userID, Label: hash, Hash: hash, Mask: "phx_...", Scopes: []string{"organization:read"}})
	if err != nil {
		t.Fatalf("CreateKey(%s): %v", hash, err)
	}
	return k
}

func TestKeys(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ada, bob := mustUser(t, s, "ada@example.com"), mustUser(t, s, "bob@example.com")
	a1 := mustKey(t, s, ada.ID, "sha256$a1")
	b1 := mustKey(t, s, bob.ID, "sha256$b1")
	a2 := mustKey(t, s, ada.ID, "sha256$a2")
	if !store.IsID(a1.ID) || a1.CreatedAt.IsZero() || a1.RevokedAt != nil {
		t.Errorf("CreateKey = %+v, want an id, a creation time and not revoked", a1)
	}

	if got, err := s.KeyByHash("sha256$a2"); err != nil || !reflect.DeepEqual(got, a2) {
		t.Errorf("KeyByHash(a2) = %+v, %v; want %+v", got, err, a2)
	}
	if _, err := s.KeyByHash("sha256$nope"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("KeyByHash(unknown) = %v, want ErrNotFound", err)
	}

	revoked, err := s.RevokeKey(a1.ID)
	if err != nil {
		t.Fatal(err)
	}
	if revoked.RevokedAt == nil || revoked.RevokedAt.Before(a1.CreatedAt) {
		t.Errorf("RevokeKey = %+v, want RevokedAt set after creation", revoked)
	}
	if _, err := s.KeyByHash("sha256$a1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("KeyByHash(revoked key) = %v, want ErrNotFound", err)
	}
	if got, err := s.KeyByHash("sha256$a2"); err != nil || got.ID != a2.ID {
		t.Errorf("KeyByHash(a2) after revoking a1 = %+v, %v; want a2", got, err)
	}
	// Revoking again changes nothing, not even the time.
	if again, err := s.RevokeKey(a1.ID); err != nil || !reflect.DeepEqual(again, revoked) {
		t.Errorf("RevokeKey again = %+v, %v; want %+v", again, err, revoked)
	}
	if _, err := s.RevokeKey(store.NewID()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("RevokeKey(unknown) = %v, want ErrNotFound", err)
	}

	for _, tt := range []struct {
		name   string
		userID int64
		want   []store.APIKey
	}{
		{"ada's, revoked included, oldest first", ada.ID, []store.APIKey{revoked, a2}},
		{"bob's", bob.ID, []store.APIKey{b1}},
		{"everyone's", 0, []store.APIKey{revoked, b1, a2}},
		{"unknown user", bob.ID + 1, nil},
	} {
		got, err := s.Keys(tt.userID)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("Keys(%d) (%s) = %+v, want %+v", tt.userID, tt.name, got, tt.want)
		}
	}
}

func TestCreateKeyUnknownUser(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	if _, err := s.CreateKey(store.APIKey{UserID: 7, Hash: "sha256$x"}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("CreateKey for an unknown user: %v, want ErrNotFound", err)
	}
	if _, err := s.KeyByHash("sha256$x"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("KeyByHash after a refused CreateKey: %v, want ErrNotFound", err)
	}
}

// TestCreateKeyIgnoresCallerFields: the id, the time and the revocation
// are the store's to set.
func TestCreateKeyIgnoresCallerFields(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	u := mustUser(t, s, "ada@example.com")
	k := mustKey(t, s, u.ID, "sha256$x")
	in := k
	in.Hash = "sha256$y"
	got, err := s.CreateKey(in)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID == k.ID || !got.CreatedAt.After(k.CreatedAt) || got.RevokedAt != nil {
		t.Errorf("CreateKey(copy of %+v) = %+v; want a new id and time", k, got)
	}
}
