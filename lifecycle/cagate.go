package lifecycle

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"golang.org/x/net/publicsuffix"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/store"
)

// What a hold on orders covers (store.CAHold.Scope).
const (
	holdAccount          = "account"           // every order
	holdName             = "name"              // the orders for one domain
	holdRegisteredDomain = "registered_domain" // the orders for the names under one registered domain
)

// Bounds on the CA's own time, which comes from a problem's detail and
// may be anything (a pause to 2030 was once accepted).
const (
	// maxAccountPause: a limit on the whole account pauses every order at
	// most this long before one order is tried again; if the limit still
	// holds, the CA answers that order with a new time.
	maxAccountPause = 24 * time.Hour
	// maxNameHold: the longest a limit on one name or registered domain
	// holds it. Let's Encrypt's longest windows (certificates per exact
	// set of identifiers, per registered domain) are 7 days.
	maxNameHold = 7 * 24 * time.Hour
)

// caHold is a hold on orders to the CA: a pause of every order (scope
// holdAccount: a rate limit on the account, or an outage), or a rate
// limit on one name or registered domain.
type caHold struct {
	scope   string
	subject string // the name or registered domain; "" for the account
	until   time.Time
	cause   string // pauseRateLimited or pauseUnavailable
	fromCA  bool   // until is the CA's own time (perhaps capped)
	capped  bool   // the CA asked for longer than the bound
	// reason is what the CA said, and recordID the record whose order
	// met the hold: only that record's message may quote the CA.
	reason   string
	recordID string
}

// caGate decides which records may order from the CA now, from what the
// CA answered earlier orders:
//
//   - A rate limit on one name (duplicate certificates, failed
//     validations for the name) holds the orders for that name only, until
//     the CA's time (at most maxNameHold); one on a registered domain holds
//     the names under it. Another organization's records are not touched.
//   - A rate limit on the whole ACME account (new orders per account, ...)
//     pauses every order, until the CA's time but never longer than
//     maxAccountPause.
//   - A rate limit whose words name no known limit is held on the name
//     that met it, like a limit on the name: an organization can meet
//     such a limit only with orders for its own names, so holding those
//     names can never hold another organization's. Only when orders of two
//     organizations meet such limits, with no order the CA accepted in
//     between, is it taken for the account's and pauses every order.
//   - An outage (the CA unreachable or answering 5xx) pauses every order,
//     from FirstRecheck doubling up to RecheckMax while it lasts: a
//     circuit breaker.
//
// Rate-limit holds are written to the store, so a restart keeps them. An
// outage pause lives in memory: it lasts minutes at most, and the first
// order after a restart is the probe.
type caGate struct {
	store *store.Store
	// write is the handle holds are written through; the store if nil
	// (the engine sets its writer: fenced while it leads a term).
	write func() *store.Store
	log   *slog.Logger
	// backoff sizes the n-th outage pause, and the pause of an account
	// limit the CA gave no time for; estimate is the hold of a name the
	// CA gave no time for.
	backoff  func(n int) time.Duration
	estimate time.Duration
	// onPause counts a pause of every order that begins, by cause.
	onPause func(cause string)

	// mu guards the fields below. pause is the hold of every order (zero
	// until when none); holds are those of names and registered domains,
	// by scope and subject; failures counts consecutive CA-side failures,
	// sizing the next pause; logged says a pause was logged and the CA
	// has not answered since; unplaced holds the organizations whose orders
	// met an unplaced rate limit since the CA last accepted an order.
	mu       sync.Mutex
	pause    caHold
	holds    map[string]caHold
	failures int
	logged   bool
	unplaced map[string]bool
}

func newCAGate(st *store.Store, log *slog.Logger, backoff func(int) time.Duration, estimate time.Duration, onPause func(string)) *caGate {
	return &caGate{store: st, log: log, backoff: backoff, estimate: estimate, onPause: onPause,
		holds: map[string]caHold{}, unplaced: map[string]bool{}}
}

func holdKey(scope, subject string) string { return scope + "/" + subject }

// load takes up the rate-limit holds stored before a restart that are
// still in force at now.
func (g *caGate) load(now time.Time) error {
	stored, err := g.store.CAHolds(now)
	if err != nil {
		return fmt.Errorf("engine: reading the CA's holds: %w", err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, s := range stored {
		h := caHold{scope: s.Scope, subject: s.Subject, until: s.Until, cause: pauseRateLimited,
			fromCA: s.FromCA, capped: s.Capped, reason: s.Reason, recordID: s.RecordID}
		if s.Scope != holdAccount {
			h.until = minTime(h.until, now.Add(maxNameHold))
			g.holds[holdKey(h.scope, h.subject)] = h
			continue
		}
		if limit := now.Add(maxAccountPause); h.until.After(limit) {
			h.until, h.capped = limit, true
		}
		g.pause, g.logged = h, true
		g.log.Warn("ACME orders paused", "cause", h.cause, "until", h.until.UTC().Format(time.RFC3339),
			"for", h.until.Sub(now).Round(time.Second).String(), "reason", h.reason, "since", "before the restart")
	}
	return nil
}

// accountPause returns the pause of every order in force at now, if any.
func (g *caGate) accountPause(now time.Time) (caHold, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pause, now.Before(g.pause.until)
}

// holdFor returns the hold in force at now on an order for r, if any:
// the one that ends last of the account's pause, the hold of r's domain
// and that of its registered domain.
func (g *caGate) holdFor(r store.Record, now time.Time) (caHold, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.holdForLocked(r, now)
}

func (g *caGate) holdForLocked(r store.Record, now time.Time) (h caHold, found bool) {
	consider := func(c caHold) {
		if now.Before(c.until) && (!found || c.until.After(h.until)) {
			h, found = c, true
		}
	}
	consider(g.pause)
	consider(g.holds[holdKey(holdName, r.Domain)])
	if rd, err := publicsuffix.EffectiveTLDPlusOne(r.Domain); err == nil {
		consider(g.holds[holdKey(holdRegisteredDomain, rd)])
	}
	return h, found
}

// note takes in the outcome of r's order, which ended at now, and returns
// the hold in force on r's orders after it, if any. A limit or an outage
// met while the account's pause is in force began before it and does not
// lengthen it, except a limit whose end the CA gives later.
func (g *caGate) note(r store.Record, now time.Time, err error) (caHold, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	active := now.Before(g.pause.until)
	_, limited := certs.RateLimit(err)
	switch {
	case limited:
		g.noteLimitLocked(r, now, err, active)
	case certs.CAUnavailable(err):
		if !active {
			g.failures++
			g.setPauseLocked(now, caHold{scope: holdAccount, until: now.Add(g.backoff(g.failures)),
				cause: pauseUnavailable, reason: certs.Reason(err), recordID: r.ID}, false)
		}
	case err == nil || (!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled)):
		// The CA answered: it issued, or refused for the name's own
		// reasons.
		g.failures = 0
		clear(g.unplaced)
		if g.logged && !active {
			g.logged = false
			g.log.Info("ACME orders resumed: the certificate authority answers again")
		}
	}
	return g.holdForLocked(r, now)
}

// noteLimitLocked places the rate limit err met by r's order (see
// caGate) and holds what it covers.
func (g *caGate) noteLimitLocked(r store.Record, now time.Time, err error, active bool) {
	until, _ := certs.RateLimit(err)
	fromCA := until.After(now)
	scope := certs.RateLimitScope(err, r.Domain)
	if scope == certs.ScopeUnknown {
		g.unplaced[r.OrgID] = true
		scope = certs.ScopeName
		if len(g.unplaced) >= 2 {
			scope = certs.ScopeAccount
			g.log.Warn("orders of several organizations met a rate limit the CA did not name: taking it for the account's",
				"organizations", len(g.unplaced), "reason", certs.Reason(err))
		}
	}
	h := caHold{cause: pauseRateLimited, fromCA: fromCA, until: until, reason: certs.Reason(err), recordID: r.ID}
	if scope == certs.ScopeAccount {
		h.scope = holdAccount
		if !fromCA {
			if active {
				return // met by an order that began before the pause
			}
			g.failures++
			h.until = now.Add(g.backoff(g.failures))
		}
		if limit := now.Add(maxAccountPause); h.until.After(limit) {
			h.until, h.capped = limit, true
		}
		if !h.until.After(g.pause.until) {
			return
		}
		g.setPauseLocked(now, h, active)
		g.persistLocked(h, now)
		return
	}
	h.scope, h.subject = holdName, r.Domain
	if scope == certs.ScopeRegisteredDomain {
		if rd, err := publicsuffix.EffectiveTLDPlusOne(r.Domain); err == nil {
			h.scope, h.subject = holdRegisteredDomain, rd
		}
	}
	if !fromCA {
		h.until = now.Add(g.estimate)
	}
	if limit := now.Add(maxNameHold); h.until.After(limit) {
		h.until, h.capped = limit, true
	}
	key := holdKey(h.scope, h.subject)
	if old, ok := g.holds[key]; ok && !h.until.After(old.until) {
		return
	}
	for k, old := range g.holds {
		if !now.Before(old.until) {
			delete(g.holds, k)
		}
	}
	g.holds[key] = h
	g.log.Info("ACME orders held by a rate limit of the certificate authority", "scope", h.scope, "subject", h.subject,
		"until", h.until.UTC().Format(time.RFC3339), "record_id", r.ID, "org_id", r.OrgID, "reason", h.reason)
	g.persistLocked(h, now)
}

// setPauseLocked puts h in force as the pause of every order. A pause is
// logged once, not per record: when one begins, or when the CA moves a
// rate limit's end. An outage pause that only grows while the outage
// lasts is not logged again.
func (g *caGate) setPauseLocked(now time.Time, h caHold, extending bool) {
	g.pause = h
	if !extending {
		g.onPause(h.cause)
	}
	if h.cause == pauseUnavailable && g.logged {
		return
	}
	g.logged = true
	g.log.Warn("ACME orders paused", "cause", h.cause, "until", h.until.UTC().Format(time.RFC3339),
		"for", h.until.Sub(now).Round(time.Second).String(), "capped", h.capped, "reason", h.reason)
}

// persistLocked writes a rate-limit hold to the store, so a restart keeps
// it. A failed write is logged: the hold still holds until the restart.
func (g *caGate) persistLocked(h caHold, now time.Time) {
	st := g.store
	if g.write != nil {
		st = g.write()
	}
	err := st.PutCAHold(store.CAHold{Scope: h.scope, Subject: h.subject, Until: h.until, FromCA: h.fromCA,
		Capped: h.capped, Reason: h.reason, RecordID: h.recordID}, now)
	switch {
	case errors.Is(err, store.ErrNotLeader):
		// The term is over; the next leader meets the limit again.
		g.log.Debug("engine: storing a hold of the certificate authority: no longer the leader", "scope", h.scope, "subject", h.subject, "err", err)
	case err != nil:
		g.log.Error("engine: storing a hold of the certificate authority", "scope", h.scope, "subject", h.subject, "err", err)
	}
}

// holdMessage tells a customer why their record waits for the CA and
// until when. own says the hold was met by this record's own order, so
// the CA's words are about it and may be quoted; no other record's
// message ever carries them. attempted says the record's order just now
// met it.
func holdMessage(h caHold, own, attempted bool) string {
	at := h.until.UTC().Format(time.RFC3339)
	said := ""
	if own && h.reason != "" {
		said = " The CA said: " + h.reason
	}
	when := "rate limited until " + at
	if !h.fromCA {
		when = "rate limited, without saying until when, until " + at + " by our estimate"
	} else if h.capped {
		when = "rate limited until " + at + " (the CA asked for longer; one order is tried then)"
	}
	switch {
	case h.cause == pauseUnavailable && attempted:
		return fmt.Sprintf("Requesting a certificate failed because the certificate authority is unavailable (%s); nothing is wrong with your domain or DNS. Retrying at %s.", h.reason, at)
	case h.cause == pauseUnavailable:
		return fmt.Sprintf("Waiting for the certificate authority, which is unavailable; nothing is wrong with your domain or DNS. Next attempt at %s.", at)
	case h.scope == holdAccount:
		return fmt.Sprintf("The certificate authority is rate limiting this service's ACME account, not your domain: every certificate order is %s; retrying then.%s", when, said)
	case h.scope == holdRegisteredDomain:
		return fmt.Sprintf("The certificate authority is rate limiting certificates for the registered domain %s: %s; retrying then.%s", h.subject, when, said)
	default:
		return fmt.Sprintf("The certificate authority is rate limiting certificates for %s: %s; retrying then.%s", h.subject, when, said)
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
