package diagnose_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/openapitest"
	"github.com/edgeproxy/edgeproxy/store"
)

// These tests play a hostile member of an organization, holding only a
// read key, who uses POST …/diagnose/ to make the server probe for them.
// The parts are real and on loopback: the DNS server answers what the
// attacker's zone would, the server's own plain HTTP listener is on
// 127.0.0.1, and an "internal" HTTP service (what sits on the server's
// private network, a metadata service, an admin page) listens on
// 127.0.0.2 at the same port. Both are loopback, so what makes 127.0.0.1
// ours is the configuration (the listener's address, what target_cname
// resolves to), never "is loopback".

// The internal service's answer: a redirect whose every part a report
// must not quote.
const (
	internalStatus   = http.StatusTemporaryRedirect
	internalLocation = "http://10.1.2.3/admin/secret-path-5e1d"
	internalHeader   = "metadata-token-6f1c"
	internalBody     = "internal-body-7f3a"
)

// internalLeaks are the strings of the internal service's answer that no
// report may contain.
var internalLeaks = []string{http.StatusText(internalStatus), internalLocation, "10.1.2.3", "secret-path",
	internalHeader, internalBody, "Location"}

// countingListener counts the connections it accepts.
type countingListener struct {
	net.Listener
	accepted atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted.Add(1)
	}
	return c, err
}

// manualClock stands still until the test moves it.
type manualClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// ssrfEnv is the API with a Diagnoser over real parts: a store, the DNS
// server, the server's own HTTP listener on 127.0.0.1 answering probes,
// a second listener of ours on 127.0.0.3 (for a target that resolves
// there), and the internal service on 127.0.0.2, all on one port. There
// is no CA: records stay waiting, which is all a diagnosis needs. The
// Diagnoser's clock stands still unless a test moves it.
type ssrfEnv struct {
	st    *store.Store
	dns   *dnstest.Server
	api   *httptest.Server
	clock *manualClock
	port  string

	// own counts the connections to this server's listeners on
	// 127.0.0.1 and 127.0.0.3; internal those to the internal service,
	// which closeInternal stops so that its port refuses connections.
	own           [2]*countingListener
	internal      *countingListener
	closeInternal func()

	// orgID is the attacker's organization; readKey the key of a plain
	// member of it with organization:read only.
	orgID, readKey string
}

const ssrfBase = "proxy.example.net"

func newSSRFEnv(t *testing.T) *ssrfEnv {
	t.Helper()
	env := &ssrfEnv{clock: &manualClock{now: time.Date(2026, 3, 2, 12, 0, 0, 0, time.UTC)}}
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	env.st = st
	env.dns = dnstest.Start(t)

	internalLn, ownLn, ownLn3 := listenTrio(t)
	env.port = strconv.Itoa(ownLn.Addr().(*net.TCPAddr).Port)
	probes := &diagnose.Probes{}
	for i, ln := range []net.Listener{ownLn, ownLn3} {
		env.own[i] = &countingListener{Listener: ln}
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !probes.Handle(w, r) {
				http.NotFound(w, r)
			}
		})}
		go srv.Serve(env.own[i])
		t.Cleanup(func() { srv.Close() })
	}

	env.internal = &countingListener{Listener: internalLn}
	internalSrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", internalLocation)
		w.Header().Set("X-Internal-Token", internalHeader)
		w.WriteHeader(internalStatus)
		io.WriteString(w, internalBody)
	})}
	go internalSrv.Serve(env.internal)
	env.closeInternal = func() { internalSrv.Close() }
	t.Cleanup(env.closeInternal)

	verifier, err := dnsverify.New([]string{env.dns.Addr()}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cm, err := certs.New(st, certs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cm.Close() })
	// Every answer, each report and refusal included, is held to
	// docs/openapi.yaml.
	env.api = httptest.NewServer(openapitest.Load(t).Handler(t, control.NewAPI(st, control.Config{
		TargetCNAMEBase: ssrfBase,
		MaxProxyRecords: 20,
		Diagnoser: &diagnose.Diagnoser{
			DNS:      verifier,
			Certs:    cm,
			HTTPAddr: net.JoinHostPort("127.0.0.1", env.port),
			Probes:   probes,
			Now:      env.clock.Now,
		},
	})))
	t.Cleanup(env.api.Close)
	env.orgID, env.readKey = env.newOrg(t, "Attacker")
	return env
}

// listenTrio listens on 127.0.0.2, 127.0.0.1 and 127.0.0.3 at one port,
// trying a few ports in case one is taken on another address.
func listenTrio(t *testing.T) (internal, own, own3 net.Listener) {
	t.Helper()
	var lastErr error
	for range 20 {
		internal, err := net.Listen("tcp", "127.0.0.2:0")
		if err != nil {
			t.Fatal(err)
		}
		port := strconv.Itoa(internal.Addr().(*net.TCPAddr).Port)
		own, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", port))
		if err == nil {
			own3, err := net.Listen("tcp", net.JoinHostPort("127.0.0.3", port))
			if err == nil {
				return internal, own, own3
			}
			own.Close()
		}
		internal.Close()
		lastErr = err
	}
	t.Fatalf("no port free on 127.0.0.1, 127.0.0.2 and 127.0.0.3 at once: %v", lastErr)
	return nil, nil, nil
}

// ownAccepts is how many connections this server's listeners accepted.
func (env *ssrfEnv) ownAccepts() int64 {
	return env.own[0].accepted.Load() + env.own[1].accepted.Load()
}

// newOrg creates an organization and a plain member of it with an
// organization:read key, and returns the organization's id and the key.
func (env *ssrfEnv) newOrg(t *testing.T, name string) (orgID, key string) {
	t.Helper()
	org, err := env.st.CreateOrg(name, nil)
	if err != nil {
		t.Fatal(err)
	}
	u, err := env.st.CreateUser("member@" + strings.ToLower(name) + ".test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.st.SetMembership(org.ID, u.ID, store.LevelMember); err != nil {
		t.Fatal(err)
	}
	k, value := control.NewKey(u.ID, "read", []string{control.ScopeOrgRead}, nil)
	if _, err := env.st.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	return org.ID, value
}

// record adds a waiting record for domain to the organization and makes
// its target resolve to targetIP, as the operator's wildcard does.
func (env *ssrfEnv) record(t *testing.T, orgID, domain, targetIP string) store.Record {
	t.Helper()
	rec, err := env.st.CreateRecord(store.Record{
		OrgID:       orgID,
		Domain:      domain,
		TargetCNAME: control.TargetCNAME(orgID, domain, ssrfBase),
		Status:      store.StatusWaiting,
	}, 20)
	if err != nil {
		t.Fatal(err)
	}
	env.dns.SetA(rec.TargetCNAME, targetIP)
	return rec
}

// diagnoseAs sends POST …/diagnose/ for rec with key and returns the
// status, the Retry-After header and the body; safe to call from any
// goroutine.
func (env *ssrfEnv) diagnoseAs(key, orgID, recID string) (code int, retryAfter string, body []byte, err error) {
	req, err := http.NewRequest(http.MethodPost, env.api.URL+"/api/organizations/"+orgID+"/proxy_records/"+recID+"/diagnose/", nil)
	if err != nil {
		return 0, "", nil, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), body, err
}

// report runs a diagnosis of rec as the attacker and returns the report.
func (env *ssrfEnv) report(t *testing.T, rec store.Record) (diagnose.Report, string) {
	t.Helper()
	code, _, body, err := env.diagnoseAs(env.readKey, env.orgID, rec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if code != http.StatusOK {
		t.Fatalf("diagnose: %d %s", code, body)
	}
	checkReportShape(t, body)
	var rep diagnose.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	return rep, string(body)
}

// wantNoLeak fails if the report quotes the internal service.
func wantNoLeak(t *testing.T, body string) {
	t.Helper()
	for _, s := range internalLeaks {
		if strings.Contains(body, s) {
			t.Errorf("the report quotes the internal service (%q): %s", s, body)
		}
	}
}

// TestDiagnoseSplitAnswerDialsNothingInternal replays the split-answer
// attack: the attacker's DNS answers one query type with a CNAME to the
// record's target, so the cname check passes, and the other with an
// internal address. The diagnosis must connect to nothing internal and
// quote nothing of it, and still reach this server where the answers are
// ours.
func TestDiagnoseSplitAnswerDialsNothingInternal(t *testing.T) {
	for _, tt := range []struct {
		name         string
		a, aaaa      string // the records answered, "" for a CNAME to the target
		internalAddr string
		want         string // http_challenge status
	}{
		{name: "AAAA a CNAME to the target, A an internal address", a: "A 127.0.0.2",
			internalAddr: "127.0.0.2", want: "fail"},
		{name: "A a CNAME to the target, AAAA the internal address IPv4-mapped", aaaa: "AAAA ::ffff:127.0.0.2",
			internalAddr: "::ffff:127.0.0.2", want: "warn"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := newSSRFEnv(t)
			rec := env.record(t, env.orgID, "split.attacker.example.com", "127.0.0.1")
			answer := func(rr string) []string {
				if rr == "" {
					return []string{rec.Domain + ". CNAME " + rec.TargetCNAME + "."}
				}
				return []string{rec.Domain + ". " + rr}
			}
			env.dns.SetScript(rec.Domain, dns.TypeA, answer(tt.a))
			env.dns.SetScript(rec.Domain, dns.TypeAAAA, answer(tt.aaaa))

			rep, body := env.report(t, rec)
			if c := byID(t, rep, "cname"); c.Status != "pass" {
				t.Fatalf("the split answer did not pass the cname check (%s: %s): the attack is not replayed", c.Status, c.Detail)
			}
			httpc := byID(t, rep, "http_challenge")
			t.Logf("http_challenge %s: %s", httpc.Status, httpc.Detail)
			t.Logf("connections accepted: internal service %d, this server %d", env.internal.accepted.Load(), env.ownAccepts())
			if n := env.internal.accepted.Load(); n != 0 {
				t.Errorf("the internal service accepted %d connections, want 0", n)
			}
			wantNoLeak(t, body)
			if want := tt.internalAddr + ": not contacted"; httpc.Status != tt.want || !strings.Contains(httpc.Detail, want) {
				t.Errorf("http_challenge %s %q, want %s saying %q", httpc.Status, httpc.Detail, tt.want, want)
			}
			if r := httpc.Remediation; r == nil || r.Type != "dns" || len(r.Records) != 1 || r.Records[0].Value != rec.TargetCNAME {
				t.Errorf("http_challenge remediation %+v, want the CNAME to the target (dns)", r)
			}
			if tt.want == "warn" && env.ownAccepts() == 0 {
				t.Error("the target's own address was not probed")
			}
		})
	}
}

// TestDiagnoseNoPortOracle replays the split-answer attack against an
// internal port that is open, then closed: the two reports must be the
// same, so a diagnosis cannot tell which internal ports listen.
func TestDiagnoseNoPortOracle(t *testing.T) {
	env := newSSRFEnv(t)
	rec := env.record(t, env.orgID, "scan.attacker.example.com", "127.0.0.1")
	env.dns.SetScript(rec.Domain, dns.TypeAAAA, []string{rec.Domain + ". CNAME " + rec.TargetCNAME + "."})
	env.dns.SetScript(rec.Domain, dns.TypeA, []string{rec.Domain + ". A 127.0.0.2"})

	open, openBody := env.report(t, rec)
	env.closeInternal()
	// Closed: a connection to the port is refused.
	if c, err := net.Dial("tcp", net.JoinHostPort("127.0.0.2", env.port)); err == nil {
		c.Close()
		t.Fatal("the internal port still accepts connections after closing")
	} else if !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("the closed internal port: %v, want connection refused", err)
	}
	closed, closedBody := env.report(t, rec)

	wantNoLeak(t, openBody)
	wantNoLeak(t, closedBody)
	open.RanAt, closed.RanAt = "", ""
	o, _ := json.Marshal(open)
	c, _ := json.Marshal(closed)
	if string(o) != string(c) {
		t.Errorf("the reports tell an open internal port from a closed one:\nopen:   %s\nclosed: %s", o, c)
	}
	if n := env.internal.accepted.Load(); n != 0 {
		t.Errorf("the internal service accepted %d connections, want 0", n)
	}
}

// TestDiagnoseRebindingRefusedAtDial replays DNS rebinding: the domain's A
// answer is first a CNAME to the record's target (our own address), then
// an internal address for every later query, while AAAA keeps the CNAME
// so the cname check passes. Whichever of the diagnosis's queries sees
// which answer, the internal address is refused where it is dialled.
// Two diagnoses run: the first sees both answers, the second only the
// internal one.
func TestDiagnoseRebindingRefusedAtDial(t *testing.T) {
	env := newSSRFEnv(t)
	rec := env.record(t, env.orgID, "rebind.attacker.example.com", "127.0.0.1")
	cname := []string{rec.Domain + ". CNAME " + rec.TargetCNAME + "."}
	env.dns.SetScript(rec.Domain, dns.TypeAAAA, cname)
	env.dns.SetScript(rec.Domain, dns.TypeA, cname, []string{rec.Domain + ". A 127.0.0.2"})

	var last diagnose.Check
	for i := range 2 {
		rep, body := env.report(t, rec)
		wantNoLeak(t, body)
		last = byID(t, rep, "http_challenge")
		t.Logf("diagnosis %d: http_challenge %s: %s", i+1, last.Status, last.Detail)
	}
	if n := env.dns.ScriptAsked(rec.Domain, dns.TypeA); n < 3 {
		t.Fatalf("the A script answered %d queries: the rebinding answer was never given", n)
	}
	t.Logf("A queries answered by the script: %d; connections accepted: internal service %d, this server %d",
		env.dns.ScriptAsked(rec.Domain, dns.TypeA), env.internal.accepted.Load(), env.ownAccepts())
	if n := env.internal.accepted.Load(); n != 0 {
		t.Errorf("the internal service accepted %d connections, want 0", n)
	}
	if want := "127.0.0.2: not contacted"; last.Status != "fail" || !strings.Contains(last.Detail, want) {
		t.Errorf("second diagnosis: http_challenge %s %q, want fail saying %q", last.Status, last.Detail, want)
	}
}

// TestDiagnoseOwnAddressFromTarget pins the other half of the rule: an
// address is ours because the record's target resolves to it (here
// 127.0.0.3, where a listener of ours answers), not because it is
// loopback, and the HTTP check reaches it.
func TestDiagnoseOwnAddressFromTarget(t *testing.T) {
	env := newSSRFEnv(t)
	rec := env.record(t, env.orgID, "good.customer.example.com", "127.0.0.3")
	env.dns.SetCNAME(rec.Domain, rec.TargetCNAME)

	rep, _ := env.report(t, rec)
	httpc := byID(t, rep, "http_challenge")
	if httpc.Status != "pass" || !strings.Contains(httpc.Detail, "127.0.0.3") {
		t.Errorf("http_challenge %s %q, want pass at 127.0.0.3", httpc.Status, httpc.Detail)
	}
	if n := env.own[1].accepted.Load(); n != 1 {
		t.Errorf("our listener on 127.0.0.3 accepted %d connections, want 1", n)
	}
}

// wantThrottled checks a 429 throttled answer with Retry-After: wantWait
// (seconds) and the detail that says so.
func wantThrottled(t *testing.T, code int, retryAfter string, body []byte, wantWait int) {
	t.Helper()
	want := fmt.Sprintf(`{"type":"throttled_error","code":"throttled","detail":"Request was throttled. Expected available in %d seconds.","attr":null}`+"\n", wantWait)
	if code != http.StatusTooManyRequests || string(body) != want || retryAfter != strconv.Itoa(wantWait) {
		t.Errorf("%d, Retry-After %q, %s; want 429, Retry-After %d, %s", code, retryAfter, body, wantWait, want)
	}
}

// TestDiagnoseOneAtATimePerRecord sends 99 diagnoses of one record at
// once while a first one is running: the running one is answered, every
// other one gets 429 with the seconds until the running one must end.
// The first diagnosis is held by a DNS server that answers after 1.5 s.
// A diagnosis answered 200 before the first one was is one that ran
// alongside it: a failure. Should the machine be so slow that the first
// ends before the others are even looked at (then some run after it, as
// they may), the round is played again, three rounds at most.
func TestDiagnoseOneAtATimePerRecord(t *testing.T) {
	env := newSSRFEnv(t)
	rec := env.record(t, env.orgID, "busy.attacker.example.com", "127.0.0.1")
	env.dns.SetDelay(1500 * time.Millisecond)

	type answer struct {
		code       int
		retryAfter string
		body       []byte
		err        error
		at         time.Time // when the answer came
	}
	send := func() answer {
		var a answer
		a.code, a.retryAfter, a.body, a.err = env.diagnoseAs(env.readKey, env.orgID, rec.ID)
		a.at = time.Now()
		return a
	}
	for round := 1; ; round++ {
		queries := env.dns.Queries()
		first := make(chan answer, 1)
		go func() { first <- send() }()
		// The first one runs once its DNS queries arrive.
		for deadline := time.Now().Add(30 * time.Second); env.dns.Queries() == queries; {
			if time.Now().After(deadline) {
				t.Fatal("the first diagnosis sent no DNS query")
			}
			time.Sleep(time.Millisecond)
		}
		others := make([]answer, 99)
		var wg sync.WaitGroup
		for i := range others {
			wg.Go(func() { others[i] = send() })
		}
		wg.Wait()
		a := <-first
		if a.err != nil || a.code != http.StatusOK {
			t.Fatalf("the first diagnosis: %d %s %v", a.code, a.body, a.err)
		}
		ran, refused := 0, 0
		for i, o := range others {
			switch {
			case o.err != nil:
				t.Fatalf("diagnosis %d: %v", i+2, o.err)
			case o.code == http.StatusOK:
				ran++
				if o.at.Before(a.at) {
					t.Errorf("diagnosis %d ran and was answered while the first was still running", i+2)
				}
			case o.code == http.StatusTooManyRequests:
				refused++
				// The clock stands still: the running one began 0 s ago
				// and ends within 5 s.
				wantThrottled(t, o.code, o.retryAfter, o.body, 5)
			default:
				t.Errorf("diagnosis %d: %d %s", i+2, o.code, o.body)
			}
		}
		t.Logf("round %d: the first diagnosis ran; of 99 sent while it ran, %d refused (429), %d ran", round, refused, ran)
		if t.Failed() || ran == 0 {
			break
		}
		if round == 3 {
			t.Fatalf("in three rounds, the 99 diagnoses sent while the first ran were not all refused: %d ran in the last", ran)
		}
		env.clock.Advance(time.Minute)
	}
	// Once it is over, the record can be diagnosed again.
	env.dns.SetDelay(0)
	if code, _, body, err := env.diagnoseAs(env.readKey, env.orgID, rec.ID); err != nil || code != http.StatusOK {
		t.Errorf("a diagnosis after the running one ended: %d %s %v", code, body, err)
	}
}

// TestDiagnoseOrgRateLimit runs an organization's ten diagnoses of a
// minute, then an eleventh, on another of its records: 429 with the
// seconds until the oldest leaves the window, and no DNS query sent.
// Another organization is not affected, and once the minute has passed
// the first may diagnose again.
func TestDiagnoseOrgRateLimit(t *testing.T) {
	env := newSSRFEnv(t)
	first := env.record(t, env.orgID, "a.attacker.example.com", "127.0.0.1")
	second := env.record(t, env.orgID, "b.attacker.example.com", "127.0.0.1")
	for i := range 10 {
		if code, _, body, err := env.diagnoseAs(env.readKey, env.orgID, first.ID); err != nil || code != http.StatusOK {
			t.Fatalf("diagnosis %d of the minute: %d %s %v", i+1, code, body, err)
		}
		env.clock.Advance(time.Second)
	}
	// The first diagnosis began 10 s ago: it leaves the window in 50 s.
	queries := env.dns.Queries()
	code, retryAfter, body, err := env.diagnoseAs(env.readKey, env.orgID, second.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantThrottled(t, code, retryAfter, body, 50)
	if n := env.dns.Queries() - queries; n != 0 {
		t.Errorf("the refused diagnosis sent %d DNS queries", n)
	}

	otherOrg, otherKey := env.newOrg(t, "Bystander")
	theirs := env.record(t, otherOrg, "x.bystander.example.org", "127.0.0.1")
	if code, _, body, err := env.diagnoseAs(otherKey, otherOrg, theirs.ID); err != nil || code != http.StatusOK {
		t.Errorf("another organization's diagnosis: %d %s %v", code, body, err)
	}

	env.clock.Advance(49 * time.Second)
	code, retryAfter, body, err = env.diagnoseAs(env.readKey, env.orgID, second.ID)
	if err != nil {
		t.Fatal(err)
	}
	wantThrottled(t, code, retryAfter, body, 1)
	env.clock.Advance(time.Second)
	if code, _, body, err := env.diagnoseAs(env.readKey, env.orgID, second.ID); err != nil || code != http.StatusOK {
		t.Errorf("once the oldest diagnosis left the window: %d %s %v", code, body, err)
	}
}
