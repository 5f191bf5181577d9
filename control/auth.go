package control

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"slices"
	"strings"

	"github.com/edgeproxy/edgeproxy/store"
)

// Scopes a personal API key can carry. "*" grants every scope; a ":write"
// scope grants the ":read" scope of the same object.
const (
	ScopeAll      = "*"
	ScopeOrgRead  = "organization:read"
	ScopeOrgWrite = "organization:write"
)

// scopePattern is the shape of a scope other than "*": PostHog's
// "<object>:<read|write>". Objects other than organization are accepted so
// keys minted for PostHog's wider API carry over; they grant nothing here.
var scopePattern = regexp.MustCompile(`^[a-z][a-z_]*:(read|write)$`)

// CheckScopes says which scope, if any, is not a valid scope.
func CheckScopes(scopes []string) error {
	if len(scopes) == 0 {
		return errors.New("at least one scope is required")
	}
	for _, s := range scopes {
		if s != ScopeAll && !scopePattern.MatchString(s) {
			return fmt.Errorf("scope %q must be '*' or '<object>:read' or '<object>:write'", s)
		}
	}
	return nil
}

// hasScope reports whether scopes grant want.
func hasScope(scopes []string, want string) bool {
	if slices.Contains(scopes, ScopeAll) || slices.Contains(scopes, want) {
		return true
	}
	if object, ok := strings.CutSuffix(want, ":read"); ok {
		return slices.Contains(scopes, object+":write")
	}
	return false
}

// NewKeyValue returns a fresh personal API key value: "phx_" and 43
// characters carrying 256 random bits.
func NewKeyValue() string {
	var b [32]byte
	rand.Read(b[:])
	return "phx_" + base64.RawURLEncoding.EncodeToString(b[:])
}

// HashKey is how a key's value is stored: "sha256$" and the hex digest.
// The value itself is never stored.
func HashKey(value string) string {
	sum := sha256.Sum256([]byte(value))
	return "sha256$" + hex.EncodeToString(sum[:])
}

// MaskKey shows enough of a key's value to tell keys apart.
func MaskKey(value string) string {
	if len(value) < 12 {
		return "****"
	}
	return value[:8] + "..." + value[len(value)-4:]
}

// NewKey builds the stored form of a new key for userID, and returns it
// with the value, which is shown once and never kept.
func NewKey(userID int64, label string, scopes, orgs []string) (store.APIKey, string) {
	value := NewKeyValue()
	return store.APIKey{
		UserID: userID,
		Label:  label,
		Hash:   HashKey(value),
		Mask:   MaskKey(value),
		Scopes: scopes,
		Orgs:   orgs,
	}, value
}

// keyFrom finds the personal API key a request carries, in the contract's
// order: the Authorization header, then the body, then the query string.
// The first place that holds a key is the only one tried. where names that
// place for the error message.
//
// The body is read only when no header key was found and the method sends
// content (mayCarryBodyKey), and parsed only when it may hold the field
// (mayHoldKey): a body without the field costs no parsing, whoever sends
// it.
func keyFrom(r *http.Request, body *body) (value, where string, err *apiError) {
	if auth := r.Header.Get("Authorization"); auth != "" {
		scheme, rest, _ := strings.Cut(auth, " ")
		if strings.EqualFold(scheme, "Bearer") {
			if v := strings.TrimSpace(rest); v != "" {
				return v, "Authorization header", nil
			}
		}
	}
	if mayCarryBodyKey(r) {
		data, err := body.bytes()
		if err != nil && err.Code == "request_too_large" {
			return "", "", err
		}
		// A body that cannot be read or parsed holds no key; the handler
		// that needs the body reports the parse error after
		// authentication.
		if err == nil && mayHoldKey(data) {
			if b, err := body.decode(); err == nil && b.key != "" {
				return b.key, "body", nil
			}
		}
	}
	if v := r.URL.Query().Get("personal_api_key"); v != "" {
		return v, "query string", nil
	}
	return "", "", nil
}

// mayCarryBodyKey reports whether r's body is looked at for a key: only
// the methods whose requests send content (POST, PUT, PATCH, DELETE) and
// only when there is a body. A GET or HEAD body is never read for a key.
// The content type does not decide, as it does not for the create call:
// PostHog's own curl example sends a form body with a JSON type.
func mayCarryBodyKey(r *http.Request) bool {
	switch r.Method {
	case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
		return r.Body != nil && r.Body != http.NoBody
	}
	return false
}

// authenticate resolves the request's key to a live stored key.
func (a *API) authenticate(r *http.Request, body *body) (store.APIKey, *apiError) {
	value, where, aerr := keyFrom(r, body)
	if aerr != nil {
		return store.APIKey{}, aerr
	}
	if value == "" {
		return store.APIKey{}, errNotAuthenticated
	}
	hash := HashKey(value)
	key, err := a.store.KeyByHash(hash)
	if errors.Is(err, store.ErrNotFound) {
		return store.APIKey{}, keyInvalid(where)
	}
	if err != nil {
		return store.APIKey{}, internalError(fmt.Errorf("looking up key: %w", err))
	}
	// The lookup is by hash, so timing reveals nothing about the value;
	// the comparison is constant-time all the same.
	if subtle.ConstantTimeCompare([]byte(key.Hash), []byte(hash)) != 1 || key.RevokedAt != nil {
		return store.APIKey{}, keyInvalid(where)
	}
	return key, nil
}
