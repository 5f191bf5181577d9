package diagnose

import (
	"context"
	"net"
	"net/netip"
)

// A probe the server makes on a customer's behalf goes where the
// customer's DNS says; internal/netguard keeps it to addresses that are
// this deployment's own (the listener it probes, what the record's
// target_cname resolves to) or public unicast ones, checked in the
// dialer's Control hook on the address actually dialled.

// listenerAddrs returns the addresses a listener on hostport answers on:
// its host, or every address of this machine when the host is empty or
// unspecified (0.0.0.0, ::). A host name is resolved by the system's
// resolver: it comes from the operator's configuration, not a customer.
func listenerAddrs(ctx context.Context, hostport string) []netip.Addr {
	host, _, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil
	}
	if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
		return []netip.Addr{a}
	}
	if host != "" && host != "0.0.0.0" && host != "::" {
		addrs, _ := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		return addrs
	}
	ifaddrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, ia := range ifaddrs {
		if n, ok := ia.(*net.IPNet); ok {
			if a, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, a.Unmap())
			}
		}
	}
	return out
}
