package dnsverify

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/miekg/dns"
	"golang.org/x/net/publicsuffix"
)

// Ownership is a record's ownership TXT record: the name it must be published at
// (_edgeproxy.<domain>) and the record's token, the value it must hold. A domain that reaches
// its target only by having the same addresses proves nothing by them, since every target
// resolves to the same edge addresses; this record is the proof that the domain's owner chose
// this record. The token belongs to one record, so another record's TXT never proves it.
type Ownership struct {
	Name  string
	Token string
}

// OwnershipResult is the result of [Verifier.CheckOwnership].
type OwnershipResult struct {
	// Proven: a TXT record at the ownership name holds the token.
	Proven bool
	// Found are the TXT values published at the ownership name now, each record's strings
	// joined, for messages. Empty when there are none or no resolver answered.
	Found []string
	// Err is set when no resolver answered (it wraps ErrNoAnswer), or the name is not valid;
	// Proven is then false and says nothing about the customer's records.
	Err error
}

// CheckOwnership looks up the TXT records at own.Name (following a CNAME there, as the
// resolver does) and reports whether one of them holds own.Token. A value matches when it
// equals the token after surrounding spaces and one pair of surrounding double quotes are
// dropped (DNS hosts differ on whether the quotes of a zone file belong in their forms). An
// empty token matches nothing.
func (v *Verifier) CheckOwnership(ctx context.Context, own Ownership) OwnershipResult {
	name := normalize(own.Name)
	if _, ok := dns.IsDomainName(name); !ok || name == "" {
		return OwnershipResult{Err: fmt.Errorf("dnsverify: checking ownership: invalid name %q", own.Name)}
	}
	l := v.lookup(ctx, name, dns.TypeTXT)
	if l.err != nil {
		return OwnershipResult{Err: fmt.Errorf("dnsverify: checking ownership TXT of %s: %w", name, l.err)}
	}
	res := OwnershipResult{Found: l.txts}
	if own.Token == "" {
		return res
	}
	res.Proven = slices.ContainsFunc(l.txts, func(s string) bool { return txtValue(s) == own.Token })
	return res
}

// txtValue is a published TXT value as compared with a token: surrounding spaces and one pair
// of surrounding double quotes dropped.
func txtValue(s string) string {
	s = strings.TrimSpace(s)
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		s = strings.TrimSpace(s[1 : len(s)-1])
	}
	return s
}

// unescapeTXT turns a TXT string as miekg/dns gives it, in presentation form (a quote or a
// backslash escaped with a backslash, an unprintable byte as \DDD), back into its bytes.
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' || i+1 >= len(s) {
			b.WriteByte(c)
			continue
		}
		if i+3 < len(s) && isDigit(s[i+1]) && isDigit(s[i+2]) && isDigit(s[i+3]) {
			if n := int(s[i+1]-'0')*100 + int(s[i+2]-'0')*10 + int(s[i+3]-'0'); n <= 255 {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i+1])
		i++
	}
	return b.String()
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// DelegationResult is the result of [Verifier.CheckDelegation].
type DelegationResult struct {
	// Delegated: the name's CNAME, or a later hop of its CNAME chain, is the wanted target.
	Delegated bool
	// Chain is the name's CNAME chain as resolved now, fully qualified; empty when it has none.
	Chain []string
	// Err is set when no resolver answered (it wraps ErrNoAnswer), or the name is not valid.
	Err error
}

// CheckDelegation reports whether name (such as _acme-challenge.<domain>) is a CNAME, directly
// or through a chain, to target. It asks for TXT records, as an ACME DNS-01 validation does,
// so the resolver shows the whole chain the certificate authority would follow.
func (v *Verifier) CheckDelegation(ctx context.Context, name, target string) DelegationResult {
	n := normalize(name)
	if _, ok := dns.IsDomainName(n); !ok || n == "" {
		return DelegationResult{Err: fmt.Errorf("dnsverify: checking delegation: invalid name %q", name)}
	}
	l := v.lookup(ctx, n, dns.TypeTXT)
	if l.err != nil {
		return DelegationResult{Err: fmt.Errorf("dnsverify: checking delegation of %s: %w", n, l.err)}
	}
	return DelegationResult{
		Chain:     l.chain,
		Delegated: slices.ContainsFunc(l.chain, func(hop string) bool { return sameName(hop, target) }),
	}
}

// IsApex reports whether domain is a registrable domain (a public suffix plus one label, such
// as example.com or example.co.uk, by the Public Suffix List): a zone apex, where a CNAME
// cannot be added, so it can reach its target only by its addresses.
func IsApex(domain string) bool {
	d := normalize(domain)
	apex, err := publicsuffix.EffectiveTLDPlusOne(d)
	return err == nil && apex == d
}

// ownershipRecord renders own as the record to add, in zone-file form.
func ownershipRecord(own Ownership) string {
	return fmt.Sprintf("%s TXT %q", normalize(own.Name), own.Token)
}

// describeTXT renders TXT values for a message: quoted, so that no byte of them is taken
// for the message's own text, and bounded, since anyone may publish them.
func describeTXT(values []string) string {
	const maxValues, maxLen = 3, 100
	var quoted []string
	for i, v := range values {
		if i == maxValues {
			quoted = append(quoted, fmt.Sprintf("and %d more", len(values)-maxValues))
			break
		}
		if len(v) > maxLen {
			v = v[:maxLen] + "..."
		}
		quoted = append(quoted, fmt.Sprintf("%q", v))
	}
	return strings.Join(quoted, ", ")
}

// unproven builds the result for a domain whose addresses are the target's but whose
// ownership TXT record is missing or holds another value.
func unproven(d, t string, own Ownership, apex bool, found []string, txt OwnershipResult) CNAMEResult {
	var msg strings.Builder
	fmt.Fprintf(&msg, "%s has no CNAME but the same addresses as %s (CNAME flattening, an ALIAS record or "+
		"address records). Those addresses are the same for every domain served here, so they do not prove "+
		"that %s is yours: ", d, t, d)
	name := normalize(own.Name)
	if len(txt.Found) == 0 {
		fmt.Fprintf(&msg, "%s has no TXT record.", name)
	} else {
		fmt.Fprintf(&msg, "the TXT records of %s (%s) do not hold this record's token.", name, describeTXT(txt.Found))
	}
	if apex {
		fmt.Fprintf(&msg, " Add this record: %s", ownershipRecord(own))
	} else {
		fmt.Fprintf(&msg, " Either replace the address records of %s with a CNAME to %s, which proves it by itself, "+
			"or keep them and add this record: %s", d, t, ownershipRecord(own))
	}
	return CNAMEResult{Outcome: OwnershipMissing, Found: found, Message: msg.String()}
}

// apexAdvice is the end of a message for a zone apex that does not reach its target: the
// records to add, since a CNAME cannot be one of them. targetAddrs are the target's addresses
// (none when unknown).
func apexAdvice(d, t string, own Ownership, targetAddrs []netip.Addr) string {
	var msg strings.Builder
	fmt.Fprintf(&msg, "%s is a zone apex, where a CNAME cannot be added: give it the addresses of %s with an "+
		"ALIAS or ANAME record (or CNAME flattening) at your DNS host", d, t)
	if recs := describeAddrs(d+" ", targetAddrs); len(recs) > 0 {
		fmt.Fprintf(&msg, ", or with these address records: %s", strings.Join(recs, ", "))
	}
	fmt.Fprintf(&msg, "; and add this record: %s", ownershipRecord(own))
	return msg.String()
}
