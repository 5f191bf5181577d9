package dnsverify

import (
	"cmp"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Outcome is what a CNAME check found. The zero value is not a valid outcome.
type Outcome int

// The outcomes of [Verifier.CheckCNAME].
const (
	// Pointing: the domain points at the target, see [CNAMEResult.Via].
	Pointing Outcome = iota + 1
	// Missing: the domain has no CNAME, A or AAAA record (NXDOMAIN or NODATA).
	Missing
	// WrongTarget: the domain's CNAME (chain) never reaches the target.
	WrongTarget
	// CloudflareProxied: the domain's addresses belong to Cloudflare's proxy, which hides the
	// CNAME behind it; the record must be set to "DNS only".
	CloudflareProxied
	// OtherAddresses: the domain has A/AAAA records, not Cloudflare's and not the target's.
	OtherAddresses
	// ResolverFailure: no resolver answered (SERVFAIL, REFUSED, timeout, network error). It
	// says nothing about the customer's records; check again later.
	ResolverFailure
	// OwnershipMissing: the domain has no CNAME but the same A/AAAA set as the target
	// (flattening, ALIAS, a zone apex), and its ownership TXT record is missing or does not
	// hold the record's token. Traffic would arrive, but nothing proves the domain is the
	// record's.
	OwnershipMissing
)

var outcomeNames = map[Outcome]string{
	Pointing:          "pointing",
	Missing:           "missing",
	WrongTarget:       "wrong_target",
	CloudflareProxied: "cloudflare_proxied",
	OtherAddresses:    "other_addresses",
	ResolverFailure:   "resolver_failure",
	OwnershipMissing:  "ownership_missing",
}

// String returns the outcome in snake_case ("wrong_target"), fit for logs and metric labels.
func (o Outcome) String() string {
	if s, ok := outcomeNames[o]; ok {
		return s
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// The values of [CNAMEResult.Via] when the domain is [Pointing].
const (
	ViaCNAME     = "cname"     // the domain's own CNAME is the target
	ViaChain     = "chain"     // a later hop of the domain's CNAME chain is the target
	ViaFlattened = "flattened" // no CNAME, the same non-empty A/AAAA set as the target, and the ownership TXT
)

// CNAMEResult is the result of [Verifier.CheckCNAME].
type CNAMEResult struct {
	Outcome Outcome
	// Via says how the domain points at the target when Outcome is Pointing: ViaCNAME,
	// ViaChain or ViaFlattened; "" otherwise. It is also how the domain's ownership was proven:
	// by the CNAME, or by the ownership TXT record.
	Via string
	// Found is what DNS shows for the domain now, one record a line in presentation form:
	// "CNAME other.example.net." or "A 192.0.2.1" for the domain's own records, prefixed by
	// the owner name for the later hops of a CNAME chain ("other.example.net. A 192.0.2.1").
	// Empty when the domain has no records or no resolver answered.
	Found []string
	// NegativeTTL is, for Missing, how long resolvers may cache the absence: the smaller of
	// the SOA record's TTL and its MINIMUM field, from the negative answer (RFC 2308). Zero
	// when the answer carried no SOA.
	NegativeTTL time.Duration
	// Message is one or a few sentences for the customer: what DNS shows now and, unless
	// Pointing or ResolverFailure, the exact record to add ("Add this record: ..."): a CNAME
	// to the target, the ownership TXT record, or for a zone apex the address (or ALIAS)
	// records and the ownership TXT record.
	Message string
	// Err is the error behind a ResolverFailure, for logs; nil otherwise. It wraps ErrNoAnswer
	// unless domain was not a valid name (a caller's bug, not worth retrying).
	Err error
}

// lookup is one query's answer, picked apart.
type lookup struct {
	err   error
	chain []string     // CNAME targets from the queried name on, fully qualified
	addrs []netip.Addr // A or AAAA records in the answer
	txts  []string     // TXT records in the answer, each one's strings joined
	nx    bool         // NXDOMAIN
	soa   *dns.SOA     // from the authority section of a negative answer
}

func (v *Verifier) lookup(ctx context.Context, name string, qtype uint16) lookup {
	r, err := v.query(ctx, name, qtype)
	if err != nil {
		return lookup{err: err}
	}
	l := lookup{nx: r.Rcode == dns.RcodeNameError}
	cur := dns.Fqdn(name)
	for range len(r.Answer) {
		next := ""
		for _, rr := range r.Answer {
			if c, ok := rr.(*dns.CNAME); ok && sameName(c.Hdr.Name, cur) {
				next = dns.Fqdn(c.Target)
				break
			}
		}
		if next == "" || slices.ContainsFunc(l.chain, func(s string) bool { return sameName(s, next) }) {
			break
		}
		l.chain = append(l.chain, next)
		cur = next
	}
	for _, rr := range r.Answer {
		switch rr := rr.(type) {
		case *dns.A:
			if a, ok := netip.AddrFromSlice(rr.A); ok {
				l.addrs = append(l.addrs, a.Unmap())
			}
		case *dns.AAAA:
			if a, ok := netip.AddrFromSlice(rr.AAAA); ok {
				l.addrs = append(l.addrs, a)
			}
		case *dns.TXT:
			var v strings.Builder
			for _, part := range rr.Txt {
				v.WriteString(unescapeTXT(part))
			}
			l.txts = append(l.txts, v.String())
		}
	}
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			l.soa = soa
			break
		}
	}
	return l
}

// lookupAddrs queries A and AAAA for name at the same time.
func (v *Verifier) lookupAddrs(ctx context.Context, name string) (a, aaaa lookup) {
	var wg sync.WaitGroup
	wg.Go(func() { a = v.lookup(ctx, name, dns.TypeA) })
	aaaa = v.lookup(ctx, name, dns.TypeAAAA)
	wg.Wait()
	return a, aaaa
}

// CheckCNAME reports whether domain points at target and the domain's ownership is proven:
// by its CNAME, by a CNAME chain that reaches target, or by flattening (the same A/AAAA set as
// target) together with the ownership TXT record own (see the package documentation). It never
// returns an error: a failure to get an answer is the ResolverFailure outcome, with Err set.
func (v *Verifier) CheckCNAME(ctx context.Context, domain, target string, own Ownership) CNAMEResult {
	d, t := normalize(domain), normalize(target)
	if _, ok := dns.IsDomainName(d); !ok || d == "" {
		err := fmt.Errorf("dnsverify: checking CNAME: invalid domain name %q", domain)
		return CNAMEResult{Outcome: ResolverFailure, Err: err,
			Message: fmt.Sprintf("%q is not a valid domain name.", domain)}
	}
	apex := IsApex(d)
	// addRecord ends every message that asks for a change: the CNAME to add, or what a zone
	// apex needs instead. An apex's advice lists the target's addresses, looked up once.
	var (
		targetLooked bool
		ta, taaaa    lookup
	)
	targetAddrs := func() (lookup, lookup) {
		if !targetLooked {
			ta, taaaa = v.lookupAddrs(ctx, t)
			targetLooked = true
		}
		return ta, taaaa
	}
	addRecord := func() string {
		if !apex {
			return fmt.Sprintf("Add this record: %s CNAME %s", d, t)
		}
		a, aaaa := targetAddrs()
		var addrs []netip.Addr
		if a.err == nil && aaaa.err == nil {
			addrs = append(append(addrs, a.addrs...), aaaa.addrs...)
		}
		return apexAdvice(d, t, own, addrs)
	}

	a, aaaa := v.lookupAddrs(ctx, d)

	// A CNAME chain decides on its own; either answer shows it.
	var chainFrom *lookup
	switch {
	case a.err == nil && len(a.chain) > 0:
		chainFrom = &a
	case aaaa.err == nil && len(aaaa.chain) > 0:
		chainFrom = &aaaa
	}
	if chainFrom != nil {
		res := CNAMEResult{Found: describeChain(chainFrom.chain, a, aaaa)}
		first := normalize(chainFrom.chain[0])
		for i, hop := range chainFrom.chain {
			if !sameName(hop, t) {
				continue
			}
			res.Outcome = Pointing
			if i == 0 {
				res.Via = ViaCNAME
				res.Message = fmt.Sprintf("%s has a CNAME to %s.", d, t)
			} else {
				res.Via = ViaChain
				res.Message = fmt.Sprintf("%s reaches %s through a chain of CNAMEs (via %s).", d, t, first)
			}
			return res
		}
		res.Outcome = WrongTarget
		res.Message = fmt.Sprintf("%s has a CNAME to %s, not to %s. Replace that CNAME. %s",
			d, first, t, addRecord())
		return res
	}

	if err := cmp.Or(a.err, aaaa.err); err != nil {
		return resolverFailure(d, fmt.Errorf("dnsverify: checking CNAME of %s: %w", d, err))
	}
	addrs := append(append([]netip.Addr(nil), a.addrs...), aaaa.addrs...)
	if len(addrs) == 0 {
		return missing(d, a, aaaa, addRecord())
	}
	found := describeAddrs("", addrs)

	ta, taaaa = targetAddrs()
	targetErr := cmp.Or(ta.err, taaaa.err)
	var targetAddrList []netip.Addr
	if targetErr == nil {
		targetAddrList = append(append(targetAddrList, ta.addrs...), taaaa.addrs...)
		if sameAddrs(addrs, targetAddrList) {
			// The addresses reach the target, but every target has them: only the ownership
			// TXT record says the domain is this record's.
			txt := v.CheckOwnership(ctx, own)
			switch {
			case txt.Err != nil:
				return resolverFailure(d, fmt.Errorf("dnsverify: checking CNAME of %s: %w", d, txt.Err))
			case !txt.Proven:
				return unproven(d, t, own, apex, found, txt)
			}
			return CNAMEResult{Outcome: Pointing, Via: ViaFlattened, Found: found,
				Message: fmt.Sprintf("%s has no CNAME but the same addresses as %s (a flattened CNAME), and its ownership TXT record %s holds this record's token.",
					d, t, normalize(own.Name))}
		}
	}
	var cf []string
	for _, addr := range addrs {
		if isCloudflare(addr) {
			cf = append(cf, addr.String())
		}
	}
	if len(cf) > 0 {
		return CNAMEResult{Outcome: CloudflareProxied, Found: found, Message: fmt.Sprintf(
			"%s resolves to %s, addresses of Cloudflare's proxy: the record is proxied "+
				"(orange cloud), which hides any CNAME behind it. In Cloudflare's DNS settings, "+
				"set the record to \"DNS only\" (grey cloud). %s", d, strings.Join(cf, ", "), addRecord())}
	}
	if targetErr != nil {
		// The addresses might be a flattened CNAME; without the target's there is no telling.
		return resolverFailure(d, fmt.Errorf("dnsverify: checking CNAME of %s: resolving target %s: %w", d, t, targetErr))
	}
	replace := "Replace those address records with a CNAME. "
	if apex {
		replace = ""
	}
	if subsetAddrs(addrs, targetAddrList) {
		// A flattening that copied only some of the target's addresses (often A but not AAAA).
		return CNAMEResult{Outcome: OtherAddresses, Found: found, Message: fmt.Sprintf(
			"%s has %s and no CNAME: only part of the addresses of %s (%s), so it is not a complete "+
				"flattened CNAME. %s%s",
			d, strings.Join(found, ", "), t, strings.Join(describeAddrs("", targetAddrList), ", "), replace, addRecord())}
	}
	return CNAMEResult{Outcome: OtherAddresses, Found: found, Message: fmt.Sprintf(
		"%s has %s and no CNAME to %s. %s%s",
		d, strings.Join(found, ", "), t, replace, addRecord())}
}

// missing builds the result for a domain with no CNAME, A or AAAA record; addRecord is the
// last sentence, the records to add.
func missing(d string, a, aaaa lookup, addRecord string) CNAMEResult {
	res := CNAMEResult{Outcome: Missing}
	var msg strings.Builder
	if a.nx || aaaa.nx {
		fmt.Fprintf(&msg, "DNS has no record for %s (the name does not exist).", d)
	} else {
		fmt.Fprintf(&msg, "DNS has no CNAME, A or AAAA record for %s.", d)
	}
	soa := a.soa
	if soa == nil {
		soa = aaaa.soa
	}
	if soa != nil {
		secs := min(soa.Hdr.Ttl, soa.Minttl)
		res.NegativeTTL = time.Duration(secs) * time.Second
		fmt.Fprintf(&msg, " Resolvers may cache the absence for up to %d seconds (the zone's SOA "+
			"negative TTL), so a new record can take that long to be seen.", secs)
	}
	fmt.Fprintf(&msg, " %s", addRecord)
	res.Message = msg.String()
	return res
}

func resolverFailure(d string, err error) CNAMEResult {
	return CNAMEResult{Outcome: ResolverFailure, Err: err, Message: fmt.Sprintf(
		"The DNS check for %s could not be completed: %s. This does not mean your records are "+
			"wrong; the check will be retried automatically.", d, failureReason(err))}
}

// describeChain renders a CNAME chain and the addresses at its end for CNAMEResult.Found.
func describeChain(chain []string, a, aaaa lookup) []string {
	out := []string{"CNAME " + chain[0]}
	for i := 1; i < len(chain); i++ {
		out = append(out, chain[i-1]+" CNAME "+chain[i])
	}
	var addrs []netip.Addr
	if a.err == nil {
		addrs = append(addrs, a.addrs...)
	}
	if aaaa.err == nil {
		addrs = append(addrs, aaaa.addrs...)
	}
	return append(out, describeAddrs(chain[len(chain)-1]+" ", addrs)...)
}

// describeAddrs renders addresses as "A 192.0.2.1" or "AAAA 2001:db8::1", after prefix,
// without duplicates.
func describeAddrs(prefix string, addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		typ := "AAAA"
		if a.Is4() {
			typ = "A"
		}
		s := prefix + typ + " " + a.String()
		if !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}

// sameAddrs reports whether a and b hold the same set of addresses, and it is not empty.
func sameAddrs(a, b []netip.Addr) bool {
	if len(a) == 0 || len(b) == 0 {
		return false
	}
	set := func(s []netip.Addr) []netip.Addr {
		s = slices.Clone(s)
		slices.SortFunc(s, netip.Addr.Compare)
		return slices.Compact(s)
	}
	return slices.Equal(set(a), set(b))
}

// subsetAddrs reports whether every address of a is in b, and a is not empty.
func subsetAddrs(a, b []netip.Addr) bool {
	if len(a) == 0 {
		return false
	}
	for _, x := range a {
		if !slices.Contains(b, x) {
			return false
		}
	}
	return true
}
