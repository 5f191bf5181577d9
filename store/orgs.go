package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"sort"
)

// CreateOrg adds an organization, with the slug made from its name (see
// CreateOrgSlug). maxRecords, when not nil, overrides the server-wide
// limit of proxy records for it.
func (s *Store) CreateOrg(name string, maxRecords *int) (Org, error) {
	return s.CreateOrgSlug(name, "", maxRecords)
}

// CreateOrgSlug adds an organization with the slug. An empty slug is made
// from the name (Slugify), with the smallest free numeric suffix ("acme-2")
// when another organization holds it; a given slug must pass CheckSlug
// (else ErrInvalidSlug) and be free (else ErrSlugTaken). The check and the
// write are one transaction, so concurrent creates never share a slug.
func (s *Store) CreateOrgSlug(name, slug string, maxRecords *int) (Org, error) {
	org := Org{ID: NewID(), Name: name, Slug: slug, CreatedAt: s.stamp(), MaxProxyRecords: maxRecords}
	in := org
	err := s.update(func(tx *txn) error {
		org = in // fn may run more than once
		return createOrgTx(tx, &org)
	})
	if err != nil {
		return Org{}, fmt.Errorf("store: creating organization: %w", err)
	}
	return org, nil
}

func createOrgTx(tx *txn, org *Org) error {
	if err := indexSlugTx(tx, org); err != nil {
		return err
	}
	return putJSON(tx.Bucket(bucketOrgs), []byte(org.ID), *org)
}

// Org returns the organization with the id, or ErrNotFound.
func (s *Store) Org(id string) (Org, error) {
	var org Org
	err := s.view(func(tx *txn) error {
		return getJSON(tx.Bucket(bucketOrgs), []byte(id), &org)
	})
	return org, err
}

// OrgBySlug returns the organization with the slug, or ErrNotFound.
func (s *Store) OrgBySlug(slug string) (Org, error) {
	var org Org
	err := s.view(func(tx *txn) error {
		id := tx.Bucket(bucketOrgsBySlug).Get([]byte(slug))
		if id == nil {
			return ErrNotFound
		}
		return getJSON(tx.Bucket(bucketOrgs), id, &org)
	})
	return org, err
}

// Orgs returns every organization, oldest first.
func (s *Store) Orgs() ([]Org, error) {
	var orgs []Org
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketOrgs).ForEach(func(_, v []byte) error {
			var org Org
			if err := json.Unmarshal(v, &org); err != nil {
				return fmt.Errorf("store: decoding organization: %w", err)
			}
			orgs = append(orgs, org)
			return nil
		})
	})
	sortOrgs(orgs)
	return orgs, err
}

// sortOrgs puts orgs oldest first (ids break ties, so the order is
// always the same).
func sortOrgs(orgs []Org) {
	sort.Slice(orgs, func(i, j int) bool {
		if !orgs[i].CreatedAt.Equal(orgs[j].CreatedAt) {
			return orgs[i].CreatedAt.Before(orgs[j].CreatedAt)
		}
		return orgs[i].ID < orgs[j].ID
	})
}

// UpdateOrg applies fn to the organization and saves it. The id cannot
// change. A changed slug must pass CheckSlug (else ErrInvalidSlug) and be
// free (else ErrSlugTaken); the old one is released in the same
// transaction.
func (s *Store) UpdateOrg(id string, fn func(*Org)) (Org, error) {
	var org Org
	err := s.update(func(tx *txn) error {
		org = Org{} // fn may run more than once
		b := tx.Bucket(bucketOrgs)
		if err := getJSON(b, []byte(id), &org); err != nil {
			return err
		}
		old := org.Slug
		fn(&org)
		org.ID = id
		if org.Slug != old {
			// Checked here, as indexSlugTx would make an empty slug
			// from the name.
			if err := CheckSlug(org.Slug); err != nil {
				return err
			}
			if err := indexSlugTx(tx, &org); err != nil {
				return err
			}
			if err := tx.Bucket(bucketOrgsBySlug).Delete([]byte(old)); err != nil {
				return err
			}
		}
		return putJSON(b, []byte(id), org)
	})
	return org, err
}

// CreateUser adds a user. The email must not belong to another user
// (ErrEmailTaken).
func (s *Store) CreateUser(email string) (User, error) {
	var user User
	err := s.update(func(tx *txn) error {
		var err error
		user, err = s.createUserTx(tx, email)
		return err
	})
	return user, err
}

func (s *Store) createUserTx(tx *txn, email string) (User, error) {
	byEmail := tx.Bucket(bucketUsersByEmail)
	if byEmail.Get([]byte(email)) != nil {
		return User{}, ErrEmailTaken
	}
	users := tx.Bucket(bucketUsers)
	seq, err := users.NextSequence()
	if err != nil {
		return User{}, err
	}
	user := User{ID: int64(seq), Email: email, CreatedAt: s.stamp()}
	if err := putJSON(users, u64(seq), user); err != nil {
		return User{}, err
	}
	return user, byEmail.Put([]byte(email), u64(seq))
}

// User returns the user with the id, or ErrNotFound.
func (s *Store) User(id int64) (User, error) {
	var user User
	err := s.view(func(tx *txn) error {
		return getJSON(tx.Bucket(bucketUsers), u64(uint64(id)), &user)
	})
	return user, err
}

// Users returns every user in id order.
func (s *Store) Users() ([]User, error) {
	var users []User
	err := s.view(func(tx *txn) error {
		return tx.Bucket(bucketUsers).ForEach(func(_, v []byte) error {
			var u User
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("store: decoding user: %w", err)
			}
			users = append(users, u)
			return nil
		})
	})
	return users, err
}

func memberKey(orgID string, userID int64) []byte {
	return append([]byte(orgID), u64(uint64(userID))...)
}

// SetMembership makes the user a member of the organization at level, or
// changes the level of an existing membership (which keeps its place in the
// user's order of memberships). ErrNotFound if either does not exist.
func (s *Store) SetMembership(orgID string, userID int64, level Level) (Membership, error) {
	var m Membership
	err := s.update(func(tx *txn) error {
		var err error
		m, err = s.setMembershipTx(tx, orgID, userID, level)
		return err
	})
	return m, err
}

func (s *Store) setMembershipTx(tx *txn, orgID string, userID int64, level Level) (Membership, error) {
	if tx.Bucket(bucketOrgs).Get([]byte(orgID)) == nil {
		return Membership{}, fmt.Errorf("organization %s: %w", orgID, ErrNotFound)
	}
	if tx.Bucket(bucketUsers).Get(u64(uint64(userID))) == nil {
		return Membership{}, fmt.Errorf("user %d: %w", userID, ErrNotFound)
	}
	members := tx.Bucket(bucketMembers)
	key := memberKey(orgID, userID)
	var m Membership
	switch err := getJSON(members, key, &m); err {
	case nil:
		m.Level = level
	case ErrNotFound:
		seq, err := members.NextSequence()
		if err != nil {
			return Membership{}, err
		}
		m = Membership{OrgID: orgID, UserID: userID, Level: level, CreatedAt: s.stamp(), Seq: seq}
		if err := tx.Bucket(bucketUserOrgs).Put(append(u64(uint64(userID)), u64(seq)...), []byte(orgID)); err != nil {
			return Membership{}, err
		}
	default:
		return Membership{}, err
	}
	return m, putJSON(members, key, m)
}

// Membership returns the user's membership of the organization, or
// ErrNotFound.
func (s *Store) Membership(orgID string, userID int64) (Membership, error) {
	var m Membership
	err := s.view(func(tx *txn) error {
		return getJSON(tx.Bucket(bucketMembers), memberKey(orgID, userID), &m)
	})
	return m, err
}

// RemoveMembership ends the user's membership of the organization and
// returns what it was. From the commit on, the user's keys no longer reach
// the organization: the API looks the membership up on every request.
// ErrNotFound (wrapped, naming what is missing) if the organization, the
// user or the membership does not exist; ErrLastOwner if the user is the
// organization's only owner.
func (s *Store) RemoveMembership(orgID string, userID int64) (Membership, error) {
	var m Membership
	err := s.update(func(tx *txn) error {
		m = Membership{} // fn may run more than once
		if tx.Bucket(bucketOrgs).Get([]byte(orgID)) == nil {
			return fmt.Errorf("organization %s: %w", orgID, ErrNotFound)
		}
		if tx.Bucket(bucketUsers).Get(u64(uint64(userID))) == nil {
			return fmt.Errorf("user %d: %w", userID, ErrNotFound)
		}
		members := tx.Bucket(bucketMembers)
		key := memberKey(orgID, userID)
		if err := getJSON(members, key, &m); err != nil {
			if err == ErrNotFound {
				return fmt.Errorf("user %d is not a member of organization %s: %w", userID, orgID, ErrNotFound)
			}
			return err
		}
		if m.Level == LevelOwner {
			owners, err := ownersTx(tx, orgID)
			if err != nil {
				return err
			}
			if owners == 1 {
				return fmt.Errorf("user %d is the only owner of organization %s: %w", userID, orgID, ErrLastOwner)
			}
		}
		if err := tx.Bucket(bucketUserOrgs).Delete(append(u64(uint64(userID)), u64(m.Seq)...)); err != nil {
			return err
		}
		return members.Delete(key)
	})
	if err != nil {
		return Membership{}, err
	}
	return m, nil
}

// ownersTx counts the owners of the organization. Membership keys start
// with the organization's id, which has a fixed length, so they are
// contiguous and no other organization's keys share the prefix.
func ownersTx(tx *txn, orgID string) (int, error) {
	prefix := []byte(orgID)
	n := 0
	c := tx.Bucket(bucketMembers).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		var m Membership
		if err := json.Unmarshal(v, &m); err != nil {
			return 0, fmt.Errorf("store: decoding membership %q: %w", k, err)
		}
		if m.OrgID == orgID && m.Level == LevelOwner {
			n++
		}
	}
	return n, nil
}

// UserMemberships returns the user's memberships in the order they were
// made.
func (s *Store) UserMemberships(userID int64) ([]Membership, error) {
	var ms []Membership
	err := s.view(func(tx *txn) error {
		prefix := u64(uint64(userID))
		members := tx.Bucket(bucketMembers)
		c := tx.Bucket(bucketUserOrgs).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var m Membership
			if err := getJSON(members, memberKey(string(v), int64(binary.BigEndian.Uint64(k[:8]))), &m); err != nil {
				return err
			}
			ms = append(ms, m)
		}
		return nil
	})
	return ms, err
}

// MemberOrgs returns the organizations the user is a member of, in the
// order the memberships were made, read in one transaction.
func (s *Store) MemberOrgs(userID int64) ([]Org, error) {
	var orgs []Org
	err := s.view(func(tx *txn) error {
		prefix := u64(uint64(userID))
		c := tx.Bucket(bucketUserOrgs).Cursor()
		for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
			var org Org
			if err := getJSON(tx.Bucket(bucketOrgs), v, &org); err != nil {
				return fmt.Errorf("store: organization %s of user %d: %w", v, userID, err)
			}
			orgs = append(orgs, org)
		}
		return nil
	})
	return orgs, err
}

// Bootstrap is what the first start of a server creates: an organization, a
// user who owns it and a personal API key of that user.
type Bootstrap struct {
	OrgName string
	Email   string
	Key     APIKey
}

// BootstrapIfEmpty creates b in one transaction if the store holds no
// organization yet, and reports whether it did. The key's ID, UserID and
// CreatedAt are filled in.
func (s *Store) BootstrapIfEmpty(b Bootstrap) (created bool, key APIKey, err error) {
	err = s.update(func(tx *txn) error {
		created, key = false, APIKey{} // fn may run more than once
		if k, _ := tx.Bucket(bucketOrgs).Cursor().First(); k != nil {
			return nil
		}
		org := Org{ID: NewID(), Name: b.OrgName, CreatedAt: s.stamp()}
		if err := createOrgTx(tx, &org); err != nil {
			return err
		}
		user, err := s.createUserTx(tx, b.Email)
		if err != nil {
			return err
		}
		if _, err := s.setMembershipTx(tx, org.ID, user.ID, LevelOwner); err != nil {
			return err
		}
		key = b.Key
		key.UserID = user.ID
		if err := s.createKeyTx(tx, &key); err != nil {
			return err
		}
		created = true
		return nil
	})
	if err != nil {
		return false, APIKey{}, fmt.Errorf("store: bootstrapping: %w", err)
	}
	return created, key, nil
}
