// Package lifecycletest starts the whole control plane on loopback for the
// tests of the lifecycle engine and of diagnoses: a store in a temporary
// directory, a DNS server the test edits, Pebble, the certificate manager
// behind real HTTP and TLS listeners, the engine, a Diagnoser and the
// management API. Only tests import it.
package lifecycletest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"github.com/edgeproxy/edgeproxy/internal/openapitest"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"slices"
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
	"github.com/edgeproxy/edgeproxy/dnszone"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// Base is the target CNAME base of the Env's API.
const Base = "proxy.example.net"

// Clock runs at real speed from an offset the test can move forward, so
// deadlines of hours pass without sleeping while short pauses still
// elapse on their own. Frozen, it moves only when the test advances it,
// so that what the engine does between two steps of the clock does not
// depend on how fast the machine is.
type Clock struct {
	// mu guards offset, frozen and at.
	mu     sync.Mutex
	offset time.Duration
	frozen bool
	at     time.Time // the time while frozen
}

func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		return c.at
	}
	return time.Now().Add(c.offset)
}

func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.at = c.at.Add(d)
	c.mu.Unlock()
}

// Freeze stops the clock at its present time.
func (c *Clock) Freeze() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.frozen {
		c.frozen, c.at = true, time.Now().Add(c.offset)
	}
}

// Thaw lets the clock run again at real speed from where it stands.
func (c *Clock) Thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.frozen {
		c.frozen, c.offset = false, time.Until(c.at)
	}
}

// Env is the whole control plane on loopback (see the package doc). Its
// engine runs until the test ends; every part logs to Logs.
type Env struct {
	Store  *store.Store
	DNS    *dnstest.Server
	Pebble *certstest.Pebble
	Certs  *certs.Manager
	Engine *lifecycle.Engine
	// API is the management API, with Diagnoser behind its diagnose
	// route; Key is the API key of the owner of the organization OrgID,
	// which every test starts with (Home).
	API   *httptest.Server
	Key   string
	OrgID string
	// HTTPAddr is the plain HTTP listener's address: it answers
	// Probes first, then the ACME HTTP-01 challenges, as cmd/edgeproxy
	// does. HTTPSAddr is the TLS edge's.
	HTTPAddr, HTTPSAddr string
	Probes              *diagnose.Probes
	Diagnoser           *diagnose.Diagnoser
	Clock               *Clock
	Logs                *testbin.LockedBuffer
	// Verifier and EngineConfig built the engine; RestartEngine builds a
	// new one from them.
	Verifier     *dnsverify.Verifier
	EngineConfig lifecycle.Config
	// ZoneAddr is the address (UDP and TCP) of the target zone's own DNS
	// server, which DNS hands Base to, in an Env made by NewZone; "" in
	// the others.
	ZoneAddr string

	stopRun func()
}

// New starts the control plane (see Env), the engine running; tweak, if
// not nil, adjusts the engine's configuration.
func New(t *testing.T, tweak func(*lifecycle.Config)) *Env {
	t.Helper()
	return NewWithCA(t, tweak, nil)
}

// NewWithCA is New with the certificate manager talking to the CA that
// front returns (its directory URL and roots), given Pebble; with front
// nil, to Pebble itself.
func NewWithCA(t *testing.T, tweak func(*lifecycle.Config), front func(*certstest.Pebble) (string, *x509.CertPool)) *Env {
	t.Helper()
	return newEnv(t, tweak, front, false)
}

// NewZone is New with the target zone served as with --dns-addr: Base
// answered by edgeproxy's own DNS server (dnszone, over the Env's store,
// its edge address 127.0.0.1), to which DNS hands every name under Base,
// as the operator's NS records would; the certificate manager able to
// validate through it (DNS-01) and the engine and Diagnoser told so.
func NewZone(t *testing.T, tweak func(*lifecycle.Config)) *Env {
	t.Helper()
	return newEnv(t, tweak, nil, true)
}

func newEnv(t *testing.T, tweak func(*lifecycle.Config), front func(*certstest.Pebble) (string, *x509.CertPool), zone bool) *Env {
	t.Helper()
	env := &Env{Clock: &Clock{}, Logs: &testbin.LockedBuffer{}}
	log := slog.New(slog.NewTextHandler(env.Logs, nil))
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: env.Clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Check(); err != nil {
			t.Errorf("store consistency check: %v", err)
		}
		st.Close()
	})
	env.Store = st
	env.DNS = dnstest.Start(t)
	var zoneProvider *certs.ZoneDNSProvider
	if zone {
		env.ZoneAddr = startZone(t, st, log)
		env.DNS.Delegate(Base, env.ZoneAddr)
		zoneProvider = &certs.ZoneDNSProvider{Store: st, Zone: Base}
	}

	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tlsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	env.HTTPAddr = httpLn.Addr().String()
	env.HTTPSAddr = tlsLn.Addr().String()
	env.Pebble = certstest.StartPebble(t, env.DNS.Addr(), httpLn.Addr().(*net.TCPAddr).Port, tlsLn.Addr().(*net.TCPAddr).Port)
	caURL, caRoots := env.Pebble.DirectoryURL(), env.Pebble.ServerRoots()
	if front != nil {
		caURL, caRoots = front(env.Pebble)
	}
	cm, err := certs.New(st, certs.Config{
		CA:       caURL,
		CARoots:  caRoots,
		HTTPPort: httpLn.Addr().(*net.TCPAddr).Port,
		TLSPort:  tlsLn.Addr().(*net.TCPAddr).Port,
		Logger:   log,
		Zone:     zoneProvider,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cm.Close() })
	env.Certs = cm
	env.Probes = &diagnose.Probes{}
	httpSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if env.Probes.Handle(w, r) {
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

	verifier, err := dnsverify.New([]string{env.DNS.Addr()}, 500*time.Millisecond)
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
		ProbeAddr:       env.HTTPSAddr,
		ZoneServed:      zone,
		Now:             env.Clock.Now,
		Logger:          log,
	}
	if tweak != nil {
		tweak(&cfg)
	}
	env.Engine = lifecycle.NewEngine(st, verifier, cm, cfg)
	env.Verifier, env.EngineConfig = verifier, cfg
	env.Diagnoser = &diagnose.Diagnoser{
		DNS:           verifier,
		Certs:         cm,
		CAAIdentities: []string{certstest.CAAIdentity},
		HTTPAddr:      env.HTTPAddr,
		HTTPSAddr:     env.HTTPSAddr,
		Probes:        env.Probes,
		ZoneServed:    zone,
		Now:           env.Clock.Now,
	}
	env.StartEngine(t)

	limit := 100
	org, err := st.CreateOrg("Lifecycle", &limit)
	if err != nil {
		t.Fatal(err)
	}
	env.OrgID = org.ID
	user, _ := st.CreateUser("ops@lifecycle.test")
	st.SetMembership(org.ID, user.ID, store.LevelOwner)
	k, value := control.NewKey(user.ID, "test", []string{control.ScopeAll}, nil)
	if _, err := st.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	env.Key = value
	// Every answer the API gives in these tests is validated against
	// docs/openapi.yaml.
	env.API = httptest.NewServer(openapitest.Load(t).Handler(t, control.NewAPI(st, control.Config{
		TargetCNAMEBase: Base, MaxProxyRecords: 2, Logger: log, Diagnoser: env.Diagnoser})))
	t.Cleanup(env.API.Close)
	t.Cleanup(func() {
		if strings.Contains(env.Logs.String(), "phx_") {
			t.Errorf("the logs contain an API key value (phx_)")
		}
		if t.Failed() {
			t.Logf("logs:\n%s", env.Logs.String())
		}
	})
	return env
}

// startZone serves the target zone Base over st on loopback until the
// test ends, and returns its address.
func startZone(t *testing.T, st *store.Store, log *slog.Logger) string {
	t.Helper()
	z, err := dnszone.New(st, dnszone.Config{
		Zone:        Base,
		EdgeIPs:     []netip.Addr{netip.MustParseAddr("127.0.0.1")},
		Nameservers: []string{"ns1.example.org"},
		Logger:      log,
	})
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
	go z.Serve(pc, ln)
	t.Cleanup(func() { z.Shutdown(context.Background()) })
	return pc.LocalAddr().String()
}

// WaitLog waits for each line to appear in the logs, up to a generous
// bound: the engine logs a transition just after it commits, so a test
// can see the new status a moment before the line.
func (env *Env) WaitLog(t *testing.T, wants ...string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for _, want := range wants {
		for !strings.Contains(env.Logs.String(), want) {
			if time.Now().After(deadline) {
				t.Errorf("logs lack %q", want)
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

// WaitIdlePass wakes the engine and waits until it has finished a pass
// over the due records with no step left running (see
// lifecycle.Engine.IdlePasses).
func (env *Env) WaitIdlePass(t *testing.T) {
	t.Helper()
	n := env.Engine.IdlePasses()
	env.Engine.Wake()
	deadline := time.Now().Add(30 * time.Second)
	for env.Engine.IdlePasses() == n {
		if time.Now().After(deadline) {
			t.Fatalf("the engine finished no idle pass within 30s of a wake")
		}
		time.Sleep(time.Millisecond)
	}
}

// StartEngine runs Engine until StopEngine or the end of the test.
func (env *Env) StartEngine(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := env.Engine.Run(ctx, false); err != nil {
			t.Errorf("engine: %v", err)
		}
	}()
	var once sync.Once
	env.stopRun = func() {
		once.Do(func() {
			cancel()
			<-done
		})
	}
	t.Cleanup(env.stopRun)
}

// StopEngine stops the running engine and waits for its Run to return.
func (env *Env) StopEngine() { env.stopRun() }

// RestartEngine stops the engine and runs a new one over the same store,
// certificate manager and configuration (its metrics unregistered), as a
// restart of the process would: nothing of the old engine's memory is
// kept.
func (env *Env) RestartEngine(t *testing.T) {
	t.Helper()
	env.StopEngine()
	cfg := env.EngineConfig
	cfg.Registerer = nil
	env.Engine = lifecycle.NewEngine(env.Store, env.Verifier, env.Certs, cfg)
	env.StartEngine(t)
}

// Record is a proxy record as the API answers it.
type Record struct {
	ID            string          `json:"id"`
	Domain        string          `json:"domain"`
	TargetCNAME   string          `json:"target_cname"`
	Ownership     store.DNSRecord `json:"ownership"`
	DCVDelegation store.DNSRecord `json:"dcv_delegation"`
	Status        string          `json:"status"`
	Message       *string         `json:"message"`
}

// Tenant is an organization with an owner whose API key reaches it.
type Tenant struct {
	OrgID string
	Key   string
}

// Home is the organization every test starts with.
func (env *Env) Home() Tenant { return Tenant{OrgID: env.OrgID, Key: env.Key} }

// NewTenant adds an organization (limit 100) with its own owner and key.
func (env *Env) NewTenant(t *testing.T, name string) Tenant {
	t.Helper()
	limit := 100
	org, err := env.Store.CreateOrg(name, &limit)
	if err != nil {
		t.Fatal(err)
	}
	user, err := env.Store.CreateUser("ops@" + strings.ReplaceAll(strings.ToLower(name), " ", "-") + ".test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.Store.SetMembership(org.ID, user.ID, store.LevelOwner); err != nil {
		t.Fatal(err)
	}
	k, value := control.NewKey(user.ID, "test", []string{control.ScopeAll}, nil)
	if _, err := env.Store.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	return Tenant{OrgID: org.ID, Key: value}
}

// Call calls the API as Home: method on …/proxy_records/ + path.
func (env *Env) Call(t *testing.T, method, path, body string) (int, Record) {
	t.Helper()
	return env.CallAs(t, env.Home(), method, path, body)
}

// CallAs calls the API with the tenant's key, on its organization.
func (env *Env) CallAs(t *testing.T, tn Tenant, method, path, body string) (int, Record) {
	t.Helper()
	req, _ := http.NewRequest(method, env.API.URL+"/api/organizations/@current/proxy_records/"+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+tn.Key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rec Record
	json.NewDecoder(resp.Body).Decode(&rec)
	return resp.StatusCode, rec
}

// Create creates a record of domain as Home, and makes its target
// resolve to this machine, as *.<base> does in production.
func (env *Env) Create(t *testing.T, domain string) Record {
	t.Helper()
	return env.CreateAs(t, env.Home(), domain)
}

// CreateAs is Create as the tenant.
func (env *Env) CreateAs(t *testing.T, tn Tenant, domain string) Record {
	t.Helper()
	code, rec := env.CallAs(t, tn, "POST", "", `{"domain":"`+domain+`"}`)
	if code != 201 {
		t.Fatalf("create %s: %d", domain, code)
	}
	env.DNS.SetA(rec.TargetCNAME, "127.0.0.1")
	return rec
}

// PublishOwnership publishes the record's ownership TXT record, as its
// customer would.
func (env *Env) PublishOwnership(rec Record) {
	env.DNS.SetTXT(rec.Ownership.Name, rec.Ownership.Value)
}

// Msg is the record's message, or <nil>.
func Msg(r store.Record) string {
	if r.Message == nil {
		return "<nil>"
	}
	return *r.Message
}

// WaitFor polls the record until cond holds, waking the engine each
// time, and fails the test after a bound.
func (env *Env) WaitFor(t *testing.T, id, what string, cond func(r store.Record, err error) bool) store.Record {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		r, err := env.Store.Record(id)
		if cond(r, err) {
			return r
		}
		if time.Now().After(deadline) {
			t.Fatalf("record %s never became %s; last: status %s, message %q, err %v", id, what, r.Status, Msg(r), err)
		}
		env.Engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
}

// WaitStatus waits for the record to be in status.
func (env *Env) WaitStatus(t *testing.T, id string, status store.Status) store.Record {
	t.Helper()
	return env.WaitFor(t, id, string(status), func(r store.Record, err error) bool { return err == nil && r.Status == status })
}

// Handshake connects to the edge with the SNI domain, verifying the
// certificate against Pebble's root.
func (env *Env) Handshake(t *testing.T, domain string) (*tls.Conn, error) {
	t.Helper()
	return tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", env.HTTPSAddr, &tls.Config{
		ServerName: domain,
		RootCAs:    env.Pebble.IssuerRoots(t),
	})
}

// MustServe fails the test unless the edge serves domain a certificate
// for it.
func (env *Env) MustServe(t *testing.T, domain string) {
	t.Helper()
	conn, err := env.Handshake(t, domain)
	if err != nil {
		t.Fatalf("handshake for %s: %v", domain, err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	if !slices.Contains(leaf.DNSNames, domain) {
		t.Errorf("certificate for %s names %v", domain, leaf.DNSNames)
	}
}

// MustNotServe fails the test if a handshake for domain succeeds.
func (env *Env) MustNotServe(t *testing.T, domain string) {
	t.Helper()
	conn, err := env.Handshake(t, domain)
	if err == nil {
		conn.Close()
		t.Fatalf("handshake for %s succeeded; want it refused", domain)
	}
}
