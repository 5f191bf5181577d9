package certs

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"syscall"
	"time"

	"github.com/mholt/acmez/v3/acme"
)

// IsPermanent reports whether err is an ACME problem that retrying cannot
// fix: the CA refuses the domain itself (a CAA record forbids it, the
// identifier is rejected or unsupported, or malformed as a domain name).
// Network failures, timeouts, rate limits and failed validations (DNS not
// pointing here yet) are not permanent.
func IsPermanent(err error) bool {
	p, ok := problem(err)
	if !ok {
		return false
	}
	if permanentProblem(p.Type, p.Detail, false) {
		return true
	}
	for _, sp := range p.Subproblems {
		if permanentProblem(sp.Type, sp.Detail, sp.Identifier.Value != "") {
			return true
		}
	}
	return false
}

func permanentProblem(typ, detail string, aboutIdentifier bool) bool {
	switch typ {
	case acme.ProblemTypeCAA, acme.ProblemTypeRejectedIdentifier, acme.ProblemTypeUnsupportedIdentifier:
		return true
	case acme.ProblemTypeMalformed:
		// malformed also covers broken requests and, at some CAs, names
		// that do not resolve yet: only a complaint about the name is final.
		if aboutIdentifier {
			return true
		}
		d := strings.ToLower(detail)
		for _, s := range []string{"identifier", "domain name", "dns name", "invalid character"} {
			if strings.Contains(d, s) {
				return true
			}
		}
	}
	return false
}

// maxReason bounds Reason's length: it ends up in a record's message.
const maxReason = 300

var httpStatusRE = regexp.MustCompile(`\bHTTP (5\d\d)\b`)

// Reason says in one short line, for the customer, why err happened: the
// CA's problem detail when the CA answered, else what went wrong talking
// to it. It returns "" for a nil error.
func Reason(err error) string {
	if err == nil {
		return ""
	}
	if p, ok := problem(err); ok {
		return truncate(problemDetail(p))
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "the certificate authority did not answer in time"
	case errors.Is(err, context.Canceled):
		return "the request to the certificate authority was cancelled"
	case untrusted(err):
		return "the certificate authority's TLS certificate is not trusted"
	case unreachable(err):
		return "the certificate authority could not be reached"
	}
	if m := httpStatusRE.FindStringSubmatch(err.Error()); m != nil {
		return fmt.Sprintf("the certificate authority is unavailable (HTTP %s)", m[1])
	}
	return truncate(err.Error())
}

func problem(err error) (acme.Problem, bool) {
	var p acme.Problem
	if errors.As(err, &p) {
		return p, true
	}
	var pp *acme.Problem
	if errors.As(err, &pp) && pp != nil {
		return *pp, true
	}
	return acme.Problem{}, false
}

// problemDetail is the problem's detail without Boulder's "Error creating
// new order :: " context, followed by its subproblems' details.
func problemDetail(p acme.Problem) string {
	detail := lastPart(p.Detail)
	if detail == "" {
		detail = strings.TrimPrefix(p.Type, acme.ProblemTypeNamespace)
	}
	for _, sp := range p.Subproblems {
		d := lastPart(sp.Detail)
		if d == "" || strings.Contains(detail, d) {
			continue
		}
		if sp.Identifier.Value != "" && !strings.Contains(d, sp.Identifier.Value) {
			d = sp.Identifier.Value + ": " + d
		}
		detail += "; " + d
	}
	return detail
}

func lastPart(detail string) string {
	if i := strings.LastIndex(detail, " :: "); i >= 0 {
		detail = detail[i+len(" :: "):]
	}
	return strings.TrimSpace(detail)
}

func untrusted(err error) bool {
	var verifyErr *tls.CertificateVerificationError
	var unknownErr x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	return errors.As(err, &verifyErr) || errors.As(err, &unknownErr) || errors.As(err, &hostErr)
}

func unreachable(err error) bool {
	var opErr *net.OpError
	var urlErr *url.Error
	var dnsErr *net.DNSError
	return errors.As(err, &opErr) || errors.As(err, &urlErr) || errors.As(err, &dnsErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET)
}

func truncate(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) <= maxReason {
		return s
	}
	cut := maxReason
	for cut > 0 && s[cut]&0xc0 == 0x80 { // keep UTF-8 whole
		cut--
	}
	return s[:cut] + "…"
}

// RateLimit reports whether err is the CA refusing an order because we
// asked too much (an ACME rateLimited problem, or HTTP 429), and until
// when, if the CA said. acmez drops the response's Retry-After header on
// the way up and certmagic keeps its HTTP client to itself, so the time is
// read from the problem's detail, where Let's Encrypt writes it ("...,
// retry after 2025-09-18 09:13:16 UTC: see https://..."). until is zero
// when the detail names no time.
func RateLimit(err error) (until time.Time, ok bool) {
	p, isProblem := problem(err)
	if !isProblem || !isRateLimited(p.Type, p.Status) {
		return time.Time{}, false
	}
	return retryAfterInDetail(p.Detail), true
}

// LimitScope is what a CA rate limit applies to.
type LimitScope int

const (
	// ScopeUnknown: the CA's words name no limit known here.
	ScopeUnknown LimitScope = iota
	// ScopeName: the one name ordered. Let's Encrypt's duplicate
	// certificate limit (certificates for the exact set of identifiers)
	// and its failed-authorization limit (per identifier, per account).
	ScopeName
	// ScopeRegisteredDomain: every name under the ordered name's
	// registered domain (certificates per registered domain).
	ScopeRegisteredDomain
	// ScopeAccount: every order of the ACME account, whatever the name:
	// new orders per account, pending authorizations per account, and the
	// limits on creating accounts, without which no order can be placed.
	ScopeAccount
)

func (s LimitScope) String() string {
	switch s {
	case ScopeName:
		return "name"
	case ScopeRegisteredDomain:
		return "registered_domain"
	case ScopeAccount:
		return "account"
	}
	return "unknown"
}

// The words by which Let's Encrypt (Boulder) names its limits, current
// and earlier texts, and the anchors of its rate-limit documentation the
// detail links to. Matched lower-case, after the names of the order are
// taken out of the text (see RateLimitScope).
var (
	nameLimitWords = []string{
		"exact set of", // "too many certificates (5) already issued for this exact set of identifiers"
		"duplicate-certificate-limit", "new-certificates-per-exact-set-of-",
		"failed authorization", // "too many failed authorizations (5) for "e.example.com" in the last 1h0m0s"
		"failed validation",    // "too many failed validations"
		"authorization-failures-per-", "failed-validation-limit",
	}
	registeredDomainLimitWords = []string{
		"already issued for", // "too many certificates (50) already issued for "example.com"", "... issued for: example.com"
		"per registered domain", "per-registered-domain",
	}
	accountLimitWords = []string{
		"new orders", "new-orders-per-account", // "too many new orders (300) from this account in the last 3h0m0s"
		"pending authorizations", "pending-authorizations-per-account",
		"from this account",
		"new registrations", "new-registrations-per-", "registrations per ip",
	}
	quotedRE = regexp.MustCompile(`"[^"]*"|'[^']*'`)
)

// RateLimitScope says what the CA's rate limit err, met by an order for
// domain, applies to (ScopeUnknown when err is no rate limit, or when the
// CA's words name no known limit). It reads the problem's detail and its
// subproblems: a rateLimited subproblem about domain itself is about the
// name. Where several limits are named, the narrowest wins.
//
// The detail may quote the name ordered, which a customer chooses: quoted
// text and the name and each of its parent domains are taken out before
// matching, so a name such as new-orders-per-account.example.com cannot
// pass its own limit off as the account's.
func RateLimitScope(err error, domain string) LimitScope {
	p, ok := problem(err)
	if !ok || !isRateLimited(p.Type, p.Status) {
		return ScopeUnknown
	}
	scope := scopeOfDetail(p.Detail, domain)
	for _, sp := range p.Subproblems {
		s := scopeOfDetail(sp.Detail, domain)
		if isRateLimited(sp.Type, sp.Status) && sp.Identifier.Value != "" && strings.EqualFold(normalizeName(sp.Identifier.Value), normalizeName(domain)) {
			s = ScopeName
		}
		if s != ScopeUnknown && (scope == ScopeUnknown || s < scope) {
			scope = s
		}
	}
	return scope
}

func isRateLimited(typ string, status int) bool {
	return strings.TrimPrefix(typ, acme.ProblemTypeNamespace) == "rateLimited" || status == 429
}

func scopeOfDetail(detail, domain string) LimitScope {
	d := quotedRE.ReplaceAllString(strings.ToLower(detail), `""`)
	name := normalizeName(domain)
	for name != "" && strings.Contains(name, ".") {
		d = strings.ReplaceAll(d, name, "")
		_, name, _ = strings.Cut(name, ".")
	}
	has := func(words []string) bool {
		for _, w := range words {
			if strings.Contains(d, w) {
				return true
			}
		}
		return false
	}
	switch {
	case has(nameLimitWords):
		return ScopeName
	case has(registeredDomainLimitWords):
		return ScopeRegisteredDomain
	case has(accountLimitWords):
		return ScopeAccount
	}
	return ScopeUnknown
}

// retryAfterRE finds the time in "retry after <time>": Boulder's
// "2006-01-02 15:04:05 UTC" or an RFC 3339 time.
var retryAfterRE = regexp.MustCompile(`(?i)retry after (\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?: ?UTC|Z|[+-]\d{2}:\d{2}))`)

func retryAfterInDetail(detail string) time.Time {
	m := retryAfterRE.FindStringSubmatch(detail)
	if m == nil {
		return time.Time{}
	}
	s := strings.Replace(m[1], " ", "T", 1)
	s = strings.TrimSuffix(strings.TrimSuffix(s, "UTC"), " ")
	if !strings.HasSuffix(s, "Z") && !strings.ContainsAny(s[len("2006-01-02T15:04:05"):], "+-") {
		s += "Z"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t
}

// CAUnavailable reports whether err shows the CA itself down or failing:
// it could not be reached (refused, reset, closed, no route) or answered
// with a server error (5xx). Such a failure says nothing about the domain
// being ordered. A timeout is not counted: the time may have gone to a
// slow validation of the domain. An untrusted CA certificate is a
// configuration error, not an outage.
func CAUnavailable(err error) bool {
	if err == nil || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	if p, ok := problem(err); ok {
		return p.Status >= 500 || p.Type == acme.ProblemTypeServerInternal
	}
	if untrusted(err) {
		return false
	}
	return unreachable(err) || httpStatusRE.MatchString(err.Error())
}

// knownProblems are the ACME problem types reported by name in metrics;
// any other is "other", so the label stays bounded.
var knownProblems = map[string]bool{
	"caa": true, "rateLimited": true, "rejectedIdentifier": true, "unsupportedIdentifier": true,
	"malformed": true, "unauthorized": true, "connection": true, "dns": true, "tls": true,
	"incorrectResponse": true, "serverInternal": true, "badNonce": true, "orderNotReady": true,
}

// ErrorType classifies an ACME failure for metrics: the ACME problem type
// without its namespace ("caa", "rateLimited", ...), or "timeout",
// "unreachable", "untrusted", "unavailable", "other".
func ErrorType(err error) string {
	if p, ok := problem(err); ok {
		t := strings.TrimPrefix(p.Type, acme.ProblemTypeNamespace)
		if knownProblems[t] {
			return t
		}
		return "other"
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case untrusted(err):
		return "untrusted"
	case unreachable(err):
		return "unreachable"
	case httpStatusRE.MatchString(err.Error()):
		return "unavailable"
	}
	return "other"
}
