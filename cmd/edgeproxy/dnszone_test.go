package main

import (
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// TestServeTargetZone runs `serve --dev --dns-addr …` and asks its zone
// over UDP and TCP, as a resolver would once the operator delegated
// proxy.localhost: a record created through the API answers the edge
// addresses, the apex its SOA and NS, other names NXDOMAIN, names outside
// REFUSED, and the record's name is NXDOMAIN again once it is deleted.
func TestServeTargetZone(t *testing.T) {
	t.Parallel()
	dnsAddr := testbin.FreeAddr(t)
	s := startServer(t, t.TempDir(), "--dns-addr", dnsAddr, "--edge-ips", "192.0.2.10,2001:db8::10",
		"--dns-ns", "ns1.example.net,ns2.example.org")
	ask := func(network, name string, qtype uint16) *dns.Msg {
		t.Helper()
		c := &dns.Client{Net: network, Timeout: 5 * time.Second}
		resp, _, err := c.Exchange(new(dns.Msg).SetQuestion(name, qtype), dnsAddr)
		if err != nil {
			t.Fatalf("%s %s %s: %v", network, name, dns.TypeToString[qtype], err)
		}
		return resp
	}

	soa := ask("udp", "proxy.localhost.", dns.TypeSOA)
	if len(soa.Answer) != 1 || !soa.Authoritative || soa.Answer[0].(*dns.SOA).Ns != "ns1.example.net." {
		t.Errorf("SOA of proxy.localhost: %v", soa)
	}
	var ns []string
	for _, rr := range ask("tcp", "proxy.localhost.", dns.TypeNS).Answer {
		ns = append(ns, rr.(*dns.NS).Ns)
	}
	if want := []string{"ns1.example.net.", "ns2.example.org."}; !slices.Equal(ns, want) {
		t.Errorf("NS = %q, want %q", ns, want)
	}
	if resp := ask("udp", "example.com.", dns.TypeA); resp.Rcode != dns.RcodeRefused {
		t.Errorf("A example.com: %s, want REFUSED", dns.RcodeToString[resp.Rcode])
	}

	var rec struct {
		ID          string `json:"id"`
		TargetCNAME string `json:"target_cname"`
	}
	key := s.key(t)
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.shop.example.com"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	name := rec.TargetCNAME + "."
	waitUntil(t, "the record's target to answer", func() bool {
		resp := ask("udp", name, dns.TypeA)
		return len(resp.Answer) == 1 && resp.Answer[0].(*dns.A).A.String() == "192.0.2.10" && resp.Authoritative
	})
	if resp := ask("tcp", strings.ToUpper(name), dns.TypeAAAA); len(resp.Answer) != 1 || resp.Answer[0].(*dns.AAAA).AAAA.String() != "2001:db8::10" {
		t.Errorf("AAAA %s: %v", name, resp)
	}
	if resp := ask("udp", "0123456789abcdef0123.proxy.localhost.", dns.TypeA); resp.Rcode != dns.RcodeNameError || len(resp.Ns) != 1 {
		t.Errorf("A of a name no record has: %s with authority %v, want NXDOMAIN with the SOA", dns.RcodeToString[resp.Rcode], resp.Ns)
	}
	wantMetric(t, s.api, `edgeproxy_dns_queries_total{rcode="REFUSED"} 1`)

	// A waiting record is deleted at once.
	if code := s.request(t, key, "DELETE", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	waitUntil(t, "the deleted record's target to be NXDOMAIN", func() bool {
		return ask("udp", name, dns.TypeA).Rcode == dns.RcodeNameError
	})

	// SIGTERM stops the DNS server with the others, and the exit is clean.
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup's wait
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, s.stderr)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit 60s after SIGTERM\n%s", s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "dns_addr="+dnsAddr) {
		t.Errorf("the start line does not name the DNS address %s:\n%s", dnsAddr, s.stderr)
	}
}

// waitUntil polls cond until it holds, for at most 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 20s for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
