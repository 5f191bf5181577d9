package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// manualClock is a clock that moves only when the test says so.
type manualClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *manualClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *manualClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func openBlobStore(t *testing.T) (*store.Store, *manualClock) {
	t.Helper()
	clk := &manualClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	return openAt(t, filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: clk.Now}), clk
}

func mustPut(t *testing.T, s *store.Store, key, value string) {
	t.Helper()
	if err := s.PutBlob(key, []byte(value)); err != nil {
		t.Fatalf("PutBlob(%s): %v", key, err)
	}
}

func TestBlobPutGet(t *testing.T) {
	t.Parallel()
	s, _ := openBlobStore(t)
	if _, err := s.GetBlob("missing"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("GetBlob(missing): %v, want ErrNotFound", err)
	}
	mustPut(t, s, "a/b", "one")
	mustPut(t, s, "a/b", "two")
	got, err := s.GetBlob("a/b")
	if err != nil {
		t.Fatal(err)
	}
	if want := "two"; string(got) != want {
		t.Errorf("GetBlob = %q, want %q", got, want)
	}
	mustPut(t, s, "empty", "")
	if got, err := s.GetBlob("empty"); err != nil || len(got) != 0 {
		t.Errorf("GetBlob(empty) = %q, %v; want empty, nil", got, err)
	}
	if err := s.PutBlob("", []byte("x")); err == nil {
		t.Error("PutBlob with an empty key succeeded")
	}
}

// TestBlobSurvivesReopen: a PutBlob that returned is on disk.
func TestBlobSurvivesReopen(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	value := bytes.Repeat([]byte{0xab}, 10*1024)
	if err := s.PutBlob("certificates/ca/e.example.com/e.example.com.key", value); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openAt(t, path, store.Options{})
	got, err := s.GetBlob("certificates/ca/e.example.com/e.example.com.key")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, value) {
		t.Error("value changed across reopen")
	}
}

func TestBlobList(t *testing.T) {
	t.Parallel()
	s, _ := openBlobStore(t)
	for _, k := range []string{
		"certificates/ca/e.example.com/e.example.com.crt",
		"certificates/ca/e.example.com/e.example.com.key",
		"certificates/ca/f.example.com/f.example.com.crt",
		"certificates/ca.x/g.example.com/g.example.com.crt",
		"certificatesX/other",
		"acme/ca/users/default/default.json",
		"top",
	} {
		mustPut(t, s, k, "v")
	}
	for _, tt := range []struct {
		prefix    string
		recursive bool
		want      []string
	}{
		{"", false, []string{"acme", "certificates", "certificatesX", "top"}},
		{"certificates", false, []string{"certificates/ca", "certificates/ca.x"}},
		{"certificates/", false, []string{"certificates/ca", "certificates/ca.x"}},
		{"certificates/ca", false, []string{"certificates/ca/e.example.com", "certificates/ca/f.example.com"}},
		{"certificates/ca/e.example.com", false, []string{
			"certificates/ca/e.example.com/e.example.com.crt",
			"certificates/ca/e.example.com/e.example.com.key",
		}},
		{"certificates", true, []string{
			"certificates/ca",
			"certificates/ca.x",
			"certificates/ca.x/g.example.com",
			"certificates/ca.x/g.example.com/g.example.com.crt",
			"certificates/ca/e.example.com",
			"certificates/ca/e.example.com/e.example.com.crt",
			"certificates/ca/e.example.com/e.example.com.key",
			"certificates/ca/f.example.com",
			"certificates/ca/f.example.com/f.example.com.crt",
		}},
		{"top", false, nil},
	} {
		t.Run(fmt.Sprintf("%s/%v", tt.prefix, tt.recursive), func(t *testing.T) {
			got, err := s.ListBlobs(tt.prefix, tt.recursive)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) == 0 && len(tt.want) == 0 {
				return
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("ListBlobs(%q, %v) =\n%q\nwant\n%q", tt.prefix, tt.recursive, got, tt.want)
			}
		})
	}
	if _, err := s.ListBlobs("certificates/nope", false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ListBlobs(missing): %v, want ErrNotFound", err)
	}
	// "cert" is a string prefix of "certificates" but not a path prefix.
	if _, err := s.ListBlobs("cert", false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ListBlobs(cert): %v, want ErrNotFound", err)
	}
}

func TestBlobExistsStat(t *testing.T) {
	t.Parallel()
	s, clk := openBlobStore(t)
	t0 := clk.Now()
	mustPut(t, s, "acme/ca/users/a/a.json", "12345")
	clk.Advance(time.Minute)
	mustPut(t, s, "acme/ca/users/b/b.json", "1")

	for key, want := range map[string]bool{
		"acme": true, "acme/ca/users": true, "acme/ca/users/a/a.json": true,
		"acme/c": false, "acme/ca/users/a/a": false, "": false, "nope": false,
	} {
		if got := s.BlobExists(key); got != want {
			t.Errorf("BlobExists(%q) = %v, want %v", key, got, want)
		}
	}

	info, err := s.StatBlob("acme/ca/users/a/a.json")
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.BlobInfo{Key: "acme/ca/users/a/a.json", Modified: t0, Size: 5, IsTerminal: true}); info != want {
		t.Errorf("StatBlob(file) = %+v, want %+v", info, want)
	}
	info, err = s.StatBlob("acme/ca/users")
	if err != nil {
		t.Fatal(err)
	}
	if want := (store.BlobInfo{Key: "acme/ca/users", Modified: t0.Add(time.Minute)}); info != want {
		t.Errorf("StatBlob(dir) = %+v, want %+v (newest child's time)", info, want)
	}
	if _, err := s.StatBlob("acme/ca/user"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("StatBlob(missing): %v, want ErrNotFound", err)
	}
}

func TestBlobDelete(t *testing.T) {
	t.Parallel()
	s, _ := openBlobStore(t)
	for _, k := range []string{"d/x", "d/y/z", "d.other", "dd/x", "d"} {
		mustPut(t, s, k, "v")
	}
	if err := s.DeleteBlobs("d"); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]bool{"d": false, "d/x": false, "d/y/z": false, "d.other": true, "dd/x": true} {
		if got := s.BlobExists(key); got != want {
			t.Errorf("after DeleteBlobs(d): BlobExists(%q) = %v, want %v", key, got, want)
		}
	}
	if err := s.DeleteBlobs("d"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second DeleteBlobs(d): %v, want ErrNotFound", err)
	}
	if err := s.DeleteBlobs("d.other"); err != nil {
		t.Errorf("DeleteBlobs(file): %v", err)
	}
	if s.BlobExists("d.other") {
		t.Error("d.other still exists")
	}
}

func TestLocks(t *testing.T) {
	t.Parallel()
	s, clk := openBlobStore(t)
	const ttl = 2 * time.Minute

	take := func(owner string, want bool) {
		t.Helper()
		got, err := s.TryLock("issue_cert_e.example.com", owner, ttl)
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("TryLock(%s) = %v, want %v", owner, got, want)
		}
	}
	take("a", true)
	take("b", false)
	take("a", false) // not re-entrant
	if err := s.Unlock("issue_cert_e.example.com", "b"); !errors.Is(err, store.ErrLockNotHeld) {
		t.Errorf("Unlock by a non-owner: %v, want ErrLockNotHeld", err)
	}
	take("b", false)

	// Refreshed, the lock outlives its first ttl.
	clk.Advance(ttl - time.Second)
	if err := s.RefreshLock("issue_cert_e.example.com", "a", ttl); err != nil {
		t.Fatal(err)
	}
	clk.Advance(time.Minute)
	take("b", false)

	// Expired, anybody may take it, and the old owner can no longer
	// refresh or release it.
	clk.Advance(ttl)
	take("b", true)
	if err := s.RefreshLock("issue_cert_e.example.com", "a", ttl); !errors.Is(err, store.ErrLockNotHeld) {
		t.Errorf("RefreshLock by the expired owner: %v, want ErrLockNotHeld", err)
	}
	if err := s.Unlock("issue_cert_e.example.com", "a"); !errors.Is(err, store.ErrLockNotHeld) {
		t.Errorf("Unlock by the expired owner: %v, want ErrLockNotHeld", err)
	}
	if err := s.Unlock("issue_cert_e.example.com", "b"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unlock("issue_cert_e.example.com", "b"); err != nil {
		t.Errorf("Unlock of a free lock: %v, want nil", err)
	}
	if err := s.RefreshLock("issue_cert_e.example.com", "b", ttl); !errors.Is(err, store.ErrLockNotHeld) {
		t.Errorf("RefreshLock of a free lock: %v, want ErrLockNotHeld", err)
	}
	take("a", true)
}

// TestTryLockConcurrent: of many concurrent takers, exactly one wins.
func TestTryLockConcurrent(t *testing.T) {
	t.Parallel()
	s, _ := openBlobStore(t)
	var wins atomic.Int32
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			ok, err := s.TryLock("l", fmt.Sprint("owner", i), time.Minute)
			if err != nil {
				t.Error(err)
			}
			if ok {
				wins.Add(1)
			}
		})
	}
	wg.Wait()
	if got := wins.Load(); got != 1 {
		t.Errorf("%d winners, want 1", got)
	}
}

func TestBlobsClosedStore(t *testing.T) {
	t.Parallel()
	s, _ := openBlobStore(t)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for name, call := range map[string]func() error{
		"PutBlob":     func() error { return s.PutBlob("k", nil) },
		"GetBlob":     func() error { _, err := s.GetBlob("k"); return err },
		"DeleteBlobs": func() error { return s.DeleteBlobs("k") },
		"ListBlobs":   func() error { _, err := s.ListBlobs("", true); return err },
		"StatBlob":    func() error { _, err := s.StatBlob("k"); return err },
		"TryLock":     func() error { _, err := s.TryLock("k", "o", time.Second); return err },
		"RefreshLock": func() error { return s.RefreshLock("k", "o", time.Second) },
		"Unlock":      func() error { return s.Unlock("k", "o") },
	} {
		if err := call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s on a closed store: %v, want ErrClosed", name, err)
		}
	}
	if s.BlobExists("k") {
		t.Error("BlobExists on a closed store = true")
	}
}

// TestOpenReleasesStaleLocks pins why a restart after kill -9 does not wait
// for the dead process's locks to expire: only one process can open the
// file, so every lock found at Open is stale.
func TestOpenReleasesStaleLocks(t *testing.T) {
	bboltOnly(t)
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s, err := store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := s.TryLock("issue_cert_e.example.com", "dead-process", time.Hour); !ok || err != nil {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	s.Close()
	s, err = store.Open(path, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if ok, err := s.TryLock("issue_cert_e.example.com", "new-process", time.Hour); !ok || err != nil {
		t.Errorf("TryLock after reopen = %v, %v; want the stale lock released", ok, err)
	}
}
