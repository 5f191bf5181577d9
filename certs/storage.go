package certs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/edgeproxy/edgeproxy/store"
)

// DefaultLockTTL is how long a lock taken by Storage lasts unless its
// holder refreshes it.
const DefaultLockTTL = 2 * time.Minute

// maxLockPoll is the longest pause between two attempts of Lock.
const maxLockPoll = time.Second

var (
	_ certmagic.Storage   = (*Storage)(nil)
	_ certmagic.TryLocker = (*Storage)(nil)
)

// StorageOptions configures NewStorage. The zero value works.
type StorageOptions struct {
	// LockTTL is how long a lock lasts without a refresh; the holder
	// refreshes it every LockTTL/3. If zero, DefaultLockTTL.
	LockTTL time.Duration
	// Logger receives warnings about locks that could not be refreshed or
	// released. If nil, nothing is logged.
	Logger *slog.Logger
}

// Storage is a certmagic.Storage on the store's blobs and locks. It is safe
// for concurrent use. A missing key is fs.ErrNotExist for Load, Stat and
// List; Delete of a missing key is not an error.
//
// Locks are owned by the Storage value (a random owner id), so two
// goroutines of one process exclude each other just as two processes do.
type Storage struct {
	st    *store.Store
	owner string
	ttl   time.Duration
	log   *slog.Logger
	// afterRefresh, if set (by tests), is called after each refresh of a
	// lock, from the refreshing goroutine.
	afterRefresh func(name string)

	// mu guards held: the refresher of every lock this Storage holds.
	mu   sync.Mutex
	held map[string]context.CancelFunc
}

// NewStorage returns a Storage on st.
func NewStorage(st *store.Store, opts StorageOptions) *Storage {
	var id [8]byte
	_, _ = rand.Read(id[:])
	host, _ := os.Hostname()
	s := &Storage{
		st:    st,
		owner: fmt.Sprintf("%s/%d/%s", host, os.Getpid(), hex.EncodeToString(id[:])),
		ttl:   opts.LockTTL,
		log:   opts.Logger,
		held:  map[string]context.CancelFunc{},
	}
	if s.ttl <= 0 {
		s.ttl = DefaultLockTTL
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	return s
}

// Store puts value at key.
func (s *Storage) Store(ctx context.Context, key string, value []byte) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("certs: storing %s: %w", key, err)
	}
	if err := s.st.PutBlob(key, value); err != nil {
		return fmt.Errorf("certs: storing %s: %w", key, err)
	}
	return nil
}

// Load returns the value at key, or an error wrapping fs.ErrNotExist.
func (s *Storage) Load(ctx context.Context, key string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("certs: loading %s: %w", key, err)
	}
	v, err := s.st.GetBlob(key)
	if err != nil {
		return nil, fmt.Errorf("certs: loading %s: %w", key, notExist(err))
	}
	return v, nil
}

// Delete deletes key and, if it is a directory, every key under it. A
// missing key is not an error.
func (s *Storage) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("certs: deleting %s: %w", key, err)
	}
	if err := s.st.DeleteBlobs(key); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("certs: deleting %s: %w", key, err)
	}
	return nil
}

// Exists reports whether key exists as a file or a directory.
func (s *Storage) Exists(ctx context.Context, key string) bool {
	return ctx.Err() == nil && s.st.BlobExists(key)
}

// List returns the keys under path: its immediate children (directories
// included), or with recursive every key below it.
func (s *Storage) List(ctx context.Context, path string, recursive bool) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("certs: listing %s: %w", path, err)
	}
	keys, err := s.st.ListBlobs(path, recursive)
	if err != nil {
		return nil, fmt.Errorf("certs: listing %s: %w", path, notExist(err))
	}
	return keys, nil
}

// Stat describes key.
func (s *Storage) Stat(ctx context.Context, key string) (certmagic.KeyInfo, error) {
	if err := ctx.Err(); err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, err)
	}
	info, err := s.st.StatBlob(key)
	if err != nil {
		return certmagic.KeyInfo{}, fmt.Errorf("certs: stat %s: %w", key, notExist(err))
	}
	return certmagic.KeyInfo{Key: info.Key, Modified: info.Modified, Size: info.Size, IsTerminal: info.IsTerminal}, nil
}

// Lock takes the lock called name, waiting while another holder has it,
// until ctx is done. The lock lasts while this Storage refreshes it, which
// it does until Unlock or Close.
func (s *Storage) Lock(ctx context.Context, name string) error {
	pause := 20 * time.Millisecond
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("certs: locking %s: %w", name, err)
		}
		ok, err := s.TryLock(ctx, name)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("certs: locking %s: %w", name, ctx.Err())
		case <-t.C:
		}
		pause = min(pause*2, maxLockPoll)
	}
}

// TryLock takes the lock called name if it is free or expired, and reports
// whether it did.
func (s *Storage) TryLock(ctx context.Context, name string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("certs: locking %s: %w", name, err)
	}
	ok, err := s.st.TryLock(name, s.owner, s.ttl)
	if err != nil {
		return false, fmt.Errorf("certs: locking %s: %w", name, err)
	}
	if ok {
		s.startRefresh(name)
	}
	return ok, nil
}

// Unlock releases the lock called name.
func (s *Storage) Unlock(_ context.Context, name string) error {
	s.stopRefresh(name)
	if err := s.st.Unlock(name, s.owner); err != nil {
		return fmt.Errorf("certs: unlocking %s: %w", name, err)
	}
	return nil
}

// Close stops refreshing and releases every lock this Storage holds. Call
// it after the work the locks protect has stopped.
func (s *Storage) Close() error {
	s.mu.Lock()
	names := make([]string, 0, len(s.held))
	for name, cancel := range s.held {
		cancel()
		names = append(names, name)
	}
	clear(s.held)
	s.mu.Unlock()
	var errs []error
	for _, name := range names {
		if err := s.st.Unlock(name, s.owner); err != nil && !errors.Is(err, store.ErrLockNotHeld) {
			errs = append(errs, fmt.Errorf("certs: unlocking %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// String names the storage in certmagic's logs.
func (s *Storage) String() string { return "bbolt:" + s.st.Path() }

func (s *Storage) startRefresh(name string) {
	ctx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	if old, ok := s.held[name]; ok {
		old() // an expired lock of ours, taken again
	}
	s.held[name] = cancel
	s.mu.Unlock()
	go s.refresh(ctx, name)
}

func (s *Storage) stopRefresh(name string) {
	s.mu.Lock()
	if cancel, ok := s.held[name]; ok {
		cancel()
		delete(s.held, name)
	}
	s.mu.Unlock()
}

// refresh keeps the lock called name alive until ctx is done or the lock
// turns out to have been lost.
func (s *Storage) refresh(ctx context.Context, name string) {
	t := time.NewTicker(s.ttl / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		err := s.st.RefreshLock(name, s.owner, s.ttl)
		if ctx.Err() != nil {
			return // released meanwhile
		}
		switch {
		case errors.Is(err, store.ErrLockNotHeld):
			s.log.Warn("certificate lock lost before it was released", "lock", name)
			return
		case err != nil:
			s.log.Warn("refreshing certificate lock", "lock", name, "err", err)
		}
		if s.afterRefresh != nil {
			s.afterRefresh(name)
		}
	}
}

// notExist turns the store's ErrNotFound into fs.ErrNotExist, which
// certmagic tests for.
func notExist(err error) error {
	if errors.Is(err, store.ErrNotFound) {
		return fs.ErrNotExist
	}
	return err
}
