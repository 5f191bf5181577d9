package lifecycle_test

import (
	"crypto/x509"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// faultEnv is the lifecycle test world with a fault-injecting proxy
// between the certificate manager and Pebble, and the engine's metrics on
// a registry of its own.
type faultEnv struct {
	*lifecycleEnv
	proxy *certstest.FaultProxy
	reg   *prometheus.Registry
}

// newFaultEnv is newLifecycleEnv with the manager ordering through a
// certstest.FaultProxy and the engine's metrics on fe.reg.
func newFaultEnv(t *testing.T, tweak func(*lifecycle.Config)) *faultEnv {
	t.Helper()
	fe := &faultEnv{reg: prometheus.NewRegistry()}
	fe.lifecycleEnv = newLifecycleEnvCA(t, func(cfg *lifecycle.Config) {
		cfg.Registerer = fe.reg
		if tweak != nil {
			tweak(cfg)
		}
	}, func(p *certstest.Pebble) (string, *x509.CertPool) {
		fe.proxy = certstest.StartFaultProxy(t, p)
		return fe.proxy.DirectoryURL(), fe.proxy.ServerRoots()
	})
	return fe
}

// createPointed creates a record whose CNAME is in place before the first
// check, so it goes to issuing at once, whatever the backoff.
func (fe *faultEnv) createPointed(t *testing.T, domain string) apiRecord {
	t.Helper()
	return fe.createPointedAs(t, fe.Home(), domain)
}

// createPointedAs is createPointed in the tenant's organization.
func (fe *faultEnv) createPointedAs(t *testing.T, tn tenant, domain string) apiRecord {
	t.Helper()
	target := control.TargetCNAME(tn.OrgID, domain, lifecycleBase)
	fe.DNS.SetA(target, "127.0.0.1")
	fe.DNS.SetCNAME(domain, target)
	code, rec := fe.CallAs(t, tn, "POST", "", `{"domain":"`+domain+`"}`)
	if code != 201 {
		t.Fatalf("create %s: %d", domain, code)
	}
	if rec.TargetCNAME != target {
		t.Fatalf("target_cname %s, computed %s", rec.TargetCNAME, target)
	}
	return rec
}

// caCost is what the CA has received: HTTP requests and refused
// connections.
func (fe *faultEnv) caCost() int { return fe.proxy.Requests() + fe.proxy.Refused() }

// settled waits until every record has been worked on since the engine's
// clock read after: each is issuing, its next step is at least half of
// minGap away, and its message satisfies ok. It returns the records.
func (fe *faultEnv) settled(t *testing.T, ids []string, after time.Time, minGap time.Duration, ok func(string) bool) []store.Record {
	t.Helper()
	out := make([]store.Record, len(ids))
	for i, id := range ids {
		out[i] = fe.WaitFor(t, id, "put off", func(r store.Record, err error) bool {
			return err == nil && r.Status == store.StatusIssuing && ok(msg(r)) &&
				r.NextCheckAt.After(after.Add(minGap/2)) && r.UpdatedAt.After(after)
		})
	}
	return out
}

// quietPasses is how many passes of the engine quiet covers.
const quietPasses = 20

// quiet checks that the CA receives nothing while the engine, woken
// again and again, makes quietPasses passes over the due records, each
// ending with every step it started done: however slow the machine, the
// engine had every chance to contact the CA.
func (fe *faultEnv) quiet(t *testing.T, why string) {
	t.Helper()
	before := fe.caCost()
	for range quietPasses {
		fe.WaitIdlePass(t)
	}
	if got := fe.caCost(); got != before {
		t.Errorf("%s: the CA received %d more requests or connections over %d passes of the engine", why, got-before, quietPasses)
	}
}

func (fe *faultEnv) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	m := fe.metric(t, name, label, value)
	if m == nil || m.Counter == nil {
		t.Fatalf("no counter %s{%s=%q}", name, label, value)
	}
	return m.Counter.GetValue()
}

func (fe *faultEnv) gauge(t *testing.T, name string) float64 {
	t.Helper()
	m := fe.metric(t, name, "", "")
	if m == nil || m.Gauge == nil {
		t.Fatalf("no gauge %s", name)
	}
	return m.Gauge.GetValue()
}

func (fe *faultEnv) metric(t *testing.T, name, label, value string) *dto.Metric {
	t.Helper()
	families, err := fe.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.Metric {
			if label == "" {
				return m
			}
			for _, lp := range m.Label {
				if lp.GetName() == label && lp.GetValue() == value {
					return m
				}
			}
		}
	}
	return nil
}

// TestCAOutageBacksOff: with the CA refusing connections or answering
// 5xx, records stay issuing with a message that puts the fault on the CA;
// a circuit breaker lets at most ACMEWorkers orders through per pause, so
// six waiting records do not become six orders; nothing reaches the CA
// between pauses however long real time runs; and the records get their
// certificates by themselves once the CA is back.
func TestCAOutageBacksOff(t *testing.T) {
	t.Parallel()
	const (
		acmeWorkers = 2
		first       = time.Minute
		records     = 6
	)
	for _, tt := range []struct {
		name  string
		fault certstest.Fault
		// perOrder bounds what one order costs the CA, acmez's retries
		// included (measured in certs.TestObtainCAFaults: 3, 3 and 8).
		perOrder int
	}{
		{"refused", certstest.Fault{Mode: certstest.Refuse}, 3},
		{"server error", certstest.Fault{Mode: certstest.ServerError}, 3},
		{"server error on new-order", certstest.Fault{Mode: certstest.ServerError, Paths: []string{certstest.NewOrderPath}}, 10},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fe := newFaultEnv(t, func(c *lifecycle.Config) {
				c.ACMEWorkers = acmeWorkers
				c.FirstRecheck = first
				c.RecheckMax = 4 * first
			})
			fe.proxy.Set(tt.fault)
			start := fe.Clock.Now()
			var ids []string
			for i := range records {
				ids = append(ids, fe.createPointed(t, strings.ReplaceAll(tt.name, " ", "-")+string(rune('a'+i))+".shop.example.com").ID)
			}
			outage := func(m string) bool {
				return strings.Contains(m, "certificate authority") && strings.Contains(m, "unavailable") &&
					strings.Contains(m, "nothing is wrong with your domain or DNS") && !strings.Contains(m, "CNAME")
			}
			rs := fe.settled(t, ids, start, first, outage)
			for _, r := range rs {
				t.Logf("%s: %s", r.Domain, msg(r))
			}
			cost1 := fe.caCost()
			t.Logf("first pause: %d requests and refused connections for %d records", cost1, records)
			if max := acmeWorkers * tt.perOrder; cost1 == 0 || cost1 > max {
				t.Errorf("first pause: the CA got %d requests and connections, want 1..%d (%d orders at most)", cost1, max, acmeWorkers)
			}
			fe.quiet(t, "during the first pause")

			// The next pause: again at most ACMEWorkers orders.
			fe.Clock.Advance(2 * first)
			second := fe.Clock.Now()
			fe.settled(t, ids, second, first, outage)
			cost2 := fe.caCost() - cost1
			t.Logf("second pause: %d requests and refused connections", cost2)
			if max := acmeWorkers * tt.perOrder; cost2 == 0 || cost2 > max {
				t.Errorf("second pause: the CA got %d requests and connections, want 1..%d", cost2, max)
			}
			fe.quiet(t, "during the second pause")
			if got := fe.counter(t, "edgeproxy_acme_pauses_total", "cause", "ca_unavailable"); got < 2 {
				t.Errorf("edgeproxy_acme_pauses_total{cause=ca_unavailable} = %v, want at least 2", got)
			}
			if until := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); until < float64(second.Unix()) {
				t.Errorf("edgeproxy_acme_paused_until_seconds = %v during the pause", until)
			}

			fe.proxy.Set(certstest.Fault{Mode: certstest.Pass})
			fe.Clock.Advance(10 * first)
			for _, id := range ids {
				r := fe.WaitStatus(t, id, store.StatusValid)
				fe.MustServe(t, r.Domain)
			}
			logs := fe.Logs.String()
			if n := strings.Count(logs, `msg="ACME orders paused"`); n != 1 {
				t.Errorf("the pause was logged %d times, want once", n)
			}
			if n := strings.Count(logs, `msg="ACME orders resumed`); n != 1 {
				t.Errorf("the end of the pause was logged %d times, want once", n)
			}
			if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got != 0 {
				t.Errorf("edgeproxy_acme_paused_until_seconds = %v after recovery, want 0", got)
			}
		})
	}
}

// TestCARateLimitPausesAllOrders: a limit on the whole ACME account (new
// orders per account) met by one order pauses every order until the time
// the CA gave, whatever each record's own backoff. Records that come due
// meanwhile are told why and when without a request; their messages do
// not carry the CA's words, which were about another record's order, and
// their schedule does not carry the pause (they look again every
// RecheckMax). The time under the limit does not count against the issue
// deadline, and everything reaches valid by itself afterwards.
func TestCARateLimitPausesAllOrders(t *testing.T) {
	t.Parallel()
	fe := newFaultEnv(t, nil) // backoff 50 ms to 200 ms: only the pause holds orders back
	until := fe.Clock.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	fe.proxy.Set(certstest.Fault{Mode: certstest.RateLimited, Until: until, Paths: []string{certstest.NewOrderPath}})
	paused := "The certificate authority is rate limiting this service's ACME account, not your domain: every certificate order is rate limited until " +
		until.Format(time.RFC3339) + "; retrying then."

	first := fe.createPointed(t, "first.shop.example.com")
	own := func(m string) bool { return strings.HasPrefix(m, paused+" The CA said: too many new orders") }
	r := fe.settled(t, []string{first.ID}, fe.Clock.Now().Add(-time.Second), time.Hour, own)[0]
	t.Logf("message: %s", msg(r))
	if !r.NextCheckAt.Equal(until) {
		t.Errorf("next attempt at %v, want the CA's %v", r.NextCheckAt, until)
	}
	if r.Checks != 0 {
		t.Errorf("checks = %d under a rate limit, want 0 (the time is not the record's)", r.Checks)
	}
	if got := fe.proxy.RequestsTo(certstest.NewOrderPath); got != 1 {
		t.Errorf("%d new-order requests, want 1 (a 429 is not retried)", got)
	}
	costAfterFirst := fe.caCost()

	// Records that come due during the pause do not ask, and are told
	// without another order's words.
	more := []apiRecord{fe.createPointed(t, "second.shop.example.com"), fe.createPointed(t, "third.shop.example.com")}
	for _, rec := range more {
		r := fe.WaitFor(t, rec.ID, "held by the pause", func(r store.Record, err error) bool {
			return err == nil && r.Status == store.StatusIssuing && msg(r) == paused
		})
		if !r.NextCheckAt.Before(until.Add(-time.Hour)) {
			t.Errorf("%s: next check at %v, the pause's end %v: another order's pause written into its schedule", r.Domain, r.NextCheckAt, until)
		}
	}
	if got := fe.caCost(); got != costAfterFirst {
		t.Errorf("records coming due during the pause made %d requests to the CA", got-costAfterFirst)
	}
	fe.quiet(t, "during the rate limit")
	if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got != float64(until.Unix()) {
		t.Errorf("edgeproxy_acme_paused_until_seconds = %v, want %d", got, until.Unix())
	}
	if got := fe.counter(t, "edgeproxy_acme_pauses_total", "cause", "rate_limited"); got != 1 {
		t.Errorf("edgeproxy_acme_pauses_total{cause=rate_limited} = %v, want 1", got)
	}
	if got := fe.counter(t, "edgeproxy_acme_orders_held_total", "by", "account_pause"); got < 2 {
		t.Errorf("edgeproxy_acme_orders_held_total{by=account_pause} = %v, want at least 2", got)
	}

	// The CA would answer now, but its time has not come: nothing is asked.
	fe.proxy.Set(certstest.Fault{Mode: certstest.Pass})
	fe.quiet(t, "before the CA's time, the limit lifted early")

	// Past the CA's time, and past the one-hour issue timeout.
	fe.Clock.Advance(2*time.Hour + time.Second)
	for _, id := range []string{first.ID, more[0].ID, more[1].ID} {
		r := fe.WaitStatus(t, id, store.StatusValid)
		fe.MustServe(t, r.Domain)
	}
	logs := fe.Logs.String()
	if n := strings.Count(logs, `msg="ACME orders paused"`); n != 1 {
		t.Errorf("the pause was logged %d times, want once", n)
	}
	if !strings.Contains(logs, "until="+until.Format(time.RFC3339)) {
		t.Errorf("the pause log does not give its end %s", until.Format(time.RFC3339))
	}
	if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got != 0 {
		t.Errorf("edgeproxy_acme_paused_until_seconds = %v after the pause, want 0", got)
	}
}

// TestCARateLimitWithoutTime: a limit on the account whose detail names
// no time (the Retry-After header alone is out of reach: acmez drops it)
// pauses orders for the engine's own backoff, says so, and recovers.
func TestCARateLimitWithoutTime(t *testing.T) {
	t.Parallel()
	const first = time.Minute
	fe := newFaultEnv(t, func(c *lifecycle.Config) {
		c.FirstRecheck = first
		c.RecheckMax = 4 * first
	})
	fe.proxy.Set(certstest.Fault{Mode: certstest.RateLimited, NoTimeInDetail: true, Paths: []string{certstest.NewOrderPath}})
	rec := fe.createPointed(t, "untimed.shop.example.com")
	start := fe.Clock.Now()
	r := fe.settled(t, []string{rec.ID}, start.Add(-time.Second), first, func(m string) bool {
		return strings.Contains(m, "every certificate order is rate limited, without saying until when, until ")
	})[0]
	t.Logf("message: %s", msg(r))
	// The first pause is FirstRecheck, ±10% jitter.
	if gap := r.NextCheckAt.Sub(start); gap < first*9/10 || gap > first*11/10+30*time.Second {
		t.Errorf("next attempt %v after the order, want about %v", gap, first)
	}
	fe.quiet(t, "during the estimated pause")
	fe.proxy.Set(certstest.Fault{Mode: certstest.Pass})
	fe.Clock.Advance(2 * first)
	fe.WaitStatus(t, rec.ID, store.StatusValid)
}

// TestMonitorMissingCertificateUnderRateLimit: a live record whose
// certificate went missing meets a CA rate limit when the monitor orders
// a new one: it becomes a warning due again at the CA's time, not an
// erroring the customer must retry, and it recovers by itself.
func TestMonitorMissingCertificateUnderRateLimit(t *testing.T) {
	t.Parallel()
	fe := newFaultEnv(t, nil)
	rec := fe.createPointed(t, "lost.shop.example.com")
	fe.WaitStatus(t, rec.ID, store.StatusValid)
	ctx := t.Context()
	if err := fe.Certs.Drop(ctx, "lost.shop.example.com"); err != nil {
		t.Fatal(err)
	}
	until := fe.Clock.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
	fe.proxy.Set(certstest.Fault{Mode: certstest.RateLimited, Until: until, Paths: []string{certstest.NewOrderPath}})
	fe.Clock.Advance(2 * time.Hour) // past the one-hour monitor interval
	r := fe.WaitFor(t, rec.ID, "a warning about the rate limit", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusWarning && strings.Contains(msg(r), "rate limited until "+until.Format(time.RFC3339))
	})
	t.Logf("message: %s", msg(r))
	if !r.NextCheckAt.Equal(until) {
		t.Errorf("next check at %v, want the CA's %v", r.NextCheckAt, until)
	}
	fe.proxy.Set(certstest.Fault{Mode: certstest.Pass})
	fe.quiet(t, "before the CA's time")
	fe.Clock.Advance(time.Hour + time.Second)
	fe.WaitStatus(t, rec.ID, store.StatusValid)
	fe.MustServe(t, "lost.shop.example.com")
}
