package dnstest

import (
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// ask sends one query to s over network ("udp" or "tcp") and fails the test on an error.
func ask(t *testing.T, s *Server, network, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	c := &dns.Client{Net: network, Timeout: 2 * time.Second}
	r, _, err := c.Exchange(m, s.Addr())
	if err != nil {
		t.Fatalf("query %s %s over %s: %v", dns.TypeToString[qtype], name, network, err)
	}
	return r
}

// rrs renders a section as "name TYPE data" lines without TTLs, for comparison.
func rrs(section []dns.RR) []string {
	var out []string
	for _, rr := range section {
		h := rr.Header()
		data := strings.TrimPrefix(rr.String(), h.String())
		out = append(out, h.Name+" "+dns.TypeToString[h.Rrtype]+" "+data)
	}
	return out
}

func TestResolution(t *testing.T) {
	s := Start(t)
	s.SetSOA("example.com", 3600, 300)
	s.SetSOA("sub.example.com", 60, 30)
	s.SetCNAME("www.Example.com.", "a.example.com")
	s.SetCNAME("a.example.com", "B.example.net")
	s.SetA("b.example.net", "192.0.2.1", "2001:db8::1")
	s.SetCNAME("dangling.example.com", "nowhere.example.org")
	s.SetA("deep.ent.example.com", "192.0.2.2")
	s.SetA("x.sub.example.com", "192.0.2.3")
	s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
	s.SetCAA("example.com", 128, "iodef", "mailto:a@example.com")
	s.SetCNAME("loop1.example.com", "loop2.example.com")
	s.SetCNAME("loop2.example.com", "loop1.example.com")

	tests := []struct {
		name   string
		qname  string
		qtype  uint16
		rcode  int
		answer []string
		ns     []string
	}{
		{
			name: "chain to A", qname: "WWW.example.com", qtype: dns.TypeA,
			answer: []string{
				"www.example.com. CNAME a.example.com.",
				"a.example.com. CNAME b.example.net.",
				"b.example.net. A 192.0.2.1",
			},
		},
		{
			name: "chain to AAAA", qname: "www.example.com", qtype: dns.TypeAAAA,
			answer: []string{
				"www.example.com. CNAME a.example.com.",
				"a.example.com. CNAME b.example.net.",
				"b.example.net. AAAA 2001:db8::1",
			},
		},
		{
			name: "CNAME query is not chased", qname: "www.example.com", qtype: dns.TypeCNAME,
			answer: []string{"www.example.com. CNAME a.example.com."},
		},
		{
			name: "chain ends without the type: just the CNAMEs", qname: "a.example.com", qtype: dns.TypeTXT,
			answer: []string{"a.example.com. CNAME b.example.net."},
		},
		{
			name: "chain leaves the data", qname: "dangling.example.com", qtype: dns.TypeA,
			answer: []string{"dangling.example.com. CNAME nowhere.example.org."},
		},
		{
			name: "NXDOMAIN with the zone's SOA", qname: "missing.example.com", qtype: dns.TypeA,
			rcode: dns.RcodeNameError,
			ns:    []string{"example.com. SOA ns1.example.com. hostmaster.example.com. 1 3600 600 604800 300"},
		},
		{
			name: "closest zone's SOA", qname: "y.sub.example.com", qtype: dns.TypeA,
			rcode: dns.RcodeNameError,
			ns:    []string{"sub.example.com. SOA ns1.sub.example.com. hostmaster.sub.example.com. 1 3600 600 604800 30"},
		},
		{
			name: "NODATA for another type", qname: "b.example.net", qtype: dns.TypeTXT,
		},
		{
			name: "NODATA for an empty non-terminal", qname: "ent.example.com", qtype: dns.TypeA,
			ns: []string{"example.com. SOA ns1.example.com. hostmaster.example.com. 1 3600 600 604800 300"},
		},
		{
			name: "NXDOMAIN without any SOA", qname: "nothing.example.org", qtype: dns.TypeA,
			rcode: dns.RcodeNameError,
		},
		{
			name: "CAA set", qname: "example.com", qtype: dns.TypeCAA,
			answer: []string{
				`example.com. CAA 0 issue "letsencrypt.org"`,
				`example.com. CAA 128 iodef "mailto:a@example.com"`,
			},
		},
		{
			name: "SOA query at the apex", qname: "sub.example.com", qtype: dns.TypeSOA,
			answer: []string{"sub.example.com. SOA ns1.sub.example.com. hostmaster.sub.example.com. 1 3600 600 604800 30"},
		},
		{
			name: "unknown type is NODATA", qname: "example.com", qtype: dns.TypeHINFO,
			ns: []string{"example.com. SOA ns1.example.com. hostmaster.example.com. 1 3600 600 604800 300"},
		},
		{
			name: "CNAME loop ends after 8 hops", qname: "loop1.example.com", qtype: dns.TypeA,
			answer: []string{
				"loop1.example.com. CNAME loop2.example.com.", "loop2.example.com. CNAME loop1.example.com.",
				"loop1.example.com. CNAME loop2.example.com.", "loop2.example.com. CNAME loop1.example.com.",
				"loop1.example.com. CNAME loop2.example.com.", "loop2.example.com. CNAME loop1.example.com.",
				"loop1.example.com. CNAME loop2.example.com.", "loop2.example.com. CNAME loop1.example.com.",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, network := range []string{"udp", "tcp"} {
				r := ask(t, s, network, tt.qname, tt.qtype)
				if got, want := r.Rcode, tt.rcode; got != want {
					t.Errorf("%s: rcode = %s, want %s", network, dns.RcodeToString[got], dns.RcodeToString[want])
				}
				if got := rrs(r.Answer); !slices.Equal(got, tt.answer) {
					t.Errorf("%s: answer = %q, want %q", network, got, tt.answer)
				}
				if got := rrs(r.Ns); !slices.Equal(got, tt.ns) {
					t.Errorf("%s: authority = %q, want %q", network, got, tt.ns)
				}
				if !r.RecursionAvailable || !r.RecursionDesired || !r.Response {
					t.Errorf("%s: flags RA=%v RD=%v QR=%v, want all set", network, r.RecursionAvailable, r.RecursionDesired, r.Response)
				}
			}
		})
	}
}

func TestEdits(t *testing.T) {
	s := Start(t)
	s.SetSOA("example.com", 300, 300)

	s.SetCNAME("e.example.com", "t.example.net")
	if got := rrs(ask(t, s, "udp", "e.example.com", dns.TypeA).Answer); len(got) != 1 {
		t.Fatalf("after SetCNAME: answer = %q, want the CNAME", got)
	}

	// SetA replaces the CNAME.
	s.SetA("e.example.com", "192.0.2.7")
	if got, want := rrs(ask(t, s, "udp", "e.example.com", dns.TypeA).Answer), []string{"e.example.com. A 192.0.2.7"}; !slices.Equal(got, want) {
		t.Errorf("after SetA: answer = %q, want %q", got, want)
	}

	// SetCAA appends, and keeps the addresses.
	s.SetCAA("e.example.com", 0, "issue", "a.example")
	s.SetCAA("e.example.com", 0, "issue", "b.example")
	if got := rrs(ask(t, s, "udp", "e.example.com", dns.TypeCAA).Answer); len(got) != 2 {
		t.Errorf("after two SetCAA: answer = %q, want 2 records", got)
	}
	if got := rrs(ask(t, s, "udp", "e.example.com", dns.TypeA).Answer); len(got) != 1 {
		t.Errorf("after SetCAA: A answer = %q, want the address kept", got)
	}

	// SetTXT replaces the TXT set, keeps the rest, and splits long values.
	s.SetTXT("e.example.com", "one", "two")
	s.SetTXT("e.example.com", "three", strings.Repeat("x", 300))
	txt := ask(t, s, "tcp", "e.example.com", dns.TypeTXT).Answer
	if len(txt) != 2 || !slices.Equal(txt[0].(*dns.TXT).Txt, []string{"three"}) ||
		!slices.Equal(txt[1].(*dns.TXT).Txt, []string{strings.Repeat("x", 255), strings.Repeat("x", 45)}) {
		t.Errorf("after SetTXT: answer = %q, want \"three\" and one record of two strings", rrs(txt))
	}
	if got := rrs(ask(t, s, "udp", "e.example.com", dns.TypeA).Answer); len(got) != 1 {
		t.Errorf("after SetTXT: A answer = %q, want the address kept", got)
	}
	s.SetTXT("e.example.com")
	if got := rrs(ask(t, s, "udp", "e.example.com", dns.TypeTXT).Answer); len(got) != 0 {
		t.Errorf("after SetTXT with no value: answer = %q, want none", got)
	}

	// Remove deletes every record: NXDOMAIN again.
	s.Remove("E.example.com.")
	if got := ask(t, s, "udp", "e.example.com", dns.TypeA).Rcode; got != dns.RcodeNameError {
		t.Errorf("after Remove: rcode = %s, want NXDOMAIN", dns.RcodeToString[got])
	}

	// A name below makes it an empty non-terminal until that name goes too.
	s.SetA("a.b.example.com", "192.0.2.8")
	if got := ask(t, s, "udp", "b.example.com", dns.TypeA).Rcode; got != dns.RcodeSuccess {
		t.Errorf("empty non-terminal: rcode = %s, want NOERROR", dns.RcodeToString[got])
	}
	s.Remove("a.b.example.com")
	if got := ask(t, s, "udp", "b.example.com", dns.TypeA).Rcode; got != dns.RcodeNameError {
		t.Errorf("after removing the only name below: rcode = %s, want NXDOMAIN", dns.RcodeToString[got])
	}

	// SetA with no address leaves the name without records.
	s.SetA("c.example.com", "192.0.2.9")
	s.SetA("c.example.com")
	if got := ask(t, s, "udp", "c.example.com", dns.TypeA).Rcode; got != dns.RcodeNameError {
		t.Errorf("after SetA with no address: rcode = %s, want NXDOMAIN", dns.RcodeToString[got])
	}
}

// TestScript plays a hostile DNS host: AAAA answered by a CNAME to a target while A answers
// an address of its own, and an A answer that changes after the first query.
func TestScript(t *testing.T) {
	s := Start(t)
	s.SetA("t.example.net", "192.0.2.1", "2001:db8::1")
	s.SetA("e.example.com", "192.0.2.99")

	s.SetScript("E.example.com.", dns.TypeAAAA, []string{"e.example.com. CNAME t.example.net."})
	s.SetScript("e.example.com", dns.TypeA,
		[]string{"e.example.com. A 192.0.2.5"},
		[]string{"e.example.com. A 127.0.0.2"})

	if got, want := rrs(ask(t, s, "udp", "e.example.com", dns.TypeAAAA).Answer), []string{
		"e.example.com. CNAME t.example.net.",
		"t.example.net. AAAA 2001:db8::1",
	}; !slices.Equal(got, want) {
		t.Errorf("scripted AAAA: answer = %q, want the CNAME chased into the zone %q", got, want)
	}
	for i, want := range []string{"192.0.2.5", "127.0.0.2", "127.0.0.2"} {
		r := ask(t, s, "tcp", "e.example.com", dns.TypeA)
		if got := rrs(r.Answer); !slices.Equal(got, []string{"e.example.com. A " + want}) {
			t.Errorf("scripted A, query %d: answer = %q, want A %s", i+1, got, want)
		}
		if len(r.Answer) == 1 && r.Answer[0].Header().Ttl != 0 {
			t.Errorf("scripted A, query %d: TTL %d, want 0", i+1, r.Answer[0].Header().Ttl)
		}
	}
	if got := s.ScriptAsked("e.example.com", dns.TypeA); got != 3 {
		t.Errorf("ScriptAsked(A) = %d, want 3", got)
	}
	if got := s.ScriptAsked("e.example.com", dns.TypeAAAA); got != 1 {
		t.Errorf("ScriptAsked(AAAA) = %d, want 1", got)
	}
	// Other types still come from the zone.
	if got := ask(t, s, "udp", "e.example.com", dns.TypeTXT); got.Rcode != dns.RcodeSuccess || len(got.Answer) != 0 {
		t.Errorf("unscripted TXT: rcode %s, %d records; want NODATA", dns.RcodeToString[got.Rcode], len(got.Answer))
	}

	// No answers removes the script: the zone answers again.
	s.SetScript("e.example.com", dns.TypeA)
	if got, want := rrs(ask(t, s, "udp", "e.example.com", dns.TypeA).Answer), []string{"e.example.com. A 192.0.2.99"}; !slices.Equal(got, want) {
		t.Errorf("after removing the script: answer = %q, want %q", got, want)
	}
	if got := s.ScriptAsked("e.example.com", dns.TypeA); got != 0 {
		t.Errorf("ScriptAsked after removal = %d, want 0", got)
	}
}

func TestRcode(t *testing.T) {
	s := Start(t)
	s.SetA("t.example.net", "192.0.2.1")
	s.SetCNAME("e.example.com", "t.example.net")
	s.SetRcode("t.example.net", dns.RcodeServerFailure)
	s.SetRcode("refused.example", dns.RcodeRefused)

	if got := ask(t, s, "udp", "e.example.com", dns.TypeA); got.Rcode != dns.RcodeServerFailure || len(got.Answer) != 0 {
		t.Errorf("through a CNAME: rcode %s, %d records; want SERVFAIL and none", dns.RcodeToString[got.Rcode], len(got.Answer))
	}
	if got := ask(t, s, "tcp", "refused.example", dns.TypeCAA).Rcode; got != dns.RcodeRefused {
		t.Errorf("rcode = %s, want REFUSED", dns.RcodeToString[got])
	}
	s.SetRcode("t.example.net", dns.RcodeSuccess)
	if got := ask(t, s, "udp", "e.example.com", dns.TypeA); got.Rcode != dns.RcodeSuccess || len(got.Answer) != 2 {
		t.Errorf("after clearing: rcode %s, %d records; want NOERROR and 2", dns.RcodeToString[got.Rcode], len(got.Answer))
	}
}

func TestTruncateUDP(t *testing.T) {
	s := Start(t)
	s.SetA("e.example.com", "192.0.2.1")
	s.SetTruncateUDP(true)
	r := ask(t, s, "udp", "e.example.com", dns.TypeA)
	if !r.Truncated || len(r.Answer) != 0 {
		t.Errorf("UDP: TC=%v with %d records, want TC and none", r.Truncated, len(r.Answer))
	}
	r = ask(t, s, "tcp", "e.example.com", dns.TypeA)
	if r.Truncated || len(r.Answer) != 1 {
		t.Errorf("TCP: TC=%v with %d records, want the full answer", r.Truncated, len(r.Answer))
	}
	s.SetTruncateUDP(false)
	if r := ask(t, s, "udp", "e.example.com", dns.TypeA); r.Truncated || len(r.Answer) != 1 {
		t.Errorf("UDP after turning it off: TC=%v with %d records", r.Truncated, len(r.Answer))
	}
	if got, want := s.Queries(), 3; got != want {
		t.Errorf("Queries() = %d, want %d", got, want)
	}
}

// TestLargeAnswerTruncates checks that an answer too big for the client's UDP buffer is cut
// with TC set, as a real resolver does.
func TestLargeAnswerTruncates(t *testing.T) {
	s := Start(t)
	var ips []string
	for i := range 60 {
		ips = append(ips, fmt.Sprintf("192.0.2.%d", i+1))
	}
	s.SetA("big.example.com", ips...)
	if r := ask(t, s, "udp", "big.example.com", dns.TypeA); !r.Truncated {
		t.Errorf("UDP without EDNS0: TC not set for %d records", len(r.Answer))
	}
	if r := ask(t, s, "tcp", "big.example.com", dns.TypeA); r.Truncated || len(r.Answer) != 60 {
		t.Errorf("TCP: TC=%v with %d records, want all 60", r.Truncated, len(r.Answer))
	}
}

func TestDelayAndStop(t *testing.T) {
	s := Start(t)
	s.SetA("e.example.com", "192.0.2.1")
	s.SetDelay(200 * time.Millisecond)
	start := time.Now()
	ask(t, s, "udp", "e.example.com", dns.TypeA)
	if got := time.Since(start); got < 200*time.Millisecond {
		t.Errorf("answer came after %v, want at least the 200ms delay", got)
	}

	// Stop does not wait out a pending delayed answer, and the server then answers nothing.
	s.SetDelay(time.Hour)
	go func() {
		c := &dns.Client{Timeout: 5 * time.Second}
		m := new(dns.Msg)
		m.SetQuestion("e.example.com.", dns.TypeA)
		_, _, _ = c.Exchange(m, s.Addr())
	}()
	for deadline := time.Now().Add(30 * time.Second); s.Queries() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the second query did not reach the server within 30s (%d queries)", s.Queries())
		}
	}
	start = time.Now()
	s.Stop()
	s.Stop() // a second Stop, as t.Cleanup will do, is harmless
	// Stop gives the sockets stopShutdownTimeout to finish their
	// handlers: one that waited out the pending answer would take all
	// of it. One that does not takes milliseconds; the bound leaves a
	// loaded machine most of the timeout.
	if got, bound := time.Since(start), stopShutdownTimeout*4/5; got > bound {
		t.Errorf("Stop took %v, want under %v: it waited for the delayed answer", got, bound)
	}
	for _, network := range []string{"udp", "tcp"} {
		c := &dns.Client{Net: network, Timeout: 300 * time.Millisecond}
		m := new(dns.Msg)
		m.SetQuestion("e.example.com.", dns.TypeA)
		if _, _, err := c.Exchange(m, s.Addr()); err == nil {
			t.Errorf("%s query after Stop succeeded", network)
		}
	}
}

// TestConcurrentEdits runs edits and queries at once; the race detector is the assertion.
func TestConcurrentEdits(t *testing.T) {
	s := Start(t)
	s.SetSOA("example.com", 60, 60)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Go(func() {
			for j := range 50 {
				switch (i + j) % 4 {
				case 0:
					s.SetCNAME("e.example.com", "t.example.net")
				case 1:
					s.SetA("e.example.com", "192.0.2.1", "2001:db8::1")
				case 2:
					s.Remove("e.example.com")
				case 3:
					s.SetCAA("e.example.com", 0, "issue", "letsencrypt.org")
				}
			}
		})
		wg.Go(func() {
			c := &dns.Client{Timeout: 2 * time.Second}
			for range 50 {
				m := new(dns.Msg)
				m.SetQuestion("e.example.com.", dns.TypeA)
				if _, _, err := c.Exchange(m, s.Addr()); err != nil {
					t.Errorf("query: %v", err)
					return
				}
			}
		})
	}
	wg.Wait()
	if got, want := s.Queries(), 200; got != want {
		t.Errorf("Queries() = %d, want %d", got, want)
	}
}

// TestDelegate hands a zone to a second server, as the tests of DNS-01 through edgeproxy's own
// zone do: a chase from the first server's data into the zone continues there, names directly
// in the zone are answered there (negative answers with that server's SOA), the zone's parents
// stay the first server's, and a delegation to a server that is down answers SERVFAIL.
func TestDelegate(t *testing.T) {
	resolver, zone := Start(t), Start(t)
	zone.SetSOA("proxy.test", 60, 30)
	zone.SetTXT("_acme-challenge.abc.proxy.test", "token-1")
	zone.SetA("abc.proxy.test", "192.0.2.7")
	// The resolver's own copy of a name in the zone is not what it answers once delegated.
	resolver.SetA("abc.proxy.test", "192.0.2.99")
	resolver.SetCNAME("_acme-challenge.e.example.com", "_acme-challenge.abc.proxy.test")
	resolver.SetCAA("test", 0, "issue", "ca.example")
	resolver.Delegate("PROXY.test.", zone.Addr())

	r := ask(t, resolver, "udp", "_acme-challenge.e.example.com", dns.TypeTXT)
	if got, want := rrs(r.Answer), []string{
		"_acme-challenge.e.example.com. CNAME _acme-challenge.abc.proxy.test.",
		`_acme-challenge.abc.proxy.test. TXT "token-1"`,
	}; !slices.Equal(got, want) || r.Rcode != dns.RcodeSuccess {
		t.Errorf("TXT through the delegation: %s %q, want NOERROR %q", dns.RcodeToString[r.Rcode], got, want)
	}
	r = ask(t, resolver, "tcp", "abc.proxy.test", dns.TypeA)
	if got, want := rrs(r.Answer), []string{"abc.proxy.test. A 192.0.2.7"}; !slices.Equal(got, want) {
		t.Errorf("A in the delegated zone: %q, want %q", got, want)
	}
	r = ask(t, resolver, "udp", "nothing.proxy.test", dns.TypeA)
	if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 || r.Ns[0].Header().Name != "proxy.test." {
		t.Errorf("a name the zone lacks: %s, authority %q; want NXDOMAIN with the zone's SOA", dns.RcodeToString[r.Rcode], rrs(r.Ns))
	}
	// A CAA climb from the zone reaches its parent, which the resolver answers itself.
	r = ask(t, resolver, "udp", "test", dns.TypeCAA)
	if got, want := rrs(r.Answer), []string{`test. CAA 0 issue "ca.example"`}; !slices.Equal(got, want) {
		t.Errorf("CAA of the zone's parent: %q, want %q", got, want)
	}

	zone.Stop()
	if r := ask(t, resolver, "udp", "_acme-challenge.e.example.com", dns.TypeTXT); r.Rcode != dns.RcodeServerFailure {
		t.Errorf("with the zone's server down: %s, want SERVFAIL", dns.RcodeToString[r.Rcode])
	}
	resolver.Delegate("proxy.test", "")
	r = ask(t, resolver, "udp", "abc.proxy.test", dns.TypeA)
	if got, want := rrs(r.Answer), []string{"abc.proxy.test. A 192.0.2.99"}; !slices.Equal(got, want) {
		t.Errorf("A once the delegation is removed: %q, want the resolver's own %q", got, want)
	}
}
