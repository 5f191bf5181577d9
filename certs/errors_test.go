package certs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"

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
