package store

import (
	"log/slog"
	"time"
)

// TimeFormat is how the APIs show times: RFC 3339 in UTC with
// microseconds, as PostHog does.
const TimeFormat = "2006-01-02T15:04:05.000000Z07:00"

// ApplyDelete does to r what a DELETE asks for in r's status and returns
// the store's operation: a record that holds nothing yet goes at once;
// one that may hold a certificate or be served goes to deleting, due at
// once, and the lifecycle engine finishes the job; one already deleting
// stays as it is.
func (r *Record) ApplyDelete(now time.Time) Op {
	switch r.Status {
	case StatusWaiting, StatusErroring, StatusTimedOut:
		// A certificate such a record may still hold (one served before it
		// failed) is dropped by the engine when it sees the deletion.
		return OpDelete
	case StatusDeleting:
		return OpKeep
	}
	r.Status = StatusDeleting
	r.Message = nil
	r.NextCheckAt = now
	r.Checks = 0
	return OpSave
}

// CanRetry reports whether a retry is allowed in the status: only a record
// that has given up (erroring, timed_out) can start again.
func (s Status) CanRetry() bool {
	return s == StatusErroring || s == StatusTimedOut
}

// Retry starts r's provisioning again: waiting, no message, the DNS wait
// deadline counting from now and the first check due at once.
func (r *Record) Retry(now time.Time) {
	r.Status = StatusWaiting
	r.Message = nil
	r.WaitingSince = now
	r.IssuingSince = time.Time{}
	r.NextCheckAt = now
	r.Checks = 0
}

// LogTransition logs one status change of a record, the same line
// whichever stage made it.
func LogTransition(log *slog.Logger, before, after Record) {
	msg := ""
	if after.Message != nil {
		msg = *after.Message
	}
	log.Info("record status changed", "record_id", after.ID, "org_id", after.OrgID, "domain", after.Domain,
		"from", string(before.Status), "to", string(after.Status), "message", msg)
}

// LogDeleted logs a record's removal from the store.
func LogDeleted(log *slog.Logger, r Record) {
	log.Info("record deleted", "record_id", r.ID, "org_id", r.OrgID, "domain", r.Domain,
		"from", string(r.Status), "to", "gone")
}
