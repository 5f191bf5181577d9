package dnszone

import (
	"context"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/store"
)

// FuzzAnswer feeds the query handler any message a client can send and
// checks what no answer may break: it packs, it answers the query's id,
// it never offers recursion, it fits the size the query allows, and it
// answers records only for names inside the zone.
func FuzzAnswer(f *testing.F) {
	const zone = "proxy.example.net"
	const label = "0123456789abcdef0123"
	st, err := store.Open(filepath.Join(f.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	org, err := st.CreateOrg("acme", nil)
	if err != nil {
		f.Fatal(err)
	}
	if _, err := st.CreateRecord(store.Record{OrgID: org.ID, Domain: "e.example.com", TargetCNAME: label + "." + zone, Status: store.StatusValid}, 10); err != nil {
		f.Fatal(err)
	}
	for i := range store.MaxChallengeTXT {
		if err := st.PutChallengeTXT("_acme-challenge."+label+"."+zone, strings.Repeat(string(rune('a'+i)), 43)); err != nil {
			f.Fatal(err)
		}
	}
	z, err := New(st, Config{
		Zone:        zone,
		EdgeIPs:     []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
		Nameservers: []string{"ns1.example.net", "ns2.example.org"},
	})
	if err != nil {
		f.Fatal(err)
	}
	if err := z.Start(context.Background()); err != nil {
		f.Fatal(err)
	}
	defer z.Shutdown(context.Background())

	seed := func(name string, qtype uint16, edit func(*dns.Msg)) {
		m := new(dns.Msg).SetQuestion(name, qtype)
		if edit != nil {
			edit(m)
		}
		wire, err := m.Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(wire, true)
		f.Add(wire, false)
	}
	for _, name := range []string{zone + ".", label + "." + zone + ".", "_acme-challenge." + label + "." + zone + ".",
		"nothing." + zone + ".", "example.com.", ".", "VERSION.BIND."} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeSOA, dns.TypeNS, dns.TypeANY, dns.TypeAXFR} {
			seed(name, qtype, nil)
		}
	}
	txt := "_acme-challenge." + label + "." + zone + "."
	seed(txt, dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(700, true) })
	seed(txt, dns.TypeTXT, func(m *dns.Msg) { m.SetEdns0(100, false) })
	seed(zone+".", dns.TypeSOA, func(m *dns.Msg) { m.SetEdns0(1232, false); m.IsEdns0().SetVersion(3) })
	seed(zone+".", dns.TypeSOA, func(m *dns.Msg) { m.Opcode = dns.OpcodeUpdate })
	seed(zone+".", dns.TypeSOA, func(m *dns.Msg) { m.Question[0].Qclass = dns.ClassCHAOS })
	seed(zone+".", dns.TypeSOA, func(m *dns.Msg) { m.Question = append(m.Question, m.Question[0]) })

	f.Fuzz(func(t *testing.T, wire []byte, udp bool) {
		req := new(dns.Msg)
		if err := req.Unpack(wire); err != nil {
			return // the server answers what does not unpack itself, with FORMERR
		}
		resp := z.answer(req, udp)
		out, err := resp.Pack()
		if err != nil {
			t.Fatalf("answer does not pack: %v\nquery: %v\nanswer: %v", err, req, resp)
		}
		if resp.Id != req.Id || !resp.Response || resp.RecursionAvailable {
			t.Errorf("answer id %d (query %d), QR %v, RA %v", resp.Id, req.Id, resp.Response, resp.RecursionAvailable)
		}
		limit := dns.MaxMsgSize
		if udp {
			limit = dns.MinMsgSize
			if opt := req.IsEdns0(); opt != nil {
				limit = max(min(int(opt.UDPSize()), MaxUDPSize), dns.MinMsgSize)
			}
		}
		if len(out) > limit {
			t.Errorf("answer of %d bytes over the %d the query allows", len(out), limit)
		}
		if (req.IsEdns0() != nil) != (resp.IsEdns0() != nil) && req.Opcode == dns.OpcodeQuery && len(req.Question) == 1 {
			t.Errorf("query OPT %v, answer OPT %v: want one exactly when the query had one", req.IsEdns0(), resp.IsEdns0())
		}
		for _, rr := range append(resp.Answer, resp.Ns...) {
			if !dns.IsSubDomain(dns.Fqdn(zone), strings.ToLower(rr.Header().Name)) {
				t.Errorf("answer holds %v, outside the zone", rr)
			}
		}
		if len(resp.Answer) > 0 && (resp.Rcode != dns.RcodeSuccess || !resp.Authoritative) {
			t.Errorf("records answered with rcode %d, AA %v", resp.Rcode, resp.Authoritative)
		}
	})
}
