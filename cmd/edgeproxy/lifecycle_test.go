package main

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

// acmeWorld is what the binary talks to in these tests: a DNS server and
// Pebble, with the edge's HTTP and TLS addresses fixed across restarts.
type acmeWorld struct {
	dns       *dnstest.Server
	pebble    *certstest.Pebble
	httpAddr  string
	httpsAddr string
	args      []string
}

func newACMEWorld(t *testing.T) *acmeWorld {
	t.Helper()
	w := &acmeWorld{dns: dnstest.Start(t), httpAddr: testbin.FreeAddr(t), httpsAddr: testbin.FreeAddr(t)}
	_, httpPort, _ := net.SplitHostPort(w.httpAddr)
	_, httpsPort, _ := net.SplitHostPort(w.httpsAddr)
	w.pebble = certstest.StartPebble(t, w.dns.Addr(), atoi(httpPort), atoi(httpsPort))
	root := filepath.Join(t.TempDir(), "pebble.pem")
	if err := os.WriteFile(root, w.pebble.ServerCertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	w.args = []string{"--http-addr", w.httpAddr, "--https-addr", w.httpsAddr,
		"--acme-ca", w.pebble.DirectoryURL(), "--acme-ca-root", root,
		"--acme-caa-identities", certstest.CAAIdentity, "--dns-resolvers", w.dns.Addr(),
		"--recheck-max", "300ms"}
	return w
}

func atoi(s string) int {
	n := 0
	for _, c := range s {
		n = n*10 + int(c-'0')
	}
	return n
}

type recordJSON struct {
	ID          string  `json:"id"`
	Domain      string  `json:"domain"`
	TargetCNAME string  `json:"target_cname"`
	Status      string  `json:"status"`
	Message     *string `json:"message"`
}

func (s *server) waitStatus(t *testing.T, key, id, status string) recordJSON {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var rec recordJSON
	for time.Now().Before(deadline) {
		code := s.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+id+"/", "", &rec)
		if code == 200 && rec.Status == status {
			return rec
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("record %s never became %s (last %+v)\n%s", id, status, rec, s.stderr)
	return rec
}

func (s *server) kill9(t *testing.T) {
	t.Helper()
	s.cmd.Process.Kill()
	<-s.done
	s.done <- nil // for the cleanup
}

func (w *acmeWorld) handshake(t *testing.T, domain string) error {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", w.httpsAddr,
		&tls.Config{ServerName: domain, RootCAs: w.pebble.IssuerRoots(t)})
	if err == nil {
		conn.Close()
	}
	return err
}

// TestRestartMidIssuing kills the server while a record is issuing (the CA
// is down, so it stays there) and checks that after a restart, with the CA
// back, the record finishes: valid and served.
func TestRestartMidIssuing(t *testing.T) {
	w := newACMEWorld(t)
	dir := t.TempDir()
	s := startServer(t, dir, w.args...)
	key := s.key(t)
	w.pebble.SetDown(true)

	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.issuing.example.com"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	s.waitStatus(t, key, rec.ID, "issuing")
	s.kill9(t)

	w.pebble.SetDown(false)
	s2 := startServer(t, dir, w.args...)
	s2.waitStatus(t, key, rec.ID, "valid")
	if err := w.handshake(t, rec.Domain); err != nil {
		t.Errorf("handshake after restart: %v", err)
	}
}

// TestRestartMidDeleting leaves a served record in deleting, as a crash
// right after the API accepted its DELETE would, and checks that the
// restarted server finishes the deletion: the record goes and its
// handshake fails; its certificate stays in storage, unserved, with its
// retention started.
func TestRestartMidDeleting(t *testing.T) {
	w := newACMEWorld(t)
	dir := t.TempDir()
	s := startServer(t, dir, w.args...)
	key := s.key(t)
	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.deleting.example.com"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	s.waitStatus(t, key, rec.ID, "valid")
	s.kill9(t)

	// What the DELETE commits, written while no server runs: the crash
	// came before the engine could act on it.
	st, err := store.Open(filepath.Join(dir, "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := st.Mutate(rec.ID, func(r *store.Record) (store.Op, error) {
		r.Status, r.Message, r.NextCheckAt = store.StatusDeleting, nil, st.Now()
		return store.OpSave, nil
	}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	s2 := startServer(t, dir, w.args...)
	deadline := time.Now().Add(30 * time.Second)
	for s2.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil) != 404 {
		if time.Now().After(deadline) {
			t.Fatalf("record still there 30s after restart\n%s", s2.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := w.handshake(t, rec.Domain); err == nil {
		t.Error("handshake for the deleted domain succeeded")
	}
	s2.kill9(t)

	st, err = store.Open(filepath.Join(dir, "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	cm, err := certs.New(st, certs.Config{CA: w.pebble.DirectoryURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	stored, err := cm.StoredDomains(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(stored, rec.Domain) {
		t.Errorf("certificate of the deleted domain not kept for the retention: %v", stored)
	}
	if released, err := st.ReleasedDomains(); err != nil || released[rec.Domain].IsZero() {
		t.Errorf("ReleasedDomains = %v, %v; want %s with its retention started", released, err, rec.Domain)
	}
}
