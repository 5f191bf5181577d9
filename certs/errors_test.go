package certs

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mholt/acmez/v3/acme"
	"go.uber.org/zap"
)

// wrapped wraps err the way certmagic and acmez do on the way up.
func wrapped(err error) error {
	err = fmt.Errorf("creating new order: %w", err)
	err = fmt.Errorf("[e.example.com] %w (ca=https://ca.example/dir)", err)
	return fmt.Errorf("e.example.com: obtaining certificate: [e.example.com] Obtain: %w", err)
}

func TestIsPermanentAndReason(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		err       error
		permanent bool
		reason    string
	}{
		{"nil", nil, false, ""},
		{"caa", wrapped(acme.Problem{Type: acme.ProblemTypeCAA, Status: 403,
			Detail: "Error finalizing order :: CAA record for e.example.com prevents issuance"}),
			true, "CAA record for e.example.com prevents issuance"},
		{"rejected identifier", wrapped(acme.Problem{Type: acme.ProblemTypeRejectedIdentifier,
			Detail: "Cannot issue for \"e.example.com\": The ACME server refuses to issue for this domain name"}),
			true, "Cannot issue for \"e.example.com\": The ACME server refuses to issue for this domain name"},
		{"unsupported identifier", wrapped(acme.Problem{Type: acme.ProblemTypeUnsupportedIdentifier}),
			true, "unsupportedIdentifier"},
		{"malformed domain name", wrapped(acme.Problem{Type: acme.ProblemTypeMalformed,
			Detail: "Domain name contains an invalid character"}), true, "Domain name contains an invalid character"},
		{"compound with identifier", wrapped(acme.Problem{Type: acme.ProblemTypeCompound, Detail: "Cannot issue",
			Subproblems: []acme.Subproblem{{
				Problem:    acme.Problem{Type: acme.ProblemTypeMalformed, Detail: "bad label"},
				Identifier: acme.Identifier{Type: "dns", Value: "e.example.com"},
			}}}), true, "Cannot issue; e.example.com: bad label"},
		// Pebble says "malformed" when the name does not resolve: the
		// customer's DNS may still change.
		{"malformed resolution", wrapped(acme.Problem{Type: acme.ProblemTypeMalformed,
			Detail: `Error occurred while resolving URL "e.example.com": "NXDOMAIN"`}),
			false, `Error occurred while resolving URL "e.example.com": "NXDOMAIN"`},
		{"unauthorized", wrapped(acme.Problem{Type: acme.ProblemTypeUnauthorized, Detail: "Invalid response from http://e.example.com/"}),
			false, "Invalid response from http://e.example.com/"},
		{"rate limited", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Detail: "too many certificates"}),
			false, "too many certificates"},
		{"deadline", wrapped(context.DeadlineExceeded), false, "the certificate authority did not answer in time"},
		{"refused", wrapped(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}),
			false, "the certificate authority could not be reached"},
		{"http 503", wrapped(errors.New("HTTP 503: down")), false, "the certificate authority is unavailable (HTTP 503)"},
		{"other", errors.New("something\nodd"), false, "something odd"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := IsPermanent(tt.err); got != tt.permanent {
				t.Errorf("IsPermanent = %v, want %v", got, tt.permanent)
			}
			if got := Reason(tt.err); got != tt.reason {
				t.Errorf("Reason = %q, want %q", got, tt.reason)
			}
		})
	}
}

func TestReasonIsShort(t *testing.T) {
	t.Parallel()
	long := acme.Problem{Type: acme.ProblemTypeCAA, Detail: strings.Repeat("é", 400)}
	got := Reason(wrapped(long))
	if len(got) > maxReason+len("…") {
		t.Errorf("Reason is %d bytes", len(got))
	}
	if !strings.HasSuffix(got, "…") || !strings.HasPrefix(got, "é") {
		t.Errorf("Reason = %q", got)
	}
}

func TestZapBridge(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	zl := newZapLogger(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug})))
	zl.Info("lock acquired", zap.String("identifier", "e.example.com"))
	zl.Named("obtain").With(zap.String("identifier", "e.example.com")).
		Error("could not get certificate", zap.Error(errors.New("boom")))
	out := buf.String()
	if strings.Contains(out, "lock acquired") {
		t.Errorf("info line passed the bridge: %s", out)
	}
	for _, want := range []string{"level=ERROR", `msg="could not get certificate"`, "component=certmagic",
		"identifier=e.example.com", "error=boom", "logger=obtain"} {
		if !strings.Contains(out, want) {
			t.Errorf("log %q lacks %q", out, want)
		}
	}
}

func TestRateLimit(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 26, 16, 0, 0, 0, time.UTC)
	for _, tt := range []struct {
		name  string
		err   error
		ok    bool
		until time.Time
	}{
		{"let's encrypt detail", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429,
			Detail: "too many new orders (300) from this account in the last 3h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account"}),
			true, at},
		{"rfc 3339 in detail", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited,
			Detail: "Rate limit exceeded, retry after 2026-11-26T17:00:00+01:00"}), true, at},
		{"fractional seconds", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited,
			Detail: "retry after 2026-11-26T16:00:00.250Z"}), true, at.Add(250 * time.Millisecond)},
		{"no time", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Detail: "too many certificates"}), true, time.Time{}},
		{"garbled time", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Detail: "retry after 2026-13-45 99:00:00 UTC"}), true, time.Time{}},
		{"429 of another type", wrapped(acme.Problem{Type: "about:blank", Status: 429}), true, time.Time{}},
		{"other problem", wrapped(acme.Problem{Type: acme.ProblemTypeServerInternal, Status: 503,
			Detail: "retry after 2026-11-26 16:00:00 UTC"}), false, time.Time{}},
		{"network", wrapped(&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}), false, time.Time{}},
		{"nil", nil, false, time.Time{}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			until, ok := RateLimit(tt.err)
			if ok != tt.ok || !until.Equal(tt.until) {
				t.Errorf("RateLimit = %v, %v; want %v, %v", until, ok, tt.until, tt.ok)
			}
		})
	}
}

func TestCAUnavailable(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"refused", wrapped(&net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), true},
		{"reset", wrapped(fmt.Errorf("performing request: %w", &url.Error{Op: "Get", URL: "https://ca.example/dir", Err: syscall.ECONNRESET})), true},
		{"503 problem", wrapped(acme.Problem{Type: acme.ProblemTypeServerInternal, Status: 503, Detail: "down for maintenance"}), true},
		{"500 problem without status", wrapped(acme.Problem{Type: acme.ProblemTypeServerInternal}), true},
		{"502 text", wrapped(errors.New("HTTP 502: bad gateway")), true},
		{"rate limited", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429}), false},
		{"validation failed", wrapped(acme.Problem{Type: acme.ProblemTypeUnauthorized, Status: 403}), false},
		{"caa", wrapped(acme.Problem{Type: acme.ProblemTypeCAA, Status: 403}), false},
		{"timeout", wrapped(context.DeadlineExceeded), false},
		{"untrusted", wrapped(&url.Error{Op: "Get", URL: "https://ca.example/dir", Err: x509.UnknownAuthorityError{}}), false},
		{"nil", nil, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := CAUnavailable(tt.err); got != tt.want {
				t.Errorf("CAUnavailable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

// TestRateLimitScope classifies Let's Encrypt's rate-limit problems, in
// their current and earlier wordings, by what they limit; and a name
// chosen to look like an account-wide limit stays a limit on the name.
func TestRateLimitScope(t *testing.T) {
	t.Parallel()
	limited := func(detail string) error {
		return wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: detail})
	}
	for _, tt := range []struct {
		name   string
		err    error
		domain string
		want   LimitScope
	}{
		{"exact set of identifiers", limited(`too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers`),
			"e.example.com", ScopeName},
		{"exact set of domains (2024)", limited(`too many certificates (5) already issued for this exact set of domains in the last 168h0m0s, retry after 2024-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-hostnames`),
			"e.example.com", ScopeName},
		{"exact set, old wording", limited(`Error creating new order :: too many certificates already issued for exact set of domains: e.example.com: see https://letsencrypt.org/docs/rate-limits/`),
			"e.example.com", ScopeName},
		{"failed authorizations", limited(`too many failed authorizations (5) for "e.example.com" in the last 1h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-identifier-per-account`),
			"e.example.com", ScopeName},
		{"failed validations, old wording", limited(`Error creating new order :: too many failed authorizations recently: see https://letsencrypt.org/docs/failed-validation-limit/`),
			"e.example.com", ScopeName},
		{"registered domain", limited(`too many certificates (50) already issued for "example.com" in the last 168h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain`),
			"e.example.com", ScopeRegisteredDomain},
		{"registered domain, old wording", limited(`Error creating new order :: too many certificates already issued for: example.com: see https://letsencrypt.org/docs/rate-limits/`),
			"e.example.com", ScopeRegisteredDomain},
		{"new orders per account", limited(`too many new orders (300) from this account in the last 3h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account`),
			"e.example.com", ScopeAccount},
		{"new orders, old wording", limited(`Error creating new order :: too many new orders recently: see https://letsencrypt.org/docs/rate-limits/`),
			"e.example.com", ScopeAccount},
		{"pending authorizations", limited(`Error creating new order :: too many currently pending authorizations: see https://letsencrypt.org/docs/rate-limits/`),
			"e.example.com", ScopeAccount},
		{"new registrations", limited(`too many new registrations (10) from this IP address in the last 3h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#new-registrations-per-ip-address`),
			"e.example.com", ScopeAccount},
		{"subproblem about the name", wrapped(acme.Problem{Type: acme.ProblemTypeRateLimited, Status: 429, Detail: "Cannot issue",
			Subproblems: []acme.Subproblem{{Problem: acme.Problem{Type: acme.ProblemTypeRateLimited, Detail: "limit reached"},
				Identifier: acme.Identifier{Type: "dns", Value: "E.example.com"}}}}),
			"e.example.com", ScopeName},
		{"unknown wording", limited(`slow down, retry after 2026-11-26 16:00:00 UTC`), "e.example.com", ScopeUnknown},
		{"429 without a detail", wrapped(acme.Problem{Type: "about:blank", Status: 429}), "e.example.com", ScopeUnknown},
		{"not a rate limit", wrapped(acme.Problem{Type: acme.ProblemTypeServerInternal, Status: 503, Detail: "too many new orders"}), "e.example.com", ScopeUnknown},
		// A customer's name that spells an account-wide limit: its own
		// failed-authorization limit is still about the name.
		{"hostile name, quoted", limited(`too many failed authorizations (5) for "new-orders-per-account.evil.example" in the last 1h0m0s, retry after 2026-11-26 16:00:00 UTC: see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-identifier-per-account`),
			"new-orders-per-account.evil.example", ScopeName},
		{"hostile name, unquoted", limited(`too many certificates already issued for exact set of domains: new-orders-per-account.evil.example: see https://letsencrypt.org/docs/rate-limits/`),
			"new-orders-per-account.evil.example", ScopeName},
		{"hostile name, no other words", limited(`limit for new-orders-per-account.from-this-account.example`),
			"new-orders-per-account.from-this-account.example", ScopeUnknown},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := RateLimitScope(tt.err, tt.domain); got != tt.want {
				t.Errorf("RateLimitScope = %v, want %v", got, tt.want)
			}
		})
	}
}
