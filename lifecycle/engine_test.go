package lifecycle_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

const lifecycleBase = "proxy.example.net"

// testClock runs at real speed from an offset the test can move forward,
// so deadlines of hours pass without sleeping while short pauses still
// elapse on their own. Frozen, it moves only when the test advances it,
// so that what the engine does between two steps of the clock does not
// depend on how fast the machine is.
type testClock struct {
	// mu guards offset, frozen and at.
	mu     sync.Mutex
	offset time.Duration
	frozen bool
	at     time.Time // the time while frozen
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		return c.at
	}
	return time.Now().Add(c.offset)
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.at = c.at.Add(d)
	c.mu.Unlock()
}

// Freeze stops the clock at its present time.
func (c *testClock) Freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.frozen {
		c.frozen, c.at = true, time.Now().Add(c.offset)
	}
}

// Thaw lets the clock run again at real speed from where it stands.
func (c *testClock) Thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		c.frozen, c.offset = false, time.Until(c.at)
	}
}

// lifecycleEnv is the whole control plane on loopback: a store, the API,
// a DNS server the test edits, Pebble, the certificate manager behind real
// HTTP and TLS listeners, and the engine.
type lifecycleEnv struct {
	st      *store.Store
	dns     *dnstest.Server
	pebble  *certstest.Pebble
	cm      *certs.Manager
	engine  *lifecycle.Engine
	api     *httptest.Server
	key     string
	orgID   string
	https   string
	clock   *testClock
	logs    *syncBuffer
	stopRun func()

	// http is the plain HTTP listener's address.
	http string

	// verifier and engineCfg build the engine; restartEngine builds a new
	// one from them.
	verifier  *dnsverify.Verifier
	engineCfg lifecycle.Config
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func newLifecycleEnv(t *testing.T, tweak func(*lifecycle.Config)) *lifecycleEnv {
	t.Helper()
	return newLifecycleEnvCA(t, tweak, nil)
}

// newLifecycleEnvCA is newLifecycleEnv with the certificate manager talking
// to the CA that front returns (its directory URL and roots), given
// Pebble; with front nil, to Pebble itself.
func newLifecycleEnvCA(t *testing.T, tweak func(*lifecycle.Config), front func(*certstest.Pebble) (string, *x509.CertPool)) *lifecycleEnv {
	t.Helper()
	env := &lifecycleEnv{clock: &testClock{}, logs: &syncBuffer{}}
	log := slog.New(slog.NewTextHandler(env.logs, nil))
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: env.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store consistency check: %v", err)
		}
		st.Close()
	})
	env.st = st
	env.dns = dnstest.Start(t)

	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.http = httpLn.Addr().String()
	env.https = tlsLn.Addr().String()
	env.pebble = certstest.StartPebble(t, env.dns.Addr(), httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port)
	caURL, caRoots := env.pebble.DirectoryURL(), env.pebble.ServerRoots()
	if front != nil {
		caURL, caRoots = front(env.pebble)
	}
	cm, err := certs.New(st, certs.Config{
		CA:       caURL,
		CARoots:  caRoots,
		HTTPPort: httpLn.Addr().(*net.TCPAddr).Port,
		TLSPort:  tlsLn.Addr().(*net.TCPAddr).Port,
		Logger:   log,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cm.Close() })
	env.cm = cm
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !cm.HandleHTTPChallenge(w, r) {
			http.NotFound(w, r)
		}
	})}
	go httpSrv.Serve(httpLn)
	t.Cleanup(func() { httpSrv.Close() })
	tlsSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), TLSConfig: cm.TLSConfig()}
	go tlsSrv.ServeTLS(tlsLn, "", "")
	t.Cleanup(func() { tlsSrv.Close() })

	verifier, err := dnsverify.New([]string{env.dns.Addr()}, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cfg := lifecycle.Config{
		DNSWaitTimeout:  time.Hour,
		IssueTimeout:    time.Hour,
		FirstRecheck:    50 * time.Millisecond,
		RecheckMax:      200 * time.Millisecond,
		MonitorInterval: time.Hour,
		CAAIdentities:   []string{certstest.CAAIdentity},
		ProbeAddr:       env.https,
		Now:             env.clock.Now,
		Logger:          log,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	env.engine = lifecycle.NewEngine(st, verifier, cm, cfg)
	env.verifier, env.engineCfg = verifier, cfg
	env.startEngine(t)

	limit := 100
	org, err := st.CreateOrg("Lifecycle", &limit)
	if err != nil {
		t.Fatal(err)
	}
	env.orgID = org.ID
	user, _ := st.CreateUser("ops@lifecycle.test")
	st.SetMembership(org.ID, user.ID, store.LevelOwner)
	k, value := control.NewKey(user.ID, "test", []string{control.ScopeAll}, nil)
	if _, err := st.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	env.key = value
	env.api = httptest.NewServer(control.NewAPI(st, control.Config{
		TargetCNAMEBase: lifecycleBase, MaxProxyRecords: 2, Logger: log}))
	t.Cleanup(env.api.Close)
	t.Cleanup(func() {
		if strings.Contains(env.logs.String(), "phx_") {
			t.Errorf("the logs contain an API key value (phx_)")
		}
		if t.Failed() {
			t.Logf("logs:\n%s", env.logs.String())
		}
	})
	return env
}

// waitLog waits for each line to appear in the logs, up to a generous
// bound: the engine logs a transition just after it commits, so a test
// can see the new status a moment before the line.
func (env *lifecycleEnv) waitLog(t *testing.T, wants ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, want := range wants {
		for !strings.Contains(env.logs.String(), want) {
			if time.Now().After(deadline) {
				t.Errorf("logs lack %q", want)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// waitIdlePass wakes the engine and waits until it has finished a pass
// over the due records with no step left running (see IdlePasses).
func (env *lifecycleEnv) waitIdlePass(t *testing.T) {
	t.Helper()
	n := env.engine.IdlePasses()
	env.engine.Wake()
	deadline := time.Now().Add(30 * time.Second)
	for env.engine.IdlePasses() == n {
		if time.Now().After(deadline) {
			t.Fatalf("the engine finished no idle pass within 30s of a wake")
		}
		time.Sleep(time.Millisecond)
	}
}

func (env *lifecycleEnv) startEngine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := env.engine.Run(ctx, false); err != nil {
			t.Errorf("engine: %v", err)
		}
	}()
	env.stopRun = func() {
		cancel()
		<-done
	}
	t.Cleanup(env.stopRun)
}

// restartEngine stops the engine and runs a new one over the same store,
// certificate manager and configuration (its metrics unregistered), as a
// restart of the process would: nothing of the old engine's memory is
// kept.
func (env *lifecycleEnv) restartEngine(t *testing.T) {
	t.Helper()
	env.stopRun()
	cfg := env.engineCfg
	cfg.Registerer = nil
	env.engine = lifecycle.NewEngine(env.st, env.verifier, env.cm, cfg)
	env.startEngine(t)
}

type apiRecord struct {
	ID          string  `json:"id"`
	Domain      string  `json:"domain"`
	TargetCNAME string  `json:"target_cname"`
	Status      string  `json:"status"`
	Message     *string `json:"message"`
}

// tenant is an organization with an owner whose API key reaches it.
type tenant struct {
	orgID string
	key   string
}

// home is the organization every lifecycle test starts with.
func (env *lifecycleEnv) home() tenant { return tenant{orgID: env.orgID, key: env.key} }

// newTenant adds an organization (limit 100) with its own owner and key.
func (env *lifecycleEnv) newTenant(t *testing.T, name string) tenant {
	t.Helper()
	limit := 100
	org, err := env.st.CreateOrg(name, &limit)
	if err != nil {
		t.Fatal(err)
	}
	user, err := env.st.CreateUser("ops@" + strings.ReplaceAll(strings.ToLower(name), " ", "-") + ".test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.SetMembership(org.ID, user.ID, store.LevelOwner); err != nil {
		t.Fatal(err)
	}
	k, value := control.NewKey(user.ID, "test", []string{control.ScopeAll}, nil)
	if _, err := env.st.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	return tenant{orgID: org.ID, key: value}
}

func (env *lifecycleEnv) call(t *testing.T, method, path, body string) (int, apiRecord) {
	t.Helper()
	return env.callAs(t, env.home(), method, path, body)
}

// callAs calls the API with the tenant's key, on its organization.
func (env *lifecycleEnv) callAs(t *testing.T, tn tenant, method, path, body string) (int, apiRecord) {
	t.Helper()
	req, _ := http.NewRequest(method, env.api.URL+"/api/organizations/@current/proxy_records/"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tn.key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rec apiRecord
	json.NewDecoder(resp.Body).Decode(&rec)
	return resp.StatusCode, rec
}

func (env *lifecycleEnv) create(t *testing.T, domain string) apiRecord {
	t.Helper()
	code, rec := env.call(t, "POST", "", `{"domain":"`+domain+`"}`)
	if code != 201 {
		t.Fatalf("create %s: %d", domain, code)
	}
	// The target resolves to this machine, as *.<base> does in production.
	env.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	return rec
}

func msg(r store.Record) string {
	if r.Message == nil {
		return "<nil>"
	}
	return *r.Message
}

// waitFor polls the record until cond holds, waking the engine each time,
// and fails the test after a bound.
func (env *lifecycleEnv) waitFor(t *testing.T, id, what string, cond func(r store.Record, err error) bool) store.Record {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := env.st.Record(id)
		if cond(r, err) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s never became %s; last: status %s, message %q, err %v", id, what, r.Status, msg(r), err)
		}
		env.engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
}

func (env *lifecycleEnv) waitStatus(t *testing.T, id string, status store.Status) store.Record {
	t.Helper()
	return env.waitFor(t, id, string(status), func(r store.Record, err error) bool { return err == nil && r.Status == status })
}

// handshake connects to the edge with the SNI and returns the leaf
// certificate, verified against Pebble's root.
func (env *lifecycleEnv) handshake(t *testing.T, domain string) (*tls.Conn, error) {
	t.Helper()
	return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", env.https, &tls.Config{
		ServerName: domain,
		RootCAs:    env.pebble.IssuerRoots(t),
	})
}

func (env *lifecycleEnv) mustServe(t *testing.T, domain string) {
	t.Helper()
	conn, err := env.handshake(t, domain)
	if err != nil {
		t.Fatalf("handshake for %s: %v", domain, err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	if !slices.Contains(leaf.DNSNames, domain) {
		t.Errorf("certificate for %s names %v", domain, leaf.DNSNames)
	}
}

func (env *lifecycleEnv) mustNotServe(t *testing.T, domain string) {
	t.Helper()
	conn, err := env.handshake(t, domain)
	if err == nil {
		conn.Close()
		t.Fatalf("handshake for %s succeeded; want it refused", domain)
	}
}

func TestLifecycleCNAMEToValid(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.create(t, "e.shop.example.com")
	r := env.waitFor(t, rec.ID, "waiting with a message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusWaiting && r.Message != nil
	})
	if m := msg(r); !strings.Contains(m, "e.shop.example.com CNAME "+rec.TargetCNAME) {
		t.Errorf("waiting message %q does not give the record to add", m)
	}
	env.mustNotServe(t, "e.shop.example.com")

	env.dns.SetCNAME("e.shop.example.com", rec.TargetCNAME)
	r = env.waitStatus(t, rec.ID, store.StatusValid)
	if r.Message != nil {
		t.Errorf("valid record has message %q", *r.Message)
	}
	if r.CertNotAfter.IsZero() {
		t.Error("valid record holds no certificate expiry")
	}
	env.mustServe(t, "e.shop.example.com")
	env.waitLog(t, "from=waiting to=issuing", "from=issuing to=valid")
}

func TestLifecycleFlatteningAndChain(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	flat := env.create(t, "flat.shop.example.com")
	chain := env.create(t, "chain.shop.example.com")
	// Flattening: the apex-style A answer equals the target's.
	env.dns.SetA("flat.shop.example.com", "127.0.0.1")
	// A chain through the customer's own alias.
	env.dns.SetCNAME("chain.shop.example.com", "alias.shop.example.com")
	env.dns.SetCNAME("alias.shop.example.com", chain.TargetCNAME)
	env.waitStatus(t, flat.ID, store.StatusValid)
	env.waitStatus(t, chain.ID, store.StatusValid)
	env.mustServe(t, "flat.shop.example.com")
	env.mustServe(t, "chain.shop.example.com")
}

func TestLifecycleWaitingMessages(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	wrong := env.create(t, "wrong.shop.example.com")
	env.dns.SetCNAME("wrong.shop.example.com", "elsewhere.example.org")
	cf := env.create(t, "cf.shop.example.com")
	env.dns.SetA("cf.shop.example.com", "104.16.1.1")

	r := env.waitFor(t, wrong.ID, "waiting naming the other CNAME", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "elsewhere.example.org")
	})
	if r.Status != store.StatusWaiting || !strings.Contains(msg(r), wrong.TargetCNAME) {
		t.Errorf("wrong CNAME: status %s, message %q", r.Status, msg(r))
	}
	r = env.waitFor(t, cf.ID, "waiting naming Cloudflare", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "Cloudflare")
	})
	if r.Status != store.StatusWaiting {
		t.Errorf("Cloudflare-proxied: status %s", r.Status)
	}
}

func TestLifecycleCAAForbids(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.create(t, "caa.shop.example.com")
	env.dns.SetCAA("shop.example.com", 0, "issue", "other-ca.example")
	env.dns.SetCNAME("caa.shop.example.com", rec.TargetCNAME)
	r := env.waitStatus(t, rec.ID, store.StatusErroring)
	if m := msg(r); !strings.Contains(m, "CAA") || !strings.Contains(m, certstest.CAAIdentity) {
		t.Errorf("CAA message %q does not name the record to add", m)
	}
	if got := env.pebble.Orders(); got != 0 {
		t.Errorf("a forbidding CAA still sent %d orders to the CA", got)
	}
}

func TestLifecycleResolverDown(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	// SERVFAIL from before the record exists, so that the first check
	// already meets it.
	env.dns.SetRcode("down.shop.example.com", 2)
	rec := env.create(t, "down.shop.example.com")
	r := env.waitFor(t, rec.ID, "waiting with a resolver message", func(r store.Record, err error) bool {
		return err == nil && r.Message != nil
	})
	if r.Status != store.StatusWaiting || strings.Contains(msg(r), "Add this record") {
		t.Errorf("resolver failure: status %s, message %q (must not ask the customer to change DNS)", r.Status, msg(r))
	}
}

func TestLifecycleTimedOutThenRetry(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.create(t, "late.shop.example.com")
	env.waitFor(t, rec.ID, "checked once", func(r store.Record, err error) bool { return err == nil && r.Message != nil })
	env.clock.Advance(2 * time.Hour) // past the one-hour DNS wait
	r := env.waitStatus(t, rec.ID, store.StatusTimedOut)
	if !strings.Contains(msg(r), "retry") {
		t.Errorf("timed_out message %q does not say what to do", msg(r))
	}
	env.dns.SetCNAME("late.shop.example.com", rec.TargetCNAME)
	code, retried := env.call(t, "POST", rec.ID+"/retry/", "")
	if code != 200 || retried.Status != "waiting" || retried.Message != nil {
		t.Fatalf("retry: %d %+v", code, retried)
	}
	env.waitStatus(t, rec.ID, store.StatusValid)
	env.mustServe(t, "late.shop.example.com")
}

// TestLifecycleDeleteValid: a deleted record's certificate stops being
// served at once but stays in storage for the retention (never served),
// then is removed.
func TestLifecycleDeleteValid(t *testing.T) {
	env := newLifecycleEnv(t, func(c *lifecycle.Config) { c.CertRetention = 2 * time.Hour })
	rec := env.create(t, "gone.shop.example.com")
	env.dns.SetCNAME("gone.shop.example.com", rec.TargetCNAME)
	env.waitStatus(t, rec.ID, store.StatusValid)
	env.mustServe(t, "gone.shop.example.com")

	if code, _ := env.call(t, "DELETE", rec.ID+"/", ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	env.waitFor(t, rec.ID, "gone", func(r store.Record, err error) bool { return err == store.ErrNotFound })
	env.mustNotServe(t, "gone.shop.example.com")
	stored := func() []string {
		t.Helper()
		stored, err := env.cm.StoredDomains(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return stored
	}
	if !slices.Contains(stored(), "gone.shop.example.com") {
		t.Errorf("certificate removed from storage at the delete, want it kept for the retention: %v", stored())
	}
	env.waitLog(t, "from=valid to=deleting", "from=deleting to=gone")

	env.clock.Advance(time.Hour)
	env.engine.Wake()
	env.mustNotServe(t, "gone.shop.example.com")
	if !slices.Contains(stored(), "gone.shop.example.com") {
		t.Errorf("certificate removed from storage within its retention: %v", stored())
	}
	env.clock.Advance(time.Hour + time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		released, err := env.st.ReleasedDomains()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(stored(), "gone.shop.example.com") && len(released) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after its retention: stored %v, released %v; want the certificate and its mark gone", stored(), released)
		}
		env.engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	env.waitLog(t, "certificate of a deleted record removed after its retention")
}

func TestLifecycleCAUnreachable(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	env.pebble.SetDown(true)
	rec := env.create(t, "ca.shop.example.com")
	env.dns.SetCNAME("ca.shop.example.com", rec.TargetCNAME)
	r := env.waitFor(t, rec.ID, "issuing with a failure message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusIssuing && strings.Contains(msg(r), "failed")
	})
	t.Logf("issuing message: %s", msg(r))
	env.clock.Advance(2 * time.Hour) // past the one-hour issue timeout
	r = env.waitStatus(t, rec.ID, store.StatusErroring)
	if !strings.Contains(msg(r), "No certificate within") {
		t.Errorf("erroring message %q lacks the reason", msg(r))
	}
	env.pebble.SetDown(false)
	if code, _ := env.call(t, "POST", rec.ID+"/retry/", ""); code != 200 {
		t.Fatalf("retry: %d", code)
	}
	env.waitStatus(t, rec.ID, store.StatusValid)
	env.mustServe(t, "ca.shop.example.com")
}

func TestLifecycleMonitor(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.create(t, "mon.shop.example.com")
	env.dns.SetCNAME("mon.shop.example.com", rec.TargetCNAME)
	env.waitStatus(t, rec.ID, store.StatusValid)

	env.dns.Remove("mon.shop.example.com")
	env.clock.Advance(2 * time.Hour) // past the one-hour monitor interval
	r := env.waitStatus(t, rec.ID, store.StatusWarning)
	if !strings.Contains(msg(r), "DNS no longer points here") {
		t.Errorf("warning message %q lacks the finding", msg(r))
	}
	env.mustServe(t, "mon.shop.example.com") // a warning still serves

	env.dns.SetCNAME("mon.shop.example.com", rec.TargetCNAME)
	env.clock.Advance(2 * time.Hour)
	r = env.waitStatus(t, rec.ID, store.StatusValid)
	if r.Message != nil {
		t.Errorf("valid again but message %q", *r.Message)
	}
}

func TestUnknownSNICausesNoOrder(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	before := env.pebble.Orders()
	for i := 0; i < 20; i++ {
		env.mustNotServe(t, fmt.Sprintf("random%d.example.org", i))
	}
	// A registered but unverified domain is no different.
	env.create(t, "pending.shop.example.com")
	env.mustNotServe(t, "pending.shop.example.com")
	if got := env.pebble.Orders(); got != before {
		t.Errorf("handshakes for unknown names made %d ACME orders", got-before)
	}
}

// TestEngineRestartServesFromStorage stops the engine and starts a new one
// over the same store: the valid record is served again with no new order.
func TestEngineRestartServesFromStorage(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.create(t, "again.shop.example.com")
	env.dns.SetCNAME("again.shop.example.com", rec.TargetCNAME)
	env.waitStatus(t, rec.ID, store.StatusValid)
	orders := env.pebble.Orders()

	env.stopRun()
	env.cm.ServeOnly(nil)
	env.mustNotServe(t, "again.shop.example.com")
	env.startEngine(t)
	env.waitFor(t, rec.ID, "served again", func(store.Record, error) bool { return env.cm.Serving("again.shop.example.com") })
	env.mustServe(t, "again.shop.example.com")
	if got := env.pebble.Orders(); got != orders {
		t.Errorf("restart made %d new orders", got-orders)
	}
}

// TestIssueDeadlineStartsAtFirstAttempt pins that a record which entered
// issuing long ago but never got a CA slot (a burst queued behind the
// ACME workers) is tried, not timed out unasked.
func TestIssueDeadlineStartsAtFirstAttempt(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.create(t, "queued.shop.example.com")
	env.dns.SetCNAME("queued.shop.example.com", rec.TargetCNAME)
	env.stopRun()
	if _, _, err := env.st.Mutate(rec.ID, func(r *store.Record) (store.Op, error) {
		r.Status = store.StatusIssuing
		r.IssuingSince = env.clock.Now().Add(-2 * time.Hour) // twice the issue timeout
		r.Checks = 0
		r.NextCheckAt = env.clock.Now()
		return store.OpSave, nil
	}); err != nil {
		t.Fatal(err)
	}
	env.startEngine(t)
	env.waitStatus(t, rec.ID, store.StatusValid)
}
