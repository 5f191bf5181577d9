package main

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// TestWriteProbe checks the readiness probe's view of the store: ready
// while a write commits, not ready once writes fail, and asked at most once
// a second.
func TestWriteProbe(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := &writeProbe{store: st}
	if err := p.check(); err != nil {
		t.Fatalf("open store: %v", err)
	}
	st.Close() // every write fails from now on
	if err := p.check(); err != nil {
		t.Errorf("asked again within a second: %v, want the cached answer", err)
	}
	p.at = time.Now().Add(-2 * time.Second)
	if err := p.check(); err == nil {
		t.Error("a store that cannot write reported writable")
	}
}
