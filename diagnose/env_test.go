package diagnose_test

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/openapitest"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

const lifecycleBase = "proxy.example.net"

// testClock runs at real speed from an offset the test can move forward,
// so deadlines of hours pass without sleeping while short pauses still
// elapse on their own.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
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

	// http is the plain HTTP listener's address; it answers probes
	// first, as cmd/edgeproxy does. diag is the API's Diagnoser.
	http   string
	probes *diagnose.Probes
	diag   *diagnose.Diagnoser
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

// newLifecycleEnv starts the whole control plane on loopback (see
// lifecycleEnv), the engine running; tweak adjusts the engine's
// configuration.
func newLifecycleEnv(t *testing.T, tweak func(*lifecycle.Config)) *lifecycleEnv {
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
	env.probes = &diagnose.Probes{}
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if env.probes.Handle(w, r) {
			return
		}
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
	env.diag = &diagnose.Diagnoser{
		DNS:           verifier,
		Certs:         cm,
		CAAIdentities: []string{certstest.CAAIdentity},
		HTTPAddr:      env.http,
		HTTPSAddr:     env.https,
		Probes:        env.probes,
		Now:           env.clock.Now,
	}
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
	// Every answer, each report included, is held to docs/openapi.yaml.
	env.api = httptest.NewServer(openapitest.Load(t).Handler(t, control.NewAPI(st, control.Config{
		TargetCNAMEBase: lifecycleBase, MaxProxyRecords: 2, Logger: log, Diagnoser: env.diag})))
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
