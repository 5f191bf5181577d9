package webhooks_test

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/edgeproxy/edgeproxy/webhooks"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

// clock is the injected clock of the store and the worker: it moves only
// when the test moves it.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// delivery is one request a receiver got.
type delivery struct {
	ID, Timestamp string
	Verified      error // the signature checked against the secret the test expects
	Body          struct {
		Type      string `json:"type"`
		Timestamp string `json:"timestamp"`
		Data      struct {
			Record         map[string]any `json:"record"`
			PreviousStatus string         `json:"previous_status"`
			WebhookID      string         `json:"webhook_id"`
		} `json:"data"`
	}
	Raw []byte
	At  time.Time // wall clock, when the handler began
}

// receiver is a TLS server on loopback that records every delivery and
// answers as the test tells it.
type receiver struct {
	t   *testing.T
	srv *httptest.Server
	got chan delivery

	// mu guards secret and answer.
	mu     sync.Mutex
	secret string
	answer func(w http.ResponseWriter, r *http.Request)
	now    func() time.Time
}

func newReceiver(t *testing.T, now func() time.Time) *receiver {
	rc := &receiver{t: t, got: make(chan delivery, 1000), now: now}
	rc.srv = httptest.NewTLSServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	d := delivery{At: time.Now(), ID: r.Header.Get(webhooks.HeaderID), Timestamp: r.Header.Get(webhooks.HeaderTimestamp)}
	d.Raw, _ = io.ReadAll(r.Body)
	rc.mu.Lock()
	secret, answer := rc.secret, rc.answer
	rc.mu.Unlock()
	d.Verified = webhooks.Verify(secret, r.Header.Get, d.Raw, rc.now(), 5*time.Minute)
	if err := json.Unmarshal(d.Raw, &d.Body); err != nil {
		rc.t.Errorf("receiver: body %q: %v", d.Raw, err)
	}
	rc.got <- d
	if answer != nil {
		answer(w, r)
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (rc *receiver) set(secret string, answer func(http.ResponseWriter, *http.Request)) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.secret, rc.answer = secret, answer
}

// next waits for the next delivery.
func (rc *receiver) next(what string) delivery {
	rc.t.Helper()
	select {
	case d := <-rc.got:
		return d
	case <-time.After(30 * time.Second):
		rc.t.Fatalf("no delivery arrived: %s", what)
	}
	return delivery{}
}

// none checks that no delivery has arrived so far.
func (rc *receiver) none(what string) {
	rc.t.Helper()
	select {
	case d := <-rc.got:
		rc.t.Errorf("%s: got a delivery %s %s", what, d.ID, d.Raw)
	default:
	}
}

func (rc *receiver) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(rc.srv.Certificate())
	return p
}

type env struct {
	t     *testing.T
	clock *clock
	store *store.Store
	// reg gets the metrics of the first worker started.
	reg     *prometheus.Registry
	started bool
	w       *webhooks.Worker
	stop    func()
}

// record renders a record for events; the API's own rendering is tested
// with the API.
func record(r store.Record) any {
	return map[string]any{"id": r.ID, "domain": r.Domain, "status": string(r.Status),
		"updated_at": r.UpdatedAt.UTC().Format(time.RFC3339Nano)}
}

// newEnv opens a store in t.TempDir(), with the test's clock; start runs
// a worker over it.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{t: t, clock: newClock(), reg: prometheus.NewRegistry()}
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	st, err := store.Open(path, store.Options{Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.store = st
	t.Cleanup(func() {
		if err := st.CheckOutbox(); err != nil {
			t.Errorf("CheckOutbox: %v", err)
		}
		st.Close()
	})
	return e
}

// start runs a worker until the test ends or stop is called; the clock is
// the test's unless cfg names one.
func (e *env) start(cfg webhooks.Config) {
	if cfg.Now == nil {
		cfg.Now = e.clock.Now
	}
	if cfg.Registerer == nil {
		cfg.Registerer = prometheus.NewRegistry()
		if !e.started {
			cfg.Registerer = e.reg
		}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(e.t.Output(), nil))
	}
	e.started = true
	e.w = webhooks.New(e.store, record, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		e.w.Run(ctx)
	}()
	e.stop = func() { cancel(); <-done }
	e.t.Cleanup(e.stop)
}

func (e *env) org(name string) store.Org {
	e.t.Helper()
	max := 1000
	org, err := e.store.CreateOrg(name, &max)
	if err != nil {
		e.t.Fatal(err)
	}
	return org
}

func (e *env) hook(orgID, url string, events ...string) store.Webhook {
	e.t.Helper()
	if len(events) == 0 {
		events = store.EventTypes
	}
	w, err := e.store.CreateWebhook(store.Webhook{OrgID: orgID, URL: url, Events: events, Secret: webhooks.NewSecret()}, 5)
	if err != nil {
		e.t.Fatal(err)
	}
	return w
}

func (e *env) create(orgID, domain string) store.Record {
	e.t.Helper()
	r, err := e.store.CreateRecord(store.Record{OrgID: orgID, Domain: domain, TargetCNAME: "t." + domain, Status: store.StatusWaiting}, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

func (e *env) setStatus(id string, s store.Status) store.Record {
	e.t.Helper()
	r, _, err := e.store.Mutate(id, func(r *store.Record) (store.Op, error) { r.Status = s; return store.OpSave, nil })
	if err != nil {
		e.t.Fatal(err)
	}
	return r
}

// waitFor polls cond until it holds, failing the test after a generous
// deadline.
func (e *env) waitFor(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// attempted waits until the webhook's last delivery is at or after at.
func (e *env) attempted(hookID string, at time.Time) store.Webhook {
	e.t.Helper()
	var w store.Webhook
	e.waitFor("the attempt to be recorded", func() bool {
		var err error
		w, err = e.store.Webhook(hookID)
		return err == nil && w.LastDelivery != nil && !w.LastDelivery.At.Before(at)
	})
	return w
}

// queuedFor returns the webhook's earliest queued delivery, if any.
func (e *env) queuedFor(hookID string) []store.Delivery {
	e.t.Helper()
	hooks, err := e.store.Webhooks("")
	if err != nil {
		e.t.Fatal(err)
	}
	var out []store.Delivery
	for _, h := range hooks {
		if h.ID != hookID || h.Queued == 0 {
			continue
		}
		due, err := e.store.DueDeliveries(e.clock.Now().Add(1000*time.Hour), 1000, func(id, _ string) bool { return id != hookID })
		if err != nil {
			e.t.Fatal(err)
		}
		for _, o := range due {
			out = append(out, o.Delivery)
		}
	}
	return out
}

func (e *env) counter(name, label string) float64 {
	e.t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		e.t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, lp := range m.GetLabel() {
				if lp.GetValue() == label {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
			if label == "" && m.Gauge != nil {
				return m.Gauge.GetValue()
			}
		}
	}
	e.t.Fatalf("no metric %s{%s}", name, label)
	return 0
}

// TestDeliversEachEventSigned: a record's create, status changes and
// delete each reach the receiver as their event, signed with the
// webhook's secret, with the record as committed and, for a status
// change, the previous status.
func TestDeliversEachEventSigned(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	rc.set(h.Secret, nil)

	r := e.create(org.ID, "e.example.com")
	d := rc.next("created")
	if d.Verified != nil {
		t.Errorf("created: signature: %v", d.Verified)
	}
	if d.Body.Type != store.EventRecordCreated || d.Body.Data.Record["id"] != r.ID || d.Body.Data.Record["status"] != "waiting" {
		t.Errorf("created: %s", d.Raw)
	}
	if d.Body.Timestamp != r.CreatedAt.Format("2006-01-02T15:04:05.000000Z07:00") {
		t.Errorf("created: timestamp %s, want the record's created_at %v", d.Body.Timestamp, r.CreatedAt)
	}
	if d.Timestamp != fmt.Sprint(e.clock.Now().Unix()) {
		t.Errorf("webhook-timestamp %s, want %d", d.Timestamp, e.clock.Now().Unix())
	}
	if strings.Contains(string(d.Raw), "previous_status") {
		t.Errorf("created carries previous_status: %s", d.Raw)
	}

	for _, step := range []struct{ from, to store.Status }{{store.StatusWaiting, store.StatusIssuing}, {store.StatusIssuing, store.StatusValid}} {
		e.setStatus(r.ID, step.to)
		d := rc.next("status_changed")
		if d.Verified != nil || d.Body.Type != store.EventRecordStatusChanged ||
			d.Body.Data.PreviousStatus != string(step.from) || d.Body.Data.Record["status"] != string(step.to) {
			t.Errorf("%s→%s: %v %s", step.from, step.to, d.Verified, d.Raw)
		}
	}
	if _, _, err := e.store.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	d = rc.next("deleted")
	if d.Verified != nil || d.Body.Type != store.EventRecordDeleted || d.Body.Data.Record["id"] != r.ID {
		t.Errorf("deleted: %v %s", d.Verified, d.Raw)
	}
	w := e.attempted(h.ID, e.clock.Now())
	if w.LastDelivery.StatusCode != http.StatusNoContent || w.LastDelivery.Error != "" || w.FailingSince != nil {
		t.Errorf("last delivery %+v", w.LastDelivery)
	}
	e.waitFor("the queue to empty", func() bool { n, _, _ := e.store.OutboxStats(); return n == 0 })
	if got := e.counter("edgeproxy_webhook_deliveries_total", "success"); got != 4 {
		t.Errorf("deliveries{success} = %v, want 4", got)
	}
}

// TestRetriesKeepTheID: a receiver that is down gets the retries on the
// schedule (the injected clock moves; nothing sleeps for it), each with
// the same webhook-id and a fresh signature, and the event is delivered
// once it is back.
func TestRetriesKeepTheID(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	down := func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) }
	rc.set(h.Secret, down)

	e.create(org.ID, "e.example.com")
	first := rc.next("first attempt")
	failedAt := e.clock.Now()
	w := e.attempted(h.ID, failedAt)
	if w.LastDelivery.StatusCode != 503 || !strings.Contains(w.LastDelivery.Error, "503") || w.FailingSince == nil {
		t.Errorf("after a 503: %+v, failing since %v", w.LastDelivery, w.FailingSince)
	}
	ids := []string{first.ID}
	for i, pause := range webhooks.Schedule[:3] {
		q := e.queuedFor(h.ID)
		if len(q) != 1 || !q[0].NextAt.Equal(e.clock.Now().Add(pause)) || q[0].Attempts != i+1 {
			t.Fatalf("after attempt %d: queued %+v, want one due in %v", i+1, q, pause)
		}
		// Just before its time nothing is due.
		if due, _ := e.store.DueDeliveries(e.clock.Now().Add(pause-time.Nanosecond), 10, nil); len(due) != 0 {
			t.Errorf("due %v early", time.Nanosecond)
		}
		e.clock.Advance(pause)
		if i == 2 {
			rc.set(h.Secret, nil) // back
		}
		e.w.Wake()
		d := rc.next(fmt.Sprintf("retry %d", i+1))
		if d.Verified != nil {
			t.Errorf("retry %d: signature: %v", i+1, d.Verified)
		}
		ids = append(ids, d.ID)
		e.attempted(h.ID, e.clock.Now())
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Errorf("webhook-ids across retries: %v, want all equal", ids)
			break
		}
	}
	if q := e.queuedFor(h.ID); len(q) != 0 {
		t.Errorf("delivered, yet queued: %+v", q)
	}
	if w, _ := e.store.Webhook(h.ID); w.FailingSince != nil || w.LastDelivery.StatusCode != 204 {
		t.Errorf("after the success: %+v, failing since %v", w.LastDelivery, w.FailingSince)
	}
	rc.none("after the delivery")
	if got := e.counter("edgeproxy_webhook_deliveries_total", "http_error"); got != 3 {
		t.Errorf("deliveries{http_error} = %v, want 3", got)
	}
}

// TestDroppedAfterTheLastRetry: a delivery that fails every attempt is
// tried once and retried len(Schedule) times, then dropped; the webhook
// stays enabled (its failures are under 5 days old).
func TestDroppedAfterTheLastRetry(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	rc.set(h.Secret, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
	e.create(org.ID, "e.example.com")
	rc.next("attempt 1")
	e.attempted(h.ID, e.clock.Now())
	for i, pause := range webhooks.Schedule {
		e.clock.Advance(pause)
		e.w.Wake()
		rc.next(fmt.Sprintf("attempt %d", i+2))
		e.attempted(h.ID, e.clock.Now())
	}
	if q := e.queuedFor(h.ID); len(q) != 0 {
		t.Fatalf("after %d attempts still queued: %+v", len(webhooks.Schedule)+1, q)
	}
	// The worker counts the drop once the store has recorded it.
	e.waitFor("the drop to be counted", func() bool {
		return e.counter("edgeproxy_webhook_deliveries_dropped_total", "retries_exhausted") >= 1
	})
	if got := e.counter("edgeproxy_webhook_deliveries_dropped_total", "retries_exhausted"); got != 1 {
		t.Errorf("dropped{retries_exhausted} = %v, want 1", got)
	}
	if w, _ := e.store.Webhook(h.ID); w.DisabledAt != nil {
		t.Errorf("disabled after %v of failures", e.clock.Now().Sub(*w.FailingSince))
	}
	rc.none("after the drop")
}

// TestGoneDisables: 410 disables the webhook at once: the receiver gets
// exactly that one request, the deliveries queued behind it are dropped,
// and later changes queue nothing for it.
func TestGoneDisables(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	rc.set(h.Secret, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) })
	// Queue three events before the worker runs, so two wait behind the
	// first.
	for i := range 3 {
		e.create(org.ID, fmt.Sprintf("e%d.example.com", i))
	}
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	rc.next("the first attempt")
	var w store.Webhook
	e.waitFor("the webhook to be disabled", func() bool {
		w, _ = e.store.Webhook(h.ID)
		return w.DisabledAt != nil
	})
	if w.LastDelivery.StatusCode != 410 || w.DisabledReason != "gone" {
		t.Errorf("disabled webhook: %+v, reason %q", w.LastDelivery, w.DisabledReason)
	}
	if n, _, _ := e.store.OutboxStats(); n != 0 {
		t.Errorf("%d deliveries still queued for a disabled webhook", n)
	}
	e.create(org.ID, "after.example.com")
	if n, _, _ := e.store.OutboxStats(); n != 0 {
		t.Errorf("a change after the 410 queued %d deliveries", n)
	}
	e.clock.Advance(24 * time.Hour)
	e.w.Wake()
	rc.none("after the 410")
}

// TestFiveDaysOfFailuresDisable: a webhook whose attempts fail without a
// success for 5 days is disabled by the first failure after that.
func TestFiveDaysOfFailuresDisable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	rc.set(h.Secret, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(500) })
	e.create(org.ID, "a.example.com")
	rc.next("the first failure")
	start := e.clock.Now()
	e.attempted(h.ID, start)

	e.clock.Advance(webhooks.FailingLimit - time.Second)
	e.create(org.ID, "b.example.com")
	rc.next("a failure just under 5 days")
	e.attempted(h.ID, e.clock.Now())
	if w, _ := e.store.Webhook(h.ID); w.DisabledAt != nil || !w.FailingSince.Equal(start) {
		t.Fatalf("under 5 days: disabled %v, failing since %v", w.DisabledAt, w.FailingSince)
	}
	e.clock.Advance(time.Second)
	e.create(org.ID, "c.example.com")
	rc.next("a failure at 5 days")
	var w store.Webhook
	e.waitFor("the webhook to be disabled", func() bool {
		w, _ = e.store.Webhook(h.ID)
		return w.DisabledAt != nil
	})
	if w.DisabledReason != "failing" {
		t.Errorf("reason %q, want failing", w.DisabledReason)
	}
	if n, _, _ := e.store.OutboxStats(); n != 0 {
		t.Errorf("%d deliveries still queued for a disabled webhook", n)
	}
}

// TestRetryAfterHonoured: a receiver's Retry-After longer than the
// schedule's pause sets the next attempt; a shorter one does not hurry
// it.
func TestRetryAfterHonoured(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	for i, tt := range []struct {
		header string
		want   time.Duration
	}{
		{"3600", time.Hour},
		{"1", webhooks.Schedule[0]},
		{e.clock.Now().Add(2 * time.Hour).Format(http.TimeFormat), 2 * time.Hour},
		{"9999999", 24 * time.Hour},
		{"soon", webhooks.Schedule[0]},
	} {
		rc.set(h.Secret, func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Retry-After", tt.header)
			w.WriteHeader(http.StatusTooManyRequests)
		})
		r := e.create(org.ID, fmt.Sprintf("r%d.example.com", i))
		rc.next("Retry-After " + tt.header)
		e.attempted(h.ID, e.clock.Now())
		q := e.queuedFor(h.ID)
		if len(q) != 1 || !q[0].NextAt.Equal(e.clock.Now().Add(tt.want)) {
			t.Errorf("Retry-After %q: queued %+v, want due in %v", tt.header, q, tt.want)
		}
		// Clear the way for the next case.
		if err := e.store.DeleteWebhook(org.ID, h.ID); err != nil {
			t.Fatal(err)
		}
		e.store.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil })
		h = e.hook(org.ID, rc.srv.URL+"/hooks")
	}
}

// TestRedirectNotFollowed: a receiver's redirect is a failed attempt; the
// place it points to gets nothing.
func TestRedirectNotFollowed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	target := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	rc.set(h.Secret, func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, target.srv.URL+"/elsewhere", http.StatusTemporaryRedirect)
	})
	e.create(org.ID, "e.example.com")
	rc.next("the attempt")
	w := e.attempted(h.ID, e.clock.Now())
	if w.LastDelivery.StatusCode != 307 || !strings.Contains(w.LastDelivery.Error, "redirect") {
		t.Errorf("last delivery %+v", w.LastDelivery)
	}
	target.none("the redirect's target")
}

// TestRotatedSecretSigns: deliveries after a secret's rotation are signed
// with the new secret, and no longer verify with the old one.
func TestRotatedSecretSigns(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	old := h.Secret
	rotated := webhooks.NewSecret()
	if _, err := e.store.UpdateWebhook(org.ID, h.ID, func(w *store.Webhook) error { w.Secret = rotated; return nil }); err != nil {
		t.Fatal(err)
	}
	rc.set(rotated, nil)
	if _, err := e.store.EnqueuePing(org.ID, h.ID); err != nil {
		t.Fatal(err)
	}
	d := rc.next("the ping")
	if d.Verified != nil {
		t.Errorf("with the new secret: %v", d.Verified)
	}
	if d.Body.Type != store.EventWebhookPing || d.Body.Data.WebhookID != h.ID {
		t.Errorf("ping body %s", d.Raw)
	}
	// The same request's signature, checked with the old secret, fails.
	rc.set(old, nil)
	e.store.EnqueuePing(org.ID, h.ID)
	if d := rc.next("the second ping"); d.Verified == nil {
		t.Error("a delivery after the rotation verifies with the old secret")
	}
}

// TestAddressRefusedAtDial replays DNS rebinding: the URL's name resolves
// to a public address when the webhook is created and to 127.0.0.1, where
// a receiver listens, when the worker dials. The dialer refuses the
// connection: the receiver gets nothing and last_delivery names the
// address. The same URL with AllowPrivate reaches the receiver, so the
// refusal is the guard's doing.
func TestAddressRefusedAtDial(t *testing.T) {
	t.Parallel()
	dnsSrv := dnstest.Start(t)
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsSrv.Addr())
	}}
	// httptest's certificate is valid for example.com.
	const name = "example.com"
	dnsSrv.SetScript(name, dns.TypeAAAA, []string{})
	dnsSrv.SetScript(name, dns.TypeA, []string{name + ". A 93.184.215.14"}, []string{name + ". A 127.0.0.1"})

	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	_, port, _ := net.SplitHostPort(rc.srv.Listener.Addr().String())
	url := "https://" + name + ":" + port + "/hooks"
	checked, err := webhooks.CheckURL(context.Background(), url, false, resolver)
	if err != nil {
		t.Fatalf("CheckURL while the name is public: %v", err)
	}
	e.start(webhooks.Config{RootCAs: rc.pool(), Resolver: resolver})
	org := e.org("acme")
	h := e.hook(org.ID, checked)
	rc.set(h.Secret, nil)
	e.create(org.ID, "e.example.com")
	w := e.attempted(h.ID, e.clock.Now())
	if w.LastDelivery.StatusCode != 0 || !strings.Contains(w.LastDelivery.Error, "127.0.0.1") ||
		!strings.Contains(w.LastDelivery.Error, "not a public address") {
		t.Errorf("last delivery %+v, want a refusal naming 127.0.0.1", w.LastDelivery)
	}
	rc.none("the rebinding name")
	if got := e.counter("edgeproxy_webhook_deliveries_total", "address_refused"); got != 1 {
		t.Errorf("deliveries{address_refused} = %v, want 1", got)
	}
	// Now the name resolves to 127.0.0.1 at create too.
	if _, err := webhooks.CheckURL(context.Background(), url, false, resolver); err == nil || !strings.Contains(err.Error(), "127.0.0.1") {
		t.Errorf("CheckURL of a name resolving to 127.0.0.1: %v", err)
	}

	// With AllowPrivate the same delivery gets through.
	e.stop()
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool(), Resolver: resolver})
	e.clock.Advance(webhooks.Schedule[0])
	e.w.Wake()
	if d := rc.next("the retry with AllowPrivate"); d.Verified != nil {
		t.Errorf("signature: %v", d.Verified)
	}
}

// TestSlowReceiverDoesNotDelayAnotherOrg plays a hostile organization
// whose five webhooks never answer while it makes changes, against a
// worker with four workers. Its deliveries hold at most PerOrg (2)
// workers, so another organization's event is delivered while all of the
// hostile ones still hang. Without the per-organization bound the hostile
// organization would hold every worker and the other event would wait.
func TestSlowReceiverDoesNotDelayAnotherOrg(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	slow := newReceiver(t, e.clock.Now)
	fast := newReceiver(t, e.clock.Now)
	release := make(chan struct{})
	var hanging sync.WaitGroup
	slow.set("", func(w http.ResponseWriter, r *http.Request) {
		hanging.Add(1)
		defer hanging.Done()
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	pool := slow.pool()
	pool.AddCert(fast.srv.Certificate())
	// A timeout longer than the test, so only the bounds can free a
	// worker.
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: pool, Workers: 4, PerOrg: 2, Timeout: 10 * time.Minute})
	hostile, victim := e.org("hostile"), e.org("victim")
	for range 5 {
		e.hook(hostile.ID, slow.srv.URL+"/hang")
	}
	for i := range 20 {
		e.create(hostile.ID, fmt.Sprintf("h%d.example.com", i))
	}
	slow.next("a hostile delivery")
	slow.next("a second hostile delivery")
	vh := e.hook(victim.ID, fast.srv.URL+"/hooks")
	fast.set(vh.Secret, nil)
	start := time.Now()
	e.create(victim.ID, "v.example.com")
	d := fast.next("the other organization's event while the hostile receivers hang")
	t.Logf("the other organization's event arrived %v after its change, with the hostile organization's receivers hanging", d.At.Sub(start))
	if d.Verified != nil {
		t.Errorf("signature: %v", d.Verified)
	}
	slow.none("a third hostile delivery (PerOrg is 2)")
	close(release)
}

// TestShutdownKeepsTheDelivery: an attempt in flight when the worker
// stops is not recorded; the next worker sends it again with the same
// webhook-id.
func TestShutdownKeepsTheDelivery(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, e.clock.Now)
	released := make(chan struct{})
	rc.set("", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-released:
		case <-r.Context().Done():
		}
	})
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks")
	e.create(org.ID, "e.example.com")
	first := rc.next("the attempt in flight")
	e.stop()
	if w, _ := e.store.Webhook(h.ID); w.LastDelivery != nil {
		t.Errorf("a cancelled attempt was recorded: %+v", w.LastDelivery)
	}
	q := e.queuedFor(h.ID)
	if len(q) != 1 || q[0].Attempts != 0 {
		t.Fatalf("queued %+v, want the delivery with no attempt counted", q)
	}
	close(released)
	rc.set(h.Secret, nil)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool()})
	again := rc.next("the delivery after the restart")
	if again.ID != first.ID || again.Verified != nil {
		t.Errorf("after restart: id %s (first %s), signature %v", again.ID, first.ID, again.Verified)
	}
}

// TestDeliveryLatency measures, on the wall clock, the time from a
// committed status change to the receiver's handler, over a run of
// changes; the figures go to the test log.
func TestDeliveryLatency(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	rc := newReceiver(t, time.Now)
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: rc.pool(), Now: time.Now})
	org := e.org("acme")
	h := e.hook(org.ID, rc.srv.URL+"/hooks", store.EventRecordStatusChanged)
	rc.set(h.Secret, nil)
	r := e.create(org.ID, "e.example.com")
	const n = 200
	var lat []time.Duration
	statuses := []store.Status{store.StatusIssuing, store.StatusValid}
	for i := range n {
		start := time.Now()
		e.setStatus(r.ID, statuses[i%2])
		d := rc.next("a status change")
		if d.Verified != nil {
			t.Fatalf("signature: %v", d.Verified)
		}
		lat = append(lat, d.At.Sub(start))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	t.Logf("status change → receiver, %d changes one at a time: median %v, p99 %v, max %v",
		n, lat[n/2], lat[n*99/100], lat[n-1])
	e.waitFor("the latency histogram to count every delivery", func() bool {
		mfs, _ := e.reg.Gather()
		for _, mf := range mfs {
			if mf.GetName() == "edgeproxy_webhook_delivery_latency_seconds" {
				return mf.GetMetric()[0].GetHistogram().GetSampleCount() == n
			}
		}
		return false
	})
}
