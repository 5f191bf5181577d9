package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Webhooks and their outbox.
//
// A change to a proxy record that an organization's webhooks listen for
// (created, status changed, deleted) writes, in the transaction that makes
// the change, one event and one delivery per webhook that wants it. So an
// event exists if and only if its change was committed: nothing is lost
// between the commit and a queue, and nothing is sent for a change that
// was rolled back. A delivery stays until the worker records its outcome
// (FinishDelivery); a process killed in the middle of a send finds the
// delivery still due when it starts again and sends it again, with the
// same event id. Delivery is at least once.
//
// Deliveries are kept per webhook, ordered by when they are next due
// (webhook_delivery_due), and the webhooks with something queued are kept
// ordered by their earliest due delivery (webhook_hook_due). A worker that
// sends one delivery per webhook at a time therefore finds the next work
// by walking webhook_hook_due, skipping only the webhooks it is busy with,
// however many deliveries a slow or dead receiver has piled up.

// Event types (CONTRACT §10).
const (
	EventRecordCreated       = "proxy_record.created"
	EventRecordStatusChanged = "proxy_record.status_changed"
	EventRecordDeleted       = "proxy_record.deleted"
	EventWebhookPing         = "webhook.ping"
)

// EventTypes lists every event type, in the order the API shows them.
var EventTypes = []string{EventRecordCreated, EventRecordStatusChanged, EventRecordDeleted, EventWebhookPing}

// Errors of the webhook methods.
var (
	// ErrTooManyWebhooks: the organization already has its maximum of
	// webhooks.
	ErrTooManyWebhooks = errors.New("store: organization already has its maximum of webhooks")
	// ErrWebhookDisabled: the webhook is disabled and is sent nothing.
	ErrWebhookDisabled = errors.New("store: webhook is disabled")
)

// Webhook is an organization's receiver of status notifications.
type Webhook struct {
	ID     string   `json:"id"`
	OrgID  string   `json:"org_id"`
	URL    string   `json:"url"`
	Events []string `json:"events"`
	// Secret is "whsec_" followed by the base64 of the signing key.
	Secret    string    `json:"secret"`
	CreatedAt time.Time `json:"created_at"`
	// DisabledAt is when the webhook was disabled; a disabled webhook gets
	// no new deliveries and its queued ones are dropped.
	DisabledAt *time.Time `json:"disabled_at"`
	// DisabledReason says why, for the operator.
	DisabledReason string `json:"disabled_reason,omitempty"`
	// LastDelivery is the outcome of the last attempt, if any.
	LastDelivery *DeliveryResult `json:"last_delivery"`
	// FailingSince is the time of the first failed attempt since the last
	// success (or since creation); nil while deliveries succeed.
	FailingSince *time.Time `json:"failing_since,omitempty"`
	// Seq orders an organization's webhooks by creation.
	Seq uint64 `json:"seq"`
}

// Wants reports whether the webhook takes events of the type.
func (w *Webhook) Wants(eventType string) bool {
	return w.DisabledAt == nil && slices.Contains(w.Events, eventType)
}

// DeliveryResult is the outcome of one delivery attempt.
type DeliveryResult struct {
	At time.Time `json:"at"`
	// StatusCode is the receiver's HTTP status, or 0 when none was had.
	StatusCode int `json:"status_code,omitempty"`
	// Error says, in our words, why the attempt failed; empty on success.
	Error string `json:"error,omitempty"`
}

// Event is one notification, stored once however many webhooks it goes
// to.
type Event struct {
	ID        string    `json:"id"`
	OrgID     string    `json:"org_id"`
	Type      string    `json:"type"`
	Timestamp time.Time `json:"timestamp"`
	// Record is the record as the change committed it (before the delete,
	// for a deletion); nil for a ping.
	Record *Record `json:"record,omitempty"`
	// PreviousStatus is the status before a status change.
	PreviousStatus Status `json:"previous_status,omitempty"`
	// WebhookID names the webhook a ping was asked for.
	WebhookID string `json:"webhook_id,omitempty"`
	// Pending counts the deliveries of the event not yet finished; the
	// event is removed with its last one.
	Pending int `json:"pending"`
}

// Delivery is one event on its way to one webhook.
type Delivery struct {
	WebhookID string `json:"webhook_id"`
	OrgID     string `json:"org_id"`
	EventID   string `json:"event_id"`
	// Seq identifies the delivery among its webhook's.
	Seq uint64 `json:"seq"`
	// Attempts counts the attempts made so far.
	Attempts int `json:"attempts"`
	// NextAt is when the delivery is next due.
	NextAt    time.Time `json:"next_at"`
	CreatedAt time.Time `json:"created_at"`
}

// Outbound is a due delivery with what sending it needs: its event and its
// webhook as they are now (the current secret signs it).
type Outbound struct {
	Delivery Delivery
	Event    Event
	Webhook  Webhook
}

// DeliveryOp is what FinishDelivery does once an attempt is over.
type DeliveryOp int

const (
	// DeliveryDone removes the delivery: delivered, or given up.
	DeliveryDone DeliveryOp = iota
	// DeliveryRetry keeps the delivery, due again at its NextAt.
	DeliveryRetry
	// DeliveryDisable disables the webhook (the callback sets DisabledAt)
	// and drops every delivery queued for it.
	DeliveryDisable
)

var (
	bucketWebhooks      = []byte("webhooks")
	bucketWebhooksByOrg = []byte("webhooks_by_org")
	bucketWebhookEvents = []byte("webhook_events")
	bucketDeliveries    = []byte("webhook_deliveries")
	bucketDeliveryDue   = []byte("webhook_delivery_due")
	bucketHookDue       = []byte("webhook_hook_due")
	bucketHookHead      = []byte("webhook_hook_head")
	webhookBuckets      = [][]byte{bucketWebhooks, bucketWebhooksByOrg, bucketWebhookEvents, bucketDeliveries, bucketDeliveryDue, bucketHookDue, bucketHookHead}
	keyDeliveriesQueued = []byte("webhook_deliveries_queued")
)

// Keys. Webhook ids are UUIDs, all 36 bytes, so a webhook's keys are one
// contiguous range that no other webhook's share.
//
//	webhooks_by_org       org id + u64 seq            → webhook id
//	webhook_deliveries    webhook id + u64 seq        → Delivery
//	webhook_delivery_due  webhook id + u64 due + u64 seq
//	webhook_hook_due      u64 due + webhook id        → org id
//	webhook_hook_head     webhook id                  → u64 due + org id
//
// Due times are Unix nanoseconds, big-endian, so keys sort by time.

func deliveryKey(hookID string, seq uint64) []byte { return append([]byte(hookID), u64(seq)...) }

func deliveryDueKey(hookID string, at time.Time, seq uint64) []byte {
	return append(append([]byte(hookID), u64(uint64(at.UnixNano()))...), u64(seq)...)
}

// checkWebhookID refuses ids that would break the fixed-length key layout.
func checkWebhookID(id string) error {
	if !IsID(id) {
		return fmt.Errorf("webhook %q: %w", id, ErrNotFound)
	}
	return nil
}

// CreateWebhook stores a new webhook for w.OrgID, filling in ID, Seq and
// CreatedAt, unless the organization already has max webhooks
// (ErrTooManyWebhooks). ErrNotFound if the organization does not exist.
func (s *Store) CreateWebhook(w Webhook, max int) (Webhook, error) {
	in := w
	err := s.update(func(tx *txn) error {
		w = in // fn may run more than once
		if tx.Bucket(bucketOrgs).Get([]byte(w.OrgID)) == nil {
			return fmt.Errorf("organization %s: %w", w.OrgID, ErrNotFound)
		}
		byOrg := tx.Bucket(bucketWebhooksByOrg)
		n := 0
		prefix := []byte(w.OrgID)
		c := byOrg.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			n++
		}
		if n >= max {
			return ErrTooManyWebhooks
		}
		hooks := tx.Bucket(bucketWebhooks)
		seq, err := hooks.NextSequence()
		if err != nil {
			return err
		}
		w.ID, w.Seq, w.CreatedAt = NewID(), seq, s.stamp()
		w.DisabledAt, w.DisabledReason, w.LastDelivery, w.FailingSince = nil, "", nil, nil
		if err := putJSON(hooks, []byte(w.ID), w); err != nil {
			return err
		}
		return byOrg.Put(append([]byte(w.OrgID), u64(seq)...), []byte(w.ID))
	})
	if err != nil {
		return Webhook{}, fmt.Errorf("store: creating webhook: %w", err)
	}
	return w, nil
}

// Webhook returns the webhook with the id, or ErrNotFound.
func (s *Store) Webhook(id string) (Webhook, error) {
	var w Webhook
	if err := checkWebhookID(id); err != nil {
		return w, err
	}
	err := s.view(func(tx *txn) error {
		return getJSON(tx.Bucket(bucketWebhooks), []byte(id), &w)
	})
	return w, err
}

// OrgWebhooks returns the organization's webhooks, oldest first.
func (s *Store) OrgWebhooks(orgID string) ([]Webhook, error) {
	hooks := []Webhook{}
	err := s.view(func(tx *txn) error {
		all := tx.Bucket(bucketWebhooks)
		prefix := []byte(orgID)
		c := tx.Bucket(bucketWebhooksByOrg).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var w Webhook
			if err := getJSON(all, v, &w); err != nil {
				return fmt.Errorf("store: indexed webhook %s: %w", v, err)
			}
			hooks = append(hooks, w)
		}
		return nil
	})
	return hooks, err
}

// WebhookWithQueue is a webhook and the number of deliveries queued for
// it, for the operator's view.
type WebhookWithQueue struct {
	Webhook
	Queued int
}

// Webhooks returns every webhook (of one organization when orgID is not
// empty), grouped by organization, oldest first, each with its number of
// queued deliveries.
func (s *Store) Webhooks(orgID string) ([]WebhookWithQueue, error) {
	out := []WebhookWithQueue{}
	err := s.view(func(tx *txn) error {
		all := tx.Bucket(bucketWebhooks)
		deliveries := tx.Bucket(bucketDeliveries).Cursor()
		prefix := []byte(orgID)
		c := tx.Bucket(bucketWebhooksByOrg).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var w Webhook
			if err := getJSON(all, v, &w); err != nil {
				return fmt.Errorf("store: indexed webhook %s: %w", v, err)
			}
			n := 0
			for dk, _ := deliveries.Seek(v); dk != nil && bytes.HasPrefix(dk, v); dk, _ = deliveries.Next() {
				n++
			}
			out = append(out, WebhookWithQueue{w, n})
		}
		return nil
	})
	return out, err
}

// UpdateWebhook applies fn to the organization's webhook and saves it; its
// identity (id, organization, creation) cannot change. If fn returns an
// error nothing is written and UpdateWebhook returns it. ErrNotFound if
// the organization has no such webhook.
func (s *Store) UpdateWebhook(orgID, id string, fn func(*Webhook) error) (Webhook, error) {
	var w Webhook
	if err := checkWebhookID(id); err != nil {
		return w, err
	}
	err := s.update(func(tx *txn) error {
		w = Webhook{} // fn may run more than once
		hooks := tx.Bucket(bucketWebhooks)
		if err := getJSON(hooks, []byte(id), &w); err != nil {
			return err
		}
		if w.OrgID != orgID {
			return ErrNotFound
		}
		before := w
		if err := fn(&w); err != nil {
			return err
		}
		w.ID, w.OrgID, w.CreatedAt, w.Seq = before.ID, before.OrgID, before.CreatedAt, before.Seq
		return putJSON(hooks, []byte(id), w)
	})
	if err != nil {
		return Webhook{}, err
	}
	return w, nil
}

// DeleteWebhook removes the organization's webhook and every delivery
// queued for it. ErrNotFound if the organization has no such webhook.
func (s *Store) DeleteWebhook(orgID, id string) error {
	if err := checkWebhookID(id); err != nil {
		return err
	}
	return s.update(func(tx *txn) error {
		hooks := tx.Bucket(bucketWebhooks)
		var w Webhook
		if err := getJSON(hooks, []byte(id), &w); err != nil {
			return err
		}
		if w.OrgID != orgID {
			return ErrNotFound
		}
		if _, err := dropDeliveriesTx(tx, id); err != nil {
			return err
		}
		if err := tx.Bucket(bucketWebhooksByOrg).Delete(append([]byte(w.OrgID), u64(w.Seq)...)); err != nil {
			return err
		}
		return hooks.Delete([]byte(id))
	})
}

// EnqueuePing queues a webhook.ping event for the organization's webhook
// alone, whatever event types it takes. ErrNotFound if the organization
// has no such webhook, ErrWebhookDisabled if it is disabled.
func (s *Store) EnqueuePing(orgID, id string) (Event, error) {
	var ev Event
	if err := checkWebhookID(id); err != nil {
		return ev, err
	}
	err := s.update(func(tx *txn) error {
		var w Webhook
		if err := getJSON(tx.Bucket(bucketWebhooks), []byte(id), &w); err != nil {
			return err
		}
		if w.OrgID != orgID {
			return ErrNotFound
		}
		if w.DisabledAt != nil {
			return ErrWebhookDisabled
		}
		ev = Event{OrgID: orgID, Type: EventWebhookPing, Timestamp: s.stamp(), WebhookID: id}
		return s.enqueueTx(tx, &ev, []Webhook{w})
	})
	if err != nil {
		return Event{}, err
	}
	return ev, nil
}

// emitTx queues an event of the type about rec for every webhook of the
// record's organization that takes it. Nothing is stored when none does.
func (s *Store) emitTx(tx *txn, eventType string, at time.Time, rec Record, previous Status) error {
	var targets []Webhook
	all := tx.Bucket(bucketWebhooks)
	prefix := []byte(rec.OrgID)
	c := tx.Bucket(bucketWebhooksByOrg).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var w Webhook
		if err := getJSON(all, v, &w); err != nil {
			return fmt.Errorf("store: indexed webhook %s: %w", v, err)
		}
		if w.Wants(eventType) {
			targets = append(targets, w)
		}
	}
	if len(targets) == 0 {
		return nil
	}
	ev := Event{OrgID: rec.OrgID, Type: eventType, Timestamp: at, Record: &rec, PreviousStatus: previous}
	return s.enqueueTx(tx, &ev, targets)
}

// enqueueTx stores ev (filling in its ID and Pending) and one delivery of
// it per webhook, due at the event's time, and wakes the worker once the
// transaction commits.
func (s *Store) enqueueTx(tx *txn, ev *Event, targets []Webhook) error {
	ev.ID = NewID()
	ev.Pending = len(targets)
	if err := putJSON(tx.Bucket(bucketWebhookEvents), []byte(ev.ID), ev); err != nil {
		return err
	}
	deliveries := tx.Bucket(bucketDeliveries)
	for _, w := range targets {
		seq, err := deliveries.NextSequence()
		if err != nil {
			return err
		}
		d := Delivery{WebhookID: w.ID, OrgID: w.OrgID, EventID: ev.ID, Seq: seq, NextAt: ev.Timestamp, CreatedAt: ev.Timestamp}
		if err := putJSON(deliveries, deliveryKey(w.ID, seq), d); err != nil {
			return err
		}
		if err := tx.Bucket(bucketDeliveryDue).Put(deliveryDueKey(w.ID, d.NextAt, seq), nil); err != nil {
			return err
		}
		if err := requeueHookTx(tx, w.ID, w.OrgID); err != nil {
			return err
		}
	}
	if err := addQueued(tx, len(targets)); err != nil {
		return err
	}
	tx.OnCommit(s.wakeOutbox)
	return nil
}

// requeueHookTx puts the webhook in webhook_hook_due at the time of its
// earliest due delivery, or takes it out when it has none.
func requeueHookTx(tx *txn, hookID, orgID string) error {
	head := tx.Bucket(bucketHookHead)
	hookDue := tx.Bucket(bucketHookDue)
	var old []byte
	if v := head.Get([]byte(hookID)); len(v) >= 8 {
		old = bytes.Clone(v[:8])
	}
	var next []byte
	prefix := []byte(hookID)
	if k, _ := tx.Bucket(bucketDeliveryDue).Cursor().Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) {
		next = bytes.Clone(k[len(prefix) : len(prefix)+8])
	}
	if bytes.Equal(old, next) {
		return nil
	}
	if old != nil {
		if err := hookDue.Delete(append(old, hookID...)); err != nil {
			return err
		}
	}
	if next == nil {
		return head.Delete([]byte(hookID))
	}
	if err := hookDue.Put(append(bytes.Clone(next), hookID...), []byte(orgID)); err != nil {
		return err
	}
	return head.Put([]byte(hookID), append(next, orgID...))
}

// removeDeliveryTx deletes a delivery and its due entry and releases its
// hold on its event. The caller requeues the webhook.
func removeDeliveryTx(tx *txn, d Delivery) error {
	if err := tx.Bucket(bucketDeliveries).Delete(deliveryKey(d.WebhookID, d.Seq)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketDeliveryDue).Delete(deliveryDueKey(d.WebhookID, d.NextAt, d.Seq)); err != nil {
		return err
	}
	if err := addQueued(tx, -1); err != nil {
		return err
	}
	events := tx.Bucket(bucketWebhookEvents)
	var ev Event
	switch err := getJSON(events, []byte(d.EventID), &ev); {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return err
	}
	if ev.Pending--; ev.Pending <= 0 {
		return events.Delete([]byte(ev.ID))
	}
	return putJSON(events, []byte(ev.ID), ev)
}

// dropDeliveriesTx removes every delivery queued for the webhook and
// returns how many there were.
func dropDeliveriesTx(tx *txn, hookID string) (int, error) {
	prefix := []byte(hookID)
	var drop []Delivery
	c := tx.Bucket(bucketDeliveries).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var d Delivery
		if err := json.Unmarshal(v, &d); err != nil {
			return 0, fmt.Errorf("store: decoding delivery %x: %w", k, err)
		}
		drop = append(drop, d)
	}
	for _, d := range drop {
		if err := removeDeliveryTx(tx, d); err != nil {
			return 0, err
		}
	}
	return len(drop), requeueHookTx(tx, hookID, "")
}

func addQueued(tx *txn, delta int) error {
	meta := tx.Bucket(bucketMeta)
	var n int64
	if v := meta.Get(keyDeliveriesQueued); len(v) == 8 {
		n = int64(binary.BigEndian.Uint64(v))
	}
	return meta.Put(keyDeliveriesQueued, u64(uint64(max(n+int64(delta), 0))))
}

// DueDeliveries returns up to limit deliveries due at now, at most one per
// webhook (each webhook's earliest), webhooks with the earliest due first.
// skip is asked once about each candidate webhook, in that order, and a
// webhook it answers true for is passed over; every candidate it answers
// false for is in the result.
func (s *Store) DueDeliveries(now time.Time, limit int, skip func(hookID, orgID string) bool) ([]Outbound, error) {
	var out []Outbound
	err := s.view(func(tx *txn) error {
		out = out[:0]
		end := uint64(now.UnixNano())
		hooks := tx.Bucket(bucketWebhooks)
		deliveries := tx.Bucket(bucketDeliveries)
		events := tx.Bucket(bucketWebhookEvents)
		due := tx.Bucket(bucketDeliveryDue)
		c := tx.Bucket(bucketHookDue).Cursor()
		for k, v := c.First(); k != nil && len(out) < limit; k, v = c.Next() {
			if binary.BigEndian.Uint64(k[:8]) > end {
				break
			}
			hookID, orgID := string(k[8:]), string(v)
			if skip != nil && skip(hookID, orgID) {
				continue
			}
			var o Outbound
			if err := getJSON(hooks, []byte(hookID), &o.Webhook); err != nil {
				return fmt.Errorf("store: queued webhook %s: %w", hookID, err)
			}
			dk, _ := due.Cursor().Seek([]byte(hookID))
			if dk == nil || !bytes.HasPrefix(dk, []byte(hookID)) {
				return fmt.Errorf("store: webhook %s is queued without a delivery", hookID)
			}
			seq := binary.BigEndian.Uint64(dk[len(hookID)+8:])
			if err := getJSON(deliveries, deliveryKey(hookID, seq), &o.Delivery); err != nil {
				return fmt.Errorf("store: delivery %d of webhook %s: %w", seq, hookID, err)
			}
			if err := getJSON(events, []byte(o.Delivery.EventID), &o.Event); err != nil {
				return fmt.Errorf("store: event %s: %w", o.Delivery.EventID, err)
			}
			out = append(out, o)
		}
		return nil
	})
	return out, err
}

// NextDeliveryDue returns the earliest time a delivery is due among the
// webhooks skip (which may be nil) answers false for, and false when none
// is queued.
func (s *Store) NextDeliveryDue(skip func(hookID, orgID string) bool) (time.Time, bool, error) {
	var (
		at    time.Time
		found bool
	)
	err := s.view(func(tx *txn) error {
		c := tx.Bucket(bucketHookDue).Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if skip != nil && skip(string(k[8:]), string(v)) {
				continue
			}
			at, found = time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).UTC(), true
			return nil
		}
		return nil
	})
	return at, found, err
}

// OutboxStats returns how many deliveries are queued and the time the
// earliest of them is due (zero when none is).
func (s *Store) OutboxStats() (queued int, earliest time.Time, err error) {
	err = s.view(func(tx *txn) error {
		if v := tx.Bucket(bucketMeta).Get(keyDeliveriesQueued); len(v) == 8 {
			queued = int(binary.BigEndian.Uint64(v))
		}
		if k, _ := tx.Bucket(bucketHookDue).Cursor().First(); k != nil {
			earliest = time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).UTC()
		}
		return nil
	})
	return queued, earliest, err
}

// FinishDelivery records the end of an attempt at the webhook's delivery
// seq: it hands the webhook and the delivery to fn, saves the webhook as
// fn leaves it (its last delivery, its failing time) and does what fn
// returns with the delivery, all in one write transaction. For
// DeliveryRetry fn sets the delivery's NextAt (and Attempts); for
// DeliveryDisable it sets the webhook's DisabledAt. fn may be called more
// than once and must depend only on what it is given. It returns the
// webhook as saved and how many deliveries were dropped with it
// (DeliveryDisable). ErrNotFound if the webhook or the delivery is gone
// (the webhook was deleted meanwhile).
func (s *Store) FinishDelivery(hookID string, seq uint64, fn func(w *Webhook, d *Delivery) DeliveryOp) (Webhook, DeliveryOp, int, error) {
	var (
		saved   Webhook
		op      DeliveryOp
		dropped int
	)
	if err := checkWebhookID(hookID); err != nil {
		return saved, op, 0, err
	}
	var fnErr error
	err := s.batch(func(tx *txn) error {
		// Batch may call this more than once; every attempt starts afresh.
		// A webhook or delivery gone is reported through fnErr and a nil
		// return, so it does not make bbolt roll back and rerun the rest
		// of the batch.
		dropped, fnErr = 0, nil
		hooks := tx.Bucket(bucketWebhooks)
		var w Webhook
		if err := getJSON(hooks, []byte(hookID), &w); err != nil {
			fnErr = err
			return nil
		}
		deliveries := tx.Bucket(bucketDeliveries)
		var d Delivery
		if err := getJSON(deliveries, deliveryKey(hookID, seq), &d); err != nil {
			fnErr = err
			return nil
		}
		wb, db := w, d
		op = fn(&w, &d)
		w.ID, w.OrgID, w.CreatedAt, w.Seq = wb.ID, wb.OrgID, wb.CreatedAt, wb.Seq
		d.WebhookID, d.OrgID, d.EventID, d.Seq, d.CreatedAt = db.WebhookID, db.OrgID, db.EventID, db.Seq, db.CreatedAt
		switch op {
		case DeliveryDone:
			if err := removeDeliveryTx(tx, db); err != nil {
				return err
			}
		case DeliveryRetry:
			due := tx.Bucket(bucketDeliveryDue)
			if err := due.Delete(deliveryDueKey(hookID, db.NextAt, seq)); err != nil {
				return err
			}
			if err := due.Put(deliveryDueKey(hookID, d.NextAt, seq), nil); err != nil {
				return err
			}
			if err := putJSON(deliveries, deliveryKey(hookID, seq), d); err != nil {
				return err
			}
		case DeliveryDisable:
			if w.DisabledAt == nil {
				now := s.stamp()
				w.DisabledAt = &now
			}
			n, err := dropDeliveriesTx(tx, hookID)
			if err != nil {
				return err
			}
			dropped = n
		default:
			return fmt.Errorf("unknown op %d", op)
		}
		if err := requeueHookTx(tx, hookID, w.OrgID); err != nil {
			return err
		}
		saved = w
		return putJSON(hooks, []byte(hookID), w)
	})
	if err == nil {
		err = fnErr
	}
	if err != nil {
		return Webhook{}, op, 0, fmt.Errorf("store: finishing delivery %d of webhook %s: %w", seq, hookID, err)
	}
	return saved, op, dropped, nil
}

// OutboxReady receives a value after a commit that queued deliveries. It
// has one consumer, the delivery worker.
func (s *Store) OutboxReady() <-chan struct{} { return s.outbox }

func (s *Store) wakeOutbox() {
	select {
	case s.outbox <- struct{}{}:
	default:
	}
}

// CheckOutbox verifies the outbox's indexes against its deliveries: every
// delivery has its due entry and no due entry lacks its delivery, each
// webhook is queued at its earliest due delivery and only then, each
// event's pending count is the number of its deliveries, and the queued
// count is the number of deliveries. Tests and the chaos checks use it.
func (s *Store) CheckOutbox() error {
	return s.view(func(tx *txn) error {
		var errs []error
		perEvent := map[string]int{}
		earliest := map[string][]byte{} // webhook id → u64 due of its earliest delivery
		n := 0
		due := tx.Bucket(bucketDeliveryDue)
		if err := tx.Bucket(bucketDeliveries).ForEach(func(k, v []byte) error {
			var d Delivery
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("decoding delivery %x: %w", k, err)
			}
			n++
			perEvent[d.EventID]++
			if !bytes.Equal(k, deliveryKey(d.WebhookID, d.Seq)) {
				errs = append(errs, fmt.Errorf("delivery %x is stored under another key", k))
			}
			dk := deliveryDueKey(d.WebhookID, d.NextAt, d.Seq)
			if due.Get(dk) == nil {
				errs = append(errs, fmt.Errorf("delivery %d of webhook %s has no due entry", d.Seq, d.WebhookID))
			}
			at := dk[36:44]
			if e, ok := earliest[d.WebhookID]; !ok || bytes.Compare(at, e) < 0 {
				earliest[d.WebhookID] = at
			}
			if tx.Bucket(bucketWebhooks).Get([]byte(d.WebhookID)) == nil {
				errs = append(errs, fmt.Errorf("delivery %d belongs to a missing webhook %s", d.Seq, d.WebhookID))
			}
			return nil
		}); err != nil {
			return err
		}
		dueN := 0
		due.ForEach(func(k, _ []byte) error {
			dueN++
			return nil
		})
		if dueN != n {
			errs = append(errs, fmt.Errorf("%d due entries for %d deliveries", dueN, n))
		}
		queued := 0
		tx.Bucket(bucketHookDue).ForEach(func(k, v []byte) error {
			queued++
			hook := string(k[8:])
			if e, ok := earliest[hook]; !ok || !bytes.Equal(e, k[:8]) {
				errs = append(errs, fmt.Errorf("webhook %s is queued at %x, its earliest delivery is at %x", hook, k[:8], e))
			}
			head := tx.Bucket(bucketHookHead).Get([]byte(hook))
			if len(head) < 8 || !bytes.Equal(head[:8], k[:8]) || string(head[8:]) != string(v) {
				errs = append(errs, fmt.Errorf("webhook %s: head %x disagrees with its queue entry", hook, head))
			}
			return nil
		})
		if queued != len(earliest) {
			errs = append(errs, fmt.Errorf("%d webhooks queued, %d have deliveries", queued, len(earliest)))
		}
		if err := tx.Bucket(bucketWebhookEvents).ForEach(func(k, v []byte) error {
			var ev Event
			if err := json.Unmarshal(v, &ev); err != nil {
				return fmt.Errorf("decoding event %s: %w", k, err)
			}
			if ev.Pending != perEvent[ev.ID] || ev.Pending == 0 {
				errs = append(errs, fmt.Errorf("event %s counts %d pending deliveries, has %d", ev.ID, ev.Pending, perEvent[ev.ID]))
			}
			delete(perEvent, ev.ID)
			return nil
		}); err != nil {
			return err
		}
		for id := range perEvent {
			errs = append(errs, fmt.Errorf("deliveries of a missing event %s", id))
		}
		var counted uint64
		if v := tx.Bucket(bucketMeta).Get(keyDeliveriesQueued); len(v) == 8 {
			counted = binary.BigEndian.Uint64(v)
		}
		if counted != uint64(n) {
			errs = append(errs, fmt.Errorf("queued count %d, deliveries %d", counted, n))
		}
		return errors.Join(errs...)
	})
}
