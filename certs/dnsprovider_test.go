package certs

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/dnszone"
	"github.com/edgeproxy/edgeproxy/store"
)

const providerZone = "proxy.example.net"

// zoneWithRecord serves the target zone over st on loopback, with one
// record whose target CNAME's label is returned, and returns its address.
func zoneWithRecord(t *testing.T, st *store.Store) (addr, label string) {
	t.Helper()
	org, err := st.CreateOrg("acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	label = "0123456789abcdef0123"
	if _, err := st.CreateRecord(store.Record{OrgID: org.ID, Domain: "e.shop.example.com",
		TargetCNAME: label + "." + providerZone, Status: store.StatusWaiting}, 10); err != nil {
		t.Fatal(err)
	}
	z, err := dnszone.New(st, dnszone.Config{Zone: providerZone, EdgeIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")},
		Nameservers: []string{"ns1.example.net"}})
	if err != nil {
		t.Fatal(err)
	}
	if err := z.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	pc, ln, err := dnszone.Listen("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go z.Serve(pc, ln)
	t.Cleanup(func() { z.Shutdown(context.Background()) })
	return pc.LocalAddr().String(), label
}

// txtAt asks the zone at addr for the TXT values of name.
func txtAt(t *testing.T, addr, name string) []string {
	t.Helper()
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(name), dns.TypeTXT), addr)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, rr := range resp.Answer {
		out = append(out, strings.Join(rr.(*dns.TXT).Txt, ""))
	}
	slices.Sort(out)
	return out
}

// TestZoneDNSProvider: what AppendRecords writes, the zone answers;
// DeleteRecords removes exactly what it names (every value of a name when
// the value is empty) and returns what it removed.
func TestZoneDNSProvider(t *testing.T) {
	st := openStore(t, store.Options{})
	addr, label := zoneWithRecord(t, st)
	p := &ZoneDNSProvider{Store: st, Zone: providerZone}
	ctx := context.Background()
	name := "_acme-challenge." + label
	fqdn := name + "." + providerZone

	added, err := p.AppendRecords(ctx, providerZone+".", []libdns.Record{
		libdns.TXT{Name: name, Text: "one", TTL: time.Minute},
		libdns.RR{Name: fqdn + ".", Type: "TXT", Data: "two"}, // already absolute
	})
	if err != nil || len(added) != 2 {
		t.Fatalf("AppendRecords = %v, %v", added, err)
	}
	if txt, ok := added[0].(libdns.TXT); !ok || txt.Text != "one" || txt.Name != name {
		t.Errorf("AppendRecords returned %#v, want the TXT as given", added[0])
	}
	if got := txtAt(t, addr, fqdn); !slices.Equal(got, []string{"one", "two"}) {
		t.Errorf("the zone answers %q, want [one two]", got)
	}

	deleted, err := p.DeleteRecords(ctx, providerZone, []libdns.Record{libdns.TXT{Name: name, Text: "one"}, libdns.TXT{Name: name, Text: "never"}})
	if err != nil || len(deleted) != 1 || deleted[0].RR().Data != "one" {
		t.Errorf("DeleteRecords(one, never) = %v, %v; want only one", deleted, err)
	}
	if got := txtAt(t, addr, fqdn); !slices.Equal(got, []string{"two"}) {
		t.Errorf("after the delete the zone answers %q, want [two]", got)
	}
	if _, err := p.AppendRecords(ctx, providerZone, []libdns.Record{libdns.TXT{Name: name, Text: "three"}}); err != nil {
		t.Fatal(err)
	}
	deleted, err = p.DeleteRecords(ctx, providerZone, []libdns.Record{libdns.RR{Name: name, Type: "TXT"}})
	if err != nil || len(deleted) != 2 {
		t.Errorf("DeleteRecords without a value = %v, %v; want both values", deleted, err)
	}
	if got := txtAt(t, addr, fqdn); len(got) != 0 {
		t.Errorf("after deleting every value the zone answers %q", got)
	}
}

func TestZoneDNSProviderRefuses(t *testing.T) {
	st := openStore(t, store.Options{})
	p := &ZoneDNSProvider{Store: st, Zone: providerZone}
	ctx := context.Background()
	for _, tc := range []struct {
		zone string
		rec  libdns.Record
		rule string
	}{
		{providerZone, libdns.RR{Name: "_acme-challenge.x", Type: "A", Data: "192.0.2.1"}, "only TXT"},
		{providerZone, libdns.TXT{Name: "_acme-challenge.x"}, "no value"},
		{"example.com", libdns.TXT{Name: "_acme-challenge.e", Text: "v"}, "not a name under " + providerZone},
		{providerZone, libdns.TXT{Name: "@", Text: "v"}, "not a name under"},
		{providerZone, libdns.TXT{Name: "x.example.com.", Text: "v"}, "not a name under"},
	} {
		// A refused record among good ones writes nothing.
		recs := []libdns.Record{libdns.TXT{Name: "_acme-challenge.good", Text: "v"}, tc.rec}
		if _, err := p.AppendRecords(ctx, tc.zone, recs); err == nil || !strings.Contains(err.Error(), tc.rule) {
			t.Errorf("AppendRecords(%q, %#v) = %v, want an error naming %q", tc.zone, tc.rec, err, tc.rule)
		}
	}
	if got, _ := st.ChallengeTXT("_acme-challenge.good." + providerZone); len(got) != 0 {
		t.Errorf("refused calls wrote %q", got)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.AppendRecords(cancelled, providerZone, []libdns.Record{libdns.TXT{Name: "_acme-challenge.x", Text: "v"}}); err == nil {
		t.Error("AppendRecords with a cancelled context succeeded")
	}
}

// TestDNS01SolverThroughTheZone runs certmagic's own DNS-01 solver with
// the provider, as a delegated validation would (the customer's
// _acme-challenge CNAME points at the record's name in our zone): it finds
// the zone from our server's SOA, presents the key authorization's digest
// there, and cleans it up.
func TestDNS01SolverThroughTheZone(t *testing.T) {
	st := openStore(t, store.Options{})
	addr, label := zoneWithRecord(t, st)
	name := "_acme-challenge." + label + "." + providerZone
	solver := &certmagic.DNS01Solver{DNSManager: certmagic.DNSManager{
		DNSProvider:        &ZoneDNSProvider{Store: st, Zone: providerZone},
		Resolvers:          []string{addr},
		OverrideDomain:     name,
		PropagationTimeout: -1, // the nameservers of the test zone do not exist
	}}
	chal := acme.Challenge{Type: acme.ChallengeTypeDNS01, Identifier: acme.Identifier{Type: "dns", Value: "e.shop.example.com"},
		Token: "token", KeyAuthorization: "token.thumbprint"}
	ctx := context.Background()
	if err := solver.Present(ctx, chal); err != nil {
		t.Fatalf("Present: %v", err)
	}
	if got, want := txtAt(t, addr, name), []string{chal.DNS01KeyAuthorization()}; !slices.Equal(got, want) {
		t.Errorf("after Present the zone answers %q, want %q", got, want)
	}
	if err := solver.CleanUp(ctx, chal); err != nil {
		t.Fatalf("CleanUp: %v", err)
	}
	if got := txtAt(t, addr, name); len(got) != 0 {
		t.Errorf("after CleanUp the zone answers %q", got)
	}
}
