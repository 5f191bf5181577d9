package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// What the lifecycle engine keeps about its dealings with the ACME CA, so
// that a restart forgets none of it, and one tenant's dealings cannot be
// made to spend another's by restarting the server:
//
//   - acme_orders: every certificate order placed, by organization and
//     time, for the per-organization order budget. Entries older than the
//     budget's window are dropped by the next order of that organization.
//   - ca_holds: the CA's rate limits still in force: on the whole ACME
//     account, on one name, or on one registered domain.
//   - released_domains: domains whose last record was deleted, and when,
//     so a certificate kept for the retention is dropped on time. A create
//     for the domain removes its entry in the same transaction.

// CAHold is a rate limit the CA put on certificate orders.
type CAHold struct {
	// Scope is what the limit holds: "account" (every order), "name" (the
	// one domain in Subject) or "registered_domain" (the names under
	// Subject).
	Scope   string `json:"scope"`
	Subject string `json:"subject,omitempty"`
	// Until is when orders it holds may be tried again.
	Until time.Time `json:"until"`
	// FromCA is set when Until is the CA's own time (perhaps capped, then
	// Capped is set); otherwise it is an estimate.
	FromCA bool `json:"from_ca,omitempty"`
	Capped bool `json:"capped,omitempty"`
	// Reason is what the CA said, and RecordID the record whose order met
	// the limit: only that record's message may quote the CA.
	Reason   string `json:"reason,omitempty"`
	RecordID string `json:"record_id,omitempty"`
}

func caHoldKey(scope, subject string) []byte { return []byte(scope + "/" + subject) }

// PutCAHold stores h, replacing the hold of the same scope and subject,
// and drops every stored hold that has ended by now.
func (s *Store) PutCAHold(h CAHold, now time.Time) error {
	err := s.update(func(tx *txn) error {
		b := tx.Bucket(bucketCAHolds)
		var ended [][]byte
		if err := b.ForEach(func(k, v []byte) error {
			var old CAHold
			if json.Unmarshal(v, &old) != nil || !old.Until.After(now) {
				ended = append(ended, bytes.Clone(k))
			}
			return nil
		}); err != nil {
			return err
		}
		for _, k := range ended {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if !h.Until.After(now) {
			return b.Delete(caHoldKey(h.Scope, h.Subject))
		}
		return putJSON(b, caHoldKey(h.Scope, h.Subject), h)
	})
	if err != nil {
		return fmt.Errorf("store: putting CA hold %s %s: %w", h.Scope, h.Subject, err)
	}
	return nil
}

// CAHolds returns the stored holds that have not ended by now.
func (s *Store) CAHolds(now time.Time) ([]CAHold, error) {
	var holds []CAHold
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketCAHolds).ForEach(func(k, v []byte) error {
			var h CAHold
			if err := json.Unmarshal(v, &h); err != nil {
				return fmt.Errorf("store: decoding CA hold %s: %w", k, err)
			}
			if h.Until.After(now) {
				holds = append(holds, h)
			}
			return nil
		})
	})
	return holds, err
}

// SpentOrder names one order recorded by SpendOrder.
type SpentOrder struct{ key []byte }

// orderPrefix starts the acme_orders keys of an organization: its id and
// a zero byte, then the order's time (Unix nanoseconds, big-endian) and a
// sequence number.
func orderPrefix(orgID string) []byte { return append([]byte(orgID), 0) }

// SpendOrder records an order for the organization at `at` unless the
// organization has already placed limit orders after at-window: then it
// records nothing and returns ok false and the time the oldest of those
// leaves the window, when the next order may be placed. Either way it
// drops the organization's orders older than the window. The check and
// the record are one transaction, so concurrent orders cannot overspend.
func (s *Store) SpendOrder(orgID, domain string, at time.Time, window time.Duration, limit int) (spent SpentOrder, ok bool, next time.Time, err error) {
	err = s.update(func(tx *txn) error {
		spent, ok, next = SpentOrder{}, false, time.Time{} // fn may run more than once
		b := tx.Bucket(bucketACMEOrders)
		prefix := orderPrefix(orgID)
		start := at.Add(-window).UnixNano()
		var old [][]byte
		var inWindow []int64
		c := b.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if len(k) != len(prefix)+16 {
				continue
			}
			t := int64(binary.BigEndian.Uint64(k[len(prefix):]))
			if t <= start {
				old = append(old, bytes.Clone(k))
				continue
			}
			inWindow = append(inWindow, t)
		}
		for _, k := range old {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		if len(inWindow) >= limit {
			// Keys sort by time: the order whose leaving makes room.
			next = time.Unix(0, inWindow[len(inWindow)-max(limit, 1)]).Add(window).UTC()
			return nil
		}
		seq, err := b.NextSequence()
		if err != nil {
			return err
		}
		key := append(append(prefix, u64(uint64(at.UnixNano()))...), u64(seq)...)
		if err := b.Put(key, []byte(domain)); err != nil {
			return err
		}
		spent, ok = SpentOrder{key: key}, true
		return nil
	})
	if err != nil {
		return SpentOrder{}, false, time.Time{}, fmt.Errorf("store: recording an order of organization %s: %w", orgID, err)
	}
	return spent, ok, next, nil
}

// RefundOrder removes an order recorded by SpendOrder: one the CA never
// received.
func (s *Store) RefundOrder(o SpentOrder) error {
	if o.key == nil {
		return nil
	}
	err := s.update(func(tx *txn) error { return tx.Bucket(bucketACMEOrders).Delete(o.key) })
	if err != nil {
		return fmt.Errorf("store: refunding an order: %w", err)
	}
	return nil
}

// ReleasedDomains returns the domains whose last record was deleted (or
// that MarkReleased marked), each with the time it was released.
func (s *Store) ReleasedDomains() (map[string]time.Time, error) {
	out := map[string]time.Time{}
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketReleasedDomains).ForEach(func(k, v []byte) error {
			if len(v) == 8 {
				out[string(k)] = time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC()
			}
			return nil
		})
	})
	return out, err
}

// MarkReleased records that domain was released at `at`, unless a record
// holds it or it is marked already.
func (s *Store) MarkReleased(domain string, at time.Time) error {
	err := s.update(func(tx *txn) error {
		if tx.Bucket(bucketRecordsByDomain).Get([]byte(domain)) != nil {
			return nil
		}
		b := tx.Bucket(bucketReleasedDomains)
		if b.Get([]byte(domain)) != nil {
			return nil
		}
		return b.Put([]byte(domain), u64(uint64(at.UnixNano())))
	})
	if err != nil {
		return fmt.Errorf("store: marking %s released: %w", domain, err)
	}
	return nil
}

// ForgetReleased removes domain's mark if it still says `at` (a later
// release keeps its own).
func (s *Store) ForgetReleased(domain string, at time.Time) error {
	err := s.update(func(tx *txn) error {
		b := tx.Bucket(bucketReleasedDomains)
		if v := b.Get([]byte(domain)); len(v) == 8 && int64(binary.BigEndian.Uint64(v)) == at.UnixNano() {
			return b.Delete([]byte(domain))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: forgetting release of %s: %w", domain, err)
	}
	return nil
}
