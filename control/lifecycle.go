package control

import (
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// deleteOp is what DELETE does to a record in each status (CONTRACT §4):
// a record that holds nothing yet goes at once; one that may hold a
// certificate or be served goes to deleting, due at once, and the engine
// finishes the job; one already deleting stays as it is.
func deleteOp(r *store.Record, now time.Time) store.Op {
	switch r.Status {
	case store.StatusWaiting, store.StatusErroring, store.StatusTimedOut:
		// A certificate such a record may still hold (one served before it
		// failed) is dropped by the engine when it sees the deletion.
		return store.OpDelete
	case store.StatusDeleting:
		return store.OpKeep
	}
	r.Status = store.StatusDeleting
	r.Message = nil
	r.NextCheckAt = now
	r.Checks = 0
	return store.OpSave
}

// canRetry reports whether a retry is allowed in the status: only a record
// that has given up (erroring, timed_out) can start again.
func canRetry(s store.Status) bool {
	return s == store.StatusErroring || s == store.StatusTimedOut
}

// retry starts a record's provisioning again: waiting, no message, the DNS
// wait deadline counting from now and the first check due at once.
func retry(r *store.Record, now time.Time) {
	r.Status = store.StatusWaiting
	r.Message = nil
	r.WaitingSince = now
	r.IssuingSince = time.Time{}
	r.NextCheckAt = now
	r.Checks = 0
}
