package lifecycle_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/store"
)

// txtRecord is how a waiting message gives the record's ownership TXT
// record to add: ready to paste into a zone file.
func txtRecord(rec apiRecord) string {
	return fmt.Sprintf("%s TXT %q", rec.Ownership.Name, rec.Ownership.Value)
}

// waitChecked waits until the engine has checked the waiting record at
// least n times, or moved it out of waiting, and returns it.
func waitChecked(t *testing.T, env *lifecycleEnv, id string, n int) store.Record {
	t.Helper()
	return env.WaitFor(t, id, fmt.Sprintf("checked %d times", n), func(r store.Record, err error) bool {
		return err == nil && (r.Checks >= n || r.Status != store.StatusWaiting)
	})
}

// TestLifecycleSquattingNeedsOwnership pins the squatting hole: every
// target resolves to the same edge addresses, so a tenant could register
// a domain it does not own whose A record already equals the edge's (no
// CNAME at all) and have it verified, served, and held against its real
// owner. Such a record now stays waiting, its message giving the exact
// ownership TXT record to add; no order is placed and nothing is served.
// Once the TXT record is there (only whoever controls the domain's DNS
// can publish it), the record goes valid and is served.
func TestLifecycleSquattingNeedsOwnership(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	const domain = "e.flat.victim.com"
	squatter := env.NewTenant(t, "Squatter")
	rec := env.CreateAs(t, squatter, domain)
	env.DNS.SetA(domain, "127.0.0.1") // the edge's address, as the target's; no CNAME

	r := waitChecked(t, env, rec.ID, 3)
	if r.Status != store.StatusWaiting {
		t.Fatalf("a domain with only the edge's addresses is %s (%q); want waiting", r.Status, msg(r))
	}
	for _, want := range []string{"do not prove", "_edgeproxy." + domain + " has no TXT record", txtRecord(rec)} {
		if !strings.Contains(msg(r), want) {
			t.Errorf("waiting message %q lacks %q", msg(r), want)
		}
	}
	env.MustNotServe(t, domain)
	if got := env.Pebble.Orders(); got != 0 {
		t.Errorf("%d certificate orders for an unproven domain, want 0", got)
	}

	env.PublishOwnership(rec)
	r = env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, domain)
	if r.OwnershipToken != rec.Ownership.Value {
		t.Errorf("stored token %q, want the one the API showed, %q", r.OwnershipToken, rec.Ownership.Value)
	}
	env.WaitLog(t, "from=waiting to=issuing", "from=issuing to=valid")
}

// TestLifecycleAnotherRecordsTokenNeverCounts: a TXT record holding
// another record's token (here another organization's, for another
// domain) never proves a domain; the same setup with the record's own
// token does.
func TestLifecycleAnotherRecordsTokenNeverCounts(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	owner := env.Create(t, "a.owner.example.com")
	env.DNS.SetA(owner.Domain, "127.0.0.1")
	env.PublishOwnership(owner)

	other := env.CreateAs(t, env.NewTenant(t, "Other"), "b.other.example.com")
	env.DNS.SetA(other.Domain, "127.0.0.1")
	env.DNS.SetTXT(other.Ownership.Name, owner.Ownership.Value) // the first record's token

	env.WaitStatus(t, owner.ID, store.StatusValid)
	r := waitChecked(t, env, other.ID, 3)
	if r.Status != store.StatusWaiting {
		t.Fatalf("a domain proven by another record's token is %s (%q); want waiting", r.Status, msg(r))
	}
	if want := "do not hold this record's token"; !strings.Contains(msg(r), want) || !strings.Contains(msg(r), txtRecord(other)) {
		t.Errorf("waiting message %q lacks %q or the record to add", msg(r), want)
	}
	env.MustNotServe(t, other.Domain)
}

// TestLifecycleApexWithAddressesAndTXT: a registrable domain cannot hold a
// CNAME. With the target's addresses alone it waits, its message asking
// for the address (or ALIAS) records and the ownership TXT record; with
// the TXT record too it goes valid with a certificate from the CA and is
// served.
func TestLifecycleApexWithAddressesAndTXT(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	const apex = "apex-shop.com"
	rec := env.Create(t, apex)
	// The first check may run before the test DNS has the target's
	// addresses; a later one names them.
	r := env.WaitFor(t, rec.ID, "waiting with a message naming the addresses", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), apex+" A 127.0.0.1")
	})
	for _, want := range []string{"zone apex, where a CNAME cannot be added", "ALIAS", txtRecord(rec)} {
		if !strings.Contains(msg(r), want) {
			t.Errorf("waiting message of an apex %q lacks %q", msg(r), want)
		}
	}

	env.DNS.SetA(apex, "127.0.0.1")
	r = env.WaitFor(t, rec.ID, "waiting for the TXT record", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "do not prove")
	})
	if r.Status != store.StatusWaiting || !strings.HasSuffix(msg(r), "Add this record: "+txtRecord(rec)) {
		t.Errorf("apex with addresses only: %s %q, want waiting for %s", r.Status, msg(r), txtRecord(rec))
	}

	env.PublishOwnership(rec)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, apex)
	if got := env.Pebble.Orders(); got != 1 {
		t.Errorf("%d certificate orders, want 1", got)
	}
}

// TestMonitorWarnsWhenOwnershipTXTGoes: a record made valid by its
// addresses and its ownership TXT record goes to warning when the TXT
// record is removed (the addresses alone no longer prove anything), says
// why and what to add, and keeps that warning through a monitor run whose
// resolver fails; it is valid again once the record is back.
func TestMonitorWarnsWhenOwnershipTXTGoes(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	const domain = "flat.monitor.example.com"
	rec := env.Create(t, domain)
	env.DNS.SetA(domain, "127.0.0.1")
	env.PublishOwnership(rec)
	env.WaitStatus(t, rec.ID, store.StatusValid)

	env.DNS.SetTXT(rec.Ownership.Name)
	env.Clock.Advance(2 * time.Hour) // past the one-hour monitor interval
	warned := env.WaitStatus(t, rec.ID, store.StatusWarning)
	for _, want := range []string{"ownership is no longer proven", txtRecord(rec)} {
		if !strings.Contains(msg(warned), want) {
			t.Errorf("warning %q lacks %q", msg(warned), want)
		}
	}
	if strings.Contains(msg(warned), "DNS no longer points here") {
		t.Errorf("warning %q blames the addresses, which still point here", msg(warned))
	}
	env.MustServe(t, domain) // a warning keeps serving

	env.DNS.SetRcode(rec.Ownership.Name, dns.RcodeServerFailure)
	env.Clock.Advance(2 * time.Hour)
	r := env.WaitFor(t, rec.ID, "monitored again", func(r store.Record, err error) bool {
		return err == nil && r.UpdatedAt.After(warned.UpdatedAt)
	})
	if r.Status != store.StatusWarning || msg(r) != msg(warned) {
		t.Errorf("after a monitor run that could not resolve the TXT record: %s %q, want the warning kept", r.Status, msg(r))
	}

	env.DNS.SetRcode(rec.Ownership.Name, dns.RcodeSuccess)
	env.PublishOwnership(rec)
	env.Clock.Advance(2 * time.Hour)
	env.WaitStatus(t, rec.ID, store.StatusValid)
}

// TestLifecycleOwnershipOfOldRecords: a record stored before ownership
// tokens existed (none in its JSON) shows a token derived from its id; a
// flattened domain publishing that token goes valid, and the engine's
// first write stores the token, unchanged, in the record.
func TestLifecycleOwnershipOfOldRecords(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	const domain = "old.flat.example.com"
	now := env.Clock.Now()
	stored, err := env.Store.CreateRecord(store.Record{
		OrgID: env.OrgID, Domain: domain, TargetCNAME: "0123456789abcdef0123." + lifecycleBase,
		Status: store.StatusWaiting, NextCheckAt: now, WaitingSince: now,
	}, 100)
	if err != nil {
		t.Fatal(err)
	}
	code, rec := env.Call(t, "GET", stored.ID+"/", "")
	if code != 200 || rec.Ownership.Value != stored.Token() {
		t.Fatalf("GET an old record: %d, ownership %+v; want the derived token %q", code, rec.Ownership, stored.Token())
	}
	env.DNS.SetA(stored.TargetCNAME, "127.0.0.1")
	env.DNS.SetA(domain, "127.0.0.1")
	env.PublishOwnership(rec)
	r := env.WaitStatus(t, stored.ID, store.StatusValid)
	if r.OwnershipToken != rec.Ownership.Value {
		t.Errorf("stored token after the engine's writes %q, want %q", r.OwnershipToken, rec.Ownership.Value)
	}
	env.MustServe(t, domain)
}
