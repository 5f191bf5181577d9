package store_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeproxy/edgeproxy/store"
)

func TestSlugify(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ name, want string }{
		{"Acme", "acme"},
		{"Acme, Inc.", "acme-inc"},
		{"  Hello   World  ", "hello-world"},
		{"--x--", "x"},
		{"PostHog_Cloud 2", "posthog-cloud-2"},
		{"Café Crème", "cafe-creme"},
		{"Ångström Über Straße", "angstrom-uber-stra-e"},
		{"Ｆｕｌｌｗｉｄｔｈ", "fullwidth"}, // NFKD folds fullwidth letters
		{"東京 Tokyo", "tokyo"},
		{"東京", "org"},
		{"Москва", "org"},
		{"", "org"},
		{"!!!", "org"},
		{"0b6f5d0e-3c1a-4d8e-9f7a-2e4c6b8d1a3f", "0b6f5d0e-3c1a-4d8e-9f7a-2e4c6b8d1a3f-org"},
		{strings.Repeat("a", 60), strings.Repeat("a", 48)},
		{strings.Repeat("a", 47) + " b", strings.Repeat("a", 47)},
	} {
		got := store.Slugify(tt.name)
		if got != tt.want {
			t.Errorf("Slugify(%q) = %q, want %q", tt.name, got, tt.want)
		}
		if err := store.CheckSlug(got); err != nil {
			t.Errorf("Slugify(%q) = %q, which CheckSlug refuses: %v", tt.name, got, err)
		}
	}
}

func TestCheckSlug(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"a", "acme", "acme-2", "0", "a-b-c", "x--y", strings.Repeat("z", 48)} {
		if err := store.CheckSlug(s); err != nil {
			t.Errorf("CheckSlug(%q) = %v, want nil", s, err)
		}
	}
	for _, tt := range []struct{ slug, rule string }{
		{"", "must not be empty"},
		{strings.Repeat("z", 49), "at most 48"},
		{"Acme", "only lower-case letters"},
		{"ac me", "only lower-case letters"},
		{"acme_2", "only lower-case letters"},
		{"café", "only lower-case letters"},
		{"@current", "only lower-case letters"},
		{"-acme", "start and end with a letter or digit"},
		{"acme-", "start and end with a letter or digit"},
		{"0b6f5d0e-3c1a-4d8e-9f7a-2e4c6b8d1a3f", "form of an organization id"},
	} {
		err := store.CheckSlug(tt.slug)
		if !errors.Is(err, store.ErrInvalidSlug) || !strings.Contains(err.Error(), tt.rule) {
			t.Errorf("CheckSlug(%q) = %v, want ErrInvalidSlug saying %q", tt.slug, err, tt.rule)
		}
	}
}

// TestCreateOrgSlug: a slug is made from the name with the smallest free
// suffix; a given slug is kept, or refused, changing nothing, when
// malformed or taken.
func TestCreateOrgSlug(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	var got []string
	for _, name := range []string{"Acme", "ACME", "acme!", "Café", "Cafe", "東京", "Москва"} {
		got = append(got, mustOrg(t, s, name, nil).Slug)
	}
	if want := []string{"acme", "acme-2", "acme-3", "cafe", "cafe-2", "org", "org-2"}; !slices.Equal(got, want) {
		t.Errorf("slugs %v, want %v", got, want)
	}
	// A given slug that happens to look like a suffixed one is taken as
	// is, and the next derived one skips it.
	own, err := s.CreateOrgSlug("Acme Four", "acme-4", nil)
	if err != nil || own.Slug != "acme-4" {
		t.Fatalf("CreateOrgSlug(acme-4) = %+v, %v", own, err)
	}
	if o := mustOrg(t, s, "Acme", nil); o.Slug != "acme-5" {
		t.Errorf("fifth Acme got %q, want acme-5 (acme-4 is taken)", o.Slug)
	}
	// A long name's suffix fits within the limit.
	long := strings.Repeat("x", 60)
	mustOrg(t, s, long, nil)
	if o := mustOrg(t, s, long, nil); o.Slug != strings.Repeat("x", 46)+"-2" {
		t.Errorf("second long name got %q (%d characters), want 46 x and -2", o.Slug, len(o.Slug))
	}

	before, _ := s.Orgs()
	if _, err := s.CreateOrgSlug("Other", "acme", nil); !errors.Is(err, store.ErrSlugTaken) {
		t.Errorf("CreateOrgSlug with a taken slug: %v, want ErrSlugTaken", err)
	}
	if _, err := s.CreateOrgSlug("Other", "Not A Slug", nil); !errors.Is(err, store.ErrInvalidSlug) {
		t.Errorf("CreateOrgSlug with a malformed slug: %v, want ErrInvalidSlug", err)
	}
	if after, _ := s.Orgs(); len(after) != len(before) {
		t.Errorf("refused creates left %d organizations, want %d", len(after), len(before))
	}

	for _, slug := range []string{"acme", "acme-2", "org-2", "acme-4"} {
		o, err := s.OrgBySlug(slug)
		if err != nil || o.Slug != slug {
			t.Errorf("OrgBySlug(%q) = %+v, %v", slug, o, err)
		}
	}
	if _, err := s.OrgBySlug("nobody"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("OrgBySlug(unknown) = %v, want ErrNotFound", err)
	}
}

// TestUpdateOrgSlug: a new slug is checked like a created one, the old one
// is released with the change, and a refused change keeps the old slug.
func TestUpdateOrgSlug(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	a := mustOrg(t, s, "Acme", nil)
	b := mustOrg(t, s, "Bolt", nil)

	got, err := s.UpdateOrg(a.ID, func(o *store.Org) { o.Slug = "acme-corp" })
	if err != nil || got.Slug != "acme-corp" {
		t.Fatalf("UpdateOrg(slug acme-corp) = %+v, %v", got, err)
	}
	if o, err := s.OrgBySlug("acme-corp"); err != nil || o.ID != a.ID {
		t.Errorf("OrgBySlug(acme-corp) = %+v, %v; want %s", o, err, a.ID)
	}
	if _, err := s.OrgBySlug("acme"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("OrgBySlug(old slug) = %v, want ErrNotFound", err)
	}
	// The released slug is free again.
	if o := mustOrg(t, s, "Acme", nil); o.Slug != "acme" {
		t.Errorf("a new Acme got %q, want the released acme", o.Slug)
	}
	// A rename keeps the slug.
	if got, err := s.UpdateOrg(b.ID, func(o *store.Org) { o.Name = "Thunder" }); err != nil || got.Slug != "bolt" {
		t.Errorf("UpdateOrg(name) = %+v, %v; want slug bolt kept", got, err)
	}

	for _, tt := range []struct {
		slug string
		want error
	}{
		{"acme-corp", store.ErrSlugTaken},
		{"", store.ErrInvalidSlug},
		{"BOLT", store.ErrInvalidSlug},
	} {
		if _, err := s.UpdateOrg(b.ID, func(o *store.Org) { o.Slug, o.Name = tt.slug, "changed" }); !errors.Is(err, tt.want) {
			t.Errorf("UpdateOrg(slug %q) = %v, want %v", tt.slug, err, tt.want)
		}
		if o, err := s.OrgBySlug("bolt"); err != nil || o.ID != b.ID || o.Name != "Thunder" {
			t.Errorf("after the refused slug %q: OrgBySlug(bolt) = %+v, %v; want b unchanged", tt.slug, o, err)
		}
	}
}

// TestCreateOrgSlugConcurrent: creates racing for one name all get
// distinct slugs, and of those racing for one given slug exactly one wins.
func TestCreateOrgSlugConcurrent(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	const n = 16
	slugs := make([]string, n)
	wins := make([]bool, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			o, err := s.CreateOrg("Race", nil)
			if err != nil {
				t.Errorf("CreateOrg: %v", err)
			}
			slugs[i] = o.Slug
		})
		wg.Go(func() {
			_, err := s.CreateOrgSlug(fmt.Sprintf("Claim %d", i), "claimed", nil)
			switch {
			case err == nil:
				wins[i] = true
			case !errors.Is(err, store.ErrSlugTaken):
				t.Errorf("CreateOrgSlug(claimed): %v, want nil or ErrSlugTaken", err)
			}
		})
	}
	wg.Wait()
	want := []string{"race"}
	for i := 2; i <= n; i++ {
		want = append(want, fmt.Sprintf("race-%d", i))
	}
	slices.Sort(want)
	if got := slices.Sorted(slices.Values(slugs)); !slices.Equal(got, want) {
		t.Errorf("concurrent slugs %v, want %v", got, want)
	}
	if won := len(slices.DeleteFunc(wins, func(w bool) bool { return !w })); won != 1 {
		t.Errorf("%d creates got the slug claimed, want exactly 1", won)
	}
	orgs, _ := s.Orgs()
	if len(orgs) != n+1 {
		t.Errorf("%d organizations, want %d", len(orgs), n+1)
	}
}

// writeSchema3 writes a file as schema 3 wrote it: the organizations have
// no slug and there is no slug index. One organization is written as raw
// JSON, so a test can write one that does not decode.
func writeSchema3(t *testing.T, path string, orgs []store.Org, raw map[string]string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range []string{"meta", "orgs", "users", "users_by_email", "members", "user_orgs", "keys",
			"keys_by_hash", "records", "records_by_domain", "records_by_org", "records_due", "org_record_counts",
			"certmagic_data", "certmagic_locks", "acme_orders", "ca_holds", "released_domains"} {
			if _, err := tx.CreateBucket([]byte(name)); err != nil {
				return err
			}
		}
		if err := tx.Bucket([]byte("meta")).Put([]byte("schema_version"), binary.BigEndian.AppendUint64(nil, 3)); err != nil {
			return err
		}
		for _, o := range orgs {
			// Schema 3's organization: no slug field at all.
			data, _ := json.Marshal(map[string]any{"id": o.ID, "name": o.Name, "created_at": o.CreatedAt})
			if err := tx.Bucket([]byte("orgs")).Put([]byte(o.ID), data); err != nil {
				return err
			}
		}
		for id, data := range raw {
			if err := tx.Bucket([]byte("orgs")).Put([]byte(id), []byte(data)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestOpenMigratesVersion3: organizations written without a slug get the
// one made from their name at Open, the oldest first keeping the plain
// slug, and the slugs are in the file for every later Open.
func TestOpenMigratesVersion3(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	day := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	// Written in an order unlike their age, so the migration must sort.
	orgs := []store.Org{
		{ID: store.NewID(), Name: "Acme", CreatedAt: day.Add(3 * time.Hour)},
		{ID: store.NewID(), Name: "acme", CreatedAt: day.Add(1 * time.Hour)},
		{ID: store.NewID(), Name: "Default", CreatedAt: day},
		{ID: store.NewID(), Name: "Zürich AG", CreatedAt: day.Add(2 * time.Hour)},
		{ID: store.NewID(), Name: "北京", CreatedAt: day.Add(4 * time.Hour)},
	}
	want := map[string]string{orgs[0].ID: "acme-2", orgs[1].ID: "acme", orgs[2].ID: "default", orgs[3].ID: "zurich-ag", orgs[4].ID: "org"}
	writeSchema3(t, path, orgs, nil)

	s := openAt(t, path, store.Options{})
	if v, err := s.SchemaVersionOf(); err != nil || v != store.SchemaVersion {
		t.Errorf("SchemaVersionOf() = %d, %v; want %d", v, err, store.SchemaVersion)
	}
	check := func(s *store.Store, when string) {
		t.Helper()
		all, err := s.Orgs()
		if err != nil || len(all) != len(want) {
			t.Fatalf("%s: Orgs() = %d, %v; want %d", when, len(all), err, len(want))
		}
		for _, o := range all {
			if o.Slug != want[o.ID] {
				t.Errorf("%s: %q got slug %q, want %q", when, o.Name, o.Slug, want[o.ID])
			}
			if bySlug, err := s.OrgBySlug(want[o.ID]); err != nil || bySlug.ID != o.ID {
				t.Errorf("%s: OrgBySlug(%q) = %+v, %v; want %s", when, want[o.ID], bySlug, err, o.ID)
			}
		}
	}
	check(s, "after the migration")
	// The index is live: a new Acme gets the next suffix.
	o, err := s.CreateOrg("ACME", nil)
	if err != nil || o.Slug != "acme-3" {
		t.Errorf("CreateOrg(ACME) after the migration = %q, %v; want acme-3", o.Slug, err)
	}
	want[o.ID] = "acme-3"
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The migration was committed: the file itself holds the slugs and
	// schema 3, and a second Open finds them without migrating again.
	if got := rawSchemaVersion(t, path); got != store.SchemaVersion {
		t.Errorf("schema version in the file = %d, want %d", got, store.SchemaVersion)
	}
	check(openAt(t, path, store.Options{}), "after reopening")
}

// TestOpenMigratesVersion3Atomically: a migration that fails part way
// (here on an organization that does not decode, after others got their
// slugs) leaves the file exactly as schema 3 left it.
func TestOpenMigratesVersion3Atomically(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	good := store.Org{ID: store.NewID(), Name: "Acme", CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	// Keys sort before and after the good one, so whichever order the
	// bucket is read in, the bad one is met.
	writeSchema3(t, path, []store.Org{good}, map[string]string{"00000000-bad": "{not json", "ffffffff-bad": "{not json"})

	if s, err := store.Open(path, store.Options{Timeout: time.Second}); err == nil {
		s.Close()
		t.Fatal("Open of a file with an undecodable organization succeeded")
	} else if !strings.Contains(err.Error(), "schema 3 to 4") {
		t.Errorf("Open error %q does not name the migration", err)
	}
	if got := rawSchemaVersion(t, path); got != 3 {
		t.Errorf("after the failed migration the file has schema %d, want 3", got)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *bolt.Tx) error {
		if tx.Bucket([]byte("orgs_by_slug")) != nil {
			t.Error("the failed migration left an orgs_by_slug bucket")
		}
		if v := tx.Bucket([]byte("orgs")).Get([]byte(good.ID)); strings.Contains(string(v), "slug") {
			t.Errorf("the failed migration left a slug in %s", v)
		}
		return nil
	})
}

// TestMemberOrgs: a user's organizations in the order the memberships were
// made, whatever the organizations' ages; a removed membership drops out.
func TestMemberOrgs(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	a := mustOrg(t, s, "A", nil)
	b := mustOrg(t, s, "B", nil)
	c := mustOrg(t, s, "C", nil)
	u := mustUser(t, s, "u@example.com")
	other := mustUser(t, s, "other@example.com")
	for _, m := range []struct {
		org  store.Org
		user store.User
	}{{c, u}, {a, other}, {a, u}, {b, other}, {b, u}} {
		if _, err := s.SetMembership(m.org.ID, m.user.ID, store.LevelOwner); err != nil {
			t.Fatal(err)
		}
	}
	ids := func() []string {
		t.Helper()
		orgs, err := s.MemberOrgs(u.ID)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, o := range orgs {
			out = append(out, o.Slug)
		}
		return out
	}
	if got, want := ids(), []string{"c", "a", "b"}; !slices.Equal(got, want) {
		t.Errorf("MemberOrgs = %v, want %v (membership order)", got, want)
	}
	if _, err := s.RemoveMembership(a.ID, u.ID); err != nil {
		t.Fatal(err)
	}
	if got, want := ids(), []string{"c", "b"}; !slices.Equal(got, want) {
		t.Errorf("MemberOrgs after removing a = %v, want %v", got, want)
	}
	if orgs, err := s.MemberOrgs(999); err != nil || len(orgs) != 0 {
		t.Errorf("MemberOrgs(unknown user) = %v, %v; want none", orgs, err)
	}
}
