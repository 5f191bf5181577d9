package certs

import (
	"context"
	"errors"
	"io/fs"
	"path/filepath"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// manualClock is a store clock that moves only when told.
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

// openStore opens a store in t.TempDir(), closed and checked for
// consistency when the test ends.
func openStore(t *testing.T, opts store.Options) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Check(); err != nil && !errors.Is(err, store.ErrClosed) {
			t.Errorf("store consistency: %v", err)
		}
		st.Close()
	})
	return st
}

func TestStorageKeys(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	s := NewStorage(openStore(t, store.Options{}), StorageOptions{})

	if _, err := s.Load(ctx, "acme/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing): %v, want fs.ErrNotExist", err)
	}
	if _, err := s.Stat(ctx, "acme/x"); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Stat(missing): %v, want fs.ErrNotExist", err)
	}
	if _, err := s.List(ctx, "acme", false); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("List(missing): %v, want fs.ErrNotExist", err)
	}
	if err := s.Delete(ctx, "acme/x"); err != nil {
		t.Errorf("Delete(missing): %v, want nil", err)
	}

	keys := []string{
		"certificates/ca/e.example.com/e.example.com.crt",
		"certificates/ca/e.example.com/e.example.com.key",
		"certificates/ca/e.example.com/e.example.com.json",
		"certificates/ca/f.example.com/f.example.com.crt",
		"acme/ca/users/default/default.json",
	}
	for _, k := range keys {
		if err := s.Store(ctx, k, []byte("value of "+k)); err != nil {
			t.Fatal(err)
		}
	}
	v, err := s.Load(ctx, keys[0])
	if err != nil || string(v) != "value of "+keys[0] {
		t.Errorf("Load = %q, %v", v, err)
	}
	if err := s.Store(ctx, keys[0], []byte("new")); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Load(ctx, keys[0]); string(v) != "new" {
		t.Errorf("Load after overwrite = %q, want new", v)
	}

	for key, want := range map[string]bool{
		"certificates": true, "certificates/ca/e.example.com": true, keys[1]: true,
		"certificates/c": false, "certificates/ca/e.example.com/e": false,
	} {
		if got := s.Exists(ctx, key); got != want {
			t.Errorf("Exists(%q) = %v, want %v", key, got, want)
		}
	}

	got, err := s.List(ctx, "certificates/ca", false)
	if want := []string{"certificates/ca/e.example.com", "certificates/ca/f.example.com"}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("List(certificates/ca) = %q, %v; want %q", got, err, want)
	}
	got, err = s.List(ctx, "certificates/ca/e.example.com", true)
	if want := keys[:3]; err != nil || len(got) != len(want) {
		t.Errorf("List(recursive) = %q, %v; want %q", got, err, want)
	}

	info, err := s.Stat(ctx, keys[0])
	if err != nil || !info.IsTerminal || info.Size != 3 || info.Key != keys[0] || info.Modified.IsZero() {
		t.Errorf("Stat(file) = %+v, %v", info, err)
	}
	info, err = s.Stat(ctx, "acme/ca/users/default")
	if err != nil || info.IsTerminal || info.Modified.IsZero() {
		t.Errorf("Stat(dir) = %+v, %v", info, err)
	}

	if err := s.Delete(ctx, "certificates/ca/e.example.com"); err != nil {
		t.Fatal(err)
	}
	for _, k := range keys[:3] {
		if s.Exists(ctx, k) {
			t.Errorf("%s exists after its directory was deleted", k)
		}
	}
	if !s.Exists(ctx, keys[3]) {
		t.Errorf("%s was deleted with a sibling directory", keys[3])
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Store(cancelled, "k", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Store with a cancelled context: %v", err)
	}
	if _, err := s.Load(cancelled, keys[3]); !errors.Is(err, context.Canceled) {
		t.Errorf("Load with a cancelled context: %v", err)
	}
}

// TestStorageLockBlocks: a second Lock waits until the holder unlocks, or
// until its context is done; two Storage values are two processes.
func TestStorageLockBlocks(t *testing.T) {
	t.Parallel()
	st := openStore(t, store.Options{})
	for _, tt := range []struct {
		name   string
		second func(a *Storage) *Storage
	}{
		{"same storage", func(a *Storage) *Storage { return a }},
		{"other storage", func(*Storage) *Storage { return NewStorage(st, StorageOptions{}) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			a := NewStorage(st, StorageOptions{})
			b := tt.second(a)
			lock := "issue_cert_" + tt.name
			if err := a.Lock(ctx, lock); err != nil {
				t.Fatal(err)
			}

			short, cancel := context.WithTimeout(ctx, 150*time.Millisecond)
			start := time.Now()
			err := b.Lock(short, lock)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Lock of a held lock: %v, want DeadlineExceeded", err)
			}
			if d := time.Since(start); d > 2*time.Second {
				t.Errorf("Lock took %v to notice its context was done", d)
			}

			acquired := make(chan error, 1)
			go func() { acquired <- b.Lock(ctx, lock) }()
			select {
			case err := <-acquired:
				t.Fatalf("second Lock returned %v while the lock was held", err)
			case <-time.After(200 * time.Millisecond):
			}
			if err := a.Unlock(ctx, lock); err != nil {
				t.Fatal(err)
			}
			select {
			case err := <-acquired:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("second Lock still waiting after Unlock")
			}
			if err := b.Unlock(ctx, lock); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestStorageLockExpires: a lock left by a dead process (never refreshed)
// can be taken once it expires.
func TestStorageLockExpires(t *testing.T) {
	t.Parallel()
	clk := &manualClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	st := openStore(t, store.Options{Now: clk.Now})
	if ok, err := st.TryLock("issue_cert_e.example.com", "dead-process", DefaultLockTTL); !ok || err != nil {
		t.Fatalf("TryLock = %v, %v", ok, err)
	}
	s := NewStorage(st, StorageOptions{})
	ctx := context.Background()
	if ok, err := s.TryLock(ctx, "issue_cert_e.example.com"); ok || err != nil {
		t.Fatalf("TryLock of a live lock = %v, %v; want false, nil", ok, err)
	}
	acquired := make(chan error, 1)
	go func() { acquired <- s.Lock(ctx, "issue_cert_e.example.com") }()
	select {
	case err := <-acquired:
		t.Fatalf("Lock returned %v before the lock expired", err)
	case <-time.After(100 * time.Millisecond):
	}
	clk.Advance(DefaultLockTTL + time.Second)
	select {
	case err := <-acquired:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Lock did not take the expired lock")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if ok, err := st.TryLock("issue_cert_e.example.com", "other", time.Minute); !ok || err != nil {
		t.Errorf("after Close the lock is still held: TryLock = %v, %v", ok, err)
	}
}

// TestStorageLockRefreshed: a held lock outlives its TTL because its
// holder refreshes it, and is free once released. The store's clock moves
// only when told, so the lock expires only when the test says; the
// refresher's own ticker runs on real time and the test waits for it.
func TestStorageLockRefreshed(t *testing.T) {
	t.Parallel()
	clk := &manualClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	st := openStore(t, store.Options{Now: clk.Now})
	// Short, so that the refresher ticks often (every ttl/3 of real time).
	const ttl = 30 * time.Millisecond
	a := NewStorage(st, StorageOptions{LockTTL: ttl})
	b := NewStorage(st, StorageOptions{LockTTL: ttl})
	// Unbuffered: a refresh is reported only once the test takes the
	// report, so the refresh after a report began after the test took it.
	refreshed, stop := make(chan struct{}), make(chan struct{})
	t.Cleanup(func() { close(stop) })
	a.afterRefresh = func(string) {
		select {
		case refreshed <- struct{}{}:
		case <-stop:
		}
	}
	waitRefresh := func() {
		t.Helper()
		select {
		case <-refreshed:
		case <-time.After(30 * time.Second):
			t.Fatal("the holder did not refresh its lock")
		}
	}
	ctx := context.Background()
	if err := a.Lock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	// Two thirds of the TTL on, a refresh that read the clock after that
	// moves the expiry to then + ttl.
	clk.Advance(2 * ttl / 3)
	waitRefresh()
	waitRefresh()
	// Past the expiry the lock was taken with, before the refreshed one.
	clk.Advance(2 * ttl / 3)
	if ok, err := b.TryLock(ctx, "l"); ok || err != nil {
		t.Fatalf("TryLock of a refreshed lock past its first TTL = %v, %v; want false", ok, err)
	}
	if err := a.Unlock(ctx, "l"); err != nil {
		t.Fatal(err)
	}
	if ok, err := b.TryLock(ctx, "l"); !ok || err != nil {
		t.Fatalf("TryLock after Unlock = %v, %v; want true", ok, err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
}
