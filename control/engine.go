package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control/dnsverify"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/prometheus/client_golang/prometheus"
)

// EngineConfig configures the lifecycle engine. Zero durations take the
// defaults of CONTRACT §2.
type EngineConfig struct {
	// DNSWaitTimeout: a record still waiting this long after it entered
	// waiting goes to timed_out. Default 168h.
	DNSWaitTimeout time.Duration
	// IssueTimeout: a record issuing this long without a certificate goes
	// to erroring. Default 1h.
	IssueTimeout time.Duration
	// RecheckMax is the longest pause between two checks of a waiting or
	// issuing record. Default 5m.
	RecheckMax time.Duration
	// FirstRecheck is the pause before the second check of a waiting or
	// issuing record; later pauses double up to RecheckMax. Default 5s.
	FirstRecheck time.Duration
	// MonitorInterval is how often a valid or warning record is checked.
	// Default 24h.
	MonitorInterval time.Duration
	// CAAIdentities are the CA's issuer domains for the CAA pre-flight.
	// Default letsencrypt.org.
	CAAIdentities []string
	// Workers bounds how many records are worked on at once. Default 32.
	Workers int
	// ACMEWorkers bounds how many of those talk to the CA at once.
	// Default 4.
	ACMEWorkers int
	// ProbeAddr is the edge's TLS address; the monitor makes a handshake
	// there for each live record. Empty skips that check.
	ProbeAddr string
	// Now is the clock. If nil, the store's.
	Now func() time.Time
	// Logger gets every status transition. If nil, slog.Default().
	Logger *slog.Logger
	// Registerer gets the engine's metrics, records by status included.
	// If nil, they are not registered.
	Registerer prometheus.Registerer
}

// Timing of the checks.
const (
	dnsCheckTimeout = 10 * time.Second
	maxObtainTime   = 3 * time.Minute
	deleteTimeout   = 30 * time.Second
	probeTimeout    = 5 * time.Second
	// expiryWarning: a certificate this close to expiry is a warning, since
	// certmagic renews long before it.
	expiryWarning = 21 * 24 * time.Hour
)

// Engine moves every proxy record through its lifecycle (see the package
// doc). All of its state is in the store: each record carries the time of
// its next step, and the store indexes records by it, so a restart picks up
// exactly the steps that were due. The engine works on at most Workers
// records at once, whatever the number waiting.
type Engine struct {
	store   *store.Store
	dns     *dnsverify.Verifier
	certs   *certs.Manager
	cfg     EngineConfig
	log     *slog.Logger
	acme    chan struct{} // semaphore of ACMEWorkers
	wake    chan struct{}
	metrics *engineMetrics

	// mu guards inflight.
	mu       sync.Mutex
	inflight map[string]inflightStep

	gate caGate

	// unwritable is set when a step could not record its outcome because
	// the disk refuses writes. Such a record is still due, so without a
	// hold the engine would redo its step (a DNS query, an order) in a
	// tight loop; Run holds every step until the store can write again.
	unwritable atomic.Bool
}

// unwritableRecheck is how often a held engine asks the store whether it
// can write again.
const unwritableRecheck = 5 * time.Second

// An inflightStep is a step running for a record: the status it began
// with, and how to cancel it when an API call moves the record elsewhere
// (a DELETE must not wait minutes behind an order for a domain nobody
// wants any more).
type inflightStep struct {
	status store.Status
	cancel context.CancelFunc
}

// caGate is the engine's hold on every order to the CA. A rate limit is
// about our ACME account, not one record, and an outage is the CA's, so
// while either lasts no record orders: a record that comes due meanwhile
// is put off to the end of the pause without asking, and the first orders
// after it are the probe. An outage pause starts at FirstRecheck and
// doubles up to RecheckMax while failures continue (a circuit breaker); a
// rate limit lasts until the time the CA gave, or as an outage pause when
// it gave none. The gate is in memory: after a restart, the records put
// off keep their stored next-check time, and the first order that meets
// the limit sets the pause again.
type caGate struct {
	mu       sync.Mutex
	pause    caPause
	failures int  // consecutive CA-side failures, sizing the next pause
	logged   bool // a pause was logged and the CA has not answered since
}

// caPause is one pause of orders to the CA.
type caPause struct {
	until  time.Time
	cause  string // pauseRateLimited or pauseUnavailable
	fromCA bool   // until is the CA's own "retry after" time
	reason string // what the CA said (certs.Reason), for messages
}

// Causes of a pause, also the label of the pauses metric.
const (
	pauseRateLimited = "rate_limited"
	pauseUnavailable = "ca_unavailable"
)

// activePause returns the pause in force at now, if any.
func (e *Engine) activePause(now time.Time) (caPause, bool) {
	e.gate.mu.Lock()
	defer e.gate.mu.Unlock()
	p := e.gate.pause
	return p, now.Before(p.until)
}

// noteOrder updates the gate with the outcome of an order that ended at
// now, and returns the pause in force after it. A rate limit or an outage
// met while a pause is already in force began before it and does not
// lengthen it, except a rate limit whose end the CA gives later.
func (e *Engine) noteOrder(now time.Time, err error) (caPause, bool) {
	g := &e.gate
	g.mu.Lock()
	defer g.mu.Unlock()
	active := now.Before(g.pause.until)
	until, limited := certs.RateLimit(err)
	switch {
	case err == nil || (!limited && !certs.CAUnavailable(err) &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)):
		// The CA answered.
		g.failures = 0
		if g.logged && !active {
			g.logged = false
			e.log.Info("ACME orders resumed: the certificate authority answers again")
		}
	case limited && until.After(now) && until.After(g.pause.until):
		e.setPause(now, caPause{until: until, cause: pauseRateLimited, fromCA: true, reason: certs.Reason(err)}, active)
	case active:
	case limited || certs.CAUnavailable(err):
		g.failures++
		cause := pauseUnavailable
		if limited {
			cause = pauseRateLimited
		}
		e.setPause(now, caPause{until: now.Add(e.backoff(g.failures)), cause: cause, reason: certs.Reason(err)}, false)
	}
	return g.pause, now.Before(g.pause.until)
}

// setPause puts p in force (with gate.mu held). A pause is logged once,
// not per record: when one begins, or when the CA moves a rate limit's
// end. An outage pause that only grows while the outage lasts is not
// logged again.
func (e *Engine) setPause(now time.Time, p caPause, extending bool) {
	g := &e.gate
	g.pause = p
	if !extending {
		e.metrics.pauses.WithLabelValues(p.cause).Inc()
	}
	if p.cause == pauseUnavailable && g.logged {
		return
	}
	g.logged = true
	e.log.Warn("ACME orders paused", "cause", p.cause, "until", p.until.UTC().Format(time.RFC3339),
		"for", p.until.Sub(now).Round(time.Second).String(), "reason", p.reason)
}

// pauseMessage tells a customer why their record waits for the CA and
// until when; attempted says whether the record's own order met it.
func pauseMessage(p caPause, attempted bool) string {
	at := p.until.UTC().Format(time.RFC3339)
	switch {
	case p.cause == pauseRateLimited && p.fromCA:
		return fmt.Sprintf("The certificate authority is rate limiting us: rate limited until %s; retrying then. The CA said: %s", at, p.reason)
	case p.cause == pauseRateLimited:
		return fmt.Sprintf("The certificate authority is rate limiting us without saying until when: rate limited until %s by our estimate; retrying then. The CA said: %s", at, p.reason)
	case attempted:
		return fmt.Sprintf("Requesting a certificate failed because the certificate authority is unavailable (%s); nothing is wrong with your domain or DNS. Retrying at %s.", p.reason, at)
	default:
		return fmt.Sprintf("Waiting for the certificate authority, which is unavailable (%s); nothing is wrong with your domain or DNS. Next attempt at %s.", p.reason, at)
	}
}

// NewEngine returns an engine over st that verifies DNS with dns and gets
// certificates from cm. Call Run to start it.
func NewEngine(st *store.Store, dns *dnsverify.Verifier, cm *certs.Manager, cfg EngineConfig) *Engine {
	if cfg.DNSWaitTimeout == 0 {
		cfg.DNSWaitTimeout = 168 * time.Hour
	}
	if cfg.IssueTimeout == 0 {
		cfg.IssueTimeout = time.Hour
	}
	if cfg.RecheckMax == 0 {
		cfg.RecheckMax = 5 * time.Minute
	}
	if cfg.FirstRecheck == 0 {
		cfg.FirstRecheck = 5 * time.Second
	}
	if cfg.MonitorInterval == 0 {
		cfg.MonitorInterval = 24 * time.Hour
	}
	if len(cfg.CAAIdentities) == 0 {
		cfg.CAAIdentities = []string{"letsencrypt.org"}
	}
	if cfg.Workers == 0 {
		cfg.Workers = 32
	}
	if cfg.ACMEWorkers == 0 {
		cfg.ACMEWorkers = 4
	}
	if cfg.Now == nil {
		cfg.Now = st.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Engine{
		store:    st,
		dns:      dns,
		certs:    cm,
		cfg:      cfg,
		log:      cfg.Logger,
		acme:     make(chan struct{}, cfg.ACMEWorkers),
		wake:     make(chan struct{}, 1),
		inflight: map[string]inflightStep{},
	}
	e.metrics = newEngineMetrics(e, cfg.Registerer)
	return e
}

// checkCNAME runs one CNAME check within dnsCheckTimeout and counts it.
func (e *Engine) checkCNAME(ctx context.Context, r store.Record) dnsverify.CNAMEResult {
	ctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	defer cancel()
	start := time.Now()
	res := e.dns.CheckCNAME(ctx, r.Domain, r.TargetCNAME)
	e.metrics.dnsDuration.Observe(time.Since(start).Seconds())
	e.metrics.dnsChecks.WithLabelValues(res.Outcome.String()).Inc()
	return res
}

// Wake makes the engine look for due records now; tests call it after
// moving their clock.
func (e *Engine) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

func (e *Engine) isInflight(id string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.inflight[id]
	return ok
}

// cancelStale cancels the step in flight for the record, if any, unless
// the record is still in the status the step began with.
func (e *Engine) cancelStale(id string, status store.Status, exists bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if s, ok := e.inflight[id]; ok && (!exists || s.status != status) {
		s.cancel()
	}
}

// Start loads the certificate of every served record from storage (no
// ACME traffic), puts those domains on the edge's allowlist and drops
// certificates that no record holds any more. Run calls it; it is
// separate so the server can report ready only after it.
func (e *Engine) Start(ctx context.Context) error {
	records, err := e.store.Records(nil)
	if err != nil {
		return fmt.Errorf("engine: listing records: %w", err)
	}
	holders := map[string]bool{}
	var toLoad []store.Record
	for _, r := range records {
		holders[r.Domain] = true
		if r.Served() {
			toLoad = append(toLoad, r)
		}
	}
	// Loading is parsing (certificate and key) more than reading: one
	// loader per CPU.
	var (
		mu     sync.Mutex
		served []string
		wg     sync.WaitGroup
		next   = make(chan store.Record)
	)
	for range runtime.GOMAXPROCS(0) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range next {
				if _, err := e.certs.Load(ctx, r.Domain); err != nil {
					// The monitor finds it missing and gets a new one.
					e.log.Warn("certificate of a served record not in storage", "record_id", r.ID, "domain", r.Domain, "err", err)
					continue
				}
				mu.Lock()
				served = append(served, r.Domain)
				mu.Unlock()
			}
		}()
	}
	for _, r := range toLoad {
		next <- r
	}
	close(next)
	wg.Wait()
	e.certs.ServeOnly(served)
	stored, err := e.certs.StoredDomains(ctx)
	if err != nil {
		return fmt.Errorf("engine: listing stored certificates: %w", err)
	}
	for _, d := range stored {
		if !holders[d] {
			if err := e.certs.Drop(ctx, d); err != nil {
				e.log.Warn("dropping orphaned certificate", "domain", d, "err", err)
			}
		}
	}
	return nil
}

// Run works on due records until ctx is done. It calls Start first unless
// started is true.
func (e *Engine) Run(ctx context.Context, started bool) error {
	if !started {
		if err := e.Start(ctx); err != nil {
			return err
		}
	}
	sub := e.store.Subscribe()
	defer sub.Close()
	slots := make(chan struct{}, e.cfg.Workers)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		held := e.storageHeld()
		free := cap(slots) - len(slots)
		if free > 0 && !held {
			due, err := e.store.DueRecords(e.cfg.Now(), free, e.isInflight)
			if err != nil {
				e.log.Error("engine: reading due records", "err", err)
			}
			for _, r := range due {
				sctx, cancel := context.WithCancel(ctx)
				e.mu.Lock()
				e.inflight[r.ID] = inflightStep{status: r.Status, cancel: cancel}
				e.mu.Unlock()
				slots <- struct{}{}
				wg.Add(1)
				go func(r store.Record) {
					defer wg.Done()
					e.step(sctx, r)
					cancel()
					e.mu.Lock()
					delete(e.inflight, r.ID)
					e.mu.Unlock()
					<-slots
					e.Wake()
				}(r)
			}
		}
		wait := time.Hour
		if next, ok, err := e.store.NextDue(e.isInflight); err == nil && ok {
			wait = max(next.Sub(e.cfg.Now()), 0)
		}
		if len(slots) == cap(slots) {
			wait = time.Hour // a finishing step wakes us
		}
		if held {
			wait = unwritableRecheck
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		case <-e.wake:
		case <-sub.Ready():
			e.applyChanges(ctx, sub.Take())
		}
		timer.Stop()
	}
}

// applyChanges keeps the edge's allowlist equal to the served records and
// drops the certificate of a deleted domain that no record holds any more.
func (e *Engine) applyChanges(ctx context.Context, changes []store.Change) {
	for _, c := range changes {
		r, err := e.store.Record(c.ID)
		switch {
		case err == nil:
			e.cancelStale(c.ID, r.Status, true)
			e.certs.Serve(r.Domain, r.Served())
		case errors.Is(err, store.ErrNotFound):
			e.cancelStale(c.ID, "", false)
			e.certs.Serve(c.Domain, false)
			if _, err := e.store.RecordByDomain(c.Domain); errors.Is(err, store.ErrNotFound) {
				dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
				if err := e.certs.Drop(dctx, c.Domain); err != nil {
					e.log.Warn("dropping certificate of deleted record", "domain", c.Domain, "err", err)
				}
				cancel()
			}
		default:
			e.log.Error("engine: reading changed record", "record_id", c.ID, "err", err)
		}
	}
}

// step does the one thing the record's status calls for, and records the
// outcome with the time of the next step.
func (e *Engine) step(ctx context.Context, r store.Record) {
	switch r.Status {
	case store.StatusWaiting:
		e.stepWaiting(ctx, r)
	case store.StatusIssuing:
		e.stepIssuing(ctx, r)
	case store.StatusValid, store.StatusWarning:
		e.stepMonitor(ctx, r)
	case store.StatusDeleting:
		e.stepDeleting(ctx, r)
	default:
		// erroring and timed_out wait for a retry; nothing is scheduled.
		e.save(r, func(n *store.Record) { n.NextCheckAt = time.Time{} })
	}
}

// backoff is the pause before check number n (1 for the first recheck):
// from FirstRecheck, doubling, up to RecheckMax, with ±10% jitter so
// records created together do not stay in step.
func (e *Engine) backoff(n int) time.Duration {
	d := e.cfg.FirstRecheck
	for i := 1; i < n && d < e.cfg.RecheckMax; i++ {
		d *= 2
	}
	d = min(d, e.cfg.RecheckMax)
	jitter := time.Duration(rand.Int64N(int64(d)/5+1)) - d/10
	return max(d+jitter, time.Millisecond)
}

// save applies fn to the record as stored, if it is still in the status
// the step began with (an API call may have moved it meanwhile: then the
// step's outcome no longer applies and the record is left alone). A status
// change is logged once.
func (e *Engine) save(r store.Record, fn func(n *store.Record)) {
	var before store.Record
	after, op, err := e.store.Mutate(r.ID, func(n *store.Record) (store.Op, error) {
		if n.Status != r.Status {
			return store.OpKeep, nil
		}
		before = *n
		fn(n)
		return store.OpSave, nil
	})
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			e.log.Error("engine: saving record", "record_id", r.ID, "domain", r.Domain, "err", err)
			e.noteWriteErr(err)
		}
		return
	}
	if op == store.OpSave && before.Status != after.Status {
		logTransition(e.log, before, after)
		e.metrics.transitions.WithLabelValues(string(before.Status), string(after.Status)).Inc()
	}
}

// noteWriteErr holds the engine (see Run) when err is the disk refusing
// writes, logging that once.
func (e *Engine) noteWriteErr(err error) {
	if errors.Is(err, store.ErrUnwritable) && e.unwritable.CompareAndSwap(false, true) {
		e.log.Error("engine: the data store cannot write; holding every step until it can", "err", err)
	}
}

// storageHeld reports whether steps must wait for the disk: a write was
// refused and the store still cannot write.
func (e *Engine) storageHeld() bool {
	if !e.unwritable.Load() {
		return false
	}
	if err := e.store.Writable(); err != nil {
		return true
	}
	e.unwritable.Store(false)
	e.log.Info("engine: the data store can write again; resuming")
	return false
}

// logTransition logs one status change of a record.
func logTransition(log *slog.Logger, before, after store.Record) {
	msg := ""
	if after.Message != nil {
		msg = *after.Message
	}
	log.Info("record status changed", "record_id", after.ID, "org_id", after.OrgID, "domain", after.Domain,
		"from", string(before.Status), "to", string(after.Status), "message", msg)
}

func ptr(s string) *string { return &s }

func (e *Engine) stepWaiting(ctx context.Context, r store.Record) {
	now := e.cfg.Now()
	res := e.checkCNAME(ctx, r)
	// Only a definite answer times out: our resolver failing says nothing of the customer's DNS.
	if !now.Before(r.WaitingSince.Add(e.cfg.DNSWaitTimeout)) && res.Outcome != dnsverify.Pointing && res.Outcome != dnsverify.ResolverFailure {
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusTimedOut
			n.Message = ptr(fmt.Sprintf("DNS did not point %s at %s within %s. Add the CNAME record, then retry.",
				r.Domain, r.TargetCNAME, e.cfg.DNSWaitTimeout))
			n.NextCheckAt = time.Time{}
			n.Checks = 0
		})
		return
	}
	if res.Outcome != dnsverify.Pointing {
		e.save(r, func(n *store.Record) {
			n.Message = ptr(res.Message)
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		})
		return
	}
	dctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	caa := e.dns.CheckCAA(dctx, r.Domain, e.cfg.CAAIdentities)
	cancel()
	switch {
	case caa.Err != nil:
		e.metrics.caaChecks.WithLabelValues("resolver_failure").Inc()
	case caa.Allowed:
		e.metrics.caaChecks.WithLabelValues("allowed").Inc()
	default:
		e.metrics.caaChecks.WithLabelValues("forbidden").Inc()
	}
	switch {
	case caa.Err != nil:
		e.save(r, func(n *store.Record) {
			n.Message = ptr(caa.Message)
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		})
	case !caa.Allowed:
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusErroring
			n.Message = ptr(caa.Message)
			n.NextCheckAt = time.Time{}
			n.Checks = 0
		})
	default:
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusIssuing
			n.Message = ptr(fmt.Sprintf("DNS verified (%s points at %s via %s); requesting a certificate.", r.Domain, r.TargetCNAME, res.Via))
			n.IssuingSince = now
			n.NextCheckAt = now
			n.Checks = 0
		})
	}
}

func (e *Engine) stepIssuing(ctx context.Context, r store.Record) {
	now := e.cfg.Now()
	deadline := r.IssuingSince.Add(e.cfg.IssueTimeout)
	// The deadline runs from the first attempt (see the failure branch
	// below), so records queued behind a burst for a CA slot do not time
	// out without ever having asked.
	if r.Checks > 0 && !now.Before(deadline) {
		reason := "no certificate could be obtained"
		if r.Message != nil {
			reason = *r.Message
		}
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusErroring
			n.Message = ptr(fmt.Sprintf("No certificate within %s. Last attempt: %s", e.cfg.IssueTimeout, reason))
			n.NextCheckAt = time.Time{}
			n.Checks = 0
		})
		return
	}
	select {
	case e.acme <- struct{}{}:
	case <-ctx.Done():
		return
	}
	// Looked at with the slot held, so records queued for a slot when a
	// pause begins see it and do not ask.
	if p, paused := e.activePause(e.cfg.Now()); paused {
		<-e.acme
		e.putOff(r, p, false, e.cfg.Now())
		return
	}
	attemptAt := e.cfg.Now()
	budget := maxObtainTime
	if r.Checks > 0 {
		budget = min(budget, deadline.Sub(attemptAt))
	}
	octx, cancel := context.WithTimeout(ctx, budget)
	notAfter, err := e.certs.Obtain(octx, r.Domain)
	cancel()
	if ctx.Err() != nil {
		<-e.acme
		// Shutting down (the step is due again after restart), or an API
		// call moved the record on: either way this outcome is not wanted.
		return
	}
	now = e.cfg.Now()
	// Noted before the slot is freed, so the record that takes it next
	// sees a pause this order began.
	p, paused := e.noteOrder(now, err)
	<-e.acme
	_, limited := certs.RateLimit(err)
	switch {
	case err == nil:
		e.certs.Serve(r.Domain, true)
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusValid
			n.Message = nil
			n.CertNotAfter = notAfter
			n.NextCheckAt = now.Add(e.cfg.MonitorInterval)
			n.Checks = 0
		})
	case certs.IsPermanent(err):
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusErroring
			n.Message = ptr("The certificate authority refused: " + certs.Reason(err))
			n.NextCheckAt = time.Time{}
			n.Checks = 0
		})
	case paused && (limited || certs.CAUnavailable(err)):
		e.putOff(r, p, true, attemptAt)
	default:
		e.save(r, func(n *store.Record) {
			n.Message = ptr("Requesting a certificate failed, retrying: " + certs.Reason(err))
			if n.Checks == 0 {
				n.IssuingSince = attemptAt // the issue deadline starts now
			}
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		})
	}
}

// putOff reschedules an issuing record to the end of the CA pause p, no
// earlier. Time under a rate limit is not held against the record: the
// CA did not look at its order, so its check count goes back to zero and
// the issue deadline starts again at its next real attempt. Time in a CA
// outage counts like a failed attempt (from attemptAt), so a long outage
// still ends in erroring with the CA's reason.
func (e *Engine) putOff(r store.Record, p caPause, attempted bool, attemptAt time.Time) {
	now := e.cfg.Now()
	e.save(r, func(n *store.Record) {
		n.Message = ptr(pauseMessage(p, attempted))
		if p.cause == pauseRateLimited {
			n.Checks = 0
			n.NextCheckAt = p.until
			return
		}
		if n.Checks == 0 {
			n.IssuingSince = attemptAt
		}
		n.Checks++
		n.NextCheckAt = maxTime(p.until, now.Add(e.backoff(n.Checks)))
	})
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func (e *Engine) stepDeleting(ctx context.Context, r store.Record) {
	e.certs.Serve(r.Domain, false)
	dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
	err := e.certs.Drop(dctx, r.Domain)
	cancel()
	if err != nil {
		now := e.cfg.Now()
		e.save(r, func(n *store.Record) {
			n.Message = ptr("Removing the certificate failed, retrying: " + err.Error())
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		})
		return
	}
	_, op, err := e.store.Mutate(r.ID, func(n *store.Record) (store.Op, error) {
		if n.Status != store.StatusDeleting {
			return store.OpKeep, nil
		}
		return store.OpDelete, nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		e.log.Error("engine: deleting record", "record_id", r.ID, "domain", r.Domain, "err", err)
		e.noteWriteErr(err)
	}
	if err == nil && op == store.OpDelete {
		e.metrics.transitions.WithLabelValues(string(store.StatusDeleting), "gone").Inc()
		e.log.Info("record deleted", "record_id", r.ID, "org_id", r.OrgID, "domain", r.Domain,
			"from", string(store.StatusDeleting), "to", "gone")
	}
}

// stepMonitor re-checks a live record: DNS still points at us, the
// certificate is held and not close to expiry, and the edge answers a
// handshake for the domain.
// dnsWarning starts the monitor's finding that DNS moved away.
const dnsWarning = "DNS no longer points here: "

func (e *Engine) stepMonitor(ctx context.Context, r store.Record) {
	var problems []string
	fatal := ""
	res := e.checkCNAME(ctx, r)
	switch res.Outcome {
	case dnsverify.Pointing, dnsverify.ResolverFailure:
		// A resolver failure says nothing about the customer's DNS.
	default:
		problems = append(problems, dnsWarning+res.Message)
	}
	now := e.cfg.Now()
	// waitCA is set when the certificate is missing and the CA pause
	// (its own or met now) keeps a new one from being ordered: a warning
	// looked at again when the pause ends, not an erroring the customer
	// must retry.
	var waitCA *caPause
	notAfter, ok := e.certs.Info(r.Domain)
	if !ok {
		if p, paused := e.activePause(now); paused {
			waitCA = &p
		} else {
			lctx, cancel := context.WithTimeout(ctx, maxObtainTime)
			var err error
			notAfter, err = e.certs.Obtain(lctx, r.Domain)
			cancel()
			p, paused := e.noteOrder(e.cfg.Now(), err)
			_, limited := certs.RateLimit(err)
			switch {
			case err == nil:
				e.certs.Serve(r.Domain, true)
			case paused && (limited || certs.CAUnavailable(err)):
				waitCA = &p
			default:
				fatal = "The certificate is missing and a new one could not be obtained: " + certs.Reason(err)
			}
		}
	}
	if waitCA != nil {
		problems = append(problems, "The certificate is missing and a new one cannot be requested yet. "+pauseMessage(*waitCA, false))
	}
	switch left := notAfter.Sub(now); {
	case fatal != "" || waitCA != nil:
	case left <= 0:
		fatal = fmt.Sprintf("The certificate expired at %s and was not renewed.", notAfter.UTC().Format(time.RFC3339))
	case left < expiryWarning:
		problems = append(problems, fmt.Sprintf("The certificate expires at %s and has not been renewed yet.", notAfter.UTC().Format(time.RFC3339)))
	}
	if fatal == "" && waitCA == nil && e.cfg.ProbeAddr != "" {
		if err := probeTLS(ctx, e.cfg.ProbeAddr, r.Domain); err != nil {
			problems = append(problems, "The edge did not serve the domain: "+err.Error())
		}
	}
	e.save(r, func(n *store.Record) {
		switch {
		case fatal != "":
			n.Status = store.StatusErroring
			n.Message = ptr(fatal)
		case len(problems) > 0:
			n.Status = store.StatusWarning
			n.Message = ptr(strings.Join(problems, " "))
		case res.Outcome == dnsverify.ResolverFailure && n.Message != nil && strings.HasPrefix(*n.Message, dnsWarning):
			// Our resolver failed, so this run learned nothing about the
			// DNS the warning is about: keep it.
		default:
			n.Status = store.StatusValid
			n.Message = nil
		}
		if !notAfter.IsZero() {
			n.CertNotAfter = notAfter
		}
		n.NextCheckAt = now.Add(e.cfg.MonitorInterval)
		switch {
		case fatal != "":
			n.NextCheckAt = time.Time{}
		case waitCA != nil:
			n.NextCheckAt = waitCA.until
		}
	})
}

// probeTLS makes a TLS handshake with addr for domain and checks that the
// certificate presented names the domain. It does not verify the chain: the
// question is whether the edge serves the domain, not whether this machine
// trusts the CA.
func probeTLS(ctx context.Context, addr, domain string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	d := tls.Dialer{Config: &tls.Config{ServerName: domain, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return fmt.Errorf("handshake with SNI %s: %w", domain, err)
	}
	defer conn.Close()
	certs := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(certs) == 0 || !slices.Contains(certs[0].DNSNames, domain) {
		return fmt.Errorf("the certificate presented for %s does not name it", domain)
	}
	return nil
}
