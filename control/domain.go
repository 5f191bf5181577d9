package control

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/net/publicsuffix"
)

// idnaProfile maps Unicode input the way browsers do for lookups
// (UTS #46, non-transitional) and converts it to its ASCII form. The
// character and hyphen rules are checked by NormalizeDomain itself, so its
// errors can name the rule that was broken: MapForLookup turns on STD3 rules
// and hyphen checks, which would refuse '_' or '-e' with an opaque idna error
// and also refuse "ab--cd" (hyphens in the third and fourth places), which
// the contract allows; both are turned off again here.
var idnaProfile = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.Transitional(false),
	idna.StrictDomainName(false), idna.CheckHyphens(false))

// domainError is a domain that breaks a rule. code is "required" or
// "invalid_input"; detail names the rule.
type domainError struct {
	code   string
	detail string
}

func (e *domainError) Error() string { return e.detail }

func (e *domainError) apiError() *apiError {
	return &apiError{Status: 400, Type: "validation_error", Code: e.code, Detail: e.detail, Attr: attr("domain")}
}

func invalidDomain(format string, args ...any) *domainError {
	return &domainError{code: "invalid_input", detail: fmt.Sprintf(format, args...)}
}

// NormalizeDomain turns what a customer typed into the domain edgeproxy
// stores, or says which rule it breaks: trimmed, lower-cased, one
// trailing dot dropped, Unicode turned into punycode; refused when empty,
// when it carries a scheme, path, port, user info, space or '*', when it
// is an IP address, a single label, a name whose top-level label the
// public suffix list does not know or a public suffix, when a label is
// longer than 63 bytes or the name longer than 253, when it holds anything
// but letters, digits, '-' and dots, when a label starts or ends with '-',
// and when it is targetBase or a name under it. A registrable domain
// (example.com) is accepted: it cannot hold a CNAME, so it goes live only
// through address or ALIAS records and the record's ownership TXT record,
// which the lifecycle engine checks.
func NormalizeDomain(raw, targetBase string) (string, error) {
	d := strings.TrimSpace(raw)
	if d == "" {
		return "", &domainError{code: "required", detail: "This field is required."}
	}
	if !utf8.ValidString(d) {
		// idna turns invalid bytes into U+FFFD and encodes that as
		// punycode without complaint; the name could not be normalized
		// again.
		return "", invalidDomain("A domain name must be valid UTF-8 text.")
	}
	switch {
	case strings.Contains(d, "://"):
		return "", invalidDomain("Enter a domain name only, without a scheme such as https://.")
	case strings.Contains(d, "/"):
		return "", invalidDomain("Enter a domain name only, without a path ('/').")
	case strings.Contains(d, "@"):
		return "", invalidDomain("Enter a domain name only, without user info ('@').")
	case strings.ContainsAny(d, " \t\r\n\v\f"):
		return "", invalidDomain("A domain name cannot contain spaces.")
	case strings.Contains(d, "*"):
		return "", invalidDomain("Wildcard domains ('*') are not supported; register each subdomain.")
	}
	if ip := net.ParseIP(strings.Trim(d, "[]")); ip != nil {
		return "", invalidDomain("Enter a domain name, not an IP address.")
	}
	if strings.Contains(d, ":") {
		return "", invalidDomain("Enter a domain name only, without a port (':').")
	}
	d = strings.TrimSuffix(d, ".")
	ascii, err := idnaProfile.ToASCII(d)
	if err != nil {
		return "", invalidDomain("%q is not a valid internationalized domain name: %v.", raw, err)
	}
	d = strings.ToLower(ascii)
	if ip := net.ParseIP(d); ip != nil {
		// Full-width digits map to an IP address only after IDNA mapping.
		return "", invalidDomain("Enter a domain name, not an IP address.")
	}
	if len(d) > 253 {
		return "", invalidDomain("A domain name can be at most 253 characters long; this one has %d.", len(d))
	}
	labels := strings.Split(d, ".")
	for _, label := range labels {
		if err := checkLabel(label); err != nil {
			return "", err
		}
	}
	if len(labels) < 2 {
		return "", invalidDomain("%q is a single label; enter a full domain name such as e.example.com.", d)
	}
	if targetBase != "" && (d == targetBase || strings.HasSuffix(d, "."+targetBase)) {
		return "", invalidDomain("%q is at or under %s, which edgeproxy itself serves; enter your own domain.", d, targetBase)
	}
	if tld := labels[len(labels)-1]; !knownTLD(tld) {
		return "", invalidDomain("%q ends in .%s, a top-level domain that is not in the public suffix list; enter a name under a public top-level domain such as .com.", d, tld)
	}
	if _, err := publicsuffix.EffectiveTLDPlusOne(d); err != nil {
		return "", invalidDomain("%q is a public suffix; enter a domain you own, such as example.com or e.example.com.", d)
	}
	return d, nil
}

// knownTLD reports whether tld is a top-level domain of the public suffix
// list's ICANN section. publicsuffix.PublicSuffix answers every name: an
// unknown top-level label comes back as its own suffix with icann false (the
// list's default rule "*"), and so does a private suffix such as github.io,
// so icann alone cannot say whether the top-level label is known. Asking
// about the label by itself is not enough either: a country listed only by
// a wildcard ("*.ck", "*.jm") answers icann false for the bare label but
// true for a name one level below it.
func knownTLD(tld string) bool {
	if _, icann := publicsuffix.PublicSuffix(tld); icann {
		return true
	}
	_, icann := publicsuffix.PublicSuffix("x." + tld)
	return icann
}

// checkLabel applies the hostname rules (RFC 1123) to one label.
func checkLabel(label string) *domainError {
	if label == "" {
		return invalidDomain("A domain name cannot contain an empty label ('..').")
	}
	if len(label) > 63 {
		return invalidDomain("The label %q is %d characters long; a label can be at most 63.", label, len(label))
	}
	for i := 0; i < len(label); i++ {
		c := label[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return invalidDomain("The label %q contains %q; only letters, digits and '-' are allowed.", label, string(c))
		}
	}
	if label[0] == '-' || label[len(label)-1] == '-' {
		return invalidDomain("The label %q starts or ends with '-', which is not allowed.", label)
	}
	return nil
}

// TargetCNAME is the name a customer points the domain's CNAME at: the
// first 20 hex digits of sha256(organization id + domain), under base.
func TargetCNAME(orgID, domain, base string) string {
	sum := sha256.Sum256([]byte(orgID + domain))
	return hex.EncodeToString(sum[:])[:20] + "." + base
}
