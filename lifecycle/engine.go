package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/prometheus/client_golang/prometheus"
)

// Config configures the lifecycle engine. Its zero value works: each zero
// field takes the default named on it.
type Config struct {
	// DNSWaitTimeout: a record still waiting this long after it entered
	// waiting goes to timed_out. If zero, DefaultDNSWaitTimeout.
	DNSWaitTimeout time.Duration
	// IssueTimeout: a record issuing this long without a certificate goes
	// to erroring. If zero, DefaultIssueTimeout.
	IssueTimeout time.Duration
	// RecheckMax is the longest pause between two checks of a waiting or
	// issuing record. If zero, DefaultRecheckMax.
	RecheckMax time.Duration
	// FirstRecheck is the pause before the second check of a waiting or
	// issuing record; later pauses double up to RecheckMax. If zero,
	// DefaultFirstRecheck.
	FirstRecheck time.Duration
	// MonitorInterval is how often a valid or warning record is checked.
	// If zero, DefaultMonitorInterval.
	MonitorInterval time.Duration
	// CAAIdentities are the CA's issuer domains for the CAA pre-flight.
	// If empty, certs.DefaultCAAIdentity.
	CAAIdentities []string
	// Workers bounds how many records are worked on at once. If zero,
	// DefaultWorkers.
	Workers int
	// ACMEWorkers bounds how many of those talk to the CA at once. If
	// zero, DefaultACMEWorkers.
	ACMEWorkers int
	// OrgOrdersPerHour is how many certificate orders one organization's
	// records may place in a rolling hour; a record beyond it stays issuing
	// until the oldest order leaves the hour. If zero,
	// DefaultOrgOrdersPerHour.
	OrgOrdersPerHour int
	// CertRetention is how long a deleted record's certificate is kept in
	// storage, never served, for a record of the same domain created again
	// to reuse without an order. If zero, DefaultCertRetention.
	CertRetention time.Duration
	// ProbeAddr is the edge's TLS address; the monitor makes a handshake
	// there for each live record. Empty skips that check.
	ProbeAddr string
	// ZoneServed says this deployment serves the target zone itself
	// (--dns-addr), so the CA's DNS-01 validation of a domain can be
	// answered there: a record whose DCV delegation CNAME
	// (_acme-challenge.<domain>) reaches its target then gets its
	// certificate with DNS-01, and may become valid before its traffic
	// points here (see dcv.go). The Certs given must then validate with
	// DNS-01 through the zone (certs.Config.Zone). If false, the
	// delegation is ignored.
	ZoneServed bool
	// Now is the clock. If nil, the store's.
	Now func() time.Time
	// Logger gets every status transition. If nil, slog.Default().
	Logger *slog.Logger
	// Registerer gets the engine's metrics, records by status included.
	// If nil, they are not registered.
	Registerer prometheus.Registerer
}

// The defaults of Config's zero fields; the flags of `edgeproxy serve`
// start from the same values.
const (
	DefaultDNSWaitTimeout   = 168 * time.Hour
	DefaultIssueTimeout     = time.Hour
	DefaultRecheckMax       = 5 * time.Minute
	DefaultFirstRecheck     = 5 * time.Second
	DefaultMonitorInterval  = 24 * time.Hour
	DefaultWorkers          = 32
	DefaultACMEWorkers      = 4
	DefaultOrgOrdersPerHour = 10
	DefaultCertRetention    = 168 * time.Hour
)

// Timing of the checks.
const (
	dnsCheckTimeout = 10 * time.Second
	maxObtainTime   = 3 * time.Minute
	deleteTimeout   = 30 * time.Second
	// orderWindow is the rolling window of OrgOrdersPerHour.
	orderWindow = time.Hour
)

// Engine moves every proxy record through its lifecycle (see the package
// doc). All of its state is in the store: each record carries the time of
// its next step, and the store indexes records by it, so a restart picks up
// exactly the steps that were due. The engine works on at most Workers
// records at once, whatever the number waiting.
type Engine struct {
	// store is read by the engine and its metrics; Run also writes
	// through it. Lead writes through the handle of its term instead (term).
	store   *store.Store
	term    atomic.Pointer[store.Store]
	dns     DNS
	certs   Certs
	cfg     Config
	log     *slog.Logger
	acme    chan struct{} // semaphore of ACMEWorkers
	wake    chan struct{}
	metrics *engineMetrics

	// mu guards inflight.
	mu       sync.Mutex
	inflight map[string]inflightStep

	gate *caGate

	// sweepAt is when the next certificate retention ends (zero: none
	// known). Start and Run's goroutine use it, one after the other.
	sweepAt time.Time

	// unwritable is set when a step could not record its outcome because
	// the disk refuses writes. Such a record is still due, so without a
	// hold the engine would redo its step (a DNS query, an order) in a
	// tight loop; Run holds every step until the store can write again.
	unwritable atomic.Bool

	// idlePasses counts the passes of Run that ended with no step running.
	idlePasses atomic.Uint64

	// endTerm ends the leadership term Lead is running (nil under Run):
	// a write refused with store.ErrNotLeader proves the term is over
	// even before the store's session says so. Set by Lead before its
	// goroutines start and cleared after they have all returned.
	endTerm context.CancelCauseFunc
}

// writer is the handle steps write through: the fenced handle of the
// term while Lead runs, else the engine's store.
func (e *Engine) writer() *store.Store {
	if w := e.term.Load(); w != nil {
		return w
	}
	return e.store
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

// Causes of a pause of every order, also the label of the pauses metric.
const (
	pauseRateLimited = "rate_limited"
	pauseUnavailable = "ca_unavailable"
)

// activePause returns the pause of every order in force at now, if any.
func (e *Engine) activePause(now time.Time) (caHold, bool) { return e.gate.accountPause(now) }

// NewEngine returns an engine over st that verifies DNS with dns and gets
// certificates from cm. Call Run to start it.
func NewEngine(st *store.Store, dns DNS, cm Certs, cfg Config) *Engine {
	if cfg.DNSWaitTimeout == 0 {
		cfg.DNSWaitTimeout = DefaultDNSWaitTimeout
	}
	if cfg.IssueTimeout == 0 {
		cfg.IssueTimeout = DefaultIssueTimeout
	}
	if cfg.RecheckMax == 0 {
		cfg.RecheckMax = DefaultRecheckMax
	}
	if cfg.FirstRecheck == 0 {
		cfg.FirstRecheck = DefaultFirstRecheck
	}
	if cfg.MonitorInterval == 0 {
		cfg.MonitorInterval = DefaultMonitorInterval
	}
	if len(cfg.CAAIdentities) == 0 {
		cfg.CAAIdentities = []string{certs.DefaultCAAIdentity}
	}
	if cfg.Workers == 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.OrgOrdersPerHour == 0 {
		cfg.OrgOrdersPerHour = DefaultOrgOrdersPerHour
	}
	if cfg.CertRetention == 0 {
		cfg.CertRetention = DefaultCertRetention
	}
	if cfg.ACMEWorkers == 0 {
		cfg.ACMEWorkers = DefaultACMEWorkers
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
	e.gate = newCAGate(st, cfg.Logger, e.backoff, cfg.RecheckMax, func(cause string) {
		e.metrics.pauses.WithLabelValues(cause).Inc()
	})
	e.gate.write = e.writer
	e.metrics = newEngineMetrics(e, cfg.Registerer)
	return e
}

// checkCNAME runs one check of the record's DNS, its ownership proof
// included, within dnsCheckTimeout and counts it.
func (e *Engine) checkCNAME(ctx context.Context, r store.Record) dnsverify.CNAMEResult {
	ctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	defer cancel()
	start := time.Now()
	res := e.dns.CheckCNAME(ctx, r.Domain, r.TargetCNAME, ownership(r))
	e.metrics.dnsDuration.Observe(time.Since(start).Seconds())
	e.metrics.dnsChecks.WithLabelValues(res.Outcome.String()).Inc()
	return res
}

// ownership is the record's ownership TXT record, as the DNS check takes
// it.
func ownership(r store.Record) dnsverify.Ownership {
	o := r.Ownership()
	return dnsverify.Ownership{Name: o.Name, Token: o.Value}
}

// Wake makes the engine look for due records now; tests call it after
// moving their clock.
func (e *Engine) Wake() {
	select {
	case e.wake <- struct{}{}:
	default:
	}
}

// IdlePasses is how many times Run has finished looking for due records
// with no step running: at each, every step due when the pass began had
// been done. A test that calls Wake and then waits for this to grow knows
// the engine has acted on its clock, however slow the machine.
func (e *Engine) IdlePasses() uint64 { return e.idlePasses.Load() }

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

// Start takes up the CA's holds stored before a restart, loads the
// certificate of every served record from storage (no ACME traffic), puts
// those domains on the edge's allowlist, and drops the certificates that
// no record holds once their retention has passed. Run calls it; it is
// separate so the server can report ready only after it.
func (e *Engine) Start(ctx context.Context) error {
	records, held, err := e.takeUp()
	if err != nil {
		return err
	}
	e.certs.ServeOnly(loadServed(ctx, e.certs, e.log, records))
	e.sweepAt = e.sweepRetained(ctx, held)
	return nil
}

// takeUp takes up the CA's holds stored before (by this process before a
// restart, or by the node that led before) and lists the records, with
// whether a record holds a domain.
func (e *Engine) takeUp() (records []store.Record, held func(domain string) bool, err error) {
	if err := e.gate.load(e.cfg.Now()); err != nil {
		return nil, nil, err
	}
	records, err = e.store.Records(nil)
	if err != nil {
		return nil, nil, fmt.Errorf("engine: listing records: %w", err)
	}
	holders := make(map[string]bool, len(records))
	for _, r := range records {
		holders[r.Domain] = true
	}
	return records, func(domain string) bool { return holders[domain] }, nil
}

// sweepRetained drops the stored certificates that no record holds and
// whose retention has passed, and returns when the next retention ends
// (zero if none). A certificate that no record holds and no release
// covers (a crash came between a deletion and its release, or the file
// predates retention) starts its retention now. held reports whether a
// record holds a domain.
func (e *Engine) sweepRetained(ctx context.Context, held func(domain string) bool) time.Time {
	now := e.cfg.Now()
	retry := now.Add(e.cfg.RecheckMax)
	stored, err := e.certs.StoredDomains(ctx)
	if err != nil {
		e.log.Warn("engine: listing stored certificates for the retention", "err", err)
		return retry
	}
	released, err := e.store.ReleasedDomains()
	if err != nil {
		e.log.Warn("engine: reading released domains for the retention", "err", err)
		return retry
	}
	var next time.Time
	soonest := func(t time.Time) {
		if next.IsZero() || t.Before(next) {
			next = t
		}
	}
	isStored := make(map[string]bool, len(stored))
	for _, d := range stored {
		isStored[d] = true
		if held(d) {
			continue
		}
		at, ok := released[d]
		if !ok {
			if err := e.writer().MarkReleased(d, now); err != nil {
				e.log.Warn("engine: starting the retention of a certificate", "domain", d, "err", err)
			}
			at = now
		}
		if end := at.Add(e.cfg.CertRetention); now.Before(end) {
			soonest(end)
			continue
		}
		dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
		err := e.certs.Drop(dctx, d)
		cancel()
		if err != nil {
			e.log.Warn("engine: dropping a certificate past its retention", "domain", d, "err", err)
			soonest(retry)
			continue
		}
		if err := e.writer().ForgetReleased(d, at); err != nil {
			e.log.Warn("engine: forgetting a released domain", "domain", d, "err", err)
		}
		e.log.Info("certificate of a deleted record removed after its retention", "domain", d,
			"released_at", at.UTC().Format(time.RFC3339))
	}
	for d, at := range released {
		if !isStored[d] {
			if err := e.writer().ForgetReleased(d, at); err != nil {
				e.log.Warn("engine: forgetting a released domain", "domain", d, "err", err)
			}
		}
	}
	return next
}

// noteReleased brings the next sweep forward to the end of the domain's
// retention, which runs from its deletion (marked by the store), not from
// when the engine heard of it.
func (e *Engine) noteReleased(domain string) {
	end := e.cfg.Now().Add(e.cfg.CertRetention)
	if released, err := e.store.ReleasedDomains(); err == nil {
		if at, ok := released[domain]; ok {
			end = at.Add(e.cfg.CertRetention)
		}
	}
	if e.sweepAt.IsZero() || end.Before(e.sweepAt) {
		e.sweepAt = end
	}
}

// recordHolds reports whether a record holds the domain (a failed read
// counts as held: the certificate is kept).
func (e *Engine) recordHolds(domain string) bool {
	_, err := e.store.RecordByDomain(domain)
	return !errors.Is(err, store.ErrNotFound)
}

// Run works on due records until ctx is done, and keeps the edge's
// allowlist equal to the served records. It calls Start first unless
// started is true. It is the engine of a single process; on several
// nodes every node runs a Follower for the allowlist and the elected one
// runs Lead.
func (e *Engine) Run(ctx context.Context, started bool) error {
	if !started {
		if err := e.Start(ctx); err != nil {
			return err
		}
	}
	e.loop(ctx, e.applyChanges)
	return nil
}

// Lead does the engine's work for one leadership term, writing through
// st, the store handle fenced on that leadership (store.WithFence): the
// steps of due records, the retention sweep, and the cancelling of steps
// an API call made stale. It leaves the edge's allowlist to the node's
// Follower. It returns once ctx ends (cancel it as soon as the leadership
// is lost: the steps in flight are cancelled with it) and every step in
// flight has returned, or with store.ErrNotLeader as soon as a write
// finds the leadership gone. Lead may be called again for a later term;
// the engine's metrics stay registered across terms. Only one Lead or
// Run may run at a time.
func (e *Engine) Lead(ctx context.Context, st *store.Store) error {
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	e.term.Store(st)
	defer e.term.Store(nil)
	e.endTerm = cancel
	defer func() { e.endTerm = nil }()
	_, held, err := e.takeUp()
	if err != nil {
		return err
	}
	e.sweepAt = e.sweepRetained(ctx, held)
	e.loop(ctx, e.applyLeaderChanges)
	if errors.Is(context.Cause(ctx), store.ErrNotLeader) {
		return store.ErrNotLeader
	}
	return nil
}

// loop works on due records until ctx is done, handing the record
// changes the store reports to apply.
func (e *Engine) loop(ctx context.Context, apply func(context.Context, []store.Change)) {
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
		if !e.sweepAt.IsZero() && !e.cfg.Now().Before(e.sweepAt) && !held {
			e.sweepAt = e.sweepRetained(ctx, e.recordHolds)
		}
		wait := time.Hour
		if next, ok, err := e.store.NextDue(e.isInflight); err == nil && ok {
			wait = max(next.Sub(e.cfg.Now()), 0)
		}
		if len(slots) == cap(slots) {
			wait = time.Hour // a finishing step wakes us
		}
		if !e.sweepAt.IsZero() {
			wait = min(wait, max(e.sweepAt.Sub(e.cfg.Now()), 0))
		}
		if held {
			wait = unwritableRecheck
		}
		if len(slots) == 0 {
			e.idlePasses.Add(1)
		}
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-timer.C:
		case <-e.wake:
		case <-sub.Ready():
			apply(ctx, sub.Take())
		}
		timer.Stop()
	}
}

// applyChanges keeps the edge's allowlist equal to the served records
// and, when the last record of a domain is gone, releases its certificate:
// out of the cache and never served, but kept in storage for the
// retention.
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
				if err := e.certs.Release(dctx, c.Domain); err != nil {
					e.log.Warn("releasing certificate of deleted record", "domain", c.Domain, "err", err)
				}
				cancel()
				e.noteReleased(c.Domain)
			}
		default:
			e.log.Error("engine: reading changed record", "record_id", c.ID, "err", err)
		}
	}
}

// applyLeaderChanges is applyChanges without the allowlist, which the
// node's Follower keeps: it cancels the steps an API call made stale and
// brings the retention sweep forward when a domain's last record is gone.
func (e *Engine) applyLeaderChanges(_ context.Context, changes []store.Change) {
	for _, c := range changes {
		r, err := e.store.Record(c.ID)
		switch {
		case err == nil:
			e.cancelStale(c.ID, r.Status, true)
		case errors.Is(err, store.ErrNotFound):
			e.cancelStale(c.ID, "", false)
			if _, err := e.store.RecordByDomain(c.Domain); errors.Is(err, store.ErrNotFound) {
				e.noteReleased(c.Domain)
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
// change is logged once. A record stored before ownership tokens existed
// gets the token it has shown so far (store.Record.Token) written into it.
func (e *Engine) save(r store.Record, fn func(n *store.Record)) {
	var before store.Record
	after, op, err := e.writer().Mutate(r.ID, func(n *store.Record) (store.Op, error) {
		if n.Status != r.Status {
			return store.OpKeep, nil
		}
		before = *n
		fn(n)
		if n.OwnershipToken == "" {
			n.OwnershipToken = n.Token()
		}
		return store.OpSave, nil
	})
	if err != nil {
		if !errors.Is(err, store.ErrNotFound) {
			e.writeFailed("engine: saving record", err, "record_id", r.ID, "domain", r.Domain)
		}
		return
	}
	if op == store.OpSave && before.Status != after.Status {
		store.LogTransition(e.log, before, after)
		e.metrics.transitions.WithLabelValues(string(before.Status), string(after.Status)).Inc()
	}
}

// writeFailed handles a write of the engine's that failed. A write
// refused because the leadership is gone ends the term (Lead) and is
// not an error: the next leader does the step again. A write the
// cluster store could not be reached for holds the engine (noteWriteErr),
// which logs once; so an outage or a lost leadership with many steps in
// flight does not log one error per step. Anything else is logged as an
// error, and holds the engine if the disk refused it.
func (e *Engine) writeFailed(msg string, err error, args ...any) {
	args = append(args, "err", err)
	switch {
	case errors.Is(err, store.ErrNotLeader):
		e.log.Debug(msg+": no longer the leader", args...)
		if e.endTerm != nil {
			e.endTerm(store.ErrNotLeader)
		}
	case errors.Is(err, store.ErrUnavailable):
		e.log.Debug(msg, args...)
		e.noteWriteErr(err)
	default:
		e.log.Error(msg, args...)
		e.noteWriteErr(err)
	}
}

// noteWriteErr holds the engine (see Run) when err is the disk refusing
// writes, or the cluster store out of reach, logging that once.
func (e *Engine) noteWriteErr(err error) {
	switch {
	case errors.Is(err, store.ErrUnwritable):
		if e.unwritable.CompareAndSwap(false, true) {
			e.log.Error("engine: the data store cannot write; holding every step until it can", "err", err)
		}
	case errors.Is(err, store.ErrUnavailable):
		if e.unwritable.CompareAndSwap(false, true) {
			e.log.Warn("engine: the cluster store cannot be reached; holding every step until it can", "err", err)
		}
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

func ptr(s string) *string { return &s }

func (e *Engine) stepWaiting(ctx context.Context, r store.Record) {
	now := e.cfg.Now()
	res := e.checkCNAME(ctx, r)
	pointing := res.Outcome == dnsverify.Pointing
	var dcv dcvProof
	if e.cfg.ZoneServed && !pointing && res.Outcome != dnsverify.ResolverFailure {
		dcv = e.proveByDelegation(ctx, r, res)
	}
	// Only a definite answer times out: our resolver failing says nothing of the customer's DNS.
	definite := res.Outcome != dnsverify.ResolverFailure && !dcv.unknown
	if !now.Before(r.WaitingSince.Add(e.cfg.DNSWaitTimeout)) && !pointing && !dcv.proven && definite {
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusTimedOut
			n.Message = ptr(fmt.Sprintf("DNS did not point %s at %s within %s. %s, then retry.",
				r.Domain, r.TargetCNAME, e.cfg.DNSWaitTimeout, waitingMessage(res, dcv)))
			n.NextCheckAt = time.Time{}
			n.Checks = 0
		})
		return
	}
	if !pointing && !dcv.proven {
		e.save(r, func(n *store.Record) {
			n.Message = ptr(waitingMessage(res, dcv))
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
			n.Message = ptr(verifiedMessage(r, res.Via))
			if !pointing {
				n.Message = ptr(delegatedMessage(r, res))
			}
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
	// below), so records queued behind a burst for a CA slot, or held by a
	// rate limit or their organization's order budget, do not time out
	// without ever having asked.
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
	limit := maxObtainTime
	if r.Checks > 0 {
		limit = min(limit, deadline.Sub(e.cfg.Now()))
	}
	// The slot is held while the gate is asked and until the outcome is
	// noted, so records queued for a slot when a pause begins see it and
	// do not ask.
	out := e.order(ctx, r, limit)
	<-e.acme
	if ctx.Err() != nil {
		// Shutting down (the step is due again after restart), or an API
		// call moved the record on: either way this outcome is not wanted.
		return
	}
	now = e.cfg.Now()
	_, limited := certs.RateLimit(out.err)
	switch {
	case out.kind == orderUnrecorded:
		// The store failed; the engine holds if the disk refuses writes.
		e.save(r, func(n *store.Record) { n.NextCheckAt = now.Add(e.backoff(n.Checks + 1)) })
	case out.kind == orderHeld:
		e.holdBack(r, out, now)
	case out.err == nil:
		e.certs.Serve(r.Domain, true)
		// Validated through the zone: the traffic may not point here yet.
		note := ""
		if out.viaDNS {
			if res := e.checkCNAME(ctx, r); notPointed(res) {
				note = notPointedMessage(res)
			}
			now = e.cfg.Now()
		}
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusValid
			n.Message = nil
			n.CertNotAfter = out.notAfter
			n.NextCheckAt = now.Add(e.cfg.MonitorInterval)
			n.Checks = 0
			if note != "" {
				n.Message = ptr(note)
				n.NextCheckAt = now.Add(e.backoff(1))
			}
		})
	case certs.IsPermanent(out.err):
		e.save(r, func(n *store.Record) {
			n.Status = store.StatusErroring
			n.Message = ptr("The certificate authority refused: " + certs.Reason(out.err))
			n.NextCheckAt = time.Time{}
			n.Checks = 0
		})
	case out.held && (limited || certs.CAUnavailable(out.err)):
		e.holdBack(r, out, now)
	default:
		e.save(r, func(n *store.Record) {
			n.Message = ptr("Requesting a certificate failed, retrying: " + certs.Reason(out.err))
			if n.Checks == 0 {
				n.IssuingSince = out.attemptAt // the issue deadline starts now
			}
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		})
	}
}

// What came of asking for a record's certificate.
const (
	orderStored     = iota + 1 // no order: a certificate was in storage
	orderHeld                  // no order: the CA gate or the organization's budget holds the record
	orderUnrecorded            // no order: it could not be counted (the store failed)
	orderPlaced                // an order went to the CA
)

// orderOutcome is what order did. For orderHeld, hold says why and
// until when; for orderPlaced, err is the CA's answer and held says a
// hold is in force on the record's orders after it.
type orderOutcome struct {
	kind      int
	notAfter  time.Time
	err       error
	attemptAt time.Time
	hold      caHold
	held      bool
	budget    bool // held by the organization's order budget
	viaDNS    bool // the order was validated with DNS-01 through the zone
}

// order gets r's certificate: from storage if one is there (a deleted
// record's, kept for the retention), else with an order to the CA within
// limit, unless the CA gate or the organization's order budget holds it.
// An order the CA never received (it was unreachable or failing) is given
// back to the budget.
func (e *Engine) order(ctx context.Context, r store.Record, limit time.Duration) orderOutcome {
	now := e.cfg.Now()
	if notAfter, err := e.certs.Load(ctx, r.Domain); err == nil && notAfter.After(now) {
		return orderOutcome{kind: orderStored, notAfter: notAfter}
	}
	if h, held := e.gate.holdFor(r, now); held {
		by := "account_pause"
		if h.scope != holdAccount {
			by = "name_limit"
		}
		e.metrics.held.WithLabelValues(by).Inc()
		return orderOutcome{kind: orderHeld, hold: h, held: true}
	}
	spent, ok, next, err := e.writer().SpendOrder(r.OrgID, r.Domain, now, orderWindow, e.cfg.OrgOrdersPerHour)
	if err != nil {
		e.writeFailed("engine: counting an order against the organization's budget", err, "record_id", r.ID, "org_id", r.OrgID)
		return orderOutcome{kind: orderUnrecorded}
	}
	if !ok {
		e.metrics.held.WithLabelValues("org_budget").Inc()
		return orderOutcome{kind: orderHeld, hold: caHold{until: next}, held: true, budget: true}
	}
	viaDNS := false
	if e.cfg.ZoneServed {
		viaDNS = e.route(ctx, r)
	}
	e.metrics.orders.Inc()
	attemptAt := e.cfg.Now()
	octx, cancel := context.WithTimeout(ctx, limit)
	notAfter, err := e.certs.Obtain(octx, r.Domain)
	cancel()
	if certs.CAUnavailable(err) {
		if rerr := e.writer().RefundOrder(spent); rerr != nil {
			e.log.Warn("engine: giving an order back to the organization's budget", "org_id", r.OrgID, "err", rerr)
		}
	}
	if ctx.Err() != nil {
		return orderOutcome{kind: orderPlaced, err: ctx.Err(), attemptAt: attemptAt}
	}
	h, held := e.gate.note(r, e.cfg.Now(), err)
	return orderOutcome{kind: orderPlaced, notAfter: notAfter, err: err, attemptAt: attemptAt, hold: h, held: held, viaDNS: viaDNS}
}

// holdBack keeps an issuing record issuing while a hold lasts, telling
// why and when it will be tried. A record's schedule carries only what
// its own order or its own organization decided: the end of a rate limit
// its order met, or of its organization's budget. A pause it did not
// meet itself (the account's, met by another record's order) is looked
// at again every RecheckMax, so that nothing of another order is written
// into its schedule. Time held by a rate limit or the budget is not the
// record's: its check count goes back to zero and the issue deadline
// starts again at its next real attempt. Time in a CA outage counts like
// a failed attempt, so a long outage still ends in erroring with the
// CA's reason.
func (e *Engine) holdBack(r store.Record, out orderOutcome, now time.Time) {
	h := out.hold
	own := h.recordID == r.ID
	e.save(r, func(n *store.Record) {
		switch {
		case out.budget:
			n.Message = ptr(budgetMessage(e.cfg.OrgOrdersPerHour, h.until))
			n.Checks = 0
			n.NextCheckAt = h.until
		case h.cause == pauseRateLimited:
			n.Message = ptr(holdMessage(h, own, out.kind == orderPlaced))
			n.Checks = 0
			n.NextCheckAt = h.until
			if !own {
				n.NextCheckAt = minTime(h.until, now.Add(e.cfg.RecheckMax))
			}
		default:
			n.Message = ptr(holdMessage(h, own, out.kind == orderPlaced))
			if n.Checks == 0 {
				n.IssuingSince = now
				if out.kind == orderPlaced {
					n.IssuingSince = out.attemptAt
				}
			}
			n.Checks++
			n.NextCheckAt = maxTime(h.until, now.Add(e.backoff(n.Checks)))
		}
	})
}

// budgetMessage tells a customer their record waits for their
// organization's order budget, and when it will be tried.
func budgetMessage(perHour int, at time.Time) string {
	return fmt.Sprintf("Held by your organization's certificate order budget (at most %d new certificate orders per hour); this record will be tried at %s.",
		perHour, at.UTC().Format(time.RFC3339))
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// stepDeleting stops serving the record's certificate and removes the
// record. The certificate stays in storage, never served, for
// CertRetention (the deletion marks the domain released); sweepRetained
// removes it then.
func (e *Engine) stepDeleting(ctx context.Context, r store.Record) {
	e.certs.Serve(r.Domain, false)
	dctx, cancel := context.WithTimeout(ctx, deleteTimeout)
	err := e.certs.Release(dctx, r.Domain)
	cancel()
	if err != nil {
		now := e.cfg.Now()
		e.save(r, func(n *store.Record) {
			n.Message = ptr("Releasing the certificate failed, retrying: " + err.Error())
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		})
		return
	}
	_, op, err := e.writer().Mutate(r.ID, func(n *store.Record) (store.Op, error) {
		if n.Status != store.StatusDeleting {
			return store.OpKeep, nil
		}
		return store.OpDelete, nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		e.writeFailed("engine: deleting record", err, "record_id", r.ID, "domain", r.Domain)
	}
	if err == nil && op == store.OpDelete {
		e.metrics.transitions.WithLabelValues(string(store.StatusDeleting), "gone").Inc()
		store.LogDeleted(e.log, r)
	}
}

// verifiedMessage is the message of a record going issuing: how its DNS
// points here and proves it is the record's.
func verifiedMessage(r store.Record, via string) string {
	if via == dnsverify.ViaFlattened {
		return fmt.Sprintf("DNS verified (%s has the addresses of %s, and its ownership TXT record %s holds this record's token); requesting a certificate.",
			r.Domain, r.TargetCNAME, r.Ownership().Name)
	}
	return fmt.Sprintf("DNS verified (%s points at %s via %s); requesting a certificate.", r.Domain, r.TargetCNAME, via)
}

// The monitor's findings about DNS start with one of these: DNS moved
// away, or it still brings the domain here by its addresses but the
// ownership TXT record that proved it is gone.
const (
	dnsWarning       = "DNS no longer points here: "
	ownershipWarning = "The domain's ownership is no longer proven: "
)

// stepMonitor re-checks a live record: DNS still points at us and proves
// the domain is the record's (a CNAME, or the addresses and the ownership
// TXT record; with the zone served, or the DCV delegation: see dcv.go),
// the certificate is held and not close to expiry, and the edge answers a
// handshake for the domain.
func (e *Engine) stepMonitor(ctx context.Context, r store.Record) {
	var problems []string
	fatal := ""
	res := e.checkCNAME(ctx, r)
	// dnsUnknown: a resolver failed, so this pass learned nothing about
	// the customer's DNS. note: proven by the delegation only, with the
	// traffic not pointing here yet.
	dnsUnknown := res.Outcome == dnsverify.ResolverFailure
	note := ""
	var dcv dcvProof
	if e.cfg.ZoneServed && res.Outcome != dnsverify.Pointing && !dnsUnknown {
		dcv = e.proveByDelegation(ctx, r, res)
		dnsUnknown = dcv.unknown
		if dcv.proven && notPointed(res) {
			note = notPointedMessage(res)
		}
	}
	switch {
	case res.Outcome == dnsverify.Pointing, dnsUnknown, dcv.proven:
		// A resolver failure says nothing about the customer's DNS.
	case res.Outcome == dnsverify.OwnershipMissing:
		problems = append(problems, ownershipWarning+waitingMessage(res, dcv))
	default:
		problems = append(problems, dnsWarning+waitingMessage(res, dcv))
	}
	switch {
	// Renewals are validated the way the delegation allows now.
	case dcv.looked:
		e.setRoute(ctx, r, dcv.delegated)
	case e.cfg.ZoneServed && !dcv.unknown:
		e.route(ctx, r)
	}
	now := e.cfg.Now()
	// wait is set when the certificate is missing and a hold (the CA's,
	// or the organization's order budget) keeps a new one from being
	// ordered: a warning looked at again at waitUntil, not an erroring the
	// customer must retry.
	var (
		wait      string
		waitUntil time.Time
	)
	notAfter, ok := e.certs.Info(r.Domain)
	if !ok {
		out := e.order(ctx, r, maxObtainTime)
		if ctx.Err() != nil {
			return // shutting down, or the record moved on
		}
		now = e.cfg.Now()
		_, limited := certs.RateLimit(out.err)
		h := out.hold
		switch {
		case out.kind == orderUnrecorded:
			wait, waitUntil = "Retrying shortly.", now.Add(e.backoff(1))
		case out.kind == orderStored || (out.kind == orderPlaced && out.err == nil):
			notAfter = out.notAfter
			e.certs.Serve(r.Domain, true)
		case out.budget:
			wait, waitUntil = budgetMessage(e.cfg.OrgOrdersPerHour, h.until), h.until
		case out.kind == orderHeld || (out.held && (limited || certs.CAUnavailable(out.err))):
			wait, waitUntil = holdMessage(h, h.recordID == r.ID, out.kind == orderPlaced), h.until
			if h.cause == pauseRateLimited && h.recordID != r.ID {
				waitUntil = minTime(h.until, now.Add(e.cfg.RecheckMax))
			}
		default:
			fatal = "The certificate is missing and a new one could not be obtained: " + certs.Reason(out.err)
		}
	}
	if wait != "" {
		problems = append(problems, "The certificate is missing and a new one cannot be requested yet. "+wait)
	}
	switch left := notAfter.Sub(now); {
	case fatal != "" || wait != "":
	case left <= 0:
		fatal = fmt.Sprintf("The certificate expired at %s and was not renewed.", notAfter.UTC().Format(time.RFC3339))
	case left < certs.ExpiryWarning:
		problems = append(problems, fmt.Sprintf("The certificate expires at %s and has not been renewed yet.", notAfter.UTC().Format(time.RFC3339)))
	}
	if fatal == "" && wait == "" && e.cfg.ProbeAddr != "" {
		if err := certs.ProbeServed(ctx, e.cfg.ProbeAddr, r.Domain); err != nil {
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
		case dnsUnknown && n.Message != nil &&
			(strings.HasPrefix(*n.Message, dnsWarning) || strings.HasPrefix(*n.Message, ownershipWarning) ||
				strings.HasPrefix(*n.Message, notPointedPrefix)):
			// Our resolver failed, so this run learned nothing about the
			// DNS the message is about: keep it.
		case note != "":
			n.Status = store.StatusValid
			n.Message = ptr(note)
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
		case wait != "":
			n.NextCheckAt = waitUntil
		case n.Status == store.StatusValid && n.Message != nil && strings.HasPrefix(*n.Message, notPointedPrefix):
			// Looked at again like a waiting record, so the message
			// clears soon after the traffic arrives.
			n.Checks++
			n.NextCheckAt = now.Add(e.backoff(n.Checks))
		default:
			n.Checks = 0
		}
	})
}
