package lifecycle_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/lifecycle/lifecycletest"
	"github.com/edgeproxy/edgeproxy/store"
)

// The lifecycle tests run on the shared control plane of lifecycletest.
const lifecycleBase = lifecycletest.Base

type (
	lifecycleEnv = lifecycletest.Env
	apiRecord    = lifecycletest.Record
	tenant       = lifecycletest.Tenant
)

var (
	newLifecycleEnv   = lifecycletest.New
	newLifecycleEnvCA = lifecycletest.NewWithCA
	msg               = lifecycletest.Msg
)

func TestLifecycleCNAMEToValid(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "e.shop.example.com")
	r := env.WaitFor(t, rec.ID, "waiting with a message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusWaiting && r.Message != nil
	})
	if m := msg(r); !strings.Contains(m, "e.shop.example.com CNAME "+rec.TargetCNAME) {
		t.Errorf("waiting message %q does not give the record to add", m)
	}
	env.MustNotServe(t, "e.shop.example.com")

	env.DNS.SetCNAME("e.shop.example.com", rec.TargetCNAME)
	r = env.WaitStatus(t, rec.ID, store.StatusValid)
	if r.Message != nil {
		t.Errorf("valid record has message %q", *r.Message)
	}
	if r.CertNotAfter.IsZero() {
		t.Error("valid record holds no certificate expiry")
	}
	env.MustServe(t, "e.shop.example.com")
	env.WaitLog(t, "from=waiting to=issuing", "from=issuing to=valid")
}

func TestLifecycleFlatteningAndChain(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	flat := env.Create(t, "flat.shop.example.com")
	chain := env.Create(t, "chain.shop.example.com")
	// Flattening: the apex-style A answer equals the target's, and the
	// ownership TXT record proves the domain is the record's.
	env.DNS.SetA("flat.shop.example.com", "127.0.0.1")
	env.PublishOwnership(flat)
	// A chain through the customer's own alias.
	env.DNS.SetCNAME("chain.shop.example.com", "alias.shop.example.com")
	env.DNS.SetCNAME("alias.shop.example.com", chain.TargetCNAME)
	env.WaitStatus(t, flat.ID, store.StatusValid)
	env.WaitStatus(t, chain.ID, store.StatusValid)
	env.MustServe(t, "flat.shop.example.com")
	env.MustServe(t, "chain.shop.example.com")
}

func TestLifecycleWaitingMessages(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	wrong := env.Create(t, "wrong.shop.example.com")
	env.DNS.SetCNAME("wrong.shop.example.com", "elsewhere.example.org")
	cf := env.Create(t, "cf.shop.example.com")
	env.DNS.SetA("cf.shop.example.com", "104.16.1.1")

	r := env.WaitFor(t, wrong.ID, "waiting naming the other CNAME", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "elsewhere.example.org")
	})
	if r.Status != store.StatusWaiting || !strings.Contains(msg(r), wrong.TargetCNAME) {
		t.Errorf("wrong CNAME: status %s, message %q", r.Status, msg(r))
	}
	r = env.WaitFor(t, cf.ID, "waiting naming Cloudflare", func(r store.Record, err error) bool {
		return err == nil && strings.Contains(msg(r), "Cloudflare")
	})
	if r.Status != store.StatusWaiting {
		t.Errorf("Cloudflare-proxied: status %s", r.Status)
	}
}

func TestLifecycleCAAForbids(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "caa.shop.example.com")
	env.DNS.SetCAA("shop.example.com", 0, "issue", "other-ca.example")
	env.DNS.SetCNAME("caa.shop.example.com", rec.TargetCNAME)
	r := env.WaitStatus(t, rec.ID, store.StatusErroring)
	if m := msg(r); !strings.Contains(m, "CAA") || !strings.Contains(m, certstest.CAAIdentity) {
		t.Errorf("CAA message %q does not name the record to add", m)
	}
	if got := env.Pebble.Orders(); got != 0 {
		t.Errorf("a forbidding CAA still sent %d orders to the CA", got)
	}
}

func TestLifecycleResolverDown(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	// SERVFAIL from before the record exists, so that the first check
	// already meets it.
	env.DNS.SetRcode("down.shop.example.com", 2)
	rec := env.Create(t, "down.shop.example.com")
	r := env.WaitFor(t, rec.ID, "waiting with a resolver message", func(r store.Record, err error) bool {
		return err == nil && r.Message != nil
	})
	if r.Status != store.StatusWaiting || strings.Contains(msg(r), "Add this record") {
		t.Errorf("resolver failure: status %s, message %q (must not ask the customer to change DNS)", r.Status, msg(r))
	}
}

func TestLifecycleTimedOutThenRetry(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "late.shop.example.com")
	env.WaitFor(t, rec.ID, "checked once", func(r store.Record, err error) bool { return err == nil && r.Message != nil })
	env.Clock.Advance(2 * time.Hour) // past the one-hour DNS wait
	r := env.WaitStatus(t, rec.ID, store.StatusTimedOut)
	if !strings.Contains(msg(r), "retry") {
		t.Errorf("timed_out message %q does not say what to do", msg(r))
	}
	env.DNS.SetCNAME("late.shop.example.com", rec.TargetCNAME)
	code, retried := env.Call(t, "POST", rec.ID+"/retry/", "")
	if code != 200 || retried.Status != "waiting" || retried.Message != nil {
		t.Fatalf("retry: %d %+v", code, retried)
	}
	env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, "late.shop.example.com")
}

// TestLifecycleDeleteValid: a deleted record's certificate stops being
// served at once but stays in storage for the retention (never served),
// then is removed.
func TestLifecycleDeleteValid(t *testing.T) {
	env := newLifecycleEnv(t, func(c *lifecycle.Config) { c.CertRetention = 2 * time.Hour })
	rec := env.Create(t, "gone.shop.example.com")
	env.DNS.SetCNAME("gone.shop.example.com", rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, "gone.shop.example.com")

	if code, _ := env.Call(t, "DELETE", rec.ID+"/", ""); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	env.WaitFor(t, rec.ID, "gone", func(r store.Record, err error) bool { return err == store.ErrNotFound })
	env.MustNotServe(t, "gone.shop.example.com")
	stored := func() []string {
		t.Helper()
		stored, err := env.Certs.StoredDomains(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return stored
	}
	if !slices.Contains(stored(), "gone.shop.example.com") {
		t.Errorf("certificate removed from storage at the delete, want it kept for the retention: %v", stored())
	}
	env.WaitLog(t, "from=valid to=deleting", "from=deleting to=gone")

	env.Clock.Advance(time.Hour)
	env.Engine.Wake()
	env.MustNotServe(t, "gone.shop.example.com")
	if !slices.Contains(stored(), "gone.shop.example.com") {
		t.Errorf("certificate removed from storage within its retention: %v", stored())
	}
	env.Clock.Advance(time.Hour + time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		released, err := env.Store.ReleasedDomains()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Contains(stored(), "gone.shop.example.com") && len(released) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after its retention: stored %v, released %v; want the certificate and its mark gone", stored(), released)
		}
		env.Engine.Wake()
		time.Sleep(20 * time.Millisecond)
	}
	env.WaitLog(t, "certificate of a deleted record removed after its retention")
}

func TestLifecycleCAUnreachable(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	env.Pebble.SetDown(true)
	rec := env.Create(t, "ca.shop.example.com")
	env.DNS.SetCNAME("ca.shop.example.com", rec.TargetCNAME)
	r := env.WaitFor(t, rec.ID, "issuing with a failure message", func(r store.Record, err error) bool {
		return err == nil && r.Status == store.StatusIssuing && strings.Contains(msg(r), "failed")
	})
	t.Logf("issuing message: %s", msg(r))
	env.Clock.Advance(2 * time.Hour) // past the one-hour issue timeout
	r = env.WaitStatus(t, rec.ID, store.StatusErroring)
	if !strings.Contains(msg(r), "No certificate within") {
		t.Errorf("erroring message %q lacks the reason", msg(r))
	}
	env.Pebble.SetDown(false)
	if code, _ := env.Call(t, "POST", rec.ID+"/retry/", ""); code != 200 {
		t.Fatalf("retry: %d", code)
	}
	env.WaitStatus(t, rec.ID, store.StatusValid)
	env.MustServe(t, "ca.shop.example.com")
}

func TestLifecycleMonitor(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "mon.shop.example.com")
	env.DNS.SetCNAME("mon.shop.example.com", rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)

	env.DNS.Remove("mon.shop.example.com")
	env.Clock.Advance(2 * time.Hour) // past the one-hour monitor interval
	r := env.WaitStatus(t, rec.ID, store.StatusWarning)
	if !strings.Contains(msg(r), "DNS no longer points here") {
		t.Errorf("warning message %q lacks the finding", msg(r))
	}
	env.MustServe(t, "mon.shop.example.com") // a warning still serves

	env.DNS.SetCNAME("mon.shop.example.com", rec.TargetCNAME)
	env.Clock.Advance(2 * time.Hour)
	r = env.WaitStatus(t, rec.ID, store.StatusValid)
	if r.Message != nil {
		t.Errorf("valid again but message %q", *r.Message)
	}
}

func TestUnknownSNICausesNoOrder(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	before := env.Pebble.Orders()
	for i := 0; i < 20; i++ {
		env.MustNotServe(t, fmt.Sprintf("random%d.example.org", i))
	}
	// A registered but unverified domain is no different.
	env.Create(t, "pending.shop.example.com")
	env.MustNotServe(t, "pending.shop.example.com")
	if got := env.Pebble.Orders(); got != before {
		t.Errorf("handshakes for unknown names made %d ACME orders", got-before)
	}
}

// TestEngineRestartServesFromStorage stops the engine and starts a new one
// over the same store: the valid record is served again with no new order.
func TestEngineRestartServesFromStorage(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "again.shop.example.com")
	env.DNS.SetCNAME("again.shop.example.com", rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	orders := env.Pebble.Orders()

	env.StopEngine()
	env.Certs.ServeOnly(nil)
	env.MustNotServe(t, "again.shop.example.com")
	env.StartEngine(t)
	env.WaitFor(t, rec.ID, "served again", func(store.Record, error) bool { return env.Certs.Serving("again.shop.example.com") })
	env.MustServe(t, "again.shop.example.com")
	if got := env.Pebble.Orders(); got != orders {
		t.Errorf("restart made %d new orders", got-orders)
	}
}

// TestIssueDeadlineStartsAtFirstAttempt pins that a record which entered
// issuing long ago but never got a CA slot (a burst queued behind the
// ACME workers) is tried, not timed out unasked.
func TestIssueDeadlineStartsAtFirstAttempt(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "queued.shop.example.com")
	env.DNS.SetCNAME("queued.shop.example.com", rec.TargetCNAME)
	env.StopEngine()
	if _, _, err := env.Store.Mutate(rec.ID, func(r *store.Record) (store.Op, error) {
		r.Status = store.StatusIssuing
		r.IssuingSince = env.Clock.Now().Add(-2 * time.Hour) // twice the issue timeout
		r.Checks = 0
		r.NextCheckAt = env.Clock.Now()
		return store.OpSave, nil
	}); err != nil {
		t.Fatal(err)
	}
	env.StartEngine(t)
	env.WaitStatus(t, rec.ID, store.StatusValid)
}
