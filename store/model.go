package store

import (
	"crypto/rand"
	"fmt"
	"time"
)

// Level is a user's access level in an organization. The numbers are
// PostHog's, so they compare: a higher level can do everything a lower one
// can.
type Level int

const (
	LevelMember Level = 1
	LevelAdmin  Level = 8
	LevelOwner  Level = 15
)

// ParseLevel turns "member", "admin" or "owner" into a Level.
func ParseLevel(s string) (Level, error) {
	switch s {
	case "member":
		return LevelMember, nil
	case "admin":
		return LevelAdmin, nil
	case "owner":
		return LevelOwner, nil
	}
	return 0, fmt.Errorf("level must be member, admin or owner, not %q", s)
}

func (l Level) String() string {
	switch l {
	case LevelMember:
		return "member"
	case LevelAdmin:
		return "admin"
	case LevelOwner:
		return "owner"
	}
	return fmt.Sprintf("level(%d)", int(l))
}

// Status is where a proxy record stands in its lifecycle. The control
// package owns the meaning of each status and the transitions between them;
// the store only keeps them.
type Status string

const (
	StatusWaiting  Status = "waiting"
	StatusIssuing  Status = "issuing"
	StatusValid    Status = "valid"
	StatusWarning  Status = "warning"
	StatusErroring Status = "erroring"
	StatusDeleting Status = "deleting"
	StatusTimedOut Status = "timed_out"
)

// Statuses lists every status, in lifecycle order.
var Statuses = []Status{StatusWaiting, StatusIssuing, StatusValid, StatusWarning, StatusErroring, StatusDeleting, StatusTimedOut}

// Valid reports whether s is one of Statuses.
func (s Status) Valid() bool {
	for _, v := range Statuses {
		if s == v {
			return true
		}
	}
	return false
}

// Org is an organization: the unit that owns proxy records.
type Org struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Slug is unique among organizations and passes CheckSlug; API paths
	// may name the organization by it instead of its id.
	Slug      string    `json:"slug"`
	CreatedAt time.Time `json:"created_at"`
	// MaxProxyRecords overrides the server-wide limit when set.
	MaxProxyRecords *int `json:"max_proxy_records,omitempty"`
}

// Limit is the organization's limit of proxy records: its own when set,
// else def, the server-wide one.
func (o Org) Limit(def int) int {
	if o.MaxProxyRecords != nil {
		return *o.MaxProxyRecords
	}
	return def
}

// User is a person who holds API keys and memberships.
type User struct {
	ID        int64     `json:"id"`
	Email     string    `json:"email"`
	CreatedAt time.Time `json:"created_at"`
}

// Membership ties a user to an organization at a level.
type Membership struct {
	OrgID     string    `json:"org_id"`
	UserID    int64     `json:"user_id"`
	Level     Level     `json:"level"`
	CreatedAt time.Time `json:"created_at"`
	// Seq orders a user's memberships by when they were first made.
	Seq uint64 `json:"seq"`
}

// APIKey is a personal API key. Only the hash of its value is kept.
type APIKey struct {
	ID     string `json:"id"`
	UserID int64  `json:"user_id"`
	Label  string `json:"label"`
	// Hash is "sha256$" followed by the hex sha256 of the key's value.
	Hash string `json:"hash"`
	// Mask shows the key's first and last characters, so an operator can
	// tell keys apart without the value.
	Mask   string   `json:"mask"`
	Scopes []string `json:"scopes"`
	// Orgs limits the key to these organizations; empty means all of the
	// user's organizations.
	Orgs      []string   `json:"orgs"`
	CreatedAt time.Time  `json:"created_at"`
	RevokedAt *time.Time `json:"revoked_at"`
}

// Record is a proxy record: one customer domain served through edgeproxy.
type Record struct {
	ID          string    `json:"id"`
	OrgID       string    `json:"org_id"`
	Domain      string    `json:"domain"`
	TargetCNAME string    `json:"target_cname"`
	Status      Status    `json:"status"`
	Message     *string   `json:"message"`
	CreatedAt   time.Time `json:"created_at"`
	UpdatedAt   time.Time `json:"updated_at"`
	CreatedBy   *int64    `json:"created_by"`
	// Seq is the record's position in its organization's index.
	Seq uint64 `json:"seq"`
	// OwnershipToken is the value of the record's ownership TXT record
	// (see Ownership), random and different for every record. Empty in
	// records written before tokens existed: Ownership then derives one.
	OwnershipToken string `json:"ownership_token,omitempty"`

	// The lifecycle engine's bookkeeping; the API never shows it.

	// NextCheckAt is when the engine should next act on the record; zero
	// means nothing is scheduled (erroring, timed_out). The store keeps an
	// index on it (DueRecords).
	NextCheckAt time.Time `json:"next_check_at,omitzero"`
	// WaitingSince is when the record last entered waiting (create or
	// retry); the DNS wait deadline counts from it.
	WaitingSince time.Time `json:"waiting_since,omitzero"`
	// IssuingSince is when the record last entered issuing; the issue
	// deadline counts from it.
	IssuingSince time.Time `json:"issuing_since,omitzero"`
	// Checks counts the checks since the status last changed; the pause
	// before the next one grows with it.
	Checks int `json:"checks,omitempty"`
	// CertNotAfter is the expiry of the certificate held for the domain;
	// zero when none is held.
	CertNotAfter time.Time `json:"cert_not_after,omitzero"`
}

// Served reports whether the edge should present a certificate for the
// record: one is held and the record is not being deleted.
func (r *Record) Served() bool {
	return !r.CertNotAfter.IsZero() && r.Status != StatusDeleting
}

// NewID returns a random (version 4) UUID in its canonical text form.
func NewID() string {
	var b [16]byte
	rand.Read(b[:]) // never returns an error (crypto/rand's contract since Go 1.24)
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// IsID reports whether s has the canonical text form of a UUID
// (lower-case hex, 8-4-4-4-12).
func IsID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}
