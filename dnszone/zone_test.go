package dnszone_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeproxy/edgeproxy/dnszone"
	"github.com/edgeproxy/edgeproxy/store"
)

const base = "proxy.example.net"

var (
	edgeV4 = []string{"192.0.2.10", "192.0.2.11"}
	edgeV6 = []string{"2001:db8::10"}
)

// env is a zone served on loopback over a real store.
type env struct {
	st   *store.Store
	zone *dnszone.Zone
	addr string // the same port for UDP and TCP
	reg  *prometheus.Registry
	org  store.Org
}

// startZone opens a store in t.TempDir() and serves a zone over it on
// 127.0.0.1; mod may change the configuration first. Both stop when the
// test ends.
func startZone(t *testing.T, mod func(*dnszone.Config)) *env {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	org, err := st.CreateOrg("acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	e := &env{st: st, org: org}
	e.zone, e.addr, e.reg = serveZone(t, st, mod)
	return e
}

func serveZone(t testing.TB, st *store.Store, mod func(*dnszone.Config)) (*dnszone.Zone, string, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	cfg := dnszone.Config{
		Zone:        base,
		EdgeIPs:     addrs(append(slices.Clone(edgeV4), edgeV6...)...),
		Nameservers: []string{"ns1.example.net", "ns2.example.org."},
		Registerer:  reg,
	}
	if mod != nil {
		mod(&cfg)
	}
	z, err := dnszone.New(st, cfg)
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
	served := make(chan error, 1)
	go func() { served <- z.Serve(pc, ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := z.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("Serve after Shutdown: %v", err)
		}
	})
	return z, pc.LocalAddr().String(), reg
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// target is the record's target CNAME as the API makes it.
func target(orgID, domain string) string {
	sum := sha256.Sum256([]byte(orgID + domain))
	return hex.EncodeToString(sum[:])[:20] + "." + base
}

// create stores a waiting record for domain and returns it once the
// zone knows its name: the zone learns of it from the change feed.
func (e *env) create(t *testing.T, domain string) store.Record {
	t.Helper()
	r, err := e.st.CreateRecord(store.Record{OrgID: e.org.ID, Domain: domain, TargetCNAME: target(e.org.ID, domain), Status: store.StatusWaiting}, 100)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the zone to know "+r.TargetCNAME, func() bool {
		return query(t, "tcp", e.addr, r.TargetCNAME+".", dns.TypeA).Rcode == dns.RcodeSuccess
	})
	return r
}

// query asks the zone over network ("udp" or "tcp").
func query(t *testing.T, network, addr, name string, qtype uint16, edit ...func(*dns.Msg)) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	for _, f := range edit {
		f(m)
	}
	c := &dns.Client{Net: network, Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(m, addr)
	if err != nil {
		t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
	}
	if resp.RecursionAvailable {
		t.Errorf("%s %s: RA set; the zone does no recursion", name, dns.TypeToString[qtype])
	}
	return resp
}

func withEDNS(size uint16) func(*dns.Msg) { return func(m *dns.Msg) { m.SetEdns0(size, false) } }

func rrStrings(rrs []dns.RR) []string {
	var out []string
	for _, rr := range rrs {
		switch rr := rr.(type) {
		case *dns.A:
			out = append(out, rr.A.String())
		case *dns.AAAA:
			out = append(out, rr.AAAA.String())
		case *dns.NS:
			out = append(out, rr.Ns)
		case *dns.TXT:
			out = append(out, strings.Join(rr.Txt, ""))
		default:
			out = append(out, rr.String())
		}
	}
	slices.Sort(out)
	return out
}

// wantNegative checks a negative answer: rcode, authoritative, nothing
// answered, and the zone's SOA in the authority section.
func wantNegative(t *testing.T, resp *dns.Msg, rcode int) {
	t.Helper()
	q := resp.Question[0]
	if resp.Rcode != rcode || !resp.Authoritative || len(resp.Answer) != 0 {
		t.Errorf("%s %s: rcode %s, AA %v, %d answers; want %s, AA, none", q.Name, dns.TypeToString[q.Qtype],
			dns.RcodeToString[resp.Rcode], resp.Authoritative, len(resp.Answer), dns.RcodeToString[rcode])
	}
	if len(resp.Ns) != 1 || resp.Ns[0].Header().Rrtype != dns.TypeSOA || resp.Ns[0].Header().Name != base+"." {
		t.Errorf("%s %s: authority %v, want the zone's SOA", q.Name, dns.TypeToString[q.Qtype], resp.Ns)
	}
}

func TestAddressesOfARecord(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	r := e.create(t, "e.shop.example.com")
	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, e.addr, r.TargetCNAME+".", dns.TypeA)
		if resp.Rcode != dns.RcodeSuccess || !resp.Authoritative {
			t.Errorf("%s A: rcode %s, AA %v", network, dns.RcodeToString[resp.Rcode], resp.Authoritative)
		}
		if got := rrStrings(resp.Answer); !slices.Equal(got, edgeV4) {
			t.Errorf("%s A = %q, want %q", network, got, edgeV4)
		}
		for _, rr := range resp.Answer {
			if rr.Header().Ttl != dnszone.AddressTTL {
				t.Errorf("A TTL %d, want %d", rr.Header().Ttl, dnszone.AddressTTL)
			}
		}
		resp = query(t, network, e.addr, r.TargetCNAME+".", dns.TypeAAAA)
		if got := rrStrings(resp.Answer); resp.Rcode != dns.RcodeSuccess || !slices.Equal(got, edgeV6) {
			t.Errorf("%s AAAA = %s %q, want NOERROR %q", network, dns.RcodeToString[resp.Rcode], got, edgeV6)
		}
	}
	// Names are case-insensitive, and the answer keeps the question's
	// case (resolvers randomise it, RFC draft 0x20).
	mixed := strings.ToUpper(r.TargetCNAME[:5]) + r.TargetCNAME[5:] + "."
	resp := query(t, "udp", e.addr, mixed, dns.TypeA)
	if len(resp.Answer) != len(edgeV4) || resp.Answer[0].Header().Name != mixed {
		t.Errorf("A of %s: %v, want %d answers owned by the name as asked", mixed, resp.Answer, len(edgeV4))
	}
	// Other types at the name: NODATA.
	for _, qtype := range []uint16{dns.TypeTXT, dns.TypeMX, dns.TypeCNAME, dns.TypeCAA} {
		wantNegative(t, query(t, "udp", e.addr, r.TargetCNAME+".", qtype), dns.RcodeSuccess)
	}
}

// TestFamilyWithoutAddresses: with IPv4 edge addresses only, AAAA of an
// existing name is NODATA (NOERROR, no answer, SOA), not NXDOMAIN, which
// would tell resolvers the A records do not exist either.
func TestFamilyWithoutAddresses(t *testing.T) {
	t.Parallel()
	e := startZone(t, func(c *dnszone.Config) { c.EdgeIPs = addrs(edgeV4...) })
	r := e.create(t, "e.shop.example.com")
	wantNegative(t, query(t, "udp", e.addr, r.TargetCNAME+".", dns.TypeAAAA), dns.RcodeSuccess)
	if got := rrStrings(query(t, "udp", e.addr, r.TargetCNAME+".", dns.TypeA).Answer); !slices.Equal(got, edgeV4) {
		t.Errorf("A = %q, want %q", got, edgeV4)
	}
}

func TestNXDOMAINUnderTheZone(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	r := e.create(t, "e.shop.example.com")
	label := strings.TrimSuffix(r.TargetCNAME, "."+base)
	for _, name := range []string{
		target(e.org.ID, "other.example.com"), // a label no record has
		target("another-org", "e.shop.example.com"),
		"www." + base,
		"x." + r.TargetCNAME,
		label[:19] + "." + base,
		"_acme-challenge." + base,
		"_acme-challenge." + target(e.org.ID, "other.example.com"),
		"a._acme-challenge." + r.TargetCNAME,
		"ns1." + base,
	} {
		for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT} {
			wantNegative(t, query(t, "udp", e.addr, name+".", qtype), dns.RcodeNameError)
		}
	}
}

func TestApex(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	resp := query(t, "udp", e.addr, base+".", dns.TypeSOA)
	if resp.Rcode != dns.RcodeSuccess || !resp.Authoritative || len(resp.Answer) != 1 {
		t.Fatalf("SOA: %v", resp)
	}
	soa, ok := resp.Answer[0].(*dns.SOA)
	if !ok || soa.Ns != "ns1.example.net." || soa.Mbox != "hostmaster."+base+"." || soa.Minttl != dnszone.NegativeTTL {
		t.Errorf("SOA = %v; want primary ns1.example.net., hostmaster.%s., minimum %d", resp.Answer[0], base, dnszone.NegativeTTL)
	}
	resp = query(t, "tcp", e.addr, strings.ToUpper(base)+".", dns.TypeNS)
	if got, want := rrStrings(resp.Answer), []string{"ns1.example.net.", "ns2.example.org."}; !slices.Equal(got, want) || !resp.Authoritative {
		t.Errorf("NS = %q (AA %v), want %q", got, resp.Authoritative, want)
	}
	for _, qtype := range []uint16{dns.TypeA, dns.TypeAAAA, dns.TypeTXT, dns.TypeMX} {
		wantNegative(t, query(t, "udp", e.addr, base+".", qtype), dns.RcodeSuccess)
	}
}

// TestSerialFollowsContent: the SOA serial changes when a record's name
// enters or leaves the zone, comes back to what it was when the content
// does, and is the same on two servers (nodes) over the same store.
func TestSerialFollowsContent(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	_, other, _ := serveZone(t, e.st, nil)
	serial := func(addr string) uint32 {
		t.Helper()
		return query(t, "udp", addr, base+".", dns.TypeSOA).Answer[0].(*dns.SOA).Serial
	}
	empty := serial(e.addr)
	r := e.create(t, "e.shop.example.com")
	waitFor(t, "the serial to change after a create", func() bool { return serial(e.addr) != empty })
	waitFor(t, "the second node to have the same serial", func() bool { return serial(other) == serial(e.addr) })
	if _, _, err := e.st.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the serial to come back after the delete", func() bool { return serial(e.addr) == empty })
	// The configuration is content too.
	_, fewer, _ := serveZone(t, e.st, func(c *dnszone.Config) { c.EdgeIPs = addrs(edgeV4...) })
	if serial(fewer) == empty {
		t.Error("a zone with other edge addresses has the same serial")
	}
}

// waitFor polls cond until it holds, for at most 10 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestRefusedOutsideTheZone(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	for _, name := range []string{"example.com.", "example.net.", "net.", ".", "xproxy.example.net.", "google.com."} {
		for _, network := range []string{"udp", "tcp"} {
			resp := query(t, network, e.addr, name, dns.TypeA)
			if resp.Rcode != dns.RcodeRefused || resp.Authoritative || len(resp.Answer)+len(resp.Ns) != 0 {
				t.Errorf("%s A %s: rcode %s, AA %v, %d records; want REFUSED, no AA, nothing", network, name,
					dns.RcodeToString[resp.Rcode], resp.Authoritative, len(resp.Answer)+len(resp.Ns))
			}
		}
	}
	// CHAOS (version.bind, id.server) and other classes.
	for _, class := range []uint16{dns.ClassCHAOS, dns.ClassHESIOD, dns.ClassANY} {
		for _, name := range []string{"version.bind.", base + "."} {
			resp := query(t, "udp", e.addr, name, dns.TypeTXT, func(m *dns.Msg) { m.Question[0].Qclass = class })
			if resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 {
				t.Errorf("class %s TXT %s: %s with %d answers, want REFUSED", dns.ClassToString[class], name, dns.RcodeToString[resp.Rcode], len(resp.Answer))
			}
		}
	}
	// No zone transfers.
	resp := query(t, "tcp", e.addr, base+".", dns.TypeAXFR)
	if resp.Rcode != dns.RcodeRefused || len(resp.Answer) != 0 {
		t.Errorf("AXFR: %s with %d answers, want REFUSED", dns.RcodeToString[resp.Rcode], len(resp.Answer))
	}
}

func TestOpcodesAndMalformedQuestions(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	for _, opcode := range []int{dns.OpcodeNotify, dns.OpcodeUpdate, dns.OpcodeIQuery, dns.OpcodeStatus} {
		resp := query(t, "udp", e.addr, base+".", dns.TypeSOA, func(m *dns.Msg) { m.Opcode = opcode })
		if resp.Rcode != dns.RcodeNotImplemented || len(resp.Answer) != 0 {
			t.Errorf("opcode %s: %s, want NOTIMP", dns.OpcodeToString[opcode], dns.RcodeToString[resp.Rcode])
		}
	}
	for _, n := range []int{0, 2} {
		resp := query(t, "udp", e.addr, base+".", dns.TypeSOA, func(m *dns.Msg) {
			m.Question = slices.Repeat(m.Question, 2)[:n]
		})
		if resp.Rcode != dns.RcodeFormatError || len(resp.Answer) != 0 {
			t.Errorf("%d questions: %s, want FORMERR", n, dns.RcodeToString[resp.Rcode])
		}
	}
}

// TestANY: RFC 8482's minimal answer, one HINFO, for names that exist;
// NXDOMAIN for names that do not.
func TestANY(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	r := e.create(t, "e.shop.example.com")
	if err := e.st.PutChallengeTXT("_acme-challenge."+r.TargetCNAME, "token"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{base, r.TargetCNAME, "_acme-challenge." + r.TargetCNAME} {
		resp := query(t, "udp", e.addr, name+".", dns.TypeANY)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			t.Fatalf("ANY %s: %s with %v, want one HINFO", name, dns.RcodeToString[resp.Rcode], resp.Answer)
		}
		if h, ok := resp.Answer[0].(*dns.HINFO); !ok || h.Cpu != "RFC8482" {
			t.Errorf("ANY %s answered %v, want HINFO \"RFC8482\"", name, resp.Answer[0])
		}
	}
	wantNegative(t, query(t, "udp", e.addr, "nothing."+base+".", dns.TypeANY), dns.RcodeNameError)
}

func TestChallengeTXT(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	r := e.create(t, "e.shop.example.com")
	name := "_acme-challenge." + r.TargetCNAME
	// The name of a record exists before any challenge: NODATA.
	wantNegative(t, query(t, "udp", e.addr, name+".", dns.TypeTXT), dns.RcodeSuccess)
	for _, v := range []string{"token-one", "token-two"} {
		if err := e.st.PutChallengeTXT(name, v); err != nil {
			t.Fatal(err)
		}
	}
	for _, network := range []string{"udp", "tcp"} {
		resp := query(t, network, e.addr, strings.ToUpper(name)+".", dns.TypeTXT)
		if got, want := rrStrings(resp.Answer), []string{"token-one", "token-two"}; !slices.Equal(got, want) || !resp.Authoritative {
			t.Errorf("%s TXT %s = %q (AA %v), want %q", network, name, got, resp.Authoritative, want)
		}
		for _, rr := range resp.Answer {
			if rr.Header().Ttl != dnszone.ChallengeTTL {
				t.Errorf("TXT TTL %d, want %d", rr.Header().Ttl, dnszone.ChallengeTTL)
			}
		}
	}
	// The challenge name holds only TXT.
	wantNegative(t, query(t, "udp", e.addr, name+".", dns.TypeA), dns.RcodeSuccess)
	if err := e.st.DeleteChallengeTXT(name, "token-one"); err != nil {
		t.Fatal(err)
	}
	if got := rrStrings(query(t, "udp", e.addr, name+".", dns.TypeTXT).Answer); !slices.Equal(got, []string{"token-two"}) {
		t.Errorf("after the delete TXT = %q, want [token-two]", got)
	}
	// Values stored for a name no record has are not served.
	stray := "_acme-challenge." + target(e.org.ID, "gone.example.com")
	if err := e.st.PutChallengeTXT(stray, "stray"); err != nil {
		t.Fatal(err)
	}
	wantNegative(t, query(t, "udp", e.addr, stray+".", dns.TypeTXT), dns.RcodeNameError)
}

// manyTokens gives the record's challenge name MaxChallengeTXT values of
// the size ACME uses (43 characters), over 512 bytes in all.
func manyTokens(t *testing.T, e *env, r store.Record) string {
	t.Helper()
	name := "_acme-challenge." + r.TargetCNAME
	for i := range store.MaxChallengeTXT {
		if err := e.st.PutChallengeTXT(name, fmt.Sprintf("%02d%s", i, strings.Repeat("x", 41))); err != nil {
			t.Fatal(err)
		}
	}
	return name + "."
}

// TestTruncationAndTCPFallback: an answer too large for UDP goes back
// empty with TC set, never over 512 bytes; over TCP it is whole.
func TestTruncationAndTCPFallback(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	name := manyTokens(t, e, e.create(t, "e.shop.example.com"))

	n, resp := rawUDP(t, e.addr, name, dns.TypeTXT, nil)
	if n > dns.MinMsgSize {
		t.Errorf("UDP answer without EDNS0 is %d bytes, over %d", n, dns.MinMsgSize)
	}
	if !resp.Truncated || len(resp.Answer) != 0 || resp.Id == 0 {
		t.Errorf("UDP answer: TC %v with %d answers; want TC and none", resp.Truncated, len(resp.Answer))
	}
	full := query(t, "tcp", e.addr, name, dns.TypeTXT)
	if full.Truncated || len(full.Answer) != store.MaxChallengeTXT {
		t.Errorf("TCP answer: TC %v with %d answers, want all %d", full.Truncated, len(full.Answer), store.MaxChallengeTXT)
	}
	// A client that goes by TC, as resolvers do, gets every value.
	c := &dns.Client{Net: "udp", Timeout: 5 * time.Second}
	m := new(dns.Msg).SetQuestion(name, dns.TypeTXT)
	got, _, err := c.Exchange(m, e.addr)
	if err == nil && got.Truncated {
		c.Net = "tcp"
		got, _, err = c.Exchange(m, e.addr)
	}
	if err != nil || len(got.Answer) != store.MaxChallengeTXT {
		t.Errorf("UDP then TCP on TC: %v, %v", got, err)
	}
}

// TestEDNS0: the answer carries an OPT when the query did; its size over
// UDP stays within what the query advertised (at least 512 bytes, at most
// MaxUDPSize); an unknown EDNS version gets BADVERS.
func TestEDNS0(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	r := e.create(t, "e.shop.example.com")
	name := manyTokens(t, e, r) // about 900 bytes of answer

	resp := query(t, "udp", e.addr, r.TargetCNAME+".", dns.TypeA)
	if resp.IsEdns0() != nil {
		t.Error("an answer to a query without EDNS0 carries an OPT")
	}
	resp = query(t, "udp", e.addr, r.TargetCNAME+".", dns.TypeA, withEDNS(4096))
	opt := resp.IsEdns0()
	if opt == nil || opt.Version() != 0 || opt.UDPSize() != dnszone.MaxUDPSize {
		t.Errorf("OPT of the answer = %v; want version 0, size %d", opt, dnszone.MaxUDPSize)
	}

	for _, tc := range []struct {
		advertised uint16
		limit      int
		whole      bool
	}{
		{0, dns.MinMsgSize, false}, // below 512 counts as 512
		{600, 600, false},
		{4096, dnszone.MaxUDPSize, true},
	} {
		n, resp := rawUDP(t, e.addr, name, dns.TypeTXT, withEDNS(tc.advertised))
		if n > tc.limit {
			t.Errorf("EDNS0 size %d: %d-byte answer, over %d", tc.advertised, n, tc.limit)
		}
		if whole := !resp.Truncated && len(resp.Answer) == store.MaxChallengeTXT; whole != tc.whole {
			t.Errorf("EDNS0 size %d: TC %v with %d answers; want whole %v", tc.advertised, resp.Truncated, len(resp.Answer), tc.whole)
		}
		if resp.IsEdns0() == nil {
			t.Errorf("EDNS0 size %d: the answer has no OPT", tc.advertised)
		}
	}

	resp = query(t, "udp", e.addr, base+".", dns.TypeSOA, func(m *dns.Msg) {
		m.SetEdns0(1232, false)
		m.IsEdns0().SetVersion(1)
	})
	if resp.Rcode != dns.RcodeBadVers || len(resp.Answer) != 0 || resp.IsEdns0() == nil || resp.IsEdns0().Version() != 0 {
		t.Errorf("EDNS version 1: rcode %d with %d answers, OPT %v; want BADVERS in a version 0 OPT", resp.Rcode, len(resp.Answer), resp.IsEdns0())
	}
}

// rawUDP sends one query over UDP and returns the answer's size on the
// wire and the answer.
func rawUDP(t *testing.T, addr, name string, qtype uint16, edit func(*dns.Msg)) (int, *dns.Msg) {
	t.Helper()
	m := new(dns.Msg).SetQuestion(name, qtype)
	if edit != nil {
		edit(m)
	}
	conn, err := net.Dial("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wire, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Write(wire); err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 65535)
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(buf[:n]); err != nil {
		t.Fatal(err)
	}
	if resp.Id != m.Id {
		t.Fatalf("answer id %d, query id %d", resp.Id, m.Id)
	}
	return n, resp
}

// TestRateLimitPerAddress: with the clock stopped, one address gets its
// burst of UDP answers, then every second query is dropped and the others
// answered empty with TC; TCP from the same address and UDP from another
// are still answered.
func TestRateLimitPerAddress(t *testing.T) {
	t.Parallel()
	stopped := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	const burst, sent = 5, 25
	const over = sent - burst
	e := startZone(t, func(c *dnszone.Config) {
		c.RateLimit, c.RateBurst, c.Now = 1, burst, func() time.Time { return stopped }
	})
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	to, err := net.ResolveUDPAddr("udp", e.addr)
	if err != nil {
		t.Fatal(err)
	}
	wire, err := new(dns.Msg).SetQuestion(base+".", dns.TypeSOA).Pack()
	if err != nil {
		t.Fatal(err)
	}
	for range sent {
		if _, err := conn.WriteTo(wire, to); err != nil {
			t.Fatal(err)
		}
	}
	var whole, truncated int
	buf := make([]byte, 2048)
	for range burst + over/2 {
		conn.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := conn.ReadFrom(buf)
		if err != nil {
			t.Fatalf("after %d answers and %d truncated: %v", whole, truncated, err)
		}
		resp := new(dns.Msg)
		if err := resp.Unpack(buf[:n]); err != nil {
			t.Fatal(err)
		}
		if !resp.Truncated {
			whole++
			continue
		}
		truncated++
		if len(resp.Answer)+len(resp.Ns) != 0 || n > len(wire) {
			t.Errorf("a rate-limited answer carries %d records and is %d bytes; want none, no larger than the %d-byte query",
				len(resp.Answer)+len(resp.Ns), n, len(wire))
		}
	}
	if whole != burst || truncated != over/2 {
		t.Errorf("%d queries at once: %d answered, %d truncated; want %d and %d", sent, whole, truncated, burst, over/2)
	}
	// The rest were dropped: every query is accounted for, so no other
	// answer is on its way.
	waitFor(t, "the dropped queries to be counted", func() bool {
		return counterValue(t, e.reg, "edgeproxy_dns_rate_limited_total", "dropped") == over-over/2
	})
	if got := counterValue(t, e.reg, "edgeproxy_dns_rate_limited_total", "truncated"); got != over/2 {
		t.Errorf("edgeproxy_dns_rate_limited_total{action=truncated} = %v, want %d", got, over/2)
	}
	// TCP proves the address: not limited.
	if resp := query(t, "tcp", e.addr, base+".", dns.TypeSOA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
		t.Errorf("TCP from the limited address: %v", resp)
	}
	// Another address has its own budget.
	other, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.2")}, to)
	if err != nil {
		t.Skipf("no second loopback address to send from: %v", err)
	}
	defer other.Close()
	if _, err := other.Write(wire); err != nil {
		t.Fatal(err)
	}
	other.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := other.Read(buf)
	if err != nil {
		t.Fatalf("UDP from 127.0.0.2: %v", err)
	}
	resp := new(dns.Msg)
	if err := resp.Unpack(buf[:n]); err != nil || resp.Truncated || len(resp.Answer) != 1 {
		t.Errorf("UDP from 127.0.0.2: %v, %v; want the SOA", resp, err)
	}
}

// counterValue is the value of the series of a counter family whose one
// label has value.
func counterValue(t *testing.T, reg *prometheus.Registry, family, value string) int {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != family {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == value {
				return int(m.GetCounter().GetValue())
			}
		}
	}
	t.Fatalf("no series %s{…=%q}", family, value)
	return 0
}

// TestFollowsTheStore: a record created after the zone started becomes
// answerable on every zone over the store, and is NXDOMAIN once deleted.
func TestFollowsTheStore(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	before := e.create(t, "before.example.com")
	// A record that existed before Start is answered at once.
	e2 := &env{st: e.st, org: e.org}
	e2.zone, e2.addr, _ = serveZone(t, e.st, nil)
	if got := rrStrings(query(t, "udp", e2.addr, before.TargetCNAME+".", dns.TypeA).Answer); !slices.Equal(got, edgeV4) {
		t.Errorf("a record stored before Start: A = %q, want %q", got, edgeV4)
	}

	// Created straight in the store, as another node's API would.
	r, err := e.st.CreateRecord(store.Record{OrgID: e.org.ID, Domain: "after.example.com",
		TargetCNAME: target(e.org.ID, "after.example.com"), Status: store.StatusWaiting}, 100)
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{e.addr, e2.addr} {
		waitFor(t, "the new record's name to answer at "+addr, func() bool {
			return len(query(t, "udp", addr, r.TargetCNAME+".", dns.TypeA).Answer) == len(edgeV4)
		})
	}
	if _, _, err := e.st.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the deleted record's name to be NXDOMAIN", func() bool {
		return query(t, "udp", e.addr, r.TargetCNAME+".", dns.TypeA).Rcode == dns.RcodeNameError
	})
	wantNegative(t, query(t, "tcp", e.addr, r.TargetCNAME+".", dns.TypeAAAA), dns.RcodeNameError)
	if got := rrStrings(query(t, "udp", e.addr, before.TargetCNAME+".", dns.TypeA).Answer); !slices.Equal(got, edgeV4) {
		t.Errorf("another record's name after the delete: A = %q, want %q", got, edgeV4)
	}
}

// TestDeletingStillAnswers pins the choice that a record being deleted
// keeps its name until it is gone.
func TestDeletingStillAnswers(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	r := e.create(t, "e.shop.example.com")
	if _, _, err := e.st.Mutate(r.ID, func(r *store.Record) (store.Op, error) {
		r.Status = store.StatusDeleting
		return store.OpSave, nil
	}); err != nil {
		t.Fatal(err)
	}
	// A zone started now reads the record as deleting.
	_, addr, _ := serveZone(t, e.st, nil)
	if got := rrStrings(query(t, "udp", addr, r.TargetCNAME+".", dns.TypeA).Answer); !slices.Equal(got, edgeV4) {
		t.Errorf("A of a deleting record = %q, want %q", got, edgeV4)
	}
}

func TestQueryMetrics(t *testing.T) {
	t.Parallel()
	e := startZone(t, nil)
	query(t, "udp", e.addr, base+".", dns.TypeSOA)
	query(t, "tcp", e.addr, "nothing."+base+".", dns.TypeA)
	query(t, "udp", e.addr, "example.com.", dns.TypeA)
	query(t, "udp", e.addr, "example.com.", dns.TypeA)
	for rcode, want := range map[string]int{"NOERROR": 1, "NXDOMAIN": 1, "REFUSED": 2, "SERVFAIL": 0, "NOTIMP": 0, "FORMERR": 0, "BADVERS": 0} {
		if got := counterValue(t, e.reg, "edgeproxy_dns_queries_total", rcode); got != want {
			t.Errorf("edgeproxy_dns_queries_total{rcode=%q} = %d, want %d", rcode, got, want)
		}
	}
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "edgeproxy_dns_queries_total" && len(mf.GetMetric()) != 7 {
			t.Errorf("edgeproxy_dns_queries_total has %d series, want the 7 rcodes", len(mf.GetMetric()))
		}
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	t.Parallel()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	good := func() dnszone.Config {
		return dnszone.Config{Zone: base, EdgeIPs: addrs("192.0.2.1"), Nameservers: []string{"ns1.example.net"}}
	}
	many := make([]netip.Addr, dnszone.MaxEdgeIPs+1)
	for i := range many {
		many[i] = netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)})
	}
	for _, tc := range []struct {
		edit func(*dnszone.Config)
		rule string
	}{
		{func(c *dnszone.Config) { c.Zone = "" }, "not a domain name"},
		{func(c *dnszone.Config) { c.Zone = "localhost" }, "two or more labels"},
		{func(c *dnszone.Config) { c.EdgeIPs = nil }, "need 1 to 16 addresses"},
		{func(c *dnszone.Config) { c.EdgeIPs = many }, "need 1 to 16 addresses"},
		{func(c *dnszone.Config) { c.EdgeIPs = addrs("0.0.0.0") }, "not a unicast address"},
		{func(c *dnszone.Config) { c.EdgeIPs = addrs("ff02::1") }, "not a unicast address"},
		{func(c *dnszone.Config) { c.Nameservers = nil }, "need 1 to 8 names"},
		{func(c *dnszone.Config) { c.Nameservers = []string{"ns1"} }, "two or more labels"},
		{func(c *dnszone.Config) { c.Nameservers = []string{"192.0.2.1"} }, "two or more labels"},
		{func(c *dnszone.Config) { c.Nameservers = []string{"ns1." + base} }, "inside the zone"},
		{func(c *dnszone.Config) { c.Nameservers = []string{strings.ToUpper(base)} }, "inside the zone"},
	} {
		cfg := good()
		tc.edit(&cfg)
		if _, err := dnszone.New(st, cfg); err == nil || !strings.Contains(err.Error(), tc.rule) {
			t.Errorf("New(%+v) = %v, want an error naming %q", cfg, err, tc.rule)
		}
	}
	if _, err := dnszone.New(st, good()); err != nil {
		t.Errorf("New(good) = %v", err)
	}
}
