package lifecycle_test

import (
	"bytes"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// The engine's pauses in these tests: short enough that a fault window of
// a few seconds spans the whole backoff, from the first pause to the cap.
const (
	faultFirstRecheck = 100 * time.Millisecond
	faultRecheckMax   = time.Second
	// faultWindow is how far the test moves the engine's frozen clock
	// while a fault is held and the engine's checks are counted, in steps
	// of faultStep, shorter than the shortest pause (FirstRecheck less
	// its 10% jitter): a step may see one check, never two.
	faultWindow = 5 * time.Second
	faultStep   = 50 * time.Millisecond
	// faultMinChecks and faultMaxChecks bound the checks of one record
	// over faultWindow. With the backoff (0.1, 0.2, 0.4, 0.8, then 1 s,
	// ±10%, each check up to a step late) 6 to 8 fit; a fixed first pause
	// would allow 50, and a retry loop without a pause one per step.
	faultMinChecks = 4
	faultMaxChecks = 12
	// notBlaming is in the message of a check our resolver could not
	// complete (dnsverify's resolverFailure).
	notBlaming = "does not mean your records are wrong"
)

// dnsFaultEnv is the lifecycle world of lifecycletest with its engine
// replaced by one whose verifier asks resolver (the DNS server itself, or
// a relay in front of it that can go down) and whose metrics the test
// reads.
type dnsFaultEnv struct {
	*lifecycleEnv
	reg *prometheus.Registry
}

func newDNSFaultEnv(t *testing.T, resolver func(env *lifecycleEnv) string) *dnsFaultEnv {
	t.Helper()
	var cfg lifecycle.Config
	started := make(chan struct{})
	var once sync.Once
	env := newLifecycleEnv(t, func(c *lifecycle.Config) {
		c.FirstRecheck = faultFirstRecheck
		c.RecheckMax = faultRecheckMax
		cfg = *c
		// Run reads the clock first once Start is done: stopping the
		// engine during Start would fail the test.
		now := c.Now
		c.Now = func() time.Time {
			once.Do(func() { close(started) })
			return now()
		}
	})
	<-started
	// The world's engine has worked on no record yet; swap it before any.
	env.StopEngine()
	// The same per-query timeout as the world's own verifier.
	verifier, err := dnsverify.New([]string{resolver(env)}, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	cfg.Registerer = reg
	env.Engine = lifecycle.NewEngine(env.Store, verifier, env.Certs, cfg)
	env.StartEngine(t)
	return &dnsFaultEnv{lifecycleEnv: env, reg: reg}
}

// checks is how many CNAME checks the engine has made with this result
// (edgeproxy_dns_checks_total).
func (env *dnsFaultEnv) checks(t *testing.T, result string) int {
	t.Helper()
	families, err := env.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "edgeproxy_dns_checks_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" && l.GetValue() == result {
					return int(m.GetCounter().GetValue())
				}
			}
		}
	}
	t.Fatalf("no edgeproxy_dns_checks_total{result=%q} series", result)
	return 0
}

// waitChecks waits until the engine has made at least n checks with
// result and saved a message, or the record has left want; it returns the
// record then.
func (env *dnsFaultEnv) waitChecks(t *testing.T, id, result string, n int, want store.Status) store.Record {
	t.Helper()
	return env.WaitFor(t, id, "checked again", func(r store.Record, err error) bool {
		return err == nil && (r.Status != want || env.checks(t, result) >= n && r.Message != nil)
	})
}

// waitNotDue wakes the engine until the record is no longer due on its
// clock: the check that was due, if any, is done and its outcome saved
// with the time of the next one.
func (env *dnsFaultEnv) waitNotDue(t *testing.T, id string) {
	t.Helper()
	env.WaitFor(t, id, "checked", func(r store.Record, err error) bool {
		return err == nil && (r.Status != store.StatusWaiting || r.NextCheckAt.After(env.Clock.Now()))
	})
}

// monitored reports whether the monitor has saved its finding on r since
// the test moved the clock past the monitor interval: a finding schedules
// the next visit an interval (an hour) ahead, or none when it is fatal.
func (env *dnsFaultEnv) monitored(r store.Record) bool {
	return r.Status != store.StatusValid || r.NextCheckAt.After(env.Clock.Now().Add(30*time.Minute))
}

// dnsFaultRelay forwards DNS over UDP from its own loopback port to a
// resolver. It can go down, its socket closed so that queries are refused
// as by a resolver that is not running, and come back on the same port.
// The verifier uses TCP only after a truncated answer, which no test
// sends through the relay.
type dnsFaultRelay struct {
	upstream string
	addr     string

	// mu guards pc.
	mu sync.Mutex
	pc net.PacketConn
	// wg counts the read loop and the forwards in flight.
	wg sync.WaitGroup
}

func startDNSFaultRelay(t *testing.T, upstream string) *dnsFaultRelay {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &dnsFaultRelay{upstream: upstream, addr: pc.LocalAddr().String()}
	r.serve(pc)
	t.Cleanup(r.down)
	return r
}

func (r *dnsFaultRelay) serve(pc net.PacketConn) {
	r.mu.Lock()
	r.pc = pc
	r.mu.Unlock()
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		buf := make([]byte, dns.MaxMsgSize)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed by down
			}
			query := bytes.Clone(buf[:n])
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.forward(pc, from, query)
			}()
		}
	}()
}

// forward sends one query upstream and its answer back; an answer that
// does not come within a few seconds is dropped, as a lost packet is.
func (r *dnsFaultRelay) forward(pc net.PacketConn, from net.Addr, query []byte) {
	c, err := net.Dial("udp", r.upstream)
	if err != nil {
		return
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(query); err != nil {
		return
	}
	answer := make([]byte, dns.MaxMsgSize)
	n, err := c.Read(answer)
	if err != nil {
		return
	}
	pc.WriteTo(answer[:n], from)
}

// down closes the relay's socket and waits for its forwards to end.
func (r *dnsFaultRelay) down() {
	r.mu.Lock()
	if r.pc != nil {
		r.pc.Close()
		r.pc = nil
	}
	r.mu.Unlock()
	r.wg.Wait()
}

// up listens on the relay's port again.
func (r *dnsFaultRelay) up(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pc, err := net.ListenPacket("udp", r.addr)
		if err == nil {
			r.serve(pc)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the relay's port %s was taken while it was down: %v", r.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// dnsFault is one way our resolver can fail.
type dnsFault struct {
	name string
	// viaRelay: the verifier asks the relay, not the DNS server.
	viaRelay bool
	// reachesServer: the failing queries still reach the DNS server (so
	// its query count bounds them too).
	reachesServer bool
	// breakDNS starts the fault for domain; heal ends it.
	breakDNS, heal func(t *testing.T, env *dnsFaultEnv, relay *dnsFaultRelay, domain string)
}

var dnsFaults = []dnsFault{
	{
		name:     "resolver down",
		viaRelay: true,
		breakDNS: func(_ *testing.T, _ *dnsFaultEnv, relay *dnsFaultRelay, _ string) { relay.down() },
		heal:     func(t *testing.T, _ *dnsFaultEnv, relay *dnsFaultRelay, _ string) { relay.up(t) },
	},
	{
		name:          "resolver slower than the query timeout",
		reachesServer: true,
		// Three times the verifier's 500 ms per query.
		breakDNS: func(_ *testing.T, env *dnsFaultEnv, _ *dnsFaultRelay, _ string) {
			env.DNS.SetDelay(1500 * time.Millisecond)
		},
		heal: func(_ *testing.T, env *dnsFaultEnv, _ *dnsFaultRelay, _ string) { env.DNS.SetDelay(0) },
	},
	{
		name:          "SERVFAIL",
		reachesServer: true,
		breakDNS: func(_ *testing.T, env *dnsFaultEnv, _ *dnsFaultRelay, domain string) {
			env.DNS.SetRcode(domain, dns.RcodeServerFailure)
		},
		heal: func(_ *testing.T, env *dnsFaultEnv, _ *dnsFaultRelay, domain string) {
			env.DNS.SetRcode(domain, dns.RcodeSuccess)
		},
	},
}

// TestEngineDNSFaults holds each resolver fault over a record whose
// customer did everything right (the CNAME is in place): the record stays
// waiting with a message that does not blame the customer's DNS, the
// engine's checks back off, the DNS wait deadline passing during the fault
// does not time the record out, and once DNS answers again the record
// goes to valid by itself. Then the same fault meets the monitor of the
// valid record, which must leave it valid.
func TestEngineDNSFaults(t *testing.T) {
	for _, fault := range dnsFaults {
		t.Run(fault.name, func(t *testing.T) {
			t.Parallel()
			var relay *dnsFaultRelay
			env := newDNSFaultEnv(t, func(env *lifecycleEnv) string {
				if fault.viaRelay {
					relay = startDNSFaultRelay(t, env.DNS.Addr())
					return relay.addr
				}
				return env.DNS.Addr()
			})
			domain := "fault.shop.example.com"
			fault.breakDNS(t, env, relay, domain)
			// The fault window runs on the frozen clock, from the first
			// failed check: what the engine does in it depends on the
			// backoff alone, not on how fast the machine runs.
			env.Clock.Freeze()
			rec := env.Create(t, domain)
			env.DNS.SetCNAME(domain, rec.TargetCNAME)
			env.waitChecks(t, rec.ID, "resolver_failure", 1, store.StatusWaiting)
			checks0, queries0 := env.checks(t, "resolver_failure"), env.DNS.Queries()
			for moved := time.Duration(0); moved < faultWindow; moved += faultStep {
				before := env.checks(t, "resolver_failure")
				env.Clock.Advance(faultStep)
				env.waitNotDue(t, rec.ID)
				if got := env.checks(t, "resolver_failure") - before; got > 1 {
					t.Fatalf("%d checks within one step of %s of the clock, shorter than the first pause: the engine does not pause", got, faultStep)
				}
			}
			r, err := env.Store.Record(rec.ID)
			if err != nil {
				t.Fatal(err)
			}
			env.Clock.Thaw()
			checks, queries := env.checks(t, "resolver_failure")-checks0, env.DNS.Queries()-queries0
			t.Logf("over %s of the engine's clock with %s: %d checks, %d queries reached the DNS server; status %s, message %q",
				faultWindow, fault.name, checks, queries, r.Status, msg(r))
			if r.Status != store.StatusWaiting {
				t.Fatalf("status %s during the fault, want waiting (message %q)", r.Status, msg(r))
			}
			if m := msg(r); !strings.Contains(m, notBlaming) || strings.Contains(m, "Add this record") {
				t.Errorf("message %q blames the customer's DNS for our resolver's failure", m)
			}
			if checks < faultMinChecks {
				t.Errorf("%d checks over %s, want at least %d: the engine stopped checking", checks, faultWindow, faultMinChecks)
			}
			if checks > faultMaxChecks {
				t.Errorf("%d checks over %s, want at most %d: the engine does not back off", checks, faultWindow, faultMaxChecks)
			}
			switch {
			case fault.reachesServer && queries > 2*faultMaxChecks:
				// A check is an A and an AAAA query.
				t.Errorf("%d queries reached the DNS server over %s, want at most %d", queries, faultWindow, 2*faultMaxChecks)
			case !fault.reachesServer && queries != 0:
				t.Errorf("%d queries reached the DNS server through a relay that is down", queries)
			}
			if got := env.checks(t, "pointing") + env.checks(t, "missing"); got != 0 {
				t.Errorf("%d checks found an answer during the fault", got)
			}

			// The DNS wait deadline (one hour) passes while the resolver
			// still fails: without an answer there is nothing to time out on.
			env.Clock.Advance(2 * time.Hour)
			n := env.checks(t, "resolver_failure")
			r = env.waitChecks(t, rec.ID, "resolver_failure", n+2, store.StatusWaiting)
			if r.Status != store.StatusWaiting {
				t.Errorf("after the DNS wait deadline passed with our resolver failing: status %s, message %q; want waiting",
					r.Status, msg(r))
			}

			// DNS answers again: the record proceeds by itself.
			fault.heal(t, env, relay, domain)
			r = env.WaitStatus(t, rec.ID, store.StatusValid)
			env.MustServe(t, domain)

			// The monitor of the valid record meets the same fault.
			fault.breakDNS(t, env, relay, domain)
			n = env.checks(t, "resolver_failure")
			env.Clock.Advance(2 * time.Hour) // past the one-hour monitor interval
			r = env.WaitFor(t, rec.ID, "monitored", func(r store.Record, err error) bool {
				return err == nil && env.checks(t, "resolver_failure") > n && env.monitored(r)
			})
			if r.Status != store.StatusValid || r.Message != nil {
				t.Errorf("monitor during %s moved the valid record to %s with message %q", fault.name, r.Status, msg(r))
			}
			if due := r.NextCheckAt.Sub(env.Clock.Now()); due < 30*time.Minute {
				t.Errorf("after the monitor's run, the next check is due in %s, want about the monitor interval", due)
			}
			env.MustServe(t, domain)
			fault.heal(t, env, relay, domain)
		})
	}
}

// TestEngineDNSTruncatedUDP answers every UDP query truncated, with no
// records: the verifier must retry over TCP, so the record goes to valid
// as if nothing were wrong, and its monitor still finds DNS pointing.
func TestEngineDNSTruncatedUDP(t *testing.T) {
	t.Parallel()
	env := newDNSFaultEnv(t, func(env *lifecycleEnv) string { return env.DNS.Addr() })
	env.DNS.SetTruncateUDP(true)
	domain := "tc.shop.example.com"
	rec := env.Create(t, domain)
	env.DNS.SetCNAME(domain, rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, domain)

	n := env.checks(t, "pointing")
	env.Clock.Advance(2 * time.Hour)
	r := env.WaitFor(t, rec.ID, "monitored", func(r store.Record, err error) bool {
		return err == nil && env.checks(t, "pointing") > n && env.monitored(r)
	})
	if r.Status != store.StatusValid {
		t.Errorf("after the monitor with truncated UDP answers: status %s, message %q", r.Status, msg(r))
	}
	if got := env.checks(t, "resolver_failure"); got != 0 {
		t.Errorf("%d checks failed although every answer was there over TCP", got)
	}
}
