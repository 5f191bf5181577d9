package dnsverify

import "net/netip"

// cloudflareRanges are the address ranges of Cloudflare's proxy, as published at
// https://www.cloudflare.com/ips/ (https://www.cloudflare.com/ips-v4 and
// https://www.cloudflare.com/ips-v6), recorded here on 2026-11-26. They are never fetched at
// run time: compare with those pages and update this list by hand when Cloudflare announces a
// change. A stale list only costs a less specific message (OtherAddresses instead of
// CloudflareProxied); it never makes a domain pass.
var cloudflareRanges = mustParsePrefixes(
	// IPv4
	"173.245.48.0/20",
	"103.21.244.0/22",
	"103.22.200.0/22",
	"103.31.4.0/22",
	"141.101.64.0/18",
	"108.162.192.0/18",
	"190.93.240.0/20",
	"188.114.96.0/20",
	"197.234.240.0/22",
	"198.41.128.0/17",
	"162.158.0.0/15",
	"104.16.0.0/13",
	"104.24.0.0/14",
	"172.64.0.0/13",
	"131.0.72.0/22",
	// IPv6
	"2400:cb00::/32",
	"2606:4700::/32",
	"2803:f800::/32",
	"2405:b500::/32",
	"2405:8100::/32",
	"2a06:98c0::/29",
	"2c0f:f248::/32",
)

// isCloudflare reports whether addr belongs to Cloudflare's proxy.
func isCloudflare(addr netip.Addr) bool {
	addr = addr.Unmap()
	for _, p := range cloudflareRanges {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

func mustParsePrefixes(prefixes ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(prefixes))
	for i, p := range prefixes {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}
