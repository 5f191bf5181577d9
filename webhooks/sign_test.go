package webhooks

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The test vector of the Standard Webhooks specification's reference
// libraries: TestWebhookSign in libraries/go/webhook_test.go and "sign
// function works" in libraries/javascript/src/webhook.test.ts of
// github.com/standard-webhooks/standard-webhooks, both of which sign this
// message with this key and expect this signature.
const (
	vectorSecret    = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	vectorID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	vectorTimestamp = 1614265330
	vectorBody      = `{"test": 2432232314}`
	vectorSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
	// A signature of the same libraries' tests that must not verify.
	vectorWrong = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
)

func TestSignStandardWebhooksVector(t *testing.T) {
	got, err := Sign(vectorSecret, vectorID, time.Unix(vectorTimestamp, 0), []byte(vectorBody))
	if err != nil {
		t.Fatal(err)
	}
	if got != vectorSignature {
		t.Errorf("Sign = %s, want %s", got, vectorSignature)
	}
	// The libraries accept the key with or without its prefix.
	if got, _ := Sign(strings.TrimPrefix(vectorSecret, "whsec_"), vectorID, time.Unix(vectorTimestamp, 0), []byte(vectorBody)); got != vectorSignature {
		t.Errorf("Sign without the prefix = %s", got)
	}
}

func TestVerify(t *testing.T) {
	now := time.Unix(vectorTimestamp, 0)
	headers := func(sig string) func(string) string {
		h := http.Header{}
		h.Set(HeaderID, vectorID)
		h.Set(HeaderTimestamp, "1614265330")
		h.Set(HeaderSignature, sig)
		return h.Get
	}
	body := []byte(vectorBody)
	for _, tt := range []struct {
		name   string
		header func(string) string
		body   []byte
		now    time.Time
		ok     bool
	}{
		{"vector", headers(vectorSignature), body, now, true},
		{"among others", headers(vectorWrong + " v2,abc " + vectorSignature), body, now, true},
		{"wrong signature", headers(vectorWrong), body, now, false},
		{"partial signature", headers(vectorSignature[:8]), body, now, false},
		{"body changed", headers(vectorSignature), []byte(`{"test": 2432232315}`), now, false},
		{"too old", headers(vectorSignature), body, now.Add(6 * time.Minute), false},
		{"from the future", headers(vectorSignature), body, now.Add(-6 * time.Minute), false},
		{"missing id", func(k string) string {
			if k == HeaderID {
				return ""
			}
			return headers(vectorSignature)(k)
		}, body, now, false},
	} {
		err := Verify(vectorSecret, tt.header, tt.body, tt.now, 5*time.Minute)
		if (err == nil) != tt.ok {
			t.Errorf("%s: Verify = %v, want ok %t", tt.name, err, tt.ok)
		}
	}
}

func TestNewSecret(t *testing.T) {
	a, b := NewSecret(), NewSecret()
	if a == b {
		t.Fatal("two secrets are equal")
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(a, "whsec_"))
	if !strings.HasPrefix(a, "whsec_") || err != nil || len(key) != 32 {
		t.Errorf("NewSecret() = %q: want whsec_ and the base64 of 32 bytes", a)
	}
	if _, err := Sign("whsec_not base64!", "id", time.Now(), nil); err == nil {
		t.Error("Sign accepted a secret that is not base64")
	}
}
