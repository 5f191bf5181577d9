package store_test

import (
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// TestApplyDelete holds DELETE to its rules in every status: waiting,
// erroring and timed_out are removed; issuing, valid and warning go to
// deleting; deleting stays deleting.
func TestApplyDelete(t *testing.T) {
	tests := []struct {
		status     store.Status
		op         store.Op
		wantStatus store.Status
	}{
		{store.StatusWaiting, store.OpDelete, store.StatusWaiting},
		{store.StatusErroring, store.OpDelete, store.StatusErroring},
		{store.StatusTimedOut, store.OpDelete, store.StatusTimedOut},
		{store.StatusIssuing, store.OpSave, store.StatusDeleting},
		{store.StatusValid, store.OpSave, store.StatusDeleting},
		{store.StatusWarning, store.OpSave, store.StatusDeleting},
		{store.StatusDeleting, store.OpKeep, store.StatusDeleting},
	}
	if got, want := len(tests), len(store.Statuses); got != want {
		t.Fatalf("table covers %d statuses, the store has %d", got, want)
	}
	for _, tt := range tests {
		t.Run(string(tt.status), func(t *testing.T) {
			msg := "certificate renewing"
			r := &store.Record{Status: tt.status, Message: &msg}
			now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
			if got, want := r.ApplyDelete(now), tt.op; got != want {
				t.Errorf("ApplyDelete(%s) = %v, want %v", tt.status, got, want)
			}
			if got, want := r.Status, tt.wantStatus; got != want {
				t.Errorf("status after ApplyDelete(%s) = %s, want %s", tt.status, got, want)
			}
			if tt.op == store.OpSave && !r.NextCheckAt.Equal(now) {
				t.Errorf("ApplyDelete(%s) scheduled the engine at %v, want now", tt.status, r.NextCheckAt)
			}
			if tt.op == store.OpSave && r.Message != nil {
				t.Errorf("message after ApplyDelete(%s) = %q, want nil", tt.status, *r.Message)
			}
			if tt.op != store.OpSave && (r.Message == nil || *r.Message != msg) {
				t.Errorf("ApplyDelete(%s) changed the message of a record it does not save", tt.status)
			}
		})
	}
}

func TestCanRetry(t *testing.T) {
	want := map[store.Status]bool{store.StatusErroring: true, store.StatusTimedOut: true}
	for _, s := range store.Statuses {
		if got := s.CanRetry(); got != want[s] {
			t.Errorf("%s.CanRetry() = %v, want %v", s, got, want[s])
		}
	}
}
