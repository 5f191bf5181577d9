package main

import (
	"fmt"
	"os"
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

// TestServeTightensDataDir starts the binary on data directories that
// others can list or enter (as `mkdir` with a usual umask leaves them):
// serve must set each to 0700 before it writes the database, the
// bootstrap key and the admin socket into it.
func TestServeTightensDataDir(t *testing.T) {
	for _, mode := range []os.FileMode{0o755, 0o777, 0o711} {
		t.Run(fmt.Sprintf("%04o", mode), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			if err := os.Mkdir(dir, mode); err != nil {
				t.Fatal(err)
			}
			// Mkdir's mode passes through the umask.
			if err := os.Chmod(dir, mode); err != nil {
				t.Fatal(err)
			}
			startServer(t, dir)
			fi, err := os.Stat(dir)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode().Perm(); got != 0o700 {
				t.Errorf("data dir mode %04o after start, want 0700 (was %04o)", got, mode)
			}
		})
	}
}
