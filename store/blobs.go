package store

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Blobs and locks: a small key/value store with file-system path semantics
// and expiring named locks, kept for the certificate manager (certmagic's
// Storage) in the certmagic_data and certmagic_locks buckets.
//
// A blob key is a slash-separated path with no leading or trailing slash
// ("certificates/ca/e.example.com/e.example.com.crt"). A key that holds a
// value is a "file"; a key that is only the prefix of other keys (up to a
// slash) is a "directory" and exists only implicitly. "a" is a prefix of
// "a/b" but not of "ab/c".
//
// Each blob is stored as 8 bytes of modification time (Unix nanoseconds,
// big-endian) followed by the value. Each lock is stored as 8 bytes of
// expiry (Unix nanoseconds, big-endian) followed by the owner.
//
// Times come from the store's clock (Options.Now), so tests can expire a
// lock without sleeping.

// ErrLockNotHeld: the lock is held by another owner, or (for RefreshLock)
// not held at all.
var ErrLockNotHeld = errors.New("store: lock not held")

// BlobInfo describes a blob key. A directory has IsTerminal false, Size 0
// and the newest Modified of the blobs under it.
type BlobInfo struct {
	Key        string
	Modified   time.Time
	Size       int64
	IsTerminal bool
}

const blobHeader = 8

// PutBlob stores value at key, replacing any previous value, and records
// the time of the write.
func (s *Store) PutBlob(key string, value []byte) error {
	if key == "" {
		return errors.New("store: putting blob: empty key")
	}
	data := make([]byte, blobHeader+len(value))
	binary.BigEndian.PutUint64(data, uint64(s.now().UnixNano()))
	copy(data[blobHeader:], value)
	err := s.batch(func(tx *txn) error {
		return tx.Bucket(bucketCertData).Put([]byte(key), data)
	})
	if err != nil {
		return fmt.Errorf("store: putting blob %s: %w", key, err)
	}
	return nil
}

// GetBlob returns the value stored at key, or ErrNotFound.
func (s *Store) GetBlob(key string) ([]byte, error) {
	var value []byte
	err := s.view(func(tx *txn) error {
		data := tx.Bucket(bucketCertData).Get([]byte(key))
		if data == nil {
			return ErrNotFound
		}
		if len(data) < blobHeader {
			return fmt.Errorf("store: blob %s: corrupt (%d bytes)", key, len(data))
		}
		value = bytes.Clone(data[blobHeader:])
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: getting blob %s: %w", key, err)
	}
	return value, nil
}

// DeleteBlobs deletes key and every key under key + "/", in one
// transaction. ErrNotFound if there was nothing to delete.
func (s *Store) DeleteBlobs(key string) error {
	var deleted int
	err := s.batch(func(tx *txn) error {
		deleted = 0 // Batch may run this more than once.
		b := tx.Bucket(bucketCertData)
		keys := collectKeys(b, key+"/")
		if key != "" && b.Get([]byte(key)) != nil {
			keys = append(keys, []byte(key))
		}
		for _, k := range keys {
			if err := b.Delete(k); err != nil {
				return err
			}
		}
		deleted = len(keys)
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: deleting blobs %s: %w", key, err)
	}
	if deleted == 0 {
		return fmt.Errorf("store: deleting blobs %s: %w", key, ErrNotFound)
	}
	return nil
}

// BlobExists reports whether key exists as a file or as a directory.
// A failure to read counts as absent.
func (s *Store) BlobExists(key string) bool {
	var found bool
	_ = s.view(func(tx *txn) error {
		b := tx.Bucket(bucketCertData)
		found = key != "" && b.Get([]byte(key)) != nil || hasPrefix(b, key+"/")
		return nil
	})
	return found
}

// ListBlobs lists the keys under prefix ("" is the root). Non-recursive,
// it returns the immediate children of prefix, directories included;
// recursive, every key under prefix, files and the directories leading to
// them. Keys are full paths, sorted. ErrNotFound if prefix is neither a
// file nor a directory; a file lists as empty.
func (s *Store) ListBlobs(prefix string, recursive bool) ([]string, error) {
	prefix = strings.Trim(prefix, "/")
	var keys []string
	err := s.view(func(tx *txn) error {
		b := tx.Bucket(bucketCertData)
		p := prefix + "/"
		if prefix == "" {
			p = ""
		}
		seen := map[string]bool{}
		add := func(k string) {
			if !seen[k] {
				seen[k] = true
				keys = append(keys, k)
			}
		}
		c := b.Cursor()
		for k, _ := c.Seek([]byte(p)); k != nil && bytes.HasPrefix(k, []byte(p)); k, _ = c.Next() {
			rest := string(k[len(p):])
			if !recursive {
				if i := strings.IndexByte(rest, '/'); i >= 0 {
					rest = rest[:i]
				}
				add(p + rest)
				continue
			}
			for i := range len(rest) {
				if rest[i] == '/' {
					add(p + rest[:i])
				}
			}
			add(p + rest)
		}
		if len(keys) == 0 && prefix != "" && b.Get([]byte(prefix)) == nil {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: listing blobs %s: %w", prefix, err)
	}
	slices.Sort(keys)
	return keys, nil
}

// StatBlob describes key, a file or a directory, or returns ErrNotFound.
func (s *Store) StatBlob(key string) (BlobInfo, error) {
	info := BlobInfo{Key: key}
	err := s.view(func(tx *txn) error {
		b := tx.Bucket(bucketCertData)
		if key != "" {
			if data := b.Get([]byte(key)); data != nil {
				if len(data) < blobHeader {
					return fmt.Errorf("corrupt (%d bytes)", len(data))
				}
				info.IsTerminal = true
				info.Size = int64(len(data) - blobHeader)
				info.Modified = blobTime(data)
				return nil
			}
		}
		p := []byte(key + "/")
		found := false
		c := b.Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			found = true
			if len(v) >= blobHeader {
				if t := blobTime(v); t.After(info.Modified) {
					info.Modified = t
				}
			}
		}
		if !found {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: stat blob %s: %w", key, err)
	}
	return info, nil
}

// TryLock takes the lock called name for owner until now + ttl, if nobody
// holds it or its holder's expiry has passed. It reports whether the lock
// was taken. A lock is not re-entrant: an owner that already holds it gets
// false, like anybody else.
func (s *Store) TryLock(name, owner string, ttl time.Duration) (bool, error) {
	var taken bool
	err := s.batch(func(tx *txn) error {
		taken = false
		b := tx.Bucket(bucketCertLocks)
		now := s.now()
		if v := b.Get([]byte(name)); v != nil {
			if _, expires, ok := decodeLock(v); ok && now.Before(expires) {
				return nil
			}
		}
		if err := b.Put([]byte(name), encodeLock(owner, now.Add(ttl))); err != nil {
			return err
		}
		taken = true
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("store: taking lock %s: %w", name, err)
	}
	return taken, nil
}

// RefreshLock moves the expiry of owner's lock called name to now + ttl.
// ErrLockNotHeld if the lock is missing or belongs to another owner (it
// expired and was taken over).
func (s *Store) RefreshLock(name, owner string, ttl time.Duration) error {
	var ruleErr error
	err := s.batch(func(tx *txn) error {
		ruleErr = nil
		b := tx.Bucket(bucketCertLocks)
		v := b.Get([]byte(name))
		if v == nil {
			ruleErr = ErrLockNotHeld
			return nil
		}
		if holder, _, ok := decodeLock(v); !ok || holder != owner {
			ruleErr = ErrLockNotHeld
			return nil
		}
		return b.Put([]byte(name), encodeLock(owner, s.now().Add(ttl)))
	})
	if err == nil {
		err = ruleErr
	}
	if err != nil {
		return fmt.Errorf("store: refreshing lock %s: %w", name, err)
	}
	return nil
}

// Unlock releases owner's lock called name. Releasing a lock nobody holds
// is not an error; releasing another owner's is ErrLockNotHeld and leaves
// it in place.
func (s *Store) Unlock(name, owner string) error {
	var ruleErr error
	err := s.batch(func(tx *txn) error {
		ruleErr = nil
		b := tx.Bucket(bucketCertLocks)
		v := b.Get([]byte(name))
		if v == nil {
			return nil
		}
		if holder, _, ok := decodeLock(v); ok && holder != owner {
			ruleErr = ErrLockNotHeld
			return nil
		}
		return b.Delete([]byte(name))
	})
	if err == nil {
		err = ruleErr
	}
	if err != nil {
		return fmt.Errorf("store: releasing lock %s: %w", name, err)
	}
	return nil
}

func blobTime(data []byte) time.Time {
	return time.Unix(0, int64(binary.BigEndian.Uint64(data))).UTC()
}

func encodeLock(owner string, expires time.Time) []byte {
	v := make([]byte, 8+len(owner))
	binary.BigEndian.PutUint64(v, uint64(expires.UnixNano()))
	copy(v[8:], owner)
	return v
}

// decodeLock splits a stored lock; ok is false for a corrupt one, which
// TryLock treats as free.
func decodeLock(v []byte) (owner string, expires time.Time, ok bool) {
	if len(v) < 8 {
		return "", time.Time{}, false
	}
	return string(v[8:]), time.Unix(0, int64(binary.BigEndian.Uint64(v))), true
}

// collectKeys returns copies of the keys of b that start with prefix.
func collectKeys(b *bucket, prefix string) [][]byte {
	var keys [][]byte
	p := []byte(prefix)
	c := b.Cursor()
	for k, _ := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	return keys
}

func hasPrefix(b *bucket, prefix string) bool {
	k, _ := b.Cursor().Seek([]byte(prefix))
	return k != nil && bytes.HasPrefix(k, []byte(prefix))
}
