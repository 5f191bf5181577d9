package webhooks

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// The headers of a Standard Webhooks delivery.
const (
	HeaderID        = "webhook-id"
	HeaderTimestamp = "webhook-timestamp"
	HeaderSignature = "webhook-signature"
)

// secretPrefix starts every secret, as Standard Webhooks writes them.
const secretPrefix = "whsec_"

// secretBytes is the size of a signing key: Standard Webhooks asks for 24
// to 64 bytes.
const secretBytes = 32

// NewSecret returns a fresh secret: whsec_ followed by the standard base64
// of 32 random bytes.
func NewSecret() string {
	key := make([]byte, secretBytes)
	rand.Read(key) // never returns an error (crypto/rand's contract since Go 1.24)
	return secretPrefix + base64.StdEncoding.EncodeToString(key)
}

// errSecret is a secret that is not whsec_ followed by base64.
var errSecret = errors.New("webhooks: secret is not whsec_ followed by base64")

// signingKey decodes a secret into the HMAC key. The prefix is optional,
// as the Standard Webhooks libraries accept it either way.
func signingKey(secret string) ([]byte, error) {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, secretPrefix))
	if err != nil || len(key) == 0 {
		return nil, errSecret
	}
	return key, nil
}

// Sign returns the webhook-signature header value of a delivery:
// "v1," and the base64 HMAC-SHA256, keyed with the decoded secret, of the
// message id, the Unix timestamp and the body joined by dots.
func Sign(secret, id string, ts time.Time, body []byte) (string, error) {
	key, err := signingKey(secret)
	if err != nil {
		return "", err
	}
	return "v1," + base64.StdEncoding.EncodeToString(mac(key, id, ts.Unix(), body)), nil
}

func mac(key []byte, id string, unix int64, body []byte) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(id))
	h.Write([]byte{'.'})
	h.Write([]byte(strconv.FormatInt(unix, 10)))
	h.Write([]byte{'.'})
	h.Write(body)
	return h.Sum(nil)
}

// Verify checks a delivery the way a receiver does: one of the
// space-separated v1 signatures in the webhook-signature header must be
// the body's, and the timestamp must be within tolerance of now. The
// tests' receivers use it; it is what the README's example does.
func Verify(secret string, header func(string) string, body []byte, now time.Time, tolerance time.Duration) error {
	key, err := signingKey(secret)
	if err != nil {
		return err
	}
	id, tsText, sigs := header(HeaderID), header(HeaderTimestamp), header(HeaderSignature)
	if id == "" || tsText == "" || sigs == "" {
		return errors.New("webhooks: missing webhook-id, webhook-timestamp or webhook-signature")
	}
	unix, err := strconv.ParseInt(tsText, 10, 64)
	if err != nil {
		return fmt.Errorf("webhooks: webhook-timestamp %q is not Unix seconds", tsText)
	}
	if d := now.Sub(time.Unix(unix, 0)); d > tolerance || d < -tolerance {
		return fmt.Errorf("webhooks: webhook-timestamp %d is %v away from now", unix, d)
	}
	want := mac(key, id, unix, body)
	for _, s := range strings.Fields(sigs) {
		v, sig, ok := strings.Cut(s, ",")
		if !ok || v != "v1" {
			continue
		}
		got, err := base64.StdEncoding.DecodeString(sig)
		if err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return errors.New("webhooks: no matching v1 signature")
}
