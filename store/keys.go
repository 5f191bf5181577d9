package store

import (
	"encoding/json"
	"fmt"
	"sort"
)

// CreateKey stores a personal API key. The key's ID and CreatedAt are
// filled in; its user must exist (ErrNotFound).
func (s *Store) CreateKey(key APIKey) (APIKey, error) {
	in := key
	err := s.update(func(tx *txn) error {
		key = in // fn may run more than once
		return s.createKeyTx(tx, &key)
	})
	return key, err
}

func (s *Store) createKeyTx(tx *txn, key *APIKey) error {
	if tx.Bucket(bucketUsers).Get(u64(uint64(key.UserID))) == nil {
		return fmt.Errorf("user %d: %w", key.UserID, ErrNotFound)
	}
	key.ID = NewID()
	key.CreatedAt = s.stamp()
	key.RevokedAt = nil
	if err := putJSON(tx.Bucket(bucketKeys), []byte(key.ID), key); err != nil {
		return err
	}
	return tx.Bucket(bucketKeysByHash).Put([]byte(key.Hash), []byte(key.ID))
}

// KeyByHash returns the live (not revoked) key whose value hashes to hash,
// or ErrNotFound.
func (s *Store) KeyByHash(hash string) (APIKey, error) {
	var key APIKey
	err := s.view(func(tx *txn) error {
		id := tx.Bucket(bucketKeysByHash).Get([]byte(hash))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucketKeys), id, &key)
	})
	return key, err
}

// Keys returns the keys of one user, or of every user when userID is 0,
// oldest first, revoked ones included.
func (s *Store) Keys(userID int64) ([]APIKey, error) {
	var keys []APIKey
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketKeys).ForEach(func(_, v []byte) error {
			var k APIKey
			if err := json.Unmarshal(v, &k); err != nil {
				return fmt.Errorf("store: decoding key: %w", err)
			}
			if userID == 0 || k.UserID == userID {
				keys = append(keys, k)
			}
			return nil
		})
	})
	sort.SliceStable(keys, func(i, j int) bool { return keys[i].CreatedAt.Before(keys[j].CreatedAt) })
	return keys, err
}

// RevokeKey marks the key revoked; it stops authenticating at once.
// Revoking a revoked key changes nothing.
func (s *Store) RevokeKey(id string) (APIKey, error) {
	var key APIKey
	err := s.update(func(tx *txn) error {
		key = APIKey{} // fn may run more than once
		keys := tx.Bucket(bucketKeys)
		if err := getJSON(keys, []byte(id), &key); err != nil {
			return err
		}
		if key.RevokedAt != nil {
			return nil
		}
		now := s.stamp()
		key.RevokedAt = &now
		if err := tx.Bucket(bucketKeysByHash).Delete([]byte(key.Hash)); err != nil {
			return err
		}
		return putJSON(keys, []byte(id), key)
	})
	return key, err
}
