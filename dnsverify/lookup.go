package dnsverify

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	"github.com/miekg/dns"
)

// LookupAddrs returns the addresses name resolves to: the A and AAAA records at the end of its
// CNAME chain, as the resolvers answer them, without duplicates, IPv4 first. The two queries
// run at the same time.
//
// The addresses found are returned even when one of the queries failed; the error is then
// also set. An empty list with a nil error means the name has no address (NXDOMAIN or
// NODATA). An error from a query no resolver answered wraps ErrNoAnswer.
func (v *Verifier) LookupAddrs(ctx context.Context, name string) ([]netip.Addr, error) {
	n := normalize(name)
	if _, ok := dns.IsDomainName(n); !ok || n == "" {
		return nil, fmt.Errorf("dnsverify: looking up addresses: invalid domain name %q", name)
	}
	a, aaaa := v.lookupAddrs(ctx, n)
	var addrs []netip.Addr
	var failed error
	for _, l := range []lookup{a, aaaa} {
		if l.err != nil {
			if failed == nil {
				failed = fmt.Errorf("dnsverify: looking up addresses of %s: %w", n, l.err)
			}
			continue
		}
		for _, addr := range l.addrs {
			if !slices.Contains(addrs, addr) {
				addrs = append(addrs, addr)
			}
		}
	}
	return addrs, failed
}
