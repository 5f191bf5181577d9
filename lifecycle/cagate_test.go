package lifecycle

import (
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"

	"github.com/edgeproxy/edgeproxy/store"
)

// rateLimited is the error certmagic returns for a 429 with detail.
func rateLimited(detail string) error {
	return fmt.Errorf("e: obtaining certificate: [e] Obtain: creating new order: %w",
		acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: detail})
}

func leRetry(at time.Time) string { return at.UTC().Format("2006-01-02 15:04:05") + " UTC" }

func newTestGate(t *testing.T) (*caGate, *store.Store, *int) {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	pauses := 0
	g := newCAGate(st, slog.New(slog.DiscardHandler), func(n int) time.Duration { return time.Duration(n) * time.Minute },
		5*time.Minute, func(string) { pauses++ })
	return g, st, &pauses
}

// TestCAGateScopes: what each of Let's Encrypt's limits holds, with the
// clock given to every call.
func TestCAGateScopes(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	rec := func(org, domain string) store.Record {
		return store.Record{ID: "id-" + domain, OrgID: org, Domain: domain}
	}
	a, aSib, b := rec("A", "www.attacker-shop.com"), rec("A", "cdn.attacker-shop.com"), rec("B", "www.bystander-shop.com")

	t.Run("name", func(t *testing.T) {
		g, _, pauses := newTestGate(t)
		until := now.Add(3 * time.Hour)
		g.note(a, now, rateLimited(`too many failed authorizations (5) for "www.attacker-shop.com" in the last 1h0m0s, retry after `+leRetry(until)))
		if h, ok := g.holdFor(a, now); !ok || h.scope != holdName || !h.until.Equal(until) {
			t.Errorf("A's hold = %+v, %v", h, ok)
		}
		for _, r := range []store.Record{aSib, b} {
			if h, ok := g.holdFor(r, now); ok {
				t.Errorf("%s held by A's name: %+v", r.Domain, h)
			}
		}
		if *pauses != 0 {
			t.Errorf("%d pauses of every order", *pauses)
		}
	})
	t.Run("registered domain", func(t *testing.T) {
		g, _, _ := newTestGate(t)
		g.note(a, now, rateLimited(`too many certificates (50) already issued for "attacker-shop.com" in the last 168h0m0s, retry after `+leRetry(now.Add(time.Hour))))
		if h, ok := g.holdFor(aSib, now); !ok || h.subject != "attacker-shop.com" {
			t.Errorf("sibling's hold = %+v, %v", h, ok)
		}
		if _, ok := g.holdFor(b, now); ok {
			t.Error("another registered domain held")
		}
	})
	t.Run("name hold capped at 7 days", func(t *testing.T) {
		g, _, _ := newTestGate(t)
		g.note(a, now, rateLimited(`too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2030-01-01 00:00:00 UTC`))
		if h, _ := g.holdFor(a, now); !h.until.Equal(now.Add(maxNameHold)) || !h.capped {
			t.Errorf("hold = %+v, want capped at %v", h, now.Add(maxNameHold))
		}
	})
	t.Run("account capped at 24 h and stored", func(t *testing.T) {
		g, st, pauses := newTestGate(t)
		g.note(a, now, rateLimited(`too many new orders (300) from this account in the last 3h0m0s, retry after 2030-01-01 00:00:00 UTC`))
		h, ok := g.holdFor(b, now)
		if !ok || h.scope != holdAccount || !h.until.Equal(now.Add(24*time.Hour)) || !h.capped || h.recordID != a.ID {
			t.Errorf("B's hold = %+v, %v; want the account's pause, 24 h, met by A", h, ok)
		}
		if *pauses != 1 {
			t.Errorf("%d pauses, want 1", *pauses)
		}
		if m := holdMessage(h, h.recordID == b.ID, false); strings.Contains(m, "too many") || strings.Contains(m, "The CA said") {
			t.Errorf("B's message quotes A's order: %q", m)
		}
		// A restart: a new gate over the store has the pause, still
		// bounded by 24 h from its own clock.
		g2 := newCAGate(st, slog.New(slog.DiscardHandler), g.backoff, g.estimate, func(string) {})
		if err := g2.load(now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		if h2, ok := g2.accountPause(now.Add(time.Hour)); !ok || !h2.until.Equal(h.until) {
			t.Errorf("after a restart the pause = %+v, %v; want until %v", h2, ok, h.until)
		}
	})
	t.Run("unplaced needs two organizations", func(t *testing.T) {
		g, _, pauses := newTestGate(t)
		unplaced := rateLimited("slow down, retry after " + leRetry(now.Add(time.Hour)))
		g.note(a, now, unplaced)
		g.note(aSib, now, unplaced)
		if _, ok := g.accountPause(now); ok || *pauses != 0 {
			t.Errorf("one organization's unplaced limits paused every order")
		}
		if _, ok := g.holdFor(b, now); ok {
			t.Error("B held by A's unplaced limits")
		}
		// An order the CA accepts ends the run.
		g.note(rec("C", "www.third-shop.com"), now, nil)
		g.note(b, now, unplaced)
		if _, ok := g.accountPause(now); ok {
			t.Error("unplaced limits with an accepted order between them paused every order")
		}
		g.note(a, now, unplaced)
		if _, ok := g.accountPause(now); !ok || *pauses != 1 {
			t.Error("unplaced limits of two organizations in a row did not pause every order")
		}
	})
}
