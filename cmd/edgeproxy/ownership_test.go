package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

type ownedRecord struct {
	ID          string  `json:"id"`
	Domain      string  `json:"domain"`
	TargetCNAME string  `json:"target_cname"`
	Status      string  `json:"status"`
	Message     *string `json:"message"`
	Ownership   struct {
		Name, Type, Value string
	} `json:"ownership"`
}

// TestSquattingAndApexThroughTheBinary replays, against the real binary,
// the squatting a tenant could do when equal addresses were enough: it
// registers a domain it does not control whose A record already equals the
// edge's (no CNAME), and a zone apex the same way. Both stay waiting, each
// message giving the exact ownership TXT record to add, and nothing is
// served; once the TXT records are published (as only the domains' owner
// could), both go valid and are served, the apex included.
func TestSquattingAndApexThroughTheBinary(t *testing.T) {
	w := newACMEWorld(t)
	s := startServer(t, t.TempDir(), w.args...)
	key := s.key(t)

	var recs []ownedRecord
	for _, domain := range []string{"e.flat.victim.com", "victim-shop.com"} {
		var rec ownedRecord
		if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`, &rec); code != 201 {
			t.Fatalf("create %s: %d", domain, code)
		}
		if rec.Ownership.Name != "_edgeproxy."+domain || rec.Ownership.Type != "TXT" || !strings.HasPrefix(rec.Ownership.Value, "edgeproxy-verification=") {
			t.Fatalf("create %s: ownership %+v", domain, rec.Ownership)
		}
		w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
		w.dns.SetA(domain, "127.0.0.1") // the edge's address; no CNAME
		recs = append(recs, rec)
	}
	for _, rec := range recs {
		want := fmt.Sprintf("%s TXT %q", rec.Ownership.Name, rec.Ownership.Value)
		var got ownedRecord
		deadline := time.Now().Add(60 * time.Second)
		for {
			if code := s.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code == 200 &&
				got.Message != nil && strings.Contains(*got.Message, want) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s never asked for %s (last %+v)\n%s", rec.Domain, want, got, s.stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if got.Status != "waiting" {
			t.Errorf("%s with the edge's addresses only: %s, want waiting", rec.Domain, got.Status)
		}
		if err := w.handshake(t, rec.Domain); err == nil {
			t.Errorf("%s is served without proof of ownership", rec.Domain)
		}
	}
	if got := w.pebble.Orders(); got != 0 {
		t.Errorf("%d certificate orders for unproven domains, want 0", got)
	}

	for _, rec := range recs {
		w.dns.SetTXT(rec.Ownership.Name, rec.Ownership.Value)
	}
	for _, rec := range recs {
		s.waitStatus(t, key, rec.ID, "valid")
		if err := w.handshake(t, rec.Domain); err != nil {
			t.Errorf("handshake for %s once proven: %v", rec.Domain, err)
		}
	}
}
