package certs

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"log/slog"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testcert"
	"github.com/edgeproxy/edgeproxy/store"
)

// edge is the test's stand-in for the proxy: real loopback HTTP and TLS
// listeners that answer ACME challenges through the current Manager, and
// a Pebble validating against them through a loopback DNS server.
type edge struct {
	t       *testing.T
	st      *store.Store
	dns     *dnstest.Server
	pebble  *certstest.Pebble
	tlsAddr string
	// httpPort and tlsPort are the listeners' ports.
	httpPort, tlsPort int
	manager           atomic.Pointer[Manager]
}

func newEdge(t *testing.T) *edge {
	t.Helper()
	e := &edge{t: t, st: openStore(t, store.Options{}), dns: dnstest.Start(t)}
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e.tlsAddr = tlsLn.Addr().String()
	e.httpPort, e.tlsPort = httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port
	e.pebble = certstest.StartPebble(t, e.dns.Addr(), e.httpPort, e.tlsPort)

	plain := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if m := e.manager.Load(); m != nil && m.HandleHTTPChallenge(w, r) {
			return
		}
		http.NotFound(w, r)
	})}
	go plain.Serve(httpLn)
	t.Cleanup(func() { plain.Close() })

	secure := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintln(w, "hello")
	})}
	secure.ErrorLog = discardLog()
	tlsConf := e.newManager(t).TLSConfig()
	tlsConf.GetCertificate = func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		return e.manager.Load().GetCertificate(hello)
	}
	go secure.Serve(tls.NewListener(tlsLn, tlsConf))
	t.Cleanup(func() { secure.Close() })
	return e
}

// newManager makes a Manager on the edge's store and Pebble and makes it
// the one the listeners use.
func (e *edge) newManager(t *testing.T) *Manager {
	t.Helper()
	w := newTestWriter(t) // its cleanup runs after the manager's Close
	m, err := New(e.st, Config{
		CA:       e.pebble.DirectoryURL(),
		CARoots:  e.pebble.ServerRoots(),
		HTTPPort: e.httpPort,
		TLSPort:  e.tlsPort,
		Logger:   slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	e.manager.Store(m)
	return m
}

// point makes the names resolve to the edge, as the customer's CNAME to the
// target does.
func (e *edge) point(names ...string) {
	for _, name := range names {
		e.dns.SetA(name, "127.0.0.1")
	}
}

// handshake connects to the edge with SNI name, trusting Pebble's issuing
// root, and returns the names of the certificate served.
func (e *edge) handshake(name string, alpn ...string) ([]string, error) {
	d := &tls.Dialer{Config: &tls.Config{
		ServerName: name,
		RootCAs:    e.pebble.IssuerRoots(e.t),
		NextProtos: alpn,
		// No SNI: the client cannot verify anything, the server must
		// still refuse.
		InsecureSkipVerify: name == "",
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := d.DialContext(ctx, "tcp", e.tlsAddr)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.(*tls.Conn).ConnectionState().PeerCertificates[0].DNSNames, nil
}

func (e *edge) mustServe(name string) {
	e.t.Helper()
	names, err := e.handshake(name)
	if err != nil {
		e.t.Fatalf("handshake for %s: %v", name, err)
	}
	if !reflect.DeepEqual(names, []string{strings.ToLower(name)}) {
		e.t.Fatalf("handshake for %s got a certificate for %v", name, names)
	}
}

func (e *edge) mustRefuse(name string) {
	e.t.Helper()
	if names, err := e.handshake(name); err == nil {
		e.t.Fatalf("handshake for %s succeeded with a certificate for %v", name, names)
	}
}

func obtainCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// TestLifecycle: obtain, serve only when allowed, survive a restart with
// no ACME traffic, drop.
func TestLifecycle(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	m := e.manager.Load()
	ctx := obtainCtx(t)
	const name = "e.example.com"
	e.point(name)

	notAfter, err := m.Obtain(ctx, name)
	if err != nil {
		t.Fatalf("Obtain: %v", err)
	}
	if left := time.Until(notAfter); left < 80*24*time.Hour || left > 91*24*time.Hour {
		t.Errorf("Obtain: certificate expires in %v, want about 90 days", left)
	}
	orders := e.pebble.Orders()
	if orders == 0 {
		t.Fatal("Obtain made no order")
	}
	if got, ok := m.Info(name); !ok || !got.Equal(notAfter) {
		t.Errorf("Info = %v, %v; want %v, true", got, ok, notAfter)
	}

	// Cached but not on the allowlist: refused.
	e.mustRefuse(name)
	m.Serve(name, true)
	e.mustServe(name)
	e.mustServe("E.Example.COM")

	// An unknown name fails the handshake and asks the CA for nothing.
	e.mustRefuse("random.example.com")
	e.mustRefuse("")
	// A TLS-ALPN-01 hello with no challenge pending is refused too.
	if _, err := e.handshake(name, "acme-tls/1"); err == nil {
		t.Error("TLS-ALPN-01 hello with no challenge pending succeeded")
	}
	if got := e.pebble.Orders(); got != orders {
		t.Errorf("handshakes made %d orders", got-orders)
	}
	stats := m.Stats()
	if stats.HandshakesServed < 2 || stats.HandshakesRefused < 4 {
		t.Errorf("Stats = %+v", stats)
	}

	// Obtain of a held certificate asks for nothing.
	if again, err := m.Obtain(ctx, name); err != nil || !again.Equal(notAfter) {
		t.Errorf("second Obtain = %v, %v; want %v", again, err, notAfter)
	}
	if got := e.pebble.Orders(); got != orders {
		t.Errorf("second Obtain made %d orders", got-orders)
	}
	if got, err := m.StoredDomains(ctx); err != nil || !reflect.DeepEqual(got, []string{name}) {
		t.Errorf("StoredDomains = %v, %v", got, err)
	}

	// Allowlist off: refused again.
	m.Serve(name, false)
	e.mustRefuse(name)

	// A restart: a new Manager on the same store loads the certificate
	// from storage, with no order.
	m.Close()
	m2 := e.newManager(t)
	e.mustRefuse(name) // nothing loaded, nothing served yet
	loaded, err := m2.Load(ctx, name)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !loaded.Equal(notAfter) {
		t.Errorf("Load = %v, want %v", loaded, notAfter)
	}
	m2.ServeOnly([]string{name, "other.example.com"})
	e.mustServe(name)
	if got := e.pebble.Orders(); got != orders {
		t.Errorf("restart and Load made %d orders", got-orders)
	}
	if _, err := m2.Load(ctx, "nothing.example.com"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a domain with nothing stored: %v, want fs.ErrNotExist", err)
	}
	e.mustRefuse("other.example.com") // served, but no certificate

	// Drop: gone from the cache and from storage.
	if err := m2.Drop(ctx, name); err != nil {
		t.Fatalf("Drop: %v", err)
	}
	e.mustRefuse(name)
	if _, ok := m2.Info(name); ok {
		t.Error("Info finds a dropped certificate")
	}
	if got, err := m2.StoredDomains(ctx); err != nil || len(got) != 0 {
		t.Errorf("StoredDomains after Drop = %v, %v; want none", got, err)
	}
	keys, err := e.st.ListBlobs("", true)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range keys {
		if strings.Contains(k, name) {
			t.Errorf("storage still holds %s", k)
		}
	}
	if _, err := m2.Load(ctx, name); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load after Drop: %v, want fs.ErrNotExist", err)
	}
	if err := m2.Drop(ctx, name); err != nil {
		t.Errorf("second Drop: %v", err)
	}

	// And it can be had again.
	if _, err := m2.Obtain(ctx, name); err != nil {
		t.Fatalf("Obtain after Drop: %v", err)
	}
	e.mustServe(name)
	if got := e.pebble.Orders(); got <= orders {
		t.Error("Obtain after Drop made no order")
	}
}

// TestChallenges: each challenge type is answered by the edge's own
// listeners.
func TestChallenges(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	for _, tt := range []struct {
		name    string
		disable func(m *Manager)
	}{
		{"http-01", func(m *Manager) { m.acme.DisableTLSALPNChallenge = true }},
		{"tls-alpn-01", func(m *Manager) { m.acme.DisableHTTPChallenge = true }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			m := e.newManager(t)
			tt.disable(m)
			domain := tt.name + ".example.com"
			e.point(domain)
			if _, err := m.Obtain(obtainCtx(t), domain); err != nil {
				t.Fatalf("Obtain over %s: %v", tt.name, err)
			}
			m.Serve(domain, true)
			e.mustServe(domain)
			if tt.name == "tls-alpn-01" && m.Stats().HandshakesChallenge == 0 {
				t.Error("no TLS-ALPN-01 challenge handshake was answered")
			}
		})
	}
}

// TestObtainCAAForbidden: a CAA record naming another CA is a permanent
// refusal, with the CA's reason.
func TestObtainCAAForbidden(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	e.point("caa.example.com", "caa.example.net")
	e.dns.SetCAA("caa.example.com", 0, "issue", "other-ca.example")
	m := e.manager.Load()
	_, err := m.Obtain(obtainCtx(t), "caa.example.com")
	if err == nil {
		t.Fatal("Obtain succeeded despite CAA")
	}
	if !IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = false", err)
	}
	if got := Reason(err); !strings.Contains(got, "CAA record for caa.example.com prevents issuance") {
		t.Errorf("Reason = %q", got)
	}
	if got, _ := m.StoredDomains(context.Background()); len(got) != 0 {
		t.Errorf("StoredDomains = %v", got)
	}

	// A CAA set that names the CA, on a parent, allows it.
	e.dns.SetCAA("example.net", 0, "issue", certstest.CAAIdentity+"; validationmethods=http-01")
	if _, err := m.Obtain(obtainCtx(t), "caa.example.net"); err != nil {
		t.Errorf("Obtain with CAA naming the CA: %v", err)
	}
}

// TestObtainValidationFails: a name that does not resolve fails, but not
// permanently (the customer's DNS may still change).
func TestObtainValidationFails(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	// nx.example.com has no records: NXDOMAIN.
	_, err := e.manager.Load().Obtain(obtainCtx(t), "nx.example.com")
	if err == nil {
		t.Fatal("Obtain succeeded for a name that does not resolve")
	}
	if IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = true", err)
	}
	if Reason(err) == "" {
		t.Error("no reason")
	}
}

// TestObtainCADown: the CA unreachable is an error that is not permanent,
// returned well within the context; once the CA is back it works.
func TestObtainCADown(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	m := e.manager.Load()
	e.point("down.example.com")
	e.pebble.SetDown(true)
	start := time.Now()
	_, err := m.Obtain(obtainCtx(t), "down.example.com")
	if err == nil {
		t.Fatal("Obtain succeeded with the CA down")
	}
	if d := time.Since(start); d > 30*time.Second {
		t.Errorf("Obtain with the CA down took %v", d)
	}
	if IsPermanent(err) {
		t.Errorf("IsPermanent(%v) = true", err)
	}
	if got, want := Reason(err), "the certificate authority could not be reached"; got != want {
		t.Errorf("Reason = %q, want %q (error: %v)", got, want, err)
	}

	e.pebble.SetDown(false)
	if _, err := m.Obtain(obtainCtx(t), "down.example.com"); err != nil {
		t.Fatalf("Obtain after the CA returned: %v", err)
	}
}

// TestObtainHonoursContext: Obtain returns when its context ends, even
// while the CA is unreachable.
func TestObtainHonoursContext(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.manager.Load().Obtain(ctx, "ctx.example.com"); err == nil {
		t.Fatal("Obtain with a cancelled context succeeded")
	}
	if got := e.pebble.Orders(); got != 0 {
		t.Errorf("Obtain with a cancelled context made %d orders", got)
	}
}

func TestServeAllowlist(t *testing.T) {
	t.Parallel()
	m, err := New(openStore(t, store.Options{}), Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	m.ServeOnly([]string{"A.example.com.", "b.example.com"})
	m.Serve("c.example.com", true)
	m.Serve("b.example.com", false)
	for name, want := range map[string]bool{
		"a.example.com": true, "a.example.com.": true, "B.example.com": false, "c.example.com": true, "d.example.com": false,
	} {
		if got := m.Serving(name); got != want {
			t.Errorf("Serving(%s) = %v, want %v", name, got, want)
		}
	}
	conn, peer := net.Pipe()
	defer conn.Close()
	defer peer.Close()
	if _, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: "a.example.com", Conn: conn}); err == nil {
		t.Error("GetCertificate with nothing cached succeeded")
	}
	if got := m.Stats(); got.HandshakesMissing != 1 {
		t.Errorf("Stats = %+v, want one missing", got)
	}
	if got := *m.served.Load(); len(got) != 2 {
		t.Errorf("allowlist = %v", got)
	}
}

func TestNewRejectsBadCA(t *testing.T) {
	t.Parallel()
	st := openStore(t, store.Options{})
	for _, ca := range []string{"http://ca.example/dir", "ca.example", "https://"} {
		if m, err := New(st, Config{CA: ca}); err == nil {
			m.Close()
			t.Errorf("New accepted CA %q", ca)
		}
	}
}

// testWriter sends log lines to the test's log until the test's cleanup
// (background goroutines may log later).
type testWriter struct {
	t    *testing.T
	done *atomic.Bool
}

func newTestWriter(t *testing.T) testWriter {
	w := testWriter{t: t, done: new(atomic.Bool)}
	t.Cleanup(func() { w.done.Store(true) })
	return w
}

func (w testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

func discardLog() *log.Logger { return log.New(io.Discard, "", 0) }

// TestObtainConcurrent: obtains of different domains run side by side, and
// two of the same domain make one order (certmagic's lock, on our
// storage, serializes them and the second finds the certificate stored).
func TestObtainConcurrent(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	m := e.manager.Load()
	ctx := obtainCtx(t)
	domains := []string{"c1.example.com", "c2.example.com", "c3.example.com", "c4.example.com", "c1.example.com"}
	e.point(domains...)
	errs := make(chan error, len(domains))
	for _, d := range domains {
		go func() {
			_, err := m.Obtain(ctx, d)
			errs <- err
		}()
	}
	for range domains {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if got, want := e.pebble.Orders(), 4; got != want {
		t.Errorf("%d orders, want %d", got, want)
	}
	got, err := m.StoredDomains(ctx)
	if want := domains[:4]; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("StoredDomains = %v, %v; want %v", got, err, want)
	}
	for _, d := range domains[:4] {
		m.Serve(d, true)
		e.mustServe(d)
	}
}

// TestDropKeys: Drop deletes the domain's keys under every issuer and its
// OCSP staples, and nobody else's.
func TestDropKeys(t *testing.T) {
	t.Parallel()
	st := openStore(t, store.Options{})
	m, err := New(st, Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	gone := []string{
		"certificates/ca-one/e.example.com/e.example.com.crt",
		"certificates/ca-one/e.example.com/e.example.com.key",
		"certificates/ca-one/e.example.com/e.example.com.json",
		"certificates/ca-two/e.example.com/e.example.com.crt",
		"ocsp/e.example.com-1a2b3c",
	}
	kept := []string{
		"certificates/ca-one/f.example.com/f.example.com.crt",
		"certificates/ca-one/e.example.com.au/e.example.com.au.crt",
		"ocsp/e.example.com-x.org-1a2b3c",
		"acme/ca-one/users/default/default.json",
	}
	for _, k := range slices.Concat(gone, kept) {
		if err := st.PutBlob(k, []byte("v")); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	if got, err := m.StoredDomains(ctx); err != nil || !reflect.DeepEqual(got, []string{"e.example.com", "e.example.com.au", "f.example.com"}) {
		t.Errorf("StoredDomains = %v, %v", got, err)
	}
	if err := m.Drop(ctx, "E.example.com."); err != nil {
		t.Fatal(err)
	}
	for _, k := range gone {
		if st.BlobExists(k) {
			t.Errorf("%s survived Drop", k)
		}
	}
	for _, k := range kept {
		if !st.BlobExists(k) {
			t.Errorf("%s was dropped", k)
		}
	}
	// The lock Drop took is free again.
	if ok, err := st.TryLock("issue_cert_e.example.com", "other", time.Minute); !ok || err != nil {
		t.Errorf("lock after Drop: TryLock = %v, %v", ok, err)
	}
}

// TestObtainRenewsExpired: a certificate in storage that has expired (its
// renewals failed, or the process was down) is not served as is: Obtain
// renews it at once.
func TestObtainRenewsExpired(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	m := e.manager.Load()
	const name = "expired.example.com"
	e.point(name)

	expired, _, err := testcert.SelfSigned(time.Now().Add(-100*24*time.Hour), time.Now().Add(-10*24*time.Hour), name)
	if err != nil {
		t.Fatal(err)
	}
	iss := m.acme.IssuerKey()
	for k, v := range map[string][]byte{
		certmagic.StorageKeys.SiteCert(iss, name):       expired.ChainPEM,
		certmagic.StorageKeys.SitePrivateKey(iss, name): expired.KeyPEM,
		certmagic.StorageKeys.SiteMeta(iss, name):       []byte(`{"sans":["` + name + `"]}`),
	} {
		if err := e.st.PutBlob(k, v); err != nil {
			t.Fatal(err)
		}
	}

	notAfter, err := m.Obtain(obtainCtx(t), name)
	if err != nil {
		t.Fatalf("Obtain: %v", err)
	}
	if time.Until(notAfter) < 80*24*time.Hour {
		t.Errorf("Obtain returned expiry %v: the expired certificate was not renewed", notAfter)
	}
	if got := e.pebble.Orders(); got != 1 {
		t.Errorf("%d orders, want 1", got)
	}
	if got, ok := m.Info(name); !ok || !got.Equal(notAfter) {
		t.Errorf("Info = %v, %v; want %v (the expired one evicted)", got, ok, notAfter)
	}
	m.Serve(name, true)
	e.mustServe(name)
}

// TestObtainWithoutEmailAfterPartialAccount pins a bug: with no
// --acme-email, certmagic's email discovery found an email-less account
// folder whose files were incomplete (a crash or a cancelled order while
// it was being saved), took the folder name "default" for an email, and
// registered mailto:default, which the CA refused: from then on every
// order failed.
func TestObtainWithoutEmailAfterPartialAccount(t *testing.T) {
	e := newEdge(t)
	m := e.manager.Load()
	e.point("one.example.com", "two.example.com")
	if _, err := m.Obtain(obtainCtx(t), "one.example.com"); err != nil {
		t.Fatalf("Obtain(one): %v", err)
	}
	keys, err := e.st.ListBlobs("acme", true)
	if err != nil {
		t.Fatal(err)
	}
	removed := 0
	for _, k := range keys {
		if strings.Contains(k, "/users/") && strings.HasSuffix(k, ".key") {
			if err := e.st.DeleteBlobs(k); err != nil {
				t.Fatal(err)
			}
			removed++
		}
	}
	if removed != 1 {
		t.Fatalf("found %d account keys in %v, want 1", removed, keys)
	}
	m2 := e.newManager(t)
	if _, err := m2.Obtain(obtainCtx(t), "two.example.com"); err != nil {
		t.Fatalf("Obtain with an incomplete stored account: %v", err)
	}
}

// TestRelease: a released certificate is no longer served or cached, even
// with its name put back on the allowlist, but stays in storage, where
// Obtain finds it again with no order.
func TestRelease(t *testing.T) {
	t.Parallel()
	e := newEdge(t)
	m := e.manager.Load()
	ctx := obtainCtx(t)
	const name = "kept.example.com"
	e.point(name)
	if _, err := m.Obtain(ctx, name); err != nil {
		t.Fatalf("Obtain: %v", err)
	}
	m.Serve(name, true)
	e.mustServe(name)
	orders := e.pebble.Orders()

	if err := m.Release(ctx, name); err != nil {
		t.Fatalf("Release: %v", err)
	}
	e.mustRefuse(name)
	if m.Serving(name) {
		t.Error("Release left the name on the allowlist")
	}
	m.Serve(name, true)
	e.mustRefuse(name) // on the allowlist again, but nothing cached
	if _, ok := m.Info(name); ok {
		t.Error("Info finds a released certificate")
	}
	if got, err := m.StoredDomains(ctx); err != nil || !reflect.DeepEqual(got, []string{name}) {
		t.Errorf("StoredDomains after Release = %v, %v; want [%s]", got, err, name)
	}
	if _, err := m.Obtain(ctx, name); err != nil {
		t.Fatalf("Obtain after Release: %v", err)
	}
	e.mustServe(name)
	if got := e.pebble.Orders(); got != orders {
		t.Errorf("Obtain after Release made %d orders, want 0", got-orders)
	}
}
