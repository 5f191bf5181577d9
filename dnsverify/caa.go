package dnsverify

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/miekg/dns"
)

// CAAResult is the result of [Verifier.CheckCAA].
type CAAResult struct {
	// Allowed reports whether the CAA records let one of the identities issue a certificate
	// for the domain. Meaningless when Err is set.
	Allowed bool
	// At is the name where the relevant CAA set was found (the domain or an ancestor, without
	// the trailing dot); "" if no name up to the TLD has CAA records.
	At string
	// Found is the relevant CAA set in presentation form: `example.com CAA 0 issue "ca.example"`.
	// Its owner is At, or the alias target when At has a CNAME.
	Found []string
	// Message is a sentence for the customer. When issuance is forbidden it names the records
	// found and ends with the record to add: `Add this record: <At> CAA 0 issue "<identity>"`
	// (at the alias target instead when At has a CNAME).
	Message string
	// Err is set when no resolver answered (it then wraps ErrNoAnswer): Allowed is unknown and
	// the caller should retry. It is also set, without ErrNoAnswer, for an invalid domain.
	Err error
}

// defaultValidationMethods are the ACME challenges edgeproxy answers: HTTP-01 on its plain
// HTTP listener and TLS-ALPN-01 on its TLS edge.
var defaultValidationMethods = []string{"http-01", "tls-alpn-01"}

// knownCAATags are the property tags a CA is expected to understand (RFC 8659 §4). A record
// with another tag and the critical flag forbids issuance.
var knownCAATags = []string{"issue", "issuewild", "iodef"}

// CheckCAA runs the RFC 8659 CAA pre-flight for a non-wildcard certificate for domain, on
// behalf of a CA whose CAA issuer domains are identities (for Let's Encrypt,
// "letsencrypt.org"). It climbs from domain toward the TLD (the root is not queried) and uses
// the first non-empty CAA set: no set, or a set without an "issue" property, allows any CA;
// otherwise some "issue" property must name one of identities, and, if it has a
// "validationmethods" parameter (RFC 8657), one of v.ValidationMethods. A record with the
// critical flag and a tag the CA does not know forbids issuance. With identities empty, any
// "issue" property forbids issuance.
func (v *Verifier) CheckCAA(ctx context.Context, domain string, identities []string) CAAResult {
	d := normalize(domain)
	if _, ok := dns.IsDomainName(d); !ok || d == "" {
		return CAAResult{
			Err:     fmt.Errorf("dnsverify: checking CAA: invalid domain name %q", domain),
			Message: fmt.Sprintf("%q is not a valid domain name.", domain),
		}
	}
	for _, name := range climb(d) {
		r, err := v.query(ctx, name, dns.TypeCAA)
		if err != nil {
			err = fmt.Errorf("dnsverify: checking CAA of %s: %w", d, err)
			return CAAResult{Err: err, Message: fmt.Sprintf(
				"The CAA check for %s could not be completed: %s. This does not mean your records "+
					"are wrong; the check will be retried automatically.", d, failureReason(err))}
		}
		// The resolver follows a CNAME at name and returns the CAA set of its target, which
		// is then the relevant set for name (RFC 8659 §3).
		var set []*dns.CAA
		for _, rr := range r.Answer {
			if caa, ok := rr.(*dns.CAA); ok {
				set = append(set, caa)
			}
		}
		if len(set) == 0 {
			continue
		}
		return v.evaluateCAA(d, name, set, identities)
	}
	return CAAResult{Allowed: true,
		Message: fmt.Sprintf("No CAA records restrict which CA may issue for %s.", d)}
}

// climb returns domain and its ancestors down to the TLD, closest first.
func climb(domain string) []string {
	labels := dns.SplitDomainName(domain)
	out := make([]string, 0, len(labels))
	for i := range labels {
		out = append(out, strings.Join(labels[i:], "."))
	}
	return out
}

// evaluateCAA decides on the relevant CAA set, found at name, for domain.
func (v *Verifier) evaluateCAA(domain, name string, set []*dns.CAA, identities []string) CAAResult {
	res := CAAResult{At: name}
	// Through a CNAME at name, the set lives at the alias target: that is where to edit it.
	owner, where := name, name
	if o := normalize(set[0].Hdr.Name); o != name {
		owner, where = o, fmt.Sprintf("%s (the target of the CNAME at %s)", o, name)
	}
	for _, caa := range set {
		res.Found = append(res.Found, formatCAA(owner, caa.Flag, caa.Tag, caa.Value))
	}
	addRecord := ""
	who := "this CA"
	if len(identities) > 0 {
		who = identities[0]
		addRecord = " Add this record: " + formatCAA(owner, 0, "issue", identities[0])
	}

	for _, caa := range set {
		// Bit 128 is the critical flag. Like Let's Encrypt, bit 1 counts too: it is widely
		// set by mistake for the critical flag.
		if caa.Flag&(128|1) != 0 && !slices.Contains(knownCAATags, strings.ToLower(caa.Tag)) {
			res.Message = fmt.Sprintf("The CAA record %s is marked critical and has a property "+
				"(%q) a CA does not understand, so no CA may issue a certificate for %s. Remove that "+
				"record or clear its critical flag, and make sure the CAA records at %s allow %s.%s",
				formatCAA(owner, caa.Flag, caa.Tag, caa.Value), caa.Tag, domain, where, who, addRecord)
			return res
		}
	}

	methods := v.ValidationMethods
	if methods == nil {
		methods = defaultValidationMethods
	}
	var issue []*dns.CAA
	var methodMismatch *dns.CAA
	for _, caa := range set {
		if !strings.EqualFold(caa.Tag, "issue") {
			continue
		}
		issue = append(issue, caa)
		issuer, params := parseIssueValue(caa.Value)
		if issuer == "" || !slices.ContainsFunc(identities, func(id string) bool { return sameName(id, issuer) }) {
			continue
		}
		if vm, ok := params["validationmethods"]; ok && !anyMethod(vm, methods) {
			methodMismatch = caa
			continue
		}
		res.Allowed = true
		res.Message = fmt.Sprintf("The CAA records at %s allow %s to issue certificates for %s.",
			where, issuer, domain)
		return res
	}
	if len(issue) == 0 {
		// Only issuewild, iodef or unknown non-critical properties: no restriction for a
		// non-wildcard name (RFC 8659 §4.2).
		res.Allowed = true
		res.Message = fmt.Sprintf("The CAA records at %s do not restrict which CA may issue for %s.",
			where, domain)
		return res
	}
	if methodMismatch != nil {
		res.Message = fmt.Sprintf("The CAA record %s lets %s issue only with validation method %s, "+
			"and edgeproxy validates with %s.%s",
			formatCAA(owner, methodMismatch.Flag, methodMismatch.Tag, methodMismatch.Value), who,
			parseParams(methodMismatch.Value)["validationmethods"], strings.Join(methods, " or "), addRecord)
		return res
	}
	res.Message = fmt.Sprintf("The CAA records at %s do not allow %s to issue certificates for "+
		"%s; they are: %s.%s", where, who, domain, strings.Join(res.Found, "; "), addRecord)
	return res
}

// parseIssueValue splits the value of an "issue" property (RFC 8659 §4.2):
// issuer-domain-name, then parameters "key=value" separated by ';'. The issuer domain is
// returned trimmed and lower-cased, "" when absent (a value of ";" forbids every CA).
// Parameter keys are lower-cased; malformed parameters are skipped.
func parseIssueValue(value string) (issuer string, params map[string]string) {
	issuer, _, _ = strings.Cut(value, ";")
	return normalize(issuer), parseParams(value)
}

func parseParams(value string) map[string]string {
	_, rest, _ := strings.Cut(value, ";")
	params := make(map[string]string)
	for p := range strings.SplitSeq(rest, ";") {
		k, val, ok := strings.Cut(p, "=")
		k = strings.ToLower(strings.TrimSpace(k))
		if !ok || k == "" {
			continue
		}
		params[k] = strings.TrimSpace(val)
	}
	return params
}

// anyMethod reports whether the comma-separated validationmethods list names one of methods.
func anyMethod(list string, methods []string) bool {
	for m := range strings.SplitSeq(list, ",") {
		if slices.ContainsFunc(methods, func(x string) bool { return strings.EqualFold(x, strings.TrimSpace(m)) }) {
			return true
		}
	}
	return false
}

func formatCAA(name string, flag uint8, tag, value string) string {
	return fmt.Sprintf("%s CAA %d %s \"%s\"", name, flag, tag, value)
}
