package lifecycle_test

import (
	"context"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// These tests play one organization against another: a
// tenant that makes the CA rate limit its own names, or that orders
// without end, must not hold back another tenant's certificates, nor put
// its CA's words in another tenant's messages. The CA is Pebble behind
// certstest.FaultProxy, which answers chosen names with Let's Encrypt's
// own rate-limit problems and counts new orders by name.

// messageLog records every message each record had, as committed (the
// store's change feed carries each commit's record).
type messageLog struct {
	mu   sync.Mutex
	byID map[string][]string
}

func watchMessages(t *testing.T, st *store.Store) *messageLog {
	t.Helper()
	ml := &messageLog{byID: map[string][]string{}}
	sub := st.Subscribe()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-sub.Ready():
			}
			for _, c := range sub.Take() {
				if c.Record != nil && c.Record.Message != nil {
					ml.mu.Lock()
					ml.byID[c.ID] = append(ml.byID[c.ID], *c.Record.Message)
					ml.mu.Unlock()
				}
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		sub.Close()
	})
	return ml
}

// messages returns every message the record had.
func (ml *messageLog) messages(id string) []string {
	ml.mu.Lock()
	defer ml.mu.Unlock()
	return slices.Clone(ml.byID[id])
}

// TestTenantNameLimitSparesOthers: tenant A makes the CA rate limit one of
// its names (a duplicate-certificate or failed-validation limit a tenant
// can trigger on purpose, a limit on its registered domain, or a limit
// the CA does not name). Tenant B's record, due at the same time, still
// goes valid and its message never quotes the CA's words about A's name.
// A's record is held until the CA's time with the CA's words in its own
// message, and no further order for the name reaches the CA meanwhile. A
// limit on a name holds only that name: A's other name, under the same
// registered domain, goes valid unless the limit is the registered
// domain's.
func TestTenantNameLimitSparesOthers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name     string
		limit    certstest.RateLimit
		detail   string // what A's message quotes
		sibling  bool   // A's other name under the same registered domain is held too
		subjects string // what the hold names
	}{
		{"duplicate certificate", certstest.DuplicateCertificate, "too many certificates (5) already issued for this exact set of identifiers", false, "www.attacker-shop.com"},
		{"failed authorizations", certstest.FailedAuthorizations, `too many failed authorizations (5) for "www.attacker-shop.com"`, false, "www.attacker-shop.com"},
		{"registered domain", certstest.CertificatesPerRegisteredDomain, `too many certificates (50) already issued for "attacker-shop.com"`, true, "the registered domain attacker-shop.com"},
		{"unnamed limit", certstest.UnknownLimit, "request refused, retry after", false, "www.attacker-shop.com"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fe := newFaultEnv(t, nil) // backoff 50 ms to 200 ms: only holds keep orders back
			a, b := fe.Home(), fe.NewTenant(t, "Bystander")
			msgs := watchMessages(t, fe.Store)
			const aName, aSibling, bName = "www.attacker-shop.com", "cdn.attacker-shop.com", "www.bystander-shop.com"
			until := fe.Clock.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
			fe.proxy.LimitName(aName, tt.limit, until)

			ra := fe.createPointedAs(t, a, aName)
			rb := fe.createPointedAs(t, b, bName)
			held := fe.WaitFor(t, ra.ID, "held by the CA's limit", func(r store.Record, err error) bool {
				return err == nil && r.Status == store.StatusIssuing && strings.Contains(msg(r), "The CA said: ")
			})
			t.Logf("A's message: %s", msg(held))
			want := "The certificate authority is rate limiting certificates for " + tt.subjects + ": rate limited until " + until.Format(time.RFC3339) + "; retrying then."
			if m := msg(held); !strings.HasPrefix(m, want) || !strings.Contains(m, tt.detail) {
				t.Errorf("A's message %q, want %q and the CA's %q", m, want, tt.detail)
			}
			if !held.NextCheckAt.Equal(until) {
				t.Errorf("A's next attempt at %v, want the CA's %v", held.NextCheckAt, until)
			}
			vb := fe.WaitStatus(t, rb.ID, store.StatusValid)
			fe.MustServe(t, vb.Domain)
			if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got != 0 {
				t.Errorf("edgeproxy_acme_paused_until_seconds = %v: a limit on A's name paused every order", got)
			}

			// A's other name.
			sib := fe.createPointedAs(t, a, aSibling)
			if tt.sibling {
				r := fe.WaitFor(t, sib.ID, "held by the registered domain's limit", func(r store.Record, err error) bool {
					return err == nil && r.Status == store.StatusIssuing && strings.Contains(msg(r), "registered domain attacker-shop.com")
				})
				if strings.Contains(msg(r), "The CA said") || strings.Contains(msg(r), "too many") {
					t.Errorf("the sibling's message quotes the CA's words about another order: %q", msg(r))
				}
				if got := fe.proxy.NewOrders(aSibling); got != 0 {
					t.Errorf("%d orders for the sibling under the registered domain's limit, want 0", got)
				}
			} else {
				fe.WaitStatus(t, sib.ID, store.StatusValid)
			}
			fe.quiet(t, "while A's name is held")
			if got := fe.proxy.NewOrders(aName); got != 1 {
				t.Errorf("%d orders for A's held name, want 1", got)
			}
			for _, m := range msgs.messages(rb.ID) {
				if strings.Contains(m, "too many") || strings.Contains(m, "attacker") || strings.Contains(m, "The CA said") || strings.Contains(m, "rate limit") {
					t.Errorf("B's message carried A's limit: %q", m)
				}
			}
			t.Logf("figures: new orders at the CA: A's name %d, A's other name %d, B's name %d; B valid",
				fe.proxy.NewOrders(aName), fe.proxy.NewOrders(aSibling), fe.proxy.NewOrders(bName))

			// The CA's time passes: A orders again and gets its certificate.
			fe.proxy.LimitName(aName, 0, time.Time{})
			fe.Clock.Advance(3*time.Hour + time.Second)
			fe.WaitStatus(t, ra.ID, store.StatusValid)
			if got := fe.proxy.NewOrders(aName); got != 2 {
				t.Errorf("%d orders for A's name after its limit, want 2", got)
			}
		})
	}
}

// TestUnplacedLimitNeedsTwoTenants: a rate limit whose words name no
// known limit is held on the name that met it. One tenant meeting such
// limits on several of its own names never pauses every order; only when
// a second organization's order meets one too, with no order accepted in
// between, is it taken for the account's and pauses every order (and a
// third tenant is told so without the CA's words).
func TestUnplacedLimitNeedsTwoTenants(t *testing.T) {
	t.Parallel()
	fe := newFaultEnv(t, func(c *lifecycle.Config) { c.ACMEWorkers = 1 })
	a, b, c := fe.Home(), fe.NewTenant(t, "Second"), fe.NewTenant(t, "Third")
	until := fe.Clock.Now().Add(2 * time.Hour).UTC().Truncate(time.Second)
	for _, n := range []string{"one.attacker-shop.com", "two.attacker-shop.com", "www.second-shop.com"} {
		fe.proxy.LimitName(n, certstest.UnknownLimit, until)
	}
	a1 := fe.createPointedAs(t, a, "one.attacker-shop.com")
	a2 := fe.createPointedAs(t, a, "two.attacker-shop.com")
	for _, id := range []string{a1.ID, a2.ID} {
		fe.WaitFor(t, id, "held on its name", func(r store.Record, err error) bool {
			return err == nil && strings.Contains(msg(r), "rate limiting certificates for ") && strings.Contains(msg(r), "The CA said")
		})
	}
	// A's two names did not pause anything. (C's order is not tried here:
	// an order the CA accepts would end the run of unplaced limits.)
	fe.quiet(t, "while A's names are held")
	if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got != 0 {
		t.Errorf("edgeproxy_acme_paused_until_seconds = %v: one tenant's unplaced limits paused every order", got)
	}

	// A second organization meets it: the account's.
	b1 := fe.createPointedAs(t, b, "www.second-shop.com")
	fe.WaitFor(t, b1.ID, "pausing every order", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "every certificate order is rate limited until "+until.Format(time.RFC3339)) &&
			strings.Contains(msg(r), "The CA said")
	})
	c1 := fe.createPointedAs(t, c, "www.third-shop.com")
	r := fe.WaitFor(t, c1.ID, "held by the pause", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusIssuing && strings.Contains(msg(r), "every certificate order is rate limited")
	})
	if m := msg(r); strings.Contains(m, "The CA said") || strings.Contains(m, "refused") {
		t.Errorf("C's message quotes another order's CA answer: %q", m)
	}
	if got := fe.proxy.NewOrders("www.third-shop.com"); got != 0 {
		t.Errorf("%d orders for C's name during the pause, want 0", got)
	}
	fe.Clock.Advance(2*time.Hour + time.Second)
	fe.WaitStatus(t, c1.ID, store.StatusValid)
}

// TestAccountLimitPauseCapped: a limit on the whole account whose time is
// years away (Retry-After in 2030) pauses every order for 24 hours at
// most; then exactly one order tries again (one CA worker), and, the limit
// still there, the pause starts again. Another tenant's record is told
// about the pause without the CA's words and without the pause in its
// schedule; the pause is in the store.
func TestAccountLimitPauseCapped(t *testing.T) {
	t.Parallel()
	fe := newFaultEnv(t, func(c *lifecycle.Config) { c.ACMEWorkers = 1 })
	a, b := fe.Home(), fe.NewTenant(t, "Bystander")
	far := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	fe.proxy.Set(certstest.Fault{Mode: certstest.RateLimited, Until: far, Paths: []string{certstest.NewOrderPath}})

	start := fe.Clock.Now()
	ra := fe.createPointedAs(t, a, "www.first-shop.com")
	r := fe.WaitFor(t, ra.ID, "paused by the account's limit", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "The CA said: too many new orders")
	})
	t.Logf("A's message: %s", msg(r))
	capEnd := r.NextCheckAt
	if capEnd.Before(start.Add(24*time.Hour)) || capEnd.After(fe.Clock.Now().Add(24*time.Hour)) {
		t.Fatalf("pause ends %v, want 24 h after the order (between %v and %v)", capEnd, start.Add(24*time.Hour), fe.Clock.Now().Add(24*time.Hour))
	}
	if want := "rate limited until " + capEnd.UTC().Format(time.RFC3339) + " (the CA asked for longer; one order is tried then)"; !strings.Contains(msg(r), want) {
		t.Errorf("A's message %q lacks %q", msg(r), want)
	}
	if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got != float64(capEnd.Unix()) {
		t.Errorf("edgeproxy_acme_paused_until_seconds = %v, want %d (24 h, not 2030)", got, capEnd.Unix())
	}
	holds, err := fe.Store.CAHolds(fe.Clock.Now())
	if err != nil || len(holds) != 1 || holds[0].Scope != "account" || !holds[0].Until.Equal(capEnd) {
		t.Errorf("stored holds = %+v, %v; want the account's, until %v", holds, err, capEnd)
	}

	rb := fe.createPointedAs(t, b, "www.second-shop.com")
	r = fe.WaitFor(t, rb.ID, "held by the pause", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusIssuing && strings.Contains(msg(r), "every certificate order is rate limited until")
	})
	if m := msg(r); strings.Contains(m, "The CA said") || strings.Contains(m, "too many") || strings.Contains(m, "first-shop") {
		t.Errorf("B's message quotes A's order: %q", m)
	}
	if !r.NextCheckAt.Before(capEnd.Add(-23 * time.Hour)) {
		t.Errorf("B's next check %v: the pause's end %v written into its schedule", r.NextCheckAt, capEnd)
	}
	fe.quiet(t, "during the pause")
	if got := fe.proxy.NewOrders(""); got != 1 {
		t.Errorf("%d new orders during the pause, want 1", got)
	}

	// 24 hours on: one order, which meets the limit again.
	fe.Clock.Advance(24*time.Hour + time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for fe.proxy.NewOrders("") < 2 {
		if time.Now().After(deadline) {
			t.Fatal("no order tried 24 h into the pause")
		}
		fe.Engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	fe.quiet(t, "after the one order of the day")
	if got := fe.proxy.NewOrders(""); got != 2 {
		t.Errorf("%d new orders after 24 h, want 2 (one tried)", got)
	}
	if got := fe.gauge(t, "edgeproxy_acme_paused_until_seconds"); got <= float64(capEnd.Unix()) || got > float64(fe.Clock.Now().Add(24*time.Hour).Unix()) {
		t.Errorf("edgeproxy_acme_paused_until_seconds = %v after the second 429, want a new pause of at most 24 h", got)
	}
	t.Logf("figures: Retry-After %s; pause until %s (%.1f h after the order); orders at the CA: 1 in the first 24 h, 1 more after",
		far.Format(time.RFC3339), capEnd.UTC().Format(time.RFC3339), capEnd.Sub(start).Hours())

	fe.proxy.Set(certstest.Fault{Mode: certstest.Pass})
	fe.Clock.Advance(24*time.Hour + time.Second)
	fe.WaitStatus(t, ra.ID, store.StatusValid)
	fe.WaitStatus(t, rb.ID, store.StatusValid)
}

// TestOrgOrderBudget: a tenant that makes new records without end places
// at most OrgOrdersPerHour orders in a rolling hour. Its creates are not
// refused; the record over the budget stays issuing with a message that
// says so and when it will be tried, and is not held past that by a
// restart; another tenant's record goes valid meanwhile.
func TestOrgOrderBudget(t *testing.T) {
	t.Parallel()
	const budget = 10
	fe := newFaultEnv(t, func(c *lifecycle.Config) { c.OrgOrdersPerHour = budget })
	a, b := fe.Home(), fe.NewTenant(t, "Bystander")
	start := fe.Clock.Now()
	var ids []string
	names := map[string]string{}
	for i := range budget + 1 {
		rec := fe.createPointedAs(t, a, fmt.Sprintf("s%d.greedy-shop.com", i))
		ids = append(ids, rec.ID)
		names[rec.ID] = rec.Domain
	}
	var heldID string
	deadline := time.Now().Add(90 * time.Second)
	for {
		valid, held := 0, ""
		for _, id := range ids {
			r, err := fe.Store.Record(id)
			if err != nil {
				t.Fatal(err)
			}
			switch {
			case r.Status == store.StatusValid:
				valid++
			case r.Status == store.StatusIssuing && strings.HasPrefix(msg(r), "Held by your organization's certificate order budget"):
				held = id
			}
		}
		if valid == budget && held != "" {
			heldID = held
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 90 s: %d valid and held %q; want %d valid and one held", valid, held, budget)
		}
		fe.Engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	r, _ := fe.Store.Record(heldID)
	t.Logf("held: %s", msg(r))
	at, err := time.Parse(time.RFC3339, strings.TrimSuffix(msg(r)[strings.LastIndex(msg(r), " ")+1:], "."))
	if err != nil {
		t.Fatalf("message %q gives no RFC 3339 time: %v", msg(r), err)
	}
	if want := "(at most 10 new certificate orders per hour); this record will be tried at "; !strings.Contains(msg(r), want) {
		t.Errorf("message %q lacks %q", msg(r), want)
	}
	if at.Before(start.Add(time.Hour).Truncate(time.Second)) || at.After(fe.Clock.Now().Add(time.Hour)) {
		t.Errorf("tried at %v, want an hour after the first order (%v..%v)", at, start.Add(time.Hour), fe.Clock.Now().Add(time.Hour))
	}
	if !r.NextCheckAt.Truncate(time.Second).Equal(at) {
		t.Errorf("next check %v, message says %v", r.NextCheckAt, at)
	}
	orders := func() int {
		n := 0
		for _, d := range names {
			n += fe.proxy.NewOrders(d)
		}
		return n
	}
	if got := orders(); got != budget {
		t.Errorf("%d orders for the tenant's names, want %d", got, budget)
	}
	if got := fe.counter(t, "edgeproxy_acme_orders_held_total", "by", "org_budget"); got < 1 {
		t.Errorf("edgeproxy_acme_orders_held_total{by=org_budget} = %v", got)
	}

	// Another organization is not held by it.
	rb := fe.createPointedAs(t, b, "www.bystander-shop.com")
	fe.WaitStatus(t, rb.ID, store.StatusValid)

	// The budget is in the store: a new engine holds the record too.
	fe.RestartEngine(t)
	fe.quiet(t, "after a restart, within the hour")
	if got := orders(); got != budget {
		t.Errorf("after a restart, %d orders for the tenant's names, want %d", got, budget)
	}
	if r, _ := fe.Store.Record(heldID); r.Status != store.StatusIssuing {
		t.Errorf("held record is %s after a restart", r.Status)
	}

	fe.Clock.Advance(time.Hour)
	fe.WaitStatus(t, heldID, store.StatusValid)
	if got := orders(); got != budget+1 {
		t.Errorf("%d orders once the hour passed, want %d", got, budget+1)
	}
	t.Logf("figures: %d creates accepted; %d orders in the first hour, the %dth held until %s; another tenant valid meanwhile; %d orders after the hour",
		budget+1, budget, budget+1, at.Format(time.RFC3339), orders())
}

// TestRetentionReusesCertificate: a tenant that creates, validates and
// deletes the same name over and over costs one order: each deleted
// record's certificate stays in storage, never served, and the next
// record for the name (another tenant's included, once its DNS points) is
// served with it without an order and without spending its budget. After
// the retention the certificate is removed, and a new record orders anew.
func TestRetentionReusesCertificate(t *testing.T) {
	t.Parallel()
	const retention = 3 * time.Hour
	fe := newFaultEnv(t, func(c *lifecycle.Config) { c.CertRetention = retention })
	a, b := fe.Home(), fe.NewTenant(t, "Next owner")
	const name = "www.churn-shop.com"
	serial := func() *big.Int {
		t.Helper()
		conn, err := fe.Handshake(t, name)
		if err != nil {
			t.Fatalf("handshake for %s: %v", name, err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber
	}
	cycle := func(tn tenant) *big.Int {
		t.Helper()
		rec := fe.createPointedAs(t, tn, name)
		fe.WaitStatus(t, rec.ID, store.StatusValid)
		s := serial()
		if code, _ := fe.CallAs(t, tn, "DELETE", rec.ID+"/", ""); code != 204 {
			t.Fatalf("delete: %d", code)
		}
		fe.WaitFor(t, rec.ID, "gone", func(r store.Record, err error) bool { return err == store.ErrNotFound })
		fe.MustNotServe(t, name)
		return s
	}
	const cycles = 7
	first := cycle(a)
	for i := 1; i < cycles; i++ {
		tn := a
		if i == cycles-1 {
			tn = b // the domain changes hands
		}
		if s := cycle(tn); s.Cmp(first) != 0 {
			t.Errorf("cycle %d served certificate %v, want the retained %v", i+1, s, first)
		}
	}
	if got := fe.proxy.NewOrders(name); got != 1 {
		t.Errorf("%d create-valid-delete cycles made %d orders, want 1", cycles, got)
	}
	if got := fe.counter(t, "edgeproxy_acme_budget_orders_total", "", ""); got != 1 {
		t.Errorf("edgeproxy_acme_budget_orders_total = %v, want 1 (a reused certificate spends no budget)", got)
	}
	stored, err := fe.Certs.StoredDomains(t.Context())
	if err != nil || !slices.Contains(stored, name) {
		t.Fatalf("StoredDomains = %v, %v; want the retained certificate", stored, err)
	}

	// Past the retention: removed, and a new record orders again.
	fe.Clock.Advance(retention + time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		stored, err := fe.Certs.StoredDomains(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(stored, name) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("certificate still stored after its retention")
		}
		fe.Engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	rec := fe.createPointedAs(t, a, name)
	fe.WaitStatus(t, rec.ID, store.StatusValid)
	if s := serial(); s.Cmp(first) == 0 {
		t.Error("after the retention the old certificate was served")
	}
	if got := fe.proxy.NewOrders(name); got != 2 {
		t.Errorf("%d orders after the retention, want 2", got)
	}
	t.Logf("figures: %d create→valid→delete cycles (the last by another organization): %d order at the CA; after the retention: %d",
		cycles, 1, fe.proxy.NewOrders(name))
}
