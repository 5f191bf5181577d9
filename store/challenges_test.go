package store_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeproxy/edgeproxy/store"
)

func TestChallengeTXT(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	const name = "_acme-challenge.0123456789abcdef0123.proxy.example.net"
	if got, err := s.ChallengeTXT(name); err != nil || len(got) != 0 {
		t.Fatalf("ChallengeTXT of a name never written = %q, %v; want none", got, err)
	}
	for _, v := range []string{"token-b", "token-a", "token-b"} {
		if err := s.PutChallengeTXT(name, v); err != nil {
			t.Fatalf("PutChallengeTXT(%q): %v", v, err)
		}
	}
	// Case and the trailing dot do not make another name.
	if err := s.PutChallengeTXT(strings.ToUpper(name)+".", "token-c"); err != nil {
		t.Fatal(err)
	}
	// A name that extends this one's text is another name.
	if err := s.PutChallengeTXT(name+"x", "other"); err != nil {
		t.Fatal(err)
	}
	got, err := s.ChallengeTXT(name + ".")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"token-a", "token-b", "token-c"}; !slices.Equal(got, want) {
		t.Errorf("ChallengeTXT = %q, want %q", got, want)
	}
	if err := s.DeleteChallengeTXT(name, "token-b"); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteChallengeTXT(name, "never-put"); err != nil {
		t.Errorf("deleting a value the name does not hold: %v, want nil", err)
	}
	got, _ = s.ChallengeTXT(name)
	if want := []string{"token-a", "token-c"}; !slices.Equal(got, want) {
		t.Errorf("after delete ChallengeTXT = %q, want %q", got, want)
	}
	if got, _ := s.ChallengeTXT(name + "x"); !slices.Equal(got, []string{"other"}) {
		t.Errorf("the other name holds %q, want [other]", got)
	}
}

// TestChallengeTXTDropsOldest: a name never holds more than
// MaxChallengeTXT values; the oldest goes first, and re-putting a value
// makes it the newest.
func TestChallengeTXTDropsOldest(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	const name = "_acme-challenge.x.example.net"
	for i := range store.MaxChallengeTXT {
		if err := s.PutChallengeTXT(name, fmt.Sprintf("v%02d", i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutChallengeTXT(name, "v00"); err != nil { // now the newest
		t.Fatal(err)
	}
	if err := s.PutChallengeTXT(name, "new"); err != nil {
		t.Fatal(err)
	}
	got, err := s.ChallengeTXT(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != store.MaxChallengeTXT {
		t.Errorf("name holds %d values, want %d: %q", len(got), store.MaxChallengeTXT, got)
	}
	if slices.Contains(got, "v01") || !slices.Contains(got, "v00") || !slices.Contains(got, "new") {
		t.Errorf("values = %q; want v01 (the oldest) dropped, v00 (put again) and new kept", got)
	}
}

func TestChallengeTXTRefusesBadInput(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	for _, tc := range []struct{ name, value, rule string }{
		{"", "v", "empty"},
		{".", "v", "empty"},
		{strings.Repeat("a", 254), "v", "253"},
		{"a\x00b.example.net", "v", "zero byte"},
		{"x.example.net", "", "1 to 255"},
		{"x.example.net", strings.Repeat("v", 256), "1 to 255"},
	} {
		err := s.PutChallengeTXT(tc.name, tc.value)
		if !errors.Is(err, store.ErrInvalidChallenge) || !strings.Contains(err.Error(), tc.rule) {
			t.Errorf("PutChallengeTXT(%q, %d bytes) = %v; want ErrInvalidChallenge naming %q", tc.name, len(tc.value), err, tc.rule)
		}
		if err := s.DeleteChallengeTXT(tc.name, tc.value); !errors.Is(err, store.ErrInvalidChallenge) {
			t.Errorf("DeleteChallengeTXT(%q, %d bytes) = %v; want ErrInvalidChallenge", tc.name, len(tc.value), err)
		}
	}
	if got, err := s.ChallengeTXT("x.example.net"); err != nil || len(got) != 0 {
		t.Errorf("after refused puts ChallengeTXT = %q, %v; want none", got, err)
	}
}

// TestChallengeTXTSurvivesReopen: the values are in the file, not in the
// process.
func TestChallengeTXTSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	if err := s.PutChallengeTXT("_acme-challenge.a.example.net", "kept"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openAt(t, path, store.Options{})
	if got, err := s.ChallengeTXT("_acme-challenge.a.example.net"); err != nil || !slices.Equal(got, []string{"kept"}) {
		t.Errorf("after reopening ChallengeTXT = %q, %v; want [kept]", got, err)
	}
}

// TestOpenMigratesVersion5: a file of schema 5 (no challenge bucket)
// gets the bucket and schema 6 at Open, and keeps what it held.
func TestOpenMigratesVersion5(t *testing.T) {
	t.Parallel()
	bboltOnly(t)
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	org, err := s.CreateOrg("acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Take the file back to schema 5 as that version wrote it.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket([]byte("acme_challenges")); err != nil {
			return err
		}
		return tx.Bucket([]byte("meta")).Put([]byte("schema_version"), binary.BigEndian.AppendUint64(nil, 5))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s = openAt(t, path, store.Options{})
	if v, err := s.SchemaVersionOf(); err != nil || v != 6 {
		t.Errorf("SchemaVersionOf() after migrating = %d, %v; want 6", v, err)
	}
	if _, err := s.Org(org.ID); err != nil {
		t.Errorf("the organization written at schema 5: %v", err)
	}
	if err := s.PutChallengeTXT("_acme-challenge.a.example.net", "v"); err != nil {
		t.Errorf("PutChallengeTXT after the migration: %v", err)
	}
}
