package store_test

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

const maxHooks = 5

func mustWebhook(t *testing.T, s *store.Store, orgID string, events ...string) store.Webhook {
	t.Helper()
	if len(events) == 0 {
		events = store.EventTypes
	}
	w, err := s.CreateWebhook(store.Webhook{OrgID: orgID, URL: "https://hooks.example.com/" + orgID, Events: events, Secret: "whsec_c2VjcmV0"}, maxHooks)
	if err != nil {
		t.Fatalf("CreateWebhook: %v", err)
	}
	return w
}

// due returns every queued delivery due by the far future, earliest
// webhook first, one per webhook.
func due(t *testing.T, s *store.Store) []store.Outbound {
	t.Helper()
	out, err := s.DueDeliveries(time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), 1000, nil)
	if err != nil {
		t.Fatalf("DueDeliveries: %v", err)
	}
	return out
}

// drain finishes every queued delivery as delivered and returns the
// events in the order they were taken.
func drain(t *testing.T, s *store.Store) []store.Outbound {
	t.Helper()
	var all []store.Outbound
	for range 1000 {
		batch := due(t, s)
		if len(batch) == 0 {
			return all
		}
		for _, o := range batch {
			if _, _, _, err := s.FinishDelivery(o.Delivery.WebhookID, o.Delivery.Seq, func(*store.Webhook, *store.Delivery) store.DeliveryOp {
				return store.DeliveryDone
			}); err != nil {
				t.Fatalf("FinishDelivery: %v", err)
			}
			all = append(all, o)
		}
	}
	t.Fatal("the outbox does not drain")
	return nil
}

func queued(t *testing.T, s *store.Store) int {
	t.Helper()
	n, _, err := s.OutboxStats()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestRecordChangesQueueEvents: create, a status change and a delete each
// queue their event, in the commit that made the change, for every
// webhook of the organization that takes the type and no other; a save
// that keeps the status queues nothing.
func TestRecordChangesQueueEvents(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org, other := mustOrg(t, s, "acme", nil), mustOrg(t, s, "other", nil)
	all := mustWebhook(t, s, org.ID)
	onlyDeleted := mustWebhook(t, s, org.ID, store.EventRecordDeleted)
	otherHook := mustWebhook(t, s, other.ID)

	r := mustRecord(t, s, org.ID, "e.example.com")
	got := drain(t, s)
	if len(got) != 1 || got[0].Webhook.ID != all.ID || got[0].Event.Type != store.EventRecordCreated {
		t.Fatalf("after create: %+v, want one proxy_record.created to %s", got, all.ID)
	}
	if ev := got[0].Event; ev.Record == nil || ev.Record.ID != r.ID || !ev.Timestamp.Equal(r.CreatedAt) || ev.OrgID != org.ID {
		t.Errorf("created event %+v does not carry the record as created", ev)
	}

	msg := "only a message"
	if _, _, err := s.Mutate(r.ID, func(n *store.Record) (store.Op, error) { n.Message = &msg; return store.OpSave, nil }); err != nil {
		t.Fatal(err)
	}
	if n := queued(t, s); n != 0 {
		t.Errorf("a save that keeps the status queued %d deliveries", n)
	}

	after, _, err := s.Mutate(r.ID, func(n *store.Record) (store.Op, error) { n.Status = store.StatusIssuing; return store.OpSave, nil })
	if err != nil {
		t.Fatal(err)
	}
	got = drain(t, s)
	if len(got) != 1 || got[0].Event.Type != store.EventRecordStatusChanged || got[0].Webhook.ID != all.ID {
		t.Fatalf("after a status change: %+v", got)
	}
	if ev := got[0].Event; ev.PreviousStatus != store.StatusWaiting || ev.Record.Status != store.StatusIssuing || !ev.Timestamp.Equal(after.UpdatedAt) {
		t.Errorf("status_changed event: previous %q, record status %q, time %v; want waiting, issuing, %v",
			ev.PreviousStatus, ev.Record.Status, ev.Timestamp, after.UpdatedAt)
	}

	// A callback that fails rolls back, event and all.
	if _, _, err := s.Mutate(r.ID, func(n *store.Record) (store.Op, error) {
		n.Status = store.StatusValid
		return store.OpSave, errors.New("refused")
	}); err == nil {
		t.Fatal("Mutate with a failing callback succeeded")
	}
	if n := queued(t, s); n != 0 {
		t.Errorf("a rolled-back change queued %d deliveries", n)
	}

	if _, _, err := s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	got = drain(t, s)
	var to []string
	for _, o := range got {
		if o.Event.Type != store.EventRecordDeleted || o.Event.Record.ID != r.ID || o.Event.Record.Status != store.StatusIssuing {
			t.Errorf("after delete: %+v", o.Event)
		}
		to = append(to, o.Webhook.ID)
	}
	slices.Sort(to)
	want := []string{all.ID, onlyDeleted.ID}
	slices.Sort(want)
	if !slices.Equal(to, want) {
		t.Errorf("deleted went to %v, want %v (never to %s of another org)", to, want, otherHook.ID)
	}
	// Both deliveries share one event, removed with the last of them.
	if got[0].Event.ID != got[1].Event.ID {
		t.Errorf("one change made two events: %s, %s", got[0].Event.ID, got[1].Event.ID)
	}
}

// TestDisabledWebhookGetsNothing: a disabled webhook is queued no new
// delivery, and a ping to it is refused.
func TestDisabledWebhookGetsNothing(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	w := mustWebhook(t, s, org.ID)
	now := time.Now()
	if _, err := s.UpdateWebhook(org.ID, w.ID, func(h *store.Webhook) error { h.DisabledAt = &now; return nil }); err != nil {
		t.Fatal(err)
	}
	mustRecord(t, s, org.ID, "e.example.com")
	if n := queued(t, s); n != 0 {
		t.Errorf("a disabled webhook got %d deliveries", n)
	}
	if _, err := s.EnqueuePing(org.ID, w.ID); !errors.Is(err, store.ErrWebhookDisabled) {
		t.Errorf("ping of a disabled webhook: %v, want ErrWebhookDisabled", err)
	}
}

func TestWebhookLimitAndOwnership(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org, other := mustOrg(t, s, "acme", nil), mustOrg(t, s, "other", nil)
	var hooks []store.Webhook
	for range maxHooks {
		hooks = append(hooks, mustWebhook(t, s, org.ID))
	}
	if _, err := s.CreateWebhook(store.Webhook{OrgID: org.ID, URL: "https://x.example.com/", Events: store.EventTypes}, maxHooks); !errors.Is(err, store.ErrTooManyWebhooks) {
		t.Errorf("sixth webhook: %v, want ErrTooManyWebhooks", err)
	}
	// Another organization's limit is its own.
	mustWebhook(t, s, other.ID)
	if _, err := s.CreateWebhook(store.Webhook{OrgID: store.NewID(), URL: "https://x.example.com/"}, maxHooks); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("webhook of a missing organization: %v, want ErrNotFound", err)
	}
	list, err := s.OrgWebhooks(org.ID)
	if err != nil || len(list) != maxHooks {
		t.Fatalf("OrgWebhooks = %d, %v", len(list), err)
	}
	for i := range list {
		if list[i].ID != hooks[i].ID {
			t.Errorf("OrgWebhooks[%d] = %s, want %s (oldest first)", i, list[i].ID, hooks[i].ID)
		}
	}

	// Another organization's webhook is not found, whatever the method.
	w := hooks[0]
	if err := s.DeleteWebhook(other.ID, w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeleteWebhook from another org: %v", err)
	}
	if _, err := s.UpdateWebhook(other.ID, w.ID, func(*store.Webhook) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("UpdateWebhook from another org: %v", err)
	}
	if _, err := s.EnqueuePing(other.ID, w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("EnqueuePing from another org: %v", err)
	}
	if _, err := s.Webhook("../" + w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Webhook(malformed id): %v", err)
	}

	// Deleting frees a place and drops what was queued for it.
	mustRecord(t, s, org.ID, "e.example.com")
	if n := queued(t, s); n != maxHooks {
		t.Fatalf("queued %d, want %d", n, maxHooks)
	}
	if err := s.DeleteWebhook(org.ID, w.ID); err != nil {
		t.Fatal(err)
	}
	if n := queued(t, s); n != maxHooks-1 {
		t.Errorf("after deleting a webhook: queued %d, want %d", n, maxHooks-1)
	}
	if _, err := s.Webhook(w.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted webhook: %v", err)
	}
	mustWebhook(t, s, org.ID)
}

// TestDueDeliveriesOnePerWebhook: a webhook with many deliveries due
// offers only its earliest, so a worker sending one at a time per webhook
// finds another webhook's delivery at once however many the first has
// queued; skip passes over a busy webhook at the cost of one entry.
func TestDueDeliveriesOnePerWebhook(t *testing.T) {
	t.Parallel()
	c := newClock()
	s := openAt(t, filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: c.Now})
	slow, quiet := mustOrg(t, s, "slow", intp(1000)), mustOrg(t, s, "quiet", nil)
	slowHook := mustWebhook(t, s, slow.ID)
	quietHook := mustWebhook(t, s, quiet.ID)
	for i := range 200 {
		mustRecord(t, s, slow.ID, fmt.Sprintf("e%d.example.com", i))
	}
	r := mustRecord(t, s, quiet.ID, "q.example.com")

	got := due(t, s)
	if len(got) != 2 {
		t.Fatalf("DueDeliveries offered %d, want one per webhook (2)", len(got))
	}
	if got[0].Webhook.ID != slowHook.ID || got[1].Webhook.ID != quietHook.ID {
		t.Errorf("order %s, %s; want the slow org's earliest first", got[0].Webhook.ID, got[1].Webhook.ID)
	}
	var asked []string
	got, err := s.DueDeliveries(c.Now(), 10, func(hook, org string) bool {
		asked = append(asked, hook)
		return hook == slowHook.ID
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Event.Record.ID != r.ID || got[0].Delivery.OrgID != quiet.ID {
		t.Errorf("with the slow webhook busy: %+v", got)
	}
	if len(asked) != 2 {
		t.Errorf("skip was asked %d times, want 2 (once per queued webhook)", len(asked))
	}
	if next, ok, err := s.NextDeliveryDue(func(hook, _ string) bool { return hook == slowHook.ID }); err != nil || !ok {
		t.Errorf("NextDeliveryDue = %v, %t, %v", next, ok, err)
	}
	if n := queued(t, s); n != 201 {
		t.Errorf("queued %d, want 201", n)
	}
}

// TestFinishDelivery: a retry moves the delivery to its new time (not
// offered before it, offered after), keeps its event, and saves what fn
// wrote on the webhook; done removes the delivery and its event; disable
// drops every delivery of the webhook and no other's.
func TestFinishDelivery(t *testing.T) {
	t.Parallel()
	c := newClock()
	s := openAt(t, filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: c.Now})
	org := mustOrg(t, s, "acme", intp(100))
	a, b := mustWebhook(t, s, org.ID), mustWebhook(t, s, org.ID)
	mustRecord(t, s, org.ID, "one.example.com")
	mustRecord(t, s, org.ID, "two.example.com")

	first := due(t, s)
	if len(first) != 2 {
		t.Fatalf("due: %d", len(first))
	}
	o := first[0]
	later := c.Now().Add(time.Hour)
	failed := store.DeliveryResult{At: c.Now(), StatusCode: 500, Error: "receiver answered 500"}
	w, op, _, err := s.FinishDelivery(o.Webhook.ID, o.Delivery.Seq, func(w *store.Webhook, d *store.Delivery) store.DeliveryOp {
		d.Attempts++
		d.NextAt = later
		w.LastDelivery = &failed
		w.FailingSince = &failed.At
		w.ID = "changed" // identity is the store's
		return store.DeliveryRetry
	})
	if err != nil || op != store.DeliveryRetry {
		t.Fatalf("FinishDelivery: %v, %v", op, err)
	}
	if w.ID != o.Webhook.ID || w.LastDelivery == nil || w.LastDelivery.StatusCode != 500 {
		t.Errorf("saved webhook %+v", w)
	}
	// The webhook's other delivery (created later, due now) comes next.
	x, y := o.Webhook.ID, a.ID
	if x == a.ID {
		y = b.ID
	}
	got, _ := s.DueDeliveries(c.Now(), 10, nil)
	var next *store.Outbound
	for i := range got {
		if got[i].Webhook.ID == x {
			next = &got[i]
		}
	}
	if len(got) != 2 || next == nil || next.Delivery.Seq == o.Delivery.Seq || next.Event.Record.Domain != "two.example.com" {
		t.Fatalf("after retry: %+v", got)
	}
	// Disabling x drops both of its deliveries and leaves y's.
	_, op, dropped, err := s.FinishDelivery(x, next.Delivery.Seq, func(w *store.Webhook, d *store.Delivery) store.DeliveryOp {
		return store.DeliveryDisable
	})
	if err != nil || op != store.DeliveryDisable || dropped != 2 {
		t.Fatalf("disable: op %v, dropped %d, %v; want 2 dropped", op, dropped, err)
	}
	if hook, _ := s.Webhook(x); hook.DisabledAt == nil {
		t.Error("disable left DisabledAt nil")
	}
	rest := drain(t, s)
	if len(rest) != 2 {
		t.Fatalf("left %d deliveries, want the other webhook's 2", len(rest))
	}
	for _, o := range rest {
		if o.Webhook.ID != y {
			t.Errorf("a delivery of the disabled webhook survived: %+v", o.Delivery)
		}
	}
	if _, _, _, err := s.FinishDelivery(y, rest[0].Delivery.Seq, func(*store.Webhook, *store.Delivery) store.DeliveryOp {
		return store.DeliveryDone
	}); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("finishing a finished delivery: %v, want ErrNotFound", err)
	}
}

// TestRetryDueLater: a delivery put off is not offered before its time.
func TestRetryDueLater(t *testing.T) {
	t.Parallel()
	c := newClock()
	s := openAt(t, filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: c.Now})
	org := mustOrg(t, s, "acme", nil)
	mustWebhook(t, s, org.ID)
	mustRecord(t, s, org.ID, "one.example.com")
	o := due(t, s)[0]
	at := c.Now().Add(5 * time.Second)
	if _, _, _, err := s.FinishDelivery(o.Webhook.ID, o.Delivery.Seq, func(_ *store.Webhook, d *store.Delivery) store.DeliveryOp {
		d.NextAt = at
		return store.DeliveryRetry
	}); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.DueDeliveries(at.Add(-time.Nanosecond), 10, nil); len(got) != 0 {
		t.Errorf("offered before its time: %+v", got)
	}
	if got, _ := s.DueDeliveries(at, 10, nil); len(got) != 1 || got[0].Event.ID != o.Event.ID {
		t.Errorf("not offered at its time: %+v", got)
	}
	if next, ok, _ := s.NextDeliveryDue(nil); !ok || !next.Equal(at) {
		t.Errorf("NextDeliveryDue = %v, %t; want %v", next, ok, at)
	}
	if _, earliest, _ := s.OutboxStats(); !earliest.Equal(at) {
		t.Errorf("OutboxStats earliest = %v, want %v", earliest, at)
	}
}

// TestOutboxSurvivesReopen: deliveries and their schedule are in the
// file: a store opened afresh offers the same delivery, with the same
// event id, at the same time.
func TestOutboxSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s, err := openRaw(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	org := mustOrg(t, s, "acme", nil)
	mustWebhook(t, s, org.ID)
	mustRecord(t, s, org.ID, "one.example.com")
	before := due(t, s)
	s.Close()

	again := openAt(t, path, store.Options{})
	after := due(t, again)
	if len(before) != 1 || len(after) != 1 || after[0].Event.ID != before[0].Event.ID ||
		!after[0].Delivery.NextAt.Equal(before[0].Delivery.NextAt) {
		t.Errorf("before reopen %+v, after %+v", before, after)
	}
}

// TestPingQueuesForOneWebhook: a ping goes to the webhook asked for, even
// one that takes no ping events, and to no other.
func TestPingQueuesForOneWebhook(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	w := mustWebhook(t, s, org.ID, store.EventRecordDeleted)
	mustWebhook(t, s, org.ID)
	ev, err := s.EnqueuePing(org.ID, w.ID)
	if err != nil {
		t.Fatal(err)
	}
	got := drain(t, s)
	if len(got) != 1 || got[0].Webhook.ID != w.ID || got[0].Event.ID != ev.ID || got[0].Event.Type != store.EventWebhookPing || got[0].Event.WebhookID != w.ID {
		t.Errorf("ping: %+v", got)
	}
}

// TestOutboxConcurrentWriters: record changes from many goroutines and a
// worker finishing deliveries at the same time leave the outbox's indexes
// consistent (checked when the test ends) and every event delivered.
func TestOutboxConcurrentWriters(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", intp(1000))
	for range 3 {
		mustWebhook(t, s, org.ID)
	}
	done := make(chan struct{})
	const writers, each = 8, 10
	go func() {
		defer close(done)
		errs := make(chan error, writers)
		for g := range writers {
			go func() {
				for i := range each {
					r, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("d%d-%d.example.com", g, i), Status: store.StatusWaiting}, 0)
					if err == nil {
						_, _, err = s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil })
					}
					if err != nil {
						errs <- err
						return
					}
				}
				errs <- nil
			}()
		}
		for range writers {
			if err := <-errs; err != nil {
				t.Error(err)
			}
		}
	}()
	delivered := 0
	for finished := false; !finished; {
		select {
		case <-done:
			finished = true
		default:
		}
		delivered += len(drain(t, s))
	}
	delivered += len(drain(t, s))
	if want := writers * each * 2 * 3; delivered != want {
		t.Errorf("delivered %d, want %d", delivered, want)
	}
	if err := s.CheckOutbox(); err != nil {
		t.Error(err)
	}
}
