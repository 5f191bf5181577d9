package webhooks

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/netguard"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Schedule is the pause before each retry of a delivery that failed: the
// first retry 5 s after the first attempt, the last 10 h after the one
// before it; a delivery whose last retry fails is dropped. It is the
// schedule of Standard Webhooks' reference implementation.
var Schedule = []time.Duration{
	5 * time.Second,
	5 * time.Minute,
	30 * time.Minute,
	2 * time.Hour,
	5 * time.Hour,
	10 * time.Hour,
	10 * time.Hour,
}

// Limits of a delivery.
const (
	// DefaultTimeout bounds one attempt, from dialling to the status line.
	DefaultTimeout = 10 * time.Second
	// FailingLimit: a webhook whose deliveries have failed without a
	// success for this long is disabled.
	FailingLimit = 5 * 24 * time.Hour
	// maxRetryAfter caps the pause a receiver's Retry-After can ask for.
	maxRetryAfter = 24 * time.Hour
	// drainBytes is how much of a response body is read (and dropped) so
	// the connection can be reused; the rest is not read.
	drainBytes = 4 << 10
	// idleRecheck is how long Run sleeps with nothing scheduled; a commit
	// that queues a delivery wakes it sooner.
	idleRecheck = time.Hour
	// storeRetry is the pause after the store failed to answer.
	storeRetry = 5 * time.Second
)

// timeFormat is the API's: RFC 3339 in UTC with microseconds.
const timeFormat = "2006-01-02T15:04:05.000000Z07:00"

// Config configures a Worker. The zero value works.
type Config struct {
	// Workers bounds the deliveries in flight across all organizations.
	// Default 16.
	Workers int
	// PerOrg bounds the deliveries in flight for one organization, so a
	// slow receiver holds at most this many workers. Default 2. A webhook
	// never has more than one delivery in flight.
	PerOrg int
	// Timeout bounds one attempt. Default DefaultTimeout (10 s).
	Timeout time.Duration
	// AllowPrivate lets deliveries go to http:// URLs and to any address
	// (--webhook-allow-private, --dev). Off, a connection is made only to
	// public unicast addresses, checked on the address dialled.
	AllowPrivate bool
	// Resolver resolves receivers' host names. If nil, the system's.
	Resolver *net.Resolver
	// RootCAs verifies receivers' certificates. If nil, the system's roots.
	RootCAs *x509.CertPool
	// Now is the clock of the schedule. If nil, the store's.
	Now func() time.Time
	// Logger gets failed deliveries and disabled webhooks. If nil,
	// slog.Default().
	Logger *slog.Logger
	// Registerer gets the worker's metrics. If nil, they are not
	// registered.
	Registerer prometheus.Registerer
}

// Worker sends the store's queued deliveries (see the package doc). Run
// it in one process at a time per store.
type Worker struct {
	store   *store.Store
	record  func(store.Record) any
	cfg     Config
	log     *slog.Logger
	client  *http.Client
	wake    chan struct{}
	metrics *metrics

	// mu guards busy and perOrg.
	mu sync.Mutex
	// busy holds the webhooks with a delivery in flight.
	busy map[string]bool
	// perOrg counts the deliveries in flight by organization.
	perOrg map[string]int
}

// New returns a worker over st. record renders a record as the API shows
// it, for the events' data.record.
func New(st *store.Store, record func(store.Record) any, cfg Config) *Worker {
	if cfg.Workers <= 0 {
		cfg.Workers = 16
	}
	if cfg.PerOrg <= 0 {
		cfg.PerOrg = 2
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.Now == nil {
		cfg.Now = st.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &Worker{
		store:  st,
		record: record,
		cfg:    cfg,
		log:    cfg.Logger,
		wake:   make(chan struct{}, 1),
		busy:   map[string]bool{},
		perOrg: map[string]int{},
	}
	w.client = newClient(cfg)
	w.metrics = newMetrics(w, cfg.Registerer)
	return w
}

// newClient is the HTTP client of deliveries: no proxy from the
// environment (a proxy would connect where the guard cannot see), no
// redirects followed, the dial guarded unless AllowPrivate, and every
// phase within the attempt's timeout.
func newClient(cfg Config) *http.Client {
	dialer := &net.Dialer{Timeout: cfg.Timeout, Resolver: cfg.Resolver}
	if !cfg.AllowPrivate {
		dialer = netguard.Policy{}.Dialer(cfg.Timeout)
		dialer.Resolver = cfg.Resolver
	}
	return &http.Client{
		Timeout: cfg.Timeout,
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            dialer.DialContext,
			TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:    cfg.Timeout,
			ResponseHeaderTimeout:  cfg.Timeout,
			MaxResponseHeaderBytes: 16 << 10,
			MaxIdleConnsPerHost:    1,
			IdleConnTimeout:        90 * time.Second,
			ForceAttemptHTTP2:      true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Wake makes the worker look for due deliveries now; tests call it after
// moving their clock.
func (w *Worker) Wake() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Run sends due deliveries until ctx is done, then waits for the attempts
// in flight, which ctx cancels; a cancelled attempt is not recorded, so
// the delivery is sent again by the next Run.
func (w *Worker) Run(ctx context.Context) error {
	slots := make(chan struct{}, w.cfg.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		wait := idleRecheck
		if free := cap(slots) - len(slots); free > 0 {
			picked := w.pickFunc()
			due, err := w.store.DueDeliveries(w.cfg.Now(), free, picked.skip)
			if err != nil {
				picked.release()
				w.log.Error("webhooks: reading due deliveries", "err", err)
				wait = storeRetry
			}
			for _, o := range due {
				slots <- struct{}{}
				wg.Go(func() {
					w.attempt(ctx, o)
					w.done(o.Delivery)
					<-slots
					w.Wake()
				})
			}
		}
		if len(slots) < cap(slots) && wait != storeRetry {
			next, ok, err := w.store.NextDeliveryDue(w.held)
			switch {
			case err != nil:
				w.log.Error("webhooks: reading the next due delivery", "err", err)
				wait = storeRetry
			case ok:
				wait = min(max(next.Sub(w.cfg.Now()), 0), idleRecheck)
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		case <-w.wake:
		case <-w.store.OutboxReady():
		}
		timer.Stop()
	}
}

// picked marks the webhooks a DueDeliveries call hands out as busy, as it
// goes, so it hands out no more than one per webhook and PerOrg per
// organization.
type picked struct {
	w     *Worker
	hooks []store.Delivery
}

func (w *Worker) pickFunc() *picked { return &picked{w: w} }

func (p *picked) skip(hookID, orgID string) bool {
	p.w.mu.Lock()
	defer p.w.mu.Unlock()
	if p.w.busy[hookID] || p.w.perOrg[orgID] >= p.w.cfg.PerOrg {
		return true
	}
	p.w.busy[hookID] = true
	p.w.perOrg[orgID]++
	p.hooks = append(p.hooks, store.Delivery{WebhookID: hookID, OrgID: orgID})
	return false
}

// release undoes the marks of a DueDeliveries call that failed.
func (p *picked) release() {
	for _, d := range p.hooks {
		p.w.done(d)
	}
}

// held reports whether the webhook cannot be handed a delivery now: it has
// one in flight, or its organization has PerOrg.
func (w *Worker) held(hookID, orgID string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.busy[hookID] || w.perOrg[orgID] >= w.cfg.PerOrg
}

func (w *Worker) done(d store.Delivery) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.busy, d.WebhookID)
	if w.perOrg[d.OrgID]--; w.perOrg[d.OrgID] <= 0 {
		delete(w.perOrg, d.OrgID)
	}
}

// Results of an attempt, the values of the deliveries metric's label.
const (
	resultSuccess        = "success"
	resultHTTPError      = "http_error"
	resultGone           = "gone"
	resultTimeout        = "timeout"
	resultConnection     = "connection_error"
	resultAddressRefused = "address_refused"
)

var results = []string{resultSuccess, resultHTTPError, resultGone, resultTimeout, resultConnection, resultAddressRefused}

// outcome is what one attempt came to.
type outcome struct {
	result     string
	status     int           // the receiver's status, 0 without one
	err        string        // our words; empty on success
	retryAfter time.Duration // the receiver's Retry-After, 0 without one
}

// Body is the JSON body of an event: {"type", "timestamp", "data"}, data
// holding the record as the API shows it (rendered by record) and, for a
// status change, previous_status; a ping's data holds webhook_id.
func Body(ev store.Event, record func(store.Record) any) ([]byte, error) {
	data := map[string]any{}
	if ev.Record != nil {
		data["record"] = record(*ev.Record)
	}
	if ev.Type == store.EventRecordStatusChanged {
		data["previous_status"] = string(ev.PreviousStatus)
	}
	if ev.Type == store.EventWebhookPing {
		data["webhook_id"] = ev.WebhookID
	}
	return json.Marshal(struct {
		Type      string         `json:"type"`
		Timestamp string         `json:"timestamp"`
		Data      map[string]any `json:"data"`
	}{ev.Type, ev.Timestamp.UTC().Format(timeFormat), data})
}

// attempt sends one delivery and records its outcome.
func (w *Worker) attempt(ctx context.Context, o store.Outbound) {
	begin := time.Now()
	out := w.send(ctx, o, w.cfg.Now())
	if ctx.Err() != nil {
		// Shutting down: the delivery stays due and is sent again.
		return
	}
	w.metrics.attempts.Observe(time.Since(begin).Seconds())
	w.metrics.deliveries.WithLabelValues(out.result).Inc()
	now := w.cfg.Now()
	var dropped bool
	hook, op, n, err := w.store.FinishDelivery(o.Webhook.ID, o.Delivery.Seq, func(h *store.Webhook, d *store.Delivery) store.DeliveryOp {
		op, drop := decide(h, d, out, now)
		dropped = drop
		return op
	})
	logArgs := []any{"webhook_id", o.Webhook.ID, "org_id", o.Webhook.OrgID, "event_id", o.Event.ID,
		"event_type", o.Event.Type, "attempt", o.Delivery.Attempts + 1}
	switch {
	case errors.Is(err, store.ErrNotFound):
		return // the webhook was deleted meanwhile, with its deliveries
	case err != nil:
		// The outcome is lost; the delivery stays due and is sent again.
		w.log.Error("webhooks: recording a delivery", append(logArgs, "err", err)...)
		return
	}
	switch {
	case out.result == resultSuccess:
		w.metrics.latency.Observe(now.Sub(o.Event.Timestamp).Seconds())
	case op == store.DeliveryDisable:
		w.metrics.disabled.WithLabelValues(hook.DisabledReason).Inc()
		w.metrics.dropped.WithLabelValues(dropWebhookDisabled).Add(float64(n))
		w.log.Warn("webhook disabled", append(logArgs, "reason", hook.DisabledReason, "error", out.err,
			"deliveries_dropped", n)...)
	case dropped:
		w.metrics.dropped.WithLabelValues(dropRetriesExhausted).Inc()
		w.log.Warn("webhook delivery dropped after its last retry", append(logArgs, "error", out.err)...)
	default:
		w.log.Info("webhook delivery failed; will retry", append(logArgs, "error", out.err)...)
	}
}

// Reasons a delivery is dropped, the values of the dropped metric's label.
const (
	dropRetriesExhausted = "retries_exhausted"
	dropWebhookDisabled  = "webhook_disabled"
)

// Reasons a webhook is disabled.
const (
	disabledGone    = "gone"
	disabledFailing = "failing"
)

// decide applies an attempt's outcome to the webhook and its delivery and
// says what becomes of the delivery, and whether a DeliveryDone drops it
// rather than marks it delivered. It depends only on its arguments: the
// store may call it more than once.
func decide(h *store.Webhook, d *store.Delivery, out outcome, now time.Time) (store.DeliveryOp, bool) {
	h.LastDelivery = &store.DeliveryResult{At: now, StatusCode: out.status, Error: out.err}
	d.Attempts++
	switch out.result {
	case resultSuccess:
		h.FailingSince = nil
		return store.DeliveryDone, false
	case resultGone:
		h.DisabledAt, h.DisabledReason = &now, disabledGone
		return store.DeliveryDisable, false
	}
	if h.FailingSince == nil {
		h.FailingSince = &now
	}
	if now.Sub(*h.FailingSince) >= FailingLimit {
		h.DisabledAt, h.DisabledReason = &now, disabledFailing
		return store.DeliveryDisable, false
	}
	if d.Attempts > len(Schedule) {
		return store.DeliveryDone, true
	}
	d.NextAt = now.Add(max(Schedule[d.Attempts-1], out.retryAfter))
	return store.DeliveryRetry, false
}

// send makes one attempt at a delivery, signed at ts.
func (w *Worker) send(ctx context.Context, o store.Outbound, ts time.Time) outcome {
	body, err := Body(o.Event, w.record)
	if err != nil {
		return outcome{result: resultConnection, err: "could not encode the event"}
	}
	sig, err := Sign(o.Webhook.Secret, o.Event.ID, ts, body)
	if err != nil {
		return outcome{result: resultConnection, err: "the webhook's secret is unusable; rotate it"}
	}
	u, err := url.Parse(o.Webhook.URL)
	if err != nil || (u.Scheme != "https" && !(w.cfg.AllowPrivate && u.Scheme == "http")) {
		return outcome{result: resultConnection, err: "the URL is not https:// (only allowed with --webhook-allow-private)"}
	}
	ctx, cancel := context.WithTimeout(ctx, w.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, o.Webhook.URL, strings.NewReader(string(body)))
	if err != nil {
		return outcome{result: resultConnection, err: "the URL cannot be requested"}
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "edgeproxy-webhooks/1")
	req.Header.Set(HeaderID, o.Event.ID)
	req.Header.Set(HeaderTimestamp, strconv.FormatInt(ts.Unix(), 10))
	req.Header.Set(HeaderSignature, sig)
	resp, err := w.client.Do(req)
	if err != nil {
		return failure(err, w.cfg.Timeout)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, drainBytes))
	switch code := resp.StatusCode; {
	case code >= 200 && code < 300:
		return outcome{result: resultSuccess, status: code}
	case code == http.StatusGone:
		return outcome{result: resultGone, status: code, err: "the receiver answered 410 Gone: webhook disabled"}
	case code >= 300 && code < 400:
		return outcome{result: resultHTTPError, status: code,
			err: fmt.Sprintf("the receiver answered %d, a redirect, which is not followed", code)}
	default:
		return outcome{result: resultHTTPError, status: code, err: fmt.Sprintf("the receiver answered %d", code),
			retryAfter: retryAfter(resp.Header.Get("Retry-After"), w.cfg.Now())}
	}
}

// failure describes, in our words, why no response came. Error texts of
// the network stack would quote the URL; these say what happened.
func failure(err error, timeout time.Duration) outcome {
	var dnsErr *net.DNSError
	var certErr *tls.CertificateVerificationError
	var netErr net.Error
	var refused *netguard.RefusedError
	switch {
	case errors.As(err, &refused):
		return outcome{result: resultAddressRefused,
			err: fmt.Sprintf("not connected: the URL's host resolves to %s, which is not a public address", refused.Addr)}
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return outcome{result: resultTimeout, err: fmt.Sprintf("no response within %v", timeout)}
	case errors.As(err, &dnsErr):
		return outcome{result: resultConnection, err: "the URL's host does not resolve"}
	case errors.As(err, &certErr):
		return outcome{result: resultConnection, err: "the receiver's TLS certificate is not valid for its host"}
	case strings.Contains(err.Error(), "tls:") || strings.Contains(err.Error(), "x509:"):
		return outcome{result: resultConnection, err: "the TLS handshake with the receiver failed"}
	case strings.Contains(err.Error(), "connection refused"):
		return outcome{result: resultConnection, err: "the receiver refused the connection"}
	}
	return outcome{result: resultConnection, err: "the connection to the receiver failed"}
}

// retryAfter reads a Retry-After header (seconds or an HTTP date), capped
// at maxRetryAfter; 0 when absent or unreadable.
func retryAfter(v string, now time.Time) time.Duration {
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64); err == nil {
		d = time.Duration(min(max(secs, 0), int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), maxRetryAfter)
}
