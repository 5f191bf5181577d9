package certs

import (
	"crypto/tls"
	"log/slog"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

// newZoneManager makes a Manager on the edge's store and Pebble that can
// validate with DNS-01 through the target zone, and makes it the one the
// listeners use.
func (e *edge) newZoneManager(t *testing.T) *Manager {
	t.Helper()
	w := newTestWriter(t)
	m, err := New(e.st, Config{
		CA:       e.pebble.DirectoryURL(),
		CARoots:  e.pebble.ServerRoots(),
		HTTPPort: e.httpPort,
		TLSPort:  e.tlsPort,
		Logger:   slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn})),
		Zone:     &ZoneDNSProvider{Store: e.st, Zone: providerZone},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	e.manager.Store(m)
	return m
}

// leafSerial makes a handshake for name and returns the serial of the
// certificate served.
func (e *edge) leafSerial(t *testing.T, name string) string {
	t.Helper()
	conn, err := tls.Dial("tcp", e.tlsAddr, &tls.Config{ServerName: name, RootCAs: e.pebble.IssuerRoots(t)})
	if err != nil {
		t.Fatalf("handshake for %s: %v", name, err)
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
}

// TestObtainDNS01ThroughTheZone: a domain whose traffic does not reach the
// edge at all (its name does not even resolve) gets its certificate once
// its _acme-challenge CNAME delegates the validation to the record's name
// in our zone: Pebble follows the CNAME through the loopback resolver,
// which hands the zone to edgeproxy's own DNS server, and finds there the
// TXT value the manager wrote. The value is gone afterwards; the way the
// domain is validated survives a restart of the manager and is used for a
// renewal; a release forgets it.
func TestObtainDNS01ThroughTheZone(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	zoneAddr, label := zoneWithRecord(t, e.st)
	e.dns.Delegate(providerZone, zoneAddr)
	const domain = "e.shop.example.com"
	target := "_acme-challenge." + label + "." + providerZone
	e.dns.SetCNAME("_acme-challenge."+domain, target)
	m := e.newZoneManager(t)
	ctx := obtainCtx(t)

	// Without the delegation set, the manager validates over HTTP-01,
	// which cannot work for a name that does not resolve.
	if _, err := m.Obtain(ctx, domain); err == nil {
		t.Fatal("Obtain without a DCV delegation succeeded for a domain that does not resolve")
	}

	for _, bad := range []string{"_acme-challenge." + label + ".example.org", providerZone} {
		if err := m.SetDCVDelegation(ctx, domain, bad); err == nil || !strings.Contains(err.Error(), "not a name under the zone") {
			t.Errorf("SetDCVDelegation(%q) = %v, want an error naming the zone rule", bad, err)
		}
	}
	if err := m.SetDCVDelegation(ctx, domain, target+"."); err != nil {
		t.Fatal(err)
	}
	if got, ok := m.DCVDelegation(domain); !ok || got != target {
		t.Errorf("DCVDelegation = %q, %v; want %q", got, ok, target)
	}
	if _, err := m.Obtain(ctx, domain); err != nil {
		t.Fatalf("Obtain with the delegation: %v", err)
	}
	m.Serve(domain, true)
	e.mustServe(domain)
	if got := txtAt(t, zoneAddr, target); len(got) != 0 {
		t.Errorf("the challenge TXT is still answered after the order: %q", got)
	}

	// A restart: the delegation comes back from storage with the
	// certificate, and a renewal goes through the zone again.
	m2 := e.newZoneManager(t)
	if _, ok := m2.DCVDelegation(domain); ok {
		t.Fatal("a new manager knows the delegation before loading anything")
	}
	if _, err := m2.Load(ctx, domain); err != nil {
		t.Fatal(err)
	}
	if got, ok := m2.DCVDelegation(domain); !ok || got != target {
		t.Fatalf("after Load, DCVDelegation = %q, %v; want %q", got, ok, target)
	}
	if m2.configFor(domain) != m2.dnsMagic {
		t.Fatal("certmagic's maintenance would renew the domain without DNS-01")
	}
	m2.Serve(domain, true)
	before := e.leafSerial(t, domain)
	orders := e.pebble.Orders()
	if err := m2.configFor(domain).RenewCertSync(ctx, domain, true); err != nil {
		t.Fatalf("renewal through the zone: %v", err)
	}
	if _, err := m2.Obtain(ctx, domain); err != nil { // caches the renewed certificate
		t.Fatal(err)
	}
	if got := e.pebble.Orders(); got != orders+1 {
		t.Errorf("the renewal made %d orders, want 1", got-orders)
	}
	if after := e.leafSerial(t, domain); after == before {
		t.Error("the edge still serves the certificate from before the renewal")
	}

	// Released (its record deleted): the delegation belonged to the record.
	if err := m2.Release(ctx, domain); err != nil {
		t.Fatal(err)
	}
	m3 := e.newZoneManager(t)
	if _, err := m3.Load(ctx, domain); err != nil {
		t.Fatal(err)
	}
	if got, ok := m3.DCVDelegation(domain); ok {
		t.Errorf("after Release the delegation %q is still stored", got)
	}
}

// TestDCVDelegationNeedsTheZone: a manager without a zone refuses a
// delegation, naming why, and a delegation stored while the zone was
// served is not used by one (it could not answer DNS-01).
func TestDCVDelegationNeedsTheZone(t *testing.T) {
	t.Parallel()
	st := openStore(t, store.Options{})
	ctx := obtainCtx(t)
	with, err := New(st, Config{CA: "https://ca.invalid/dir", Zone: &ZoneDNSProvider{Store: st, Zone: providerZone}})
	if err != nil {
		t.Fatal(err)
	}
	defer with.Close()
	const domain = "e.example.com"
	if err := with.SetDCVDelegation(ctx, domain, "_acme-challenge.0123456789abcdef0123."+providerZone); err != nil {
		t.Fatal(err)
	}
	without, err := New(st, Config{CA: "https://ca.invalid/dir"})
	if err != nil {
		t.Fatal(err)
	}
	defer without.Close()
	if err := without.SetDCVDelegation(ctx, domain, "_acme-challenge.0123456789abcdef0123."+providerZone); err == nil ||
		!strings.Contains(err.Error(), "not configured") {
		t.Errorf("SetDCVDelegation without a zone = %v, want an error saying DNS-01 is not configured", err)
	}
	without.Load(ctx, domain) // no certificate: an error, but the delegation is read
	if _, ok := without.DCVDelegation(domain); ok {
		t.Error("a manager without a zone took up a stored delegation")
	}
	if err := without.SetDCVDelegation(ctx, domain, ""); err != nil {
		t.Errorf("clearing the delegation: %v", err)
	}
	if _, err := New(st, Config{CA: "https://ca.invalid/dir", Zone: &ZoneDNSProvider{Store: st}}); err == nil {
		t.Error("New accepted a zone provider without a zone")
	}
}
