package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"time"
)

// orgIndexKey is the records_by_org key of a record: organization id, then
// the record's sequence number, so keys sort by creation within an
// organization.
func orgIndexKey(orgID string, seq uint64) []byte {
	return append([]byte(orgID), u64(seq)...)
}

// CreateRecord stores a new record for r.OrgID. It fills in ID, Seq,
// CreatedAt and UpdatedAt and keeps the rest of r. In the same transaction
// it enforces the organization's limit (the organization's own
// MaxProxyRecords, else defaultLimit) with a *LimitError, and the
// uniqueness of the domain across all organizations with ErrDomainTaken.
// ErrNotFound if the organization does not exist. The same transaction
// queues a proxy_record.created event for the organization's webhooks.
func (s *Store) CreateRecord(r Record, defaultLimit int) (Record, error) {
	var created Record
	var ruleErr error
	err := s.batch(func(tx *txn) error {
		// Batch may call this more than once; every attempt starts afresh.
		// A broken rule is reported through ruleErr and a nil return, so it
		// does not make bbolt roll back and rerun the rest of the batch.
		ruleErr = nil
		var org Org
		if err := getJSON(tx.Bucket(bucketOrgs), []byte(r.OrgID), &org); err != nil {
			ruleErr = fmt.Errorf("organization %s: %w", r.OrgID, err)
			return nil
		}
		limit := org.Limit(defaultLimit)
		byOrg := tx.Bucket(bucketRecordsByOrg)
		if orgCount(tx, r.OrgID) >= uint64(max(limit, 0)) {
			ruleErr = &LimitError{Max: limit}
			return nil
		}
		byDomain := tx.Bucket(bucketRecordsByDomain)
		if byDomain.Get([]byte(r.Domain)) != nil {
			ruleErr = ErrDomainTaken
			return nil
		}
		seq, err := byOrg.NextSequence()
		if err != nil {
			return err
		}
		rec := r
		rec.ID = NewID()
		rec.Seq = seq
		rec.CreatedAt = s.stamp()
		rec.UpdatedAt = rec.CreatedAt
		if err := putJSON(tx.Bucket(bucketRecords), []byte(rec.ID), rec); err != nil {
			return err
		}
		if err := byDomain.Put([]byte(rec.Domain), []byte(rec.ID)); err != nil {
			return err
		}
		if err := tx.Bucket(bucketReleasedDomains).Delete([]byte(rec.Domain)); err != nil {
			return err
		}
		if err := byOrg.Put(orgIndexKey(rec.OrgID, rec.Seq), []byte(rec.ID)); err != nil {
			return err
		}
		if err := reindexDue(tx, rec.ID, time.Time{}, rec.NextCheckAt); err != nil {
			return err
		}
		if err := addOrgCount(tx, rec.OrgID, 1); err != nil {
			return err
		}
		if err := s.emitTx(tx, EventRecordCreated, rec.CreatedAt, rec, ""); err != nil {
			return err
		}
		created = rec
		tx.OnCommit(func() { s.publish(Change{ID: rec.ID, OrgID: rec.OrgID, Domain: rec.Domain, Record: &rec}) })
		return nil
	})
	if err != nil {
		return Record{}, fmt.Errorf("store: creating record %s: %w", r.Domain, err)
	}
	if ruleErr != nil {
		return Record{}, ruleErr
	}
	return created, nil
}

// orgCount is how many records the organization holds, kept in
// org_record_counts by every create and delete, so the limit check costs
// the same whatever the organization holds.
func orgCount(tx *txn, orgID string) uint64 {
	v := tx.Bucket(bucketOrgRecordCounts).Get([]byte(orgID))
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func addOrgCount(tx *txn, orgID string, delta int) error {
	n := int64(orgCount(tx, orgID)) + int64(delta)
	counts := tx.Bucket(bucketOrgRecordCounts)
	if n <= 0 {
		return counts.Delete([]byte(orgID))
	}
	return counts.Put([]byte(orgID), u64(uint64(n)))
}

// Record returns the record with the id, or ErrNotFound.
func (s *Store) Record(id string) (Record, error) {
	var r Record
	err := s.view(func(tx *txn) error {
		return getJSON(tx.Bucket(bucketRecords), []byte(id), &r)
	})
	return r, err
}

// RecordByDomain returns the record holding the domain, or ErrNotFound.
func (s *Store) RecordByDomain(domain string) (Record, error) {
	var r Record
	err := s.view(func(tx *txn) error {
		id := tx.Bucket(bucketRecordsByDomain).Get([]byte(domain))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucketRecords), id, &r)
	})
	return r, err
}

// OrgRecords returns the organization's records, newest first. Its cost is
// proportional to the organization's records, not to the whole store.
func (s *Store) OrgRecords(orgID string) ([]Record, error) {
	records := []Record{}
	err := s.view(func(tx *txn) error {
		prefix := []byte(orgID)
		all := tx.Bucket(bucketRecords)
		c := tx.Bucket(bucketRecordsByOrg).Cursor()
		k, v := c.Seek(orgIndexKey(orgID, ^uint64(0)))
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Prev() {
			var r Record
			if err := getJSON(all, v, &r); err != nil {
				return err
			}
			records = append(records, r)
		}
		return nil
	})
	return records, err
}

// Records returns every record for which keep returns true (every record
// when keep is nil), in no particular order.
func (s *Store) Records(keep func(*Record) bool) ([]Record, error) {
	records := []Record{}
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketRecords).ForEach(func(_, v []byte) error {
			var r Record
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: decoding record: %w", err)
			}
			if keep == nil || keep(&r) {
				records = append(records, r)
			}
			return nil
		})
	})
	return records, err
}

// Op is what a Mutate callback decides to do with the record it was given.
type Op int

const (
	// OpKeep leaves the record as it was.
	OpKeep Op = iota
	// OpSave stores the changed record and bumps its UpdatedAt.
	OpSave
	// OpDelete removes the record and its index entries.
	OpDelete
)

// Mutate reads the record with the id, hands it to fn, and does what fn
// returns, all in one write transaction. If fn returns an error nothing is
// written and Mutate returns that error unchanged. fn may be called more
// than once (concurrent writes are batched) and must depend only on the
// record it is given. The record returned is the one as stored (or as it
// was, for OpKeep and OpDelete). ErrNotFound if there is no such record.
//
// A save that changes the status queues a proxy_record.status_changed
// event, and a delete a proxy_record.deleted event, for the
// organization's webhooks in the same transaction: whoever changes a
// record (the API, the engine) cannot change it without its event.
func (s *Store) Mutate(id string, fn func(r *Record) (Op, error)) (Record, Op, error) {
	var (
		result Record
		op     Op
		fnErr  error
	)
	err := s.batch(func(tx *txn) error {
		fnErr = nil
		records := tx.Bucket(bucketRecords)
		var r Record
		if err := getJSON(records, []byte(id), &r); err != nil {
			fnErr = err
			return nil
		}
		before := r
		op, fnErr = fn(&r)
		if fnErr != nil {
			return nil
		}
		// Identity fields are the store's, whatever fn did.
		r.ID, r.OrgID, r.Domain, r.Seq, r.CreatedAt = before.ID, before.OrgID, before.Domain, before.Seq, before.CreatedAt
		switch op {
		case OpKeep:
			result = before
			return nil
		case OpSave:
			r.UpdatedAt = s.stamp()
			if err := putJSON(records, []byte(id), r); err != nil {
				return err
			}
			if err := reindexDue(tx, id, before.NextCheckAt, r.NextCheckAt); err != nil {
				return err
			}
			if r.Status != before.Status {
				if err := s.emitTx(tx, EventRecordStatusChanged, r.UpdatedAt, r, before.Status); err != nil {
					return err
				}
			}
			result = r
			tx.OnCommit(func() { s.publish(Change{ID: r.ID, OrgID: r.OrgID, Domain: r.Domain, Record: &r}) })
			return nil
		case OpDelete:
			if err := records.Delete([]byte(id)); err != nil {
				return err
			}
			if err := tx.Bucket(bucketRecordsByDomain).Delete([]byte(before.Domain)); err != nil {
				return err
			}
			// The certificate retention of the domain starts now.
			if err := tx.Bucket(bucketReleasedDomains).Put([]byte(before.Domain), u64(uint64(s.stamp().UnixNano()))); err != nil {
				return err
			}
			if err := tx.Bucket(bucketRecordsByOrg).Delete(orgIndexKey(before.OrgID, before.Seq)); err != nil {
				return err
			}
			if err := reindexDue(tx, id, before.NextCheckAt, time.Time{}); err != nil {
				return err
			}
			if err := addOrgCount(tx, before.OrgID, -1); err != nil {
				return err
			}
			if err := s.emitTx(tx, EventRecordDeleted, s.stamp(), before, ""); err != nil {
				return err
			}
			result = before
			tx.OnCommit(func() { s.publish(Change{ID: before.ID, OrgID: before.OrgID, Domain: before.Domain}) })
			return nil
		}
		return fmt.Errorf("store: mutate %s: unknown op %d", id, op)
	})
	if err != nil {
		return Record{}, OpKeep, fmt.Errorf("store: updating record %s: %w", id, err)
	}
	if fnErr != nil {
		return Record{}, OpKeep, fnErr
	}
	return result, op, nil
}

// CountRecordsByStatus returns how many records are in each status; every
// status is present, zeros included.
func (s *Store) CountRecordsByStatus() (map[Status]int, error) {
	counts := make(map[Status]int, len(Statuses))
	for _, st := range Statuses {
		counts[st] = 0
	}
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketRecords).ForEach(func(_, v []byte) error {
			var r struct {
				Status Status `json:"status"`
			}
			if err := json.Unmarshal(v, &r); err != nil {
				return fmt.Errorf("store: decoding record: %w", err)
			}
			counts[r.Status]++
			return nil
		})
	})
	return counts, err
}

// dueKey is the records_due key of a record: its next check time (Unix
// nanoseconds, big-endian, so keys sort by time), then its id.
func dueKey(at time.Time, id string) []byte {
	return append(u64(uint64(at.UnixNano())), id...)
}

// reindexDue moves a record's entry in the due index from old to next; a
// zero time means no entry.
func reindexDue(tx *txn, id string, old, next time.Time) error {
	if old.Equal(next) {
		return nil
	}
	due := tx.Bucket(bucketRecordsDue)
	if !old.IsZero() {
		if err := due.Delete(dueKey(old, id)); err != nil {
			return err
		}
	}
	if next.IsZero() {
		return nil
	}
	return due.Put(dueKey(next, id), nil)
}

// DueRecords returns up to limit records whose NextCheckAt is at or before
// now, soonest first, leaving out those for which skip returns true (skip
// may be nil).
func (s *Store) DueRecords(now time.Time, limit int, skip func(id string) bool) ([]Record, error) {
	var out []Record
	err := s.view(func(tx *txn) error {
		records := tx.Bucket(bucketRecords)
		c := tx.Bucket(bucketRecordsDue).Cursor()
		end := uint64(now.UnixNano())
		for k, _ := c.First(); k != nil && len(out) < limit; k, _ = c.Next() {
			if binary.BigEndian.Uint64(k[:8]) > end {
				break
			}
			id := string(k[8:])
			if skip != nil && skip(id) {
				continue
			}
			var r Record
			if err := getJSON(records, []byte(id), &r); err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// NextDue returns the earliest NextCheckAt among records for which skip
// (which may be nil) returns false, and false when no record is scheduled.
func (s *Store) NextDue(skip func(id string) bool) (time.Time, bool, error) {
	var (
		at    time.Time
		found bool
	)
	err := s.view(func(tx *txn) error {
		c := tx.Bucket(bucketRecordsDue).Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if skip != nil && skip(string(k[8:])) {
				continue
			}
			at, found = time.Unix(0, int64(binary.BigEndian.Uint64(k[:8]))).UTC(), true
			return nil
		}
		return nil
	})
	return at, found, err
}

// DueStats returns how many records are due at now (NextCheckAt at or
// before it) and the earliest NextCheckAt among them.
func (s *Store) DueStats(now time.Time) (n int, oldest time.Time, err error) {
	err = s.view(func(tx *txn) error {
		c := tx.Bucket(bucketRecordsDue).Cursor()
		end := uint64(now.UnixNano())
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			at := binary.BigEndian.Uint64(k[:8])
			if at > end {
				break
			}
			if n == 0 {
				oldest = time.Unix(0, int64(at)).UTC()
			}
			n++
		}
		return nil
	})
	return n, oldest, err
}
