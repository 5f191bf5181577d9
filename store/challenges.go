package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"strings"
)

// ACME DNS-01 challenge tokens, served as TXT records by edgeproxy's own
// zone (the dnszone package). They live in the store, not in one
// process's memory, so every node answers the CA with the same tokens
// whichever node placed the order.
//
//	acme_challenges   fqdn + 0x00 + value → u64 time stored (Unix ns)
//
// A name may carry several values at once (a name and its wildcard, or
// two orders overlapping); keys of one name form one contiguous range.

// MaxChallengeTXT is how many values one name holds at most. A put
// beyond it drops the oldest: a crashed order can leave a value behind,
// and such leftovers must neither grow the zone's answers nor block the
// next order.
const MaxChallengeTXT = 16

// maxChallengeValue is the longest value: one TXT character-string.
const maxChallengeValue = 255

// challengeName is the form in which a name is kept: lower case, without
// the trailing dot of a fully qualified name.
func challengeName(fqdn string) (string, error) {
	name := strings.ToLower(strings.TrimSuffix(fqdn, "."))
	switch {
	case name == "":
		return "", fmt.Errorf("%w: the name is empty", ErrInvalidChallenge)
	case len(name) > 253:
		return "", fmt.Errorf("%w: the name is longer than 253 bytes", ErrInvalidChallenge)
	case strings.ContainsAny(name, "\x00 "):
		return "", fmt.Errorf("%w: the name contains a space or a zero byte", ErrInvalidChallenge)
	}
	return name, nil
}

func checkChallengeValue(value string) error {
	if value == "" || len(value) > maxChallengeValue {
		return fmt.Errorf("%w: a value must be 1 to %d bytes, got %d", ErrInvalidChallenge, maxChallengeValue, len(value))
	}
	return nil
}

func challengePrefix(name string) []byte { return append([]byte(name), 0) }

// PutChallengeTXT adds value to the TXT values of fqdn (compared without
// regard to case or a trailing dot). Adding a value the name has already
// is no error. When the name already holds MaxChallengeTXT other values,
// the oldest is dropped.
func (s *Store) PutChallengeTXT(fqdn, value string) error {
	name, err := challengeName(fqdn)
	if err == nil {
		err = checkChallengeValue(value)
	}
	if err != nil {
		return fmt.Errorf("store: putting challenge TXT for %q: %w", fqdn, err)
	}
	at := s.stamp()
	err = s.update(func(tx *txn) error {
		b := tx.Bucket(bucketChallenges)
		prefix := challengePrefix(name)
		key := append(bytes.Clone(prefix), value...)
		type entry struct {
			key []byte
			at  uint64
		}
		var others []entry
		c := b.Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			if bytes.Equal(k, key) {
				continue
			}
			var t uint64
			if len(v) == 8 {
				t = binary.BigEndian.Uint64(v)
			}
			others = append(others, entry{bytes.Clone(k), t})
		}
		if excess := len(others) - (MaxChallengeTXT - 1); excess > 0 {
			sort.Slice(others, func(i, j int) bool { return others[i].at < others[j].at })
			for _, e := range others[:excess] {
				if err := b.Delete(e.key); err != nil {
					return err
				}
			}
		}
		return b.Put(key, u64(uint64(at.UnixNano())))
	})
	if err != nil {
		return fmt.Errorf("store: putting challenge TXT for %s: %w", name, err)
	}
	return nil
}

// DeleteChallengeTXT removes value from the TXT values of fqdn. Removing
// a value the name does not have is no error.
func (s *Store) DeleteChallengeTXT(fqdn, value string) error {
	name, err := challengeName(fqdn)
	if err == nil {
		err = checkChallengeValue(value)
	}
	if err != nil {
		return fmt.Errorf("store: deleting challenge TXT for %q: %w", fqdn, err)
	}
	err = s.update(func(tx *txn) error {
		return tx.Bucket(bucketChallenges).Delete(append(challengePrefix(name), value...))
	})
	if err != nil {
		return fmt.Errorf("store: deleting challenge TXT for %s: %w", name, err)
	}
	return nil
}

// ChallengeTXT returns the TXT values of fqdn, sorted; none (and no
// error) when it has none.
func (s *Store) ChallengeTXT(fqdn string) ([]string, error) {
	name, err := challengeName(fqdn)
	if err != nil {
		return nil, fmt.Errorf("store: reading challenge TXT for %q: %w", fqdn, err)
	}
	var values []string
	err = s.view(func(tx *txn) error {
		values = nil
		prefix := challengePrefix(name)
		c := tx.Bucket(bucketChallenges).Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			values = append(values, string(k[len(prefix):]))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: reading challenge TXT for %s: %w", name, err)
	}
	return values, nil
}
