package store_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

func TestOrgs(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	a := mustOrg(t, s, "a", nil)
	b := mustOrg(t, s, "b", intp(5))
	c := mustOrg(t, s, "c", nil)
	if !store.IsID(a.ID) || a.CreatedAt.IsZero() {
		t.Errorf("CreateOrg = %+v, want a UUID and a creation time", a)
	}
	if got, err := s.Org(b.ID); err != nil || !reflect.DeepEqual(got, b) {
		t.Errorf("Org(b) = %+v, %v; want %+v", got, err, b)
	}
	if _, err := s.Org(store.NewID()); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Org(unknown) = %v, want ErrNotFound", err)
	}
	orgs, err := s.Orgs()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := orgs, []store.Org{a, b, c}; !reflect.DeepEqual(got, want) {
		t.Errorf("Orgs() = %+v, want oldest first %+v", got, want)
	}

	got, err := s.UpdateOrg(b.ID, func(o *store.Org) {
		o.ID = store.NewID()
		o.Name = "b2"
		o.MaxProxyRecords = nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := b
	want.Name, want.MaxProxyRecords = "b2", nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("UpdateOrg = %+v, want %+v (the id cannot change)", got, want)
	}
	if stored, err := s.Org(b.ID); err != nil || !reflect.DeepEqual(stored, want) {
		t.Errorf("Org(b) after UpdateOrg = %+v, %v; want %+v", stored, err, want)
	}
	if _, err := s.UpdateOrg(store.NewID(), func(*store.Org) {}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateOrg(unknown) = %v, want ErrNotFound", err)
	}
}

func TestUsers(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	ada := mustUser(t, s, "ada@example.com")
	bob := mustUser(t, s, "bob@example.com")
	if ada.ID == 0 || bob.ID <= ada.ID {
		t.Errorf("user ids %d, %d; want positive and increasing", ada.ID, bob.ID)
	}
	if _, err := s.CreateUser("ada@example.com"); !errors.Is(err, store.ErrEmailTaken) {
		t.Errorf("CreateUser of a taken email: %v, want ErrEmailTaken", err)
	}
	if got, err := s.User(bob.ID); err != nil || !reflect.DeepEqual(got, bob) {
		t.Errorf("User(bob) = %+v, %v; want %+v", got, err, bob)
	}
	if _, err := s.User(999); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("User(999) = %v, want ErrNotFound", err)
	}
	users, err := s.Users()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := users, []store.User{ada, bob}; !reflect.DeepEqual(got, want) {
		t.Errorf("Users() = %+v, want %+v", got, want)
	}
}

func TestMemberships(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	o1, o2, o3 := mustOrg(t, s, "o1", nil), mustOrg(t, s, "o2", nil), mustOrg(t, s, "o3", nil)
	ada, bob := mustUser(t, s, "ada@example.com"), mustUser(t, s, "bob@example.com")

	// Made in the order o2, o1, o3, interleaved with bob's, which must
	// not show up in ada's list.
	set := func(org store.Org, u store.User, l store.Level) store.Membership {
		t.Helper()
		m, err := s.SetMembership(org.ID, u.ID, l)
		if err != nil {
			t.Fatalf("SetMembership(%s, %s, %v): %v", org.Name, u.Email, l, err)
		}
		return m
	}
	m2 := set(o2, ada, store.LevelMember)
	set(o1, bob, store.LevelOwner)
	m1 := set(o1, ada, store.LevelAdmin)
	m3 := set(o3, ada, store.LevelOwner)

	orgsOf := func(u store.User) []string {
		t.Helper()
		ms, err := s.UserMemberships(u.ID)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range ms {
			if m.UserID != u.ID {
				t.Errorf("UserMemberships(%s) lists a membership of user %d", u.Email, m.UserID)
			}
			ids = append(ids, m.OrgID)
		}
		return ids
	}
	if got, want := orgsOf(ada), []string{o2.ID, o1.ID, o3.ID}; !reflect.DeepEqual(got, want) {
		t.Errorf("UserMemberships(ada) = %v, want creation order %v", got, want)
	}
	if got, want := orgsOf(bob), []string{o1.ID}; !reflect.DeepEqual(got, want) {
		t.Errorf("UserMemberships(bob) = %v, want %v", got, want)
	}

	// Setting an existing membership again changes its level and keeps
	// its place and its creation time.
	again := set(o2, ada, store.LevelOwner)
	want := m2
	want.Level = store.LevelOwner
	if !reflect.DeepEqual(again, want) {
		t.Errorf("SetMembership again = %+v, want %+v", again, want)
	}
	if got, err := s.Membership(o2.ID, ada.ID); err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Membership(o2, ada) = %+v, %v; want %+v", got, err, want)
	}
	if got, want := orgsOf(ada), []string{o2.ID, o1.ID, o3.ID}; !reflect.DeepEqual(got, want) {
		t.Errorf("UserMemberships(ada) after a level change = %v, want the same order %v", got, want)
	}
	ms, err := s.UserMemberships(ada.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ms, []store.Membership{want, m1, m3}; !reflect.DeepEqual(got, want) {
		t.Errorf("UserMemberships(ada) = %+v, want %+v", got, want)
	}

	if ms, err := s.UserMemberships(999); err != nil || len(ms) != 0 {
		t.Errorf("UserMemberships(unknown user) = %v, %v; want none", ms, err)
	}
}

func TestMembershipNotFound(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	user := mustUser(t, s, "ada@example.com")
	for _, tt := range []struct {
		name   string
		orgID  string
		userID int64
	}{
		{"unknown org", store.NewID(), user.ID},
		{"unknown user", org.ID, user.ID + 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.SetMembership(tt.orgID, tt.userID, store.LevelMember); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("SetMembership: %v, want ErrNotFound", err)
			}
			if _, err := s.Membership(tt.orgID, tt.userID); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Membership: %v, want ErrNotFound", err)
			}
		})
	}
	if _, err := s.Membership(org.ID, user.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Membership before SetMembership: %v, want ErrNotFound", err)
	}
}

// TestRemoveMembership ends memberships: the membership and its place in
// the user's list go, and nothing else; a missing one and the last owner
// are refused, changing nothing.
func TestRemoveMembership(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	o1, o2 := mustOrg(t, s, "o1", nil), mustOrg(t, s, "o2", nil)
	ada, bob, cy := mustUser(t, s, "ada@example.com"), mustUser(t, s, "bob@example.com"), mustUser(t, s, "cy@example.com")
	set := func(org store.Org, u store.User, l store.Level) store.Membership {
		t.Helper()
		m, err := s.SetMembership(org.ID, u.ID, l)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	set(o1, ada, store.LevelOwner)
	m1 := set(o1, bob, store.LevelAdmin)
	m2 := set(o2, bob, store.LevelOwner)
	set(o2, ada, store.LevelMember)

	got, err := s.RemoveMembership(o1.ID, bob.ID)
	if err != nil || !reflect.DeepEqual(got, m1) {
		t.Fatalf("RemoveMembership(o1, bob) = %+v, %v; want %+v", got, err, m1)
	}
	if _, err := s.Membership(o1.ID, bob.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Membership(o1, bob) after removal: %v, want ErrNotFound", err)
	}
	if ms, err := s.UserMemberships(bob.ID); err != nil || !reflect.DeepEqual(ms, []store.Membership{m2}) {
		t.Errorf("UserMemberships(bob) = %+v, %v; want only %+v", ms, err, m2)
	}
	if ms, err := s.UserMemberships(ada.ID); err != nil || len(ms) != 2 {
		t.Errorf("UserMemberships(ada) = %+v, %v; want her two memberships untouched", ms, err)
	}
	// Added again, the membership comes last in the user's order.
	again := set(o1, bob, store.LevelMember)
	if ms, _ := s.UserMemberships(bob.ID); len(ms) != 2 || ms[0].OrgID != o2.ID || ms[1] != again {
		t.Errorf("UserMemberships(bob) after adding o1 again = %+v, want o2 then o1", ms)
	}
	if _, err := s.RemoveMembership(o1.ID, bob.ID); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name   string
		orgID  string
		userID int64
		want   error
		detail string
	}{
		{"not a member", o1.ID, cy.ID, store.ErrNotFound, "is not a member"},
		{"removed twice", o1.ID, bob.ID, store.ErrNotFound, "is not a member"},
		{"unknown organization", store.NewID(), bob.ID, store.ErrNotFound, "organization"},
		{"empty organization id", "", bob.ID, store.ErrNotFound, "organization"},
		{"unknown user", o1.ID, 999, store.ErrNotFound, "user 999"},
		{"last owner", o1.ID, ada.ID, store.ErrLastOwner, "only owner"},
		{"last owner of the other", o2.ID, bob.ID, store.ErrLastOwner, "only owner"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.RemoveMembership(tt.orgID, tt.userID); !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.detail) {
				t.Errorf("RemoveMembership: %v, want %v naming %q", err, tt.want, tt.detail)
			}
		})
	}
	if _, err := s.Membership(o1.ID, ada.ID); err != nil {
		t.Errorf("the refused last owner lost the membership: %v", err)
	}

	// With a second owner, the first may go; then the second is the last.
	set(o1, cy, store.LevelOwner)
	if _, err := s.RemoveMembership(o1.ID, ada.ID); err != nil {
		t.Errorf("removing one of two owners: %v", err)
	}
	if _, err := s.RemoveMembership(o1.ID, cy.ID); !errors.Is(err, store.ErrLastOwner) {
		t.Errorf("removing the remaining owner: %v, want ErrLastOwner", err)
	}
}

func TestBootstrapIfEmpty(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	boot := store.Bootstrap{
		OrgName: "Default",
		Email:   "admin@example.com",
		Key:     store.APIKey{Label: "bootstrap", Hash: "sha256$boot", Mask: "phx_...boot", Scopes: []string{"*"}},
	}
	created, key, err := s.BootstrapIfEmpty(boot)
	if err != nil {
		t.Fatal(err)
	}
	if !created {
		t.Fatal("BootstrapIfEmpty on an empty store created nothing")
	}
	if !store.IsID(key.ID) || key.UserID == 0 || key.CreatedAt.IsZero() || key.Hash != "sha256$boot" {
		t.Errorf("bootstrap key = %+v, want ID, UserID and CreatedAt filled in and the hash kept", key)
	}
	if got, err := s.KeyByHash("sha256$boot"); err != nil || !reflect.DeepEqual(got, key) {
		t.Errorf("KeyByHash(bootstrap) = %+v, %v; want %+v", got, err, key)
	}
	user, err := s.User(key.UserID)
	if err != nil || user.Email != boot.Email {
		t.Errorf("bootstrap user = %+v, %v; want email %s", user, err, boot.Email)
	}
	ms, err := s.UserMemberships(key.UserID)
	if err != nil || len(ms) != 1 || ms[0].Level != store.LevelOwner {
		t.Fatalf("bootstrap user's memberships = %+v, %v; want one as owner", ms, err)
	}
	if org, err := s.Org(ms[0].OrgID); err != nil || org.Name != boot.OrgName {
		t.Errorf("bootstrap org = %+v, %v; want name %s", org, err, boot.OrgName)
	}

	// A second call, even with other values, creates nothing.
	created, key2, err := s.BootstrapIfEmpty(store.Bootstrap{OrgName: "Other", Email: "other@example.com",
		Key: store.APIKey{Hash: "sha256$other", Scopes: []string{"*"}}})
	if err != nil || created {
		t.Errorf("second BootstrapIfEmpty = %t, %v; want false, nil", created, err)
	}
	if key2.ID != "" {
		t.Errorf("second BootstrapIfEmpty returned key %+v, want none", key2)
	}
	counts(t, s, 1, 1, 1)
}

// TestBootstrapIfEmptyWithAnOrg: any organization, however made, means the
// store is not empty.
func TestBootstrapIfEmptyWithAnOrg(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustOrg(t, s, "made by hand", nil)
	created, _, err := s.BootstrapIfEmpty(store.Bootstrap{OrgName: "Default", Email: "admin@example.com",
		Key: store.APIKey{Hash: "sha256$boot"}})
	if err != nil || created {
		t.Errorf("BootstrapIfEmpty = %t, %v; want false, nil", created, err)
	}
	counts(t, s, 1, 0, 0)
}

// counts checks how many organizations, users and keys the store holds.
func counts(t *testing.T, s *store.Store, orgs, users, keys int) {
	t.Helper()
	o, err := s.Orgs()
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.Users()
	if err != nil {
		t.Fatal(err)
	}
	k, err := s.Keys(0)
	if err != nil {
		t.Fatal(err)
	}
	if len(o) != orgs || len(u) != users || len(k) != keys {
		t.Errorf("store holds %d orgs, %d users, %d keys; want %d, %d, %d", len(o), len(u), len(k), orgs, users, keys)
	}
}

func TestLevels(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in      string
		want    store.Level
		wantErr bool
	}{
		{"member", store.LevelMember, false},
		{"admin", store.LevelAdmin, false},
		{"owner", store.LevelOwner, false},
		{"Owner", 0, true},
		{"", 0, true},
		{"15", 0, true},
	} {
		got, err := store.ParseLevel(tt.in)
		if got != tt.want || (err != nil) != tt.wantErr {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v, error %t", tt.in, got, err, tt.want, tt.wantErr)
		}
		if err == nil {
			if got, want := got.String(), tt.in; got != want {
				t.Errorf("ParseLevel(%q).String() = %q", tt.in, got)
			}
		}
	}
	if got, want := store.Level(3).String(), "level(3)"; got != want {
		t.Errorf("Level(3).String() = %q, want %q", got, want)
	}
	if !(store.LevelMember < store.LevelAdmin && store.LevelAdmin < store.LevelOwner) {
		t.Error("levels do not compare member < admin < owner")
	}
}
