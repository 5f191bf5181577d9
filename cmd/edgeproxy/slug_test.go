package main

import (
	"strconv"
	"strings"
	"testing"
)

// TestOrgSlugs drives slugs through the binary: `org create` makes one
// from the name or takes --slug, refusing a malformed or taken one with a
// line naming the flag and the rule and creating nothing; `org update
// --slug` moves it; the API takes it in paths; and a read-only member of
// one organization, naming another by its slug, gets exactly the answer
// its UUID gets: 404 Organization not found.
func TestOrgSlugs(t *testing.T) {
	s := startServer(t, t.TempDir())
	type org struct{ ID, Name, Slug string }
	var a, a2, b org
	s.admin(t, &a, "org", "create", "--name", "Acme, Inc.")
	s.admin(t, &a2, "org", "create", "--name", "ACME inc")
	s.admin(t, &b, "org", "create", "--name", "Bolt", "--slug", "bolt-eu")
	if a.Slug != "acme-inc" || a2.Slug != "acme-inc-2" || b.Slug != "bolt-eu" {
		t.Fatalf("slugs %q, %q, %q; want acme-inc, acme-inc-2, bolt-eu", a.Slug, a2.Slug, b.Slug)
	}

	var before []org
	s.admin(t, &before, "org", "list")
	for _, c := range []struct {
		name string
		args []string
		line string
	}{
		{"taken at create", []string{"org", "create", "--name", "Other", "--slug", "bolt-eu"}, `--slug: "bolt-eu" belongs to another organization`},
		{"upper case at create", []string{"org", "create", "--name", "Other", "--slug", "Bolt"}, "--slug: "},
		{"a UUID at create", []string{"org", "create", "--name", "Other", "--slug", a.ID}, "form of an organization id"},
		{"taken at update", []string{"org", "update", "--id", a.ID, "--slug", "acme-inc-2"}, `--slug: "acme-inc-2" belongs to another organization`},
		{"empty at update", []string{"org", "update", "--id", a.ID, "--slug", ""}, "--slug: must not be empty"},
		{"a dash at the end at update", []string{"org", "update", "--id", a.ID, "--slug", "acme-"}, "start and end with a letter or digit"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, line := s.adminRefused(t, c.args...)
			t.Logf("exit %d: %s", code, line)
			if code != 1 || !strings.Contains(line, c.line) || strings.Contains(line, "\n") {
				t.Errorf("exit %d, %q; want exit 1 and one line naming %q", code, line, c.line)
			}
		})
	}
	var after []org
	s.admin(t, &after, "org", "list")
	if len(after) != len(before) {
		t.Errorf("the refused commands left %d organizations, want %d", len(after), len(before))
	}
	for i := range after {
		if after[i] != before[i] {
			t.Errorf("a refused command changed %+v to %+v", before[i], after[i])
		}
	}

	// The owner of b names it by slug; after a slug change the old one
	// is gone and the new one works.
	var owner, reader struct{ ID int64 }
	s.admin(t, &owner, "user", "create", "--email", "owner@bolt.example.com")
	s.admin(t, &reader, "user", "create", "--email", "reader@acme.example.com")
	s.admin(t, nil, "member", "add", "--org", "bolt-eu", "--user", itoa(owner.ID), "--level", "owner")
	s.admin(t, nil, "member", "add", "--org", a.ID, "--user", itoa(reader.ID), "--level", "member")
	var ownerKey, readerKey struct{ Value string }
	s.admin(t, &ownerKey, "key", "create", "--user", itoa(owner.ID))
	s.admin(t, &readerKey, "key", "create", "--user", itoa(reader.ID), "--scopes", "organization:read")
	var got org
	if code := s.request(t, ownerKey.Value, "GET", "/api/organizations/bolt-eu/", "", &got); code != 200 || got.ID != b.ID {
		t.Fatalf("GET /api/organizations/bolt-eu/: %d %+v", code, got)
	}
	var rec struct{ ID string }
	if code := s.request(t, ownerKey.Value, "POST", "/api/organizations/bolt-eu/proxy_records/", `{"domain":"e.bolt.example.com"}`, &rec); code != 201 {
		t.Fatalf("create by slug: %d", code)
	}
	s.admin(t, &got, "org", "update", "--id", "bolt-eu", "--slug", "bolt")
	if got.Slug != "bolt" || got.ID != b.ID {
		t.Fatalf("org update --slug printed %+v", got)
	}
	if code := s.request(t, ownerKey.Value, "GET", "/api/organizations/bolt-eu/", "", nil); code != 404 {
		t.Errorf("the old slug after the change: %d, want 404", code)
	}

	// The reader of Acme names Bolt by its slug, its UUID and a slug
	// nobody has: the three answers are the same 404, on every route.
	type apiError struct{ Type, Code, Detail, Attr any }
	want := apiError{"invalid_request", "not_found", "Organization not found.", nil}
	refused := 0
	for _, ref := range []string{"bolt", b.ID, "nobody-has-this"} {
		base := "/api/organizations/" + ref + "/"
		for _, c := range []struct{ method, path, body string }{
			{"GET", base, ""},
			{"GET", base + "proxy_records/", ""},
			{"POST", base + "proxy_records/", `{"domain":"x.bolt.example.com"}`},
			{"GET", base + "proxy_records/" + rec.ID + "/", ""},
			{"POST", base + "proxy_records/" + rec.ID + "/diagnose/", ""},
			{"POST", base + "proxy_records/" + rec.ID + "/retry/", ""},
			{"DELETE", base + "proxy_records/" + rec.ID + "/", ""},
		} {
			var e apiError
			if code := s.request(t, readerKey.Value, c.method, c.path, c.body, &e); code != 404 || e != want {
				t.Errorf("the reader of Acme: %s %s: %d %+v, want 404 %+v", c.method, c.path, code, e, want)
			} else {
				refused++
			}
		}
	}
	t.Logf("%d calls naming another organization by slug, UUID or unknown slug refused alike with 404", refused)
	// Its own organization by slug works.
	if code := s.request(t, readerKey.Value, "GET", "/api/organizations/acme-inc/proxy_records/", "", nil); code != 200 {
		t.Errorf("the reader lists its own organization by slug: %d, want 200", code)
	}
}

func itoa(v int64) string { return strconv.FormatInt(v, 10) }
