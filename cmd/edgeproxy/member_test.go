package main

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// adminRefused runs an admin command that must fail, and returns its exit
// code and the one line it printed.
func (s *server) adminRefused(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(testbin.Build(t, true), append(args, "--data-dir", s.dataDir)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var exit *exec.ExitError
	if !errors.As(err, &exit) {
		t.Fatalf("edgeproxy %s: %v, want it refused; printed %q", strings.Join(args, " "), err, stdout.String())
	}
	return exit.ExitCode(), strings.TrimSpace(stderr.String())
}

// TestMemberRemove plays a user who was removed from an organization and
// keeps using its API keys: from the moment `edgeproxy member remove`
// answers, every call to that organization, with a key scoped to it or
// not, gets the contract's 404 "Organization not found.", while the
// organization's remaining members and the user's other organizations
// are unaffected. Removing a membership that does not exist, and the last
// owner of an organization, are refused with a line that says why.
func TestMemberRemove(t *testing.T) {
	s := startServer(t, t.TempDir())
	var org struct{ ID string }
	s.admin(t, &org, "org", "create", "--name", "Acme")
	var owner, leaver struct{ ID int64 }
	s.admin(t, &owner, "user", "create", "--email", "owner@acme.example.com")
	s.admin(t, &leaver, "user", "create", "--email", "leaver@acme.example.com")
	ownerID, leaverID := fmt.Sprint(owner.ID), fmt.Sprint(leaver.ID)
	s.admin(t, nil, "member", "add", "--org", org.ID, "--user", ownerID, "--level", "owner")
	s.admin(t, nil, "member", "add", "--org", org.ID, "--user", leaverID, "--level", "admin")
	// The leaver is also a member of the bootstrap organization.
	var orgs []struct{ ID, Name string }
	s.admin(t, &orgs, "org", "list")
	defaultOrg := orgs[0].ID
	s.admin(t, nil, "member", "add", "--org", defaultOrg, "--user", leaverID, "--level", "member")
	var key, scoped, ownerKey struct{ Value string }
	s.admin(t, &key, "key", "create", "--user", leaverID)
	s.admin(t, &scoped, "key", "create", "--user", leaverID, "--orgs", org.ID)
	s.admin(t, &ownerKey, "key", "create", "--user", ownerID)

	acme := "/api/organizations/" + org.ID + "/"
	records := acme + "proxy_records/"
	var rec struct{ ID string }
	if code := s.request(t, key.Value, "POST", records, `{"domain":"e.acme.example.com"}`, &rec); code != 201 {
		t.Fatalf("the leaver creates a record before removal: %d", code)
	}
	if code := s.request(t, scoped.Value, "GET", records, "", nil); code != 200 {
		t.Fatalf("the scoped key lists before removal: %d", code)
	}

	var removed struct {
		OrgID   string `json:"org_id"`
		UserID  int64  `json:"user_id"`
		Level   string `json:"level"`
		Removed bool   `json:"removed"`
	}
	s.admin(t, &removed, "member", "remove", "--org", org.ID, "--user", leaverID)
	if removed.OrgID != org.ID || removed.UserID != leaver.ID || removed.Level != "admin" || !removed.Removed {
		t.Errorf("member remove printed %+v", removed)
	}

	// At once, with no wait: every route of the organization, with both keys.
	type apiError struct{ Type, Code, Detail, Attr any }
	want := apiError{"invalid_request", "not_found", "Organization not found.", nil}
	refused := 0
	for _, k := range []struct{ name, value string }{{"unscoped key", key.Value}, {"key scoped to the organization", scoped.Value}} {
		for _, c := range []struct{ method, path, body string }{
			{"GET", acme, ""},
			{"GET", records, ""},
			{"POST", records, `{"domain":"e2.acme.example.com"}`},
			{"GET", records + rec.ID + "/", ""},
			{"POST", records + rec.ID + "/retry/", ""},
			{"POST", records + rec.ID + "/diagnose/", ""},
			{"DELETE", records + rec.ID + "/", ""},
		} {
			var got apiError
			code := s.request(t, k.value, c.method, c.path, c.body, &got)
			if code != 404 || got != want {
				t.Errorf("%s: %s %s after removal: %d %+v, want 404 %+v", k.name, c.method, c.path, code, got, want)
			} else {
				refused++
			}
		}
	}
	t.Logf("%d calls of a removed member refused with 404", refused)
	// @current now means the leaver's remaining organization, whose list
	// does not hold Acme's record.
	var list struct{ Results []struct{ ID string } }
	if code := s.request(t, key.Value, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
		t.Errorf("@current after removal: %d, want 200 for the bootstrap organization", code)
	}
	for _, r := range list.Results {
		if r.ID == rec.ID {
			t.Errorf("@current after removal lists Acme's record %s", rec.ID)
		}
	}
	var got struct{ Detail string }
	if code := s.request(t, scoped.Value, "GET", "/api/organizations/@current/proxy_records/", "", &got); code != 404 || got.Detail != "Organization not found." {
		t.Errorf("the scoped key's @current after removal: %d %q, want 404 Organization not found.", code, got.Detail)
	}
	// The owner still reaches the organization and the record is intact.
	var one struct{ ID string }
	if code := s.request(t, ownerKey.Value, "GET", records+rec.ID+"/", "", &one); code != 200 || one.ID != rec.ID {
		t.Errorf("the remaining owner reads the record: %d %+v", code, one)
	}

	for _, c := range []struct {
		name   string
		args   []string
		status int
		line   string
	}{
		{"removed twice", []string{"--org", org.ID, "--user", leaverID}, 1, "user " + leaverID + " is not a member of organization " + org.ID},
		{"never a member", []string{"--org", defaultOrg, "--user", ownerID}, 1, "is not a member"},
		{"unknown organization", []string{"--org", "6f1c1e4e-0000-4000-8000-000000000000", "--user", leaverID}, 1, "organization 6f1c1e4e-0000-4000-8000-000000000000"},
		{"unknown user", []string{"--org", org.ID, "--user", "999"}, 1, "user 999"},
		{"last owner", []string{"--org", org.ID, "--user", ownerID}, 1, "only owner of organization " + org.ID},
		{"no --user", []string{"--org", org.ID}, 2, "--user is required"},
		{"no --org", []string{"--user", ownerID}, 2, "--org is required"},
	} {
		t.Run(c.name, func(t *testing.T) {
			code, line := s.adminRefused(t, append([]string{"member", "remove"}, c.args...)...)
			t.Logf("exit %d: %s", code, line)
			if code != c.status || !strings.Contains(line, c.line) || strings.Contains(line, "\n") {
				t.Errorf("exit %d, %q; want exit %d and one line naming %q", code, line, c.status, c.line)
			}
		})
	}
	// The refused removal of the last owner changed nothing.
	if code := s.request(t, ownerKey.Value, "GET", records, "", nil); code != 200 {
		t.Errorf("the owner after the refused removal: %d, want 200", code)
	}
}
