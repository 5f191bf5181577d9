package store

import (
	"fmt"
	"strconv"
	"strings"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// MaxSlugLength is the longest slug, PostHog's limit.
const MaxSlugLength = 48

// slugFallback is the slug made from a name with no letter or digit that
// has an ASCII form (e.g. one written only in CJK or Cyrillic script).
const slugFallback = "org"

// SlugError is a slug that breaks the rule of CheckSlug. errors.Is(err,
// ErrInvalidSlug) holds for it.
type SlugError struct {
	Slug string
	// Rule says what is wrong, naming the slug: `"Acme" has 'A'; only
	// lower-case letters a-z, digits 0-9 and '-' are allowed`.
	Rule string
}

func (e *SlugError) Error() string        { return "store: invalid slug: " + e.Rule }
func (e *SlugError) Is(target error) bool { return target == ErrInvalidSlug }

// CheckSlug reports whether s may be an organization's slug: 1 to
// MaxSlugLength lower-case ASCII letters, digits and '-', starting and
// ending with a letter or digit, and not in the form of a UUID (which
// would name another organization in an API path). A refusal is a
// *SlugError stating the rule broken.
func CheckSlug(s string) error {
	bad := func(format string, args ...any) error {
		return &SlugError{Slug: s, Rule: fmt.Sprintf(format, args...)}
	}
	switch {
	case s == "":
		return bad("must not be empty")
	case len(s) > MaxSlugLength:
		return bad("%q is %d characters, at most %d are allowed", s, len(s), MaxSlugLength)
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isSlugAlnum(c) && c != '-' {
			return bad("%q has %q; only lower-case letters a-z, digits 0-9 and '-' are allowed", s, rune(c))
		}
	}
	if s[0] == '-' || s[len(s)-1] == '-' {
		return bad("%q must start and end with a letter or digit, not '-'", s)
	}
	if IsID(s) {
		return bad("%q has the form of an organization id (a UUID), which would name another organization in API paths", s)
	}
	return nil
}

func isSlugAlnum(c byte) bool { return 'a' <= c && c <= 'z' || '0' <= c && c <= '9' }

// Slugify makes the base of a slug from an organization's name: accents
// are dropped from letters that have an ASCII form ("Café" gives "cafe"),
// ASCII letters and digits are kept, lower-cased, and every run of other
// characters becomes one '-'. The result passes CheckSlug: a name that
// leaves nothing gives "org", and one that would read as a UUID gets
// "-org" appended.
func Slugify(name string) string {
	var b strings.Builder
	dash := false
	for _, r := range norm.NFKD.String(name) {
		switch {
		case unicode.Is(unicode.Mn, r):
			// A combining mark NFKD split off its letter: dropped, so
			// the letter stays whole.
			continue
		case r < 0x80 && isSlugAlnum(byte(unicode.ToLower(r))):
			if dash && b.Len() > 0 {
				b.WriteByte('-')
			}
			dash = false
			b.WriteByte(byte(unicode.ToLower(r)))
		default:
			dash = true
		}
		if b.Len() >= MaxSlugLength {
			break
		}
	}
	s := strings.TrimRight(truncate(b.String(), MaxSlugLength), "-")
	switch {
	case s == "":
		return slugFallback
	case IsID(s):
		return s + "-" + slugFallback
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// freeSlugTx returns base if no organization holds it, else base with the
// smallest numeric suffix ("acme-2", "acme-3", ...) that none holds, the
// base shortened so the whole stays within MaxSlugLength. base must pass
// CheckSlug.
func freeSlugTx(tx *txn, base string) (string, error) {
	bySlug := tx.Bucket(bucketOrgsBySlug)
	if bySlug.Get([]byte(base)) == nil {
		return base, nil
	}
	// Among n slugs held, one of the n+1 suffixes 2..n+2 is free.
	n := bySlug.KeyN()
	for i := 2; i <= n+2; i++ {
		suffix := "-" + strconv.Itoa(i)
		s := strings.TrimRight(truncate(base, MaxSlugLength-len(suffix)), "-") + suffix
		if bySlug.Get([]byte(s)) == nil {
			return s, nil
		}
	}
	return "", fmt.Errorf("no free slug for %q among %d", base, n)
}

// indexSlugTx gives org a slug and indexes it. An empty org.Slug is made
// from the name (with a suffix if taken); a given one must pass CheckSlug
// and be free (ErrSlugTaken).
func indexSlugTx(tx *txn, org *Org) error {
	bySlug := tx.Bucket(bucketOrgsBySlug)
	if org.Slug == "" {
		s, err := freeSlugTx(tx, Slugify(org.Name))
		if err != nil {
			return err
		}
		org.Slug = s
	} else {
		if err := CheckSlug(org.Slug); err != nil {
			return err
		}
		if id := bySlug.Get([]byte(org.Slug)); id != nil && string(id) != org.ID {
			return fmt.Errorf("%w: %q belongs to another organization", ErrSlugTaken, org.Slug)
		}
	}
	return bySlug.Put([]byte(org.Slug), []byte(org.ID))
}
