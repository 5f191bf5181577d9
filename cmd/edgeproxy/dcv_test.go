package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// TestCertificateBeforeTrafficThroughTheBinary is the migration without
// downtime against the real binary and Pebble validating with DNS-01: the
// binary serves the target zone (--dns-addr), and the loopback resolver
// Pebble and the binary use hands that zone (proxy.localhost, --dev's
// base) to it, as the operator's NS records would. A record whose domain
// has no record at all (its traffic "still at the old proxy"; HTTP-01 and
// TLS-ALPN-01 are impossible) gets its certificate once its customer adds
// the dcv_delegation CNAME: Pebble follows it into edgeproxy's zone and
// finds the challenge TXT there. The record is valid and served with
// traffic not pointed, its message saying so and naming the CNAME to add;
// once that CNAME is added the message clears, the certificate is still
// served, and no new order is placed.
func TestCertificateBeforeTrafficThroughTheBinary(t *testing.T) {
	w := newACMEWorld(t)
	dnsAddr := testbin.FreeAddr(t)
	s := startServer(t, t.TempDir(), append(w.args, "--dns-addr", dnsAddr, "--edge-ips", "127.0.0.1",
		"--dns-ns", "ns1.example.org")...)
	w.dns.Delegate("proxy.localhost", dnsAddr)
	key := s.key(t)

	const domain = "e.shop.example.com"
	var rec struct {
		recordJSON
		DCVDelegation struct{ Name, Type, Value string } `json:"dcv_delegation"`
	}
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	path := "/api/organizations/@current/proxy_records/" + rec.ID + "/"
	get := func() recordJSON {
		var r recordJSON
		if code := s.request(t, key, "GET", path, "", &r); code != 200 {
			t.Fatalf("get: %d", code)
		}
		return r
	}
	addCNAME := fmt.Sprintf("Add this record: %s CNAME %s", domain, rec.TargetCNAME)
	waitUntil(t, "the waiting message", func() bool {
		r := get()
		return r.Message != nil && strings.Contains(*r.Message, addCNAME)
	})

	// The customer adds the delegation.
	start := time.Now()
	w.dns.SetCNAME(rec.DCVDelegation.Name, rec.DCVDelegation.Value)
	r := s.waitStatus(t, key, rec.ID, "valid")
	t.Logf("from adding the dcv_delegation CNAME to valid against Pebble (DNS-01 through the binary's zone): %s", time.Since(start).Round(time.Millisecond))
	if r.Message == nil || !strings.Contains(*r.Message, "traffic does not come here yet") || !strings.Contains(*r.Message, addCNAME) {
		t.Errorf("valid before traffic, message %v: want it to say traffic is not pointed and give %q", msgOf(r.Message), addCNAME)
	}
	if err := w.handshake(t, domain); err != nil {
		t.Fatalf("handshake before traffic points here: %v", err)
	}
	if got := w.pebble.Orders(); got != 1 {
		t.Errorf("%d orders, want 1", got)
	}
	// The challenge's TXT value was removed from the zone after the order.
	c := &dns.Client{Net: "tcp", Timeout: 5 * time.Second}
	resp, _, err := c.Exchange(new(dns.Msg).SetQuestion(dns.Fqdn(rec.DCVDelegation.Value), dns.TypeTXT), dnsAddr)
	if err != nil || resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
		t.Errorf("TXT %s after the order: %v %v, want an empty NOERROR answer", rec.DCVDelegation.Value, resp, err)
	}

	// The customer switches its traffic.
	w.dns.SetCNAME(domain, rec.TargetCNAME)
	waitUntil(t, "the message to clear", func() bool {
		r := get()
		return r.Status == "valid" && r.Message == nil
	})
	if err := w.handshake(t, domain); err != nil {
		t.Errorf("handshake once traffic points here: %v", err)
	}
	if got := w.pebble.Orders(); got != 1 {
		t.Errorf("%d orders once traffic points here, want still 1", got)
	}
}

func msgOf(m *string) string {
	if m == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%q", *m)
}
