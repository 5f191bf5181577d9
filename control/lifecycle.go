package control

import "github.com/edgeproxy/edgeproxy/store"

// deleteOp is what DELETE does to a record in each status (CONTRACT §4):
// a record that holds nothing yet goes at once; one that may hold a
// certificate or be served goes to deleting, and the engine finishes the
// job; one already deleting stays as it is.
func deleteOp(r *store.Record) store.Op {
	switch r.Status {
	case store.StatusWaiting, store.StatusErroring, store.StatusTimedOut:
		return store.OpDelete
	case store.StatusDeleting:
		return store.OpKeep
	default: // issuing, valid, warning
		r.Status = store.StatusDeleting
		r.Message = nil
		return store.OpSave
	}
}

// canRetry reports whether a retry is allowed in the status: only a record
// that has given up (erroring, timed_out) can start again.
func canRetry(s store.Status) bool {
	return s == store.StatusErroring || s == store.StatusTimedOut
}
