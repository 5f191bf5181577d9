package store_test

import (
	"path/filepath"
	"regexp"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

var tokenForm = regexp.MustCompile(`^edgeproxy-verification=[a-z2-7]{26}$`)

func TestNewOwnershipToken(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		tok := store.NewOwnershipToken()
		if !tokenForm.MatchString(tok) {
			t.Fatalf("NewOwnershipToken() = %q, want %s", tok, tokenForm)
		}
		if seen[tok] {
			t.Fatalf("NewOwnershipToken() returned %q twice", tok)
		}
		seen[tok] = true
	}
}

func TestRecordDNSRecords(t *testing.T) {
	t.Parallel()
	r := store.Record{ID: store.NewID(), Domain: "e.example.com", TargetCNAME: "64016eff57d031801127.proxy.example.net",
		OwnershipToken: "edgeproxy-verification=abc"}
	if got, want := r.Ownership(), (store.DNSRecord{Name: "_edgeproxy.e.example.com", Type: "TXT", Value: "edgeproxy-verification=abc"}); got != want {
		t.Errorf("Ownership() = %+v, want %+v", got, want)
	}
	want := store.DNSRecord{Name: "_acme-challenge.e.example.com", Type: "CNAME", Value: "_acme-challenge.64016eff57d031801127.proxy.example.net"}
	if got := r.DCVDelegation(); got != want {
		t.Errorf("DCVDelegation() = %+v, want %+v", got, want)
	}
}

// TestOwnershipTokenOfOldRecords pins how records stored before tokens
// existed (no ownership_token in their JSON, as a record created without
// one is stored) get theirs: derived from the record's id, the same on
// every read and after a reopen, different for two records of the same
// domain, and kept unchanged once the engine writes it into the record.
func TestOwnershipTokenOfOldRecords(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	a, b := mustOrg(t, s, "a", nil), mustOrg(t, s, "b", nil)
	old, err := s.CreateRecord(store.Record{OrgID: a.ID, Domain: "e.example.com", TargetCNAME: "x.proxy.example.net", Status: store.StatusWaiting}, 10)
	if err != nil {
		t.Fatal(err)
	}
	tok := old.Token()
	if !tokenForm.MatchString(tok) {
		t.Fatalf("derived token %q, want %s", tok, tokenForm)
	}
	s.Close()

	s = openAt(t, path, store.Options{})
	again, err := s.Record(old.ID)
	if err != nil {
		t.Fatal(err)
	}
	if again.OwnershipToken != "" || again.Token() != tok {
		t.Errorf("after reopen: stored %q, Token() %q; want none stored and %q derived again", again.OwnershipToken, again.Token(), tok)
	}
	// Another organization's record of a domain with the same name (the
	// first one deleted) derives another token.
	if _, _, err := s.Mutate(old.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	other, err := s.CreateRecord(store.Record{OrgID: b.ID, Domain: "e.example.com", TargetCNAME: "y.proxy.example.net", Status: store.StatusWaiting}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if other.Token() == tok {
		t.Errorf("two records of e.example.com share the token %q", tok)
	}
	saved, _, err := s.Mutate(other.ID, func(r *store.Record) (store.Op, error) {
		r.OwnershipToken = r.Token()
		return store.OpSave, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if saved.OwnershipToken != other.Token() || saved.Token() != other.Token() {
		t.Errorf("written token %q (Token() %q), want %q", saved.OwnershipToken, saved.Token(), other.Token())
	}
}
