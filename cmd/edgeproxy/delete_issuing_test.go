package main

import (
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
)

// TestDeleteWhileOrderHangs deletes a record whose certificate order is
// stuck (the CA accepts connections and never answers) and checks that the
// deletion does not wait for the order: the record is gone long before the
// order's own three-minute budget. The chaos test found records deleted
// mid-order sitting in deleting, still counted against the organization's
// limit, until the order gave up.
func TestDeleteWhileOrderHangs(t *testing.T) {
	hung := make(chan struct{})
	var arrived atomic.Int64 // requests the CA holds
	ca := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		select {
		case <-hung:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(ca.Close)
	t.Cleanup(func() { close(hung) }) // runs before ca.Close
	root := filepath.Join(t.TempDir(), "ca.pem")
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Certificate().Raw})
	if err := os.WriteFile(root, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	dns := dnstest.Start(t)
	s := startServer(t, t.TempDir(), "--acme-ca", ca.URL+"/directory", "--acme-ca-root", root,
		"--dns-resolvers", dns.Addr(), "--recheck-max", "300ms")
	key := s.key(t)

	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.hung.example.com"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	dns.SetA(rec.TargetCNAME, "127.0.0.1")
	dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	s.waitStatus(t, key, rec.ID, "issuing")
	// The order is under way, and hangs: a request of it is held by the CA.
	for deadline := time.Now().Add(30 * time.Second); arrived.Load() == 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no request reached the CA within 30s of the record issuing\n%s", s.stderr)
		}
	}

	if code := s.request(t, key, "DELETE", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	start := time.Now()
	for s.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil) != 404 {
		// Far below the order's 3-minute budget, far above the few
		// milliseconds the deletion takes once the order is cancelled.
		if time.Since(start) > time.Minute {
			t.Fatalf("record still there a minute after its DELETE\n%s", s.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("gone %v after the DELETE", time.Since(start).Round(time.Millisecond))
}
