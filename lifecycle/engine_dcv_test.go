package lifecycle_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/lifecycle/lifecycletest"
	"github.com/edgeproxy/edgeproxy/store"
)

// delegate adds the record's DCV delegation CNAME, as its customer would.
func delegate(env *lifecycleEnv, rec apiRecord) {
	env.DNS.SetCNAME(rec.DCVDelegation.Name, rec.DCVDelegation.Value)
}

// TestLifecycleCertificateBeforeTraffic is the migration without downtime:
// with the target zone served, a record whose traffic still goes elsewhere
// (here its name does not even exist yet, so HTTP-01 and TLS-ALPN-01 are
// impossible) goes valid on its DCV delegation alone, the certificate
// validated with DNS-01 through our zone; it is served at once, and its
// message says that traffic is not pointed yet and gives the CNAME to add.
// Once the customer adds that CNAME, the message clears at the next check,
// the record stays valid and served, and no new order is placed.
func TestLifecycleCertificateBeforeTraffic(t *testing.T) {
	env := lifecycletest.NewZone(t, nil)
	const domain = "e.shop.example.com"
	rec := env.Create(t, domain)
	addCNAME := fmt.Sprintf("Add this record: %s CNAME %s", domain, rec.TargetCNAME)

	r := waitChecked(t, env, rec.ID, 2)
	if r.Status != store.StatusWaiting || !strings.Contains(msg(r), addCNAME) {
		t.Fatalf("without any record: %s %q, want waiting asking for the CNAME", r.Status, msg(r))
	}

	delegate(env, rec)
	r = env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, domain)
	if m := msg(r); !strings.Contains(m, "traffic does not come here yet") || !strings.Contains(m, addCNAME) {
		t.Errorf("valid before traffic, message %q: want it to say traffic is not pointed and give %q", m, addCNAME)
	}
	if target, ok := env.Certs.DCVDelegation(domain); !ok || target != rec.DCVDelegation.Value {
		t.Errorf("the certificate manager validates %s with delegation %q, %v; want DNS-01 at %s", domain, target, ok, rec.DCVDelegation.Value)
	}
	orders := env.Pebble.Orders()
	if orders != 1 {
		t.Errorf("%d orders, want 1", orders)
	}
	env.WaitLog(t, "from=waiting to=issuing", "from=issuing to=valid")

	// The monitor looks again soon, and the message stays while the
	// traffic is elsewhere.
	r = env.WaitFor(t, rec.ID, "re-checked while valid", func(r store.Record, err error) bool { return err == nil && r.Checks >= 2 })
	if r.Status != store.StatusValid || !strings.Contains(msg(r), addCNAME) {
		t.Errorf("re-checked before traffic: %s %q, want valid with the message", r.Status, msg(r))
	}

	env.DNS.SetCNAME(domain, rec.TargetCNAME)
	r = env.WaitFor(t, rec.ID, "valid with no message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusValid && r.Message == nil
	})
	env.MustServe(t, domain)
	if got := env.Pebble.Orders(); got != orders {
		t.Errorf("%d orders once traffic arrived, want none", got-orders)
	}
	if strings.Contains(env.Logs.String(), "to=warning") {
		t.Error("the record went through warning on its way")
	}
}

// TestLifecycleDelegationMonitor: the monitor accepts either proof. A
// valid record proven by its delegation stays valid when its delegation
// goes but traffic now points here by CNAME; it goes to warning, as
// without the zone, once it has neither, and back to valid when the
// delegation returns.
func TestLifecycleDelegationMonitor(t *testing.T) {
	env := lifecycletest.NewZone(t, nil)
	const domain = "m.shop.example.com"
	rec := env.Create(t, domain)
	delegate(env, rec)
	env.WaitStatus(t, rec.ID, store.StatusValid)

	env.DNS.SetCNAME(domain, rec.TargetCNAME)
	env.DNS.Remove(rec.DCVDelegation.Name)
	env.WaitFor(t, rec.ID, "valid by its CNAME, with no message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusValid && r.Message == nil
	})
	env.WaitFor(t, rec.ID, "validated over HTTP again", func(store.Record, error) bool {
		_, ok := env.Certs.DCVDelegation(domain)
		return !ok
	})

	env.DNS.Remove(domain)
	env.Clock.Advance(env.EngineConfig.MonitorInterval)
	r := env.WaitStatus(t, rec.ID, store.StatusWarning)
	if m := msg(r); !strings.HasPrefix(m, "DNS no longer points here: ") {
		t.Errorf("warning message %q", m)
	}
	env.MustServe(t, domain) // a warning is still served

	delegate(env, rec)
	env.Clock.Advance(env.EngineConfig.MonitorInterval)
	r = env.WaitStatus(t, rec.ID, store.StatusValid)
	if m := msg(r); !strings.Contains(m, "traffic does not come here yet") {
		t.Errorf("valid again by the delegation, message %q", m)
	}
}

// TestLifecycleCloudflareProxiedDelegation: a domain behind Cloudflare's
// proxy (orange cloud) hides where its traffic goes. With the zone served
// its waiting message names the way to keep the proxy (the delegation and
// the ownership TXT record), then the one record still missing; with both
// it goes valid, validated through our zone, and is served.
func TestLifecycleCloudflareProxiedDelegation(t *testing.T) {
	env := lifecycletest.NewZone(t, nil)
	const domain = "cf.shop.example.com"
	rec := env.Create(t, domain)
	env.DNS.SetA(domain, "104.16.1.1")
	cname := fmt.Sprintf("%s CNAME %s", rec.DCVDelegation.Name, rec.DCVDelegation.Value)

	r := env.WaitFor(t, rec.ID, "a message about Cloudflare", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "Cloudflare")
	})
	for _, want := range []string{"DNS only", "keep Cloudflare's proxy", cname, txtRecord(rec)} {
		if !strings.Contains(msg(r), want) {
			t.Errorf("waiting message %q lacks %q", msg(r), want)
		}
	}

	delegate(env, rec)
	r = env.WaitFor(t, rec.ID, "a message about the missing TXT record", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "is in place")
	})
	if r.Status != store.StatusWaiting || !strings.Contains(msg(r), txtRecord(rec)) {
		t.Errorf("delegated, no TXT: %s %q; want waiting asking for %s", r.Status, msg(r), txtRecord(rec))
	}
	if got := env.Pebble.Orders(); got != 0 {
		t.Errorf("%d orders before the ownership TXT record, want 0", got)
	}

	env.PublishOwnership(rec)
	r = env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, domain)
	if r.Message != nil {
		t.Errorf("valid behind the proxy, message %q; want none", msg(r))
	}
}

// TestLifecycleDelegationIgnoredWithoutZone: without the zone served
// (no --dns-addr), a delegation changes nothing: the record waits for its
// traffic as before, and no order is placed.
func TestLifecycleDelegationIgnoredWithoutZone(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "n.shop.example.com")
	delegate(env, rec)
	r := waitChecked(t, env, rec.ID, 3)
	if r.Status != store.StatusWaiting || strings.Contains(msg(r), "delegation") {
		t.Errorf("delegated without the zone: %s %q, want waiting with the plain message", r.Status, msg(r))
	}
	if got := env.Pebble.Orders(); got != 0 {
		t.Errorf("%d orders, want 0", got)
	}
}

// TestLifecycleApexBeforeTraffic: a zone apex proven by its delegation is
// valid before its traffic moves; its message names what an apex needs
// for the traffic (the target's addresses, or an ALIAS, and the ownership
// TXT record), and clears once they are there.
func TestLifecycleApexBeforeTraffic(t *testing.T) {
	env := lifecycletest.NewZone(t, nil)
	const domain = "apex-shop.com"
	rec := env.Create(t, domain)
	delegate(env, rec)
	r := env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, domain)
	for _, want := range []string{"traffic does not come here yet", "zone apex", domain + " A 127.0.0.1", txtRecord(rec)} {
		if !strings.Contains(msg(r), want) {
			t.Errorf("valid apex before traffic, message %q lacks %q", msg(r), want)
		}
	}

	env.DNS.SetA(domain, "127.0.0.1")
	env.PublishOwnership(rec)
	env.WaitFor(t, rec.ID, "valid with no message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusValid && r.Message == nil
	})
	env.MustServe(t, domain)
}
