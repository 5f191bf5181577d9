package diagnose

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"
)

// A probe the server makes on a customer's behalf goes where the
// customer's DNS says, so a customer could aim it at anything the server
// can reach: its loopback, the private network behind it, a cloud
// metadata service. dialPolicy keeps it to addresses that are this
// deployment's own (the listener it probes, what the record's
// target_cname resolves to) or public unicast ones, which the customer
// could reach without us anyway. The check runs in the dialer's Control
// hook, on the address actually dialled, so no answer that changed since
// it was looked at, nor a name resolved during the dial, gets past it.

// errAddrRefused is the Control hook's refusal: the address is neither
// this deployment's nor public, and nothing was sent to it.
var errAddrRefused = errors.New("address is neither this server's nor public: not contacted")

// dialPolicy is the set of addresses a probe may connect to besides the
// public ones.
type dialPolicy struct {
	// own are this deployment's addresses, unmapped and without zone.
	own []netip.Addr
}

func newDialPolicy(own ...netip.Addr) dialPolicy {
	p := dialPolicy{}
	for _, a := range own {
		a = a.Unmap().WithZone("")
		if !slices.Contains(p.own, a) {
			p.own = append(p.own, a)
		}
	}
	return p
}

// allows reports whether a probe may connect to a.
func (p dialPolicy) allows(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	return slices.Contains(p.own, a) || publicAddr(a)
}

// control is a net.Dialer Control hook: it runs after the socket is made
// and before it connects, and refuses an address the policy does not
// allow (or cannot read) with errAddrRefused.
func (p dialPolicy) control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil || !p.allows(ap.Addr()) {
		return errAddrRefused
	}
	return nil
}

// dialer returns a dialer bounded by timeout that connects only where the
// policy allows.
func (p dialPolicy) dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: p.control}
}

// Special-purpose ranges (the IANA IPv4 and IPv6 special-purpose address
// registries) that publicAddr refuses. IPv6 outside 2000::/3 is refused
// whole: that covers ::, ::1, the IPv4-compatible ::/96, NAT64's
// 64:ff9b::/96, discard-only 100::/64, unique-local fc00::/7, link-local
// fe80::/10, site-local fec0::/10 and multicast ff00::/8.
var (
	globalUnicast6 = netip.MustParsePrefix("2000::/3")
	special        = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),       // "this network", unspecified
		netip.MustParsePrefix("10.0.0.0/8"),      // private
		netip.MustParsePrefix("100.64.0.0/10"),   // shared address space (CGNAT)
		netip.MustParsePrefix("127.0.0.0/8"),     // loopback
		netip.MustParsePrefix("169.254.0.0/16"),  // link-local, cloud metadata services
		netip.MustParsePrefix("172.16.0.0/12"),   // private
		netip.MustParsePrefix("192.0.0.0/24"),    // IETF protocol assignments
		netip.MustParsePrefix("192.0.2.0/24"),    // documentation
		netip.MustParsePrefix("192.88.99.0/24"),  // 6to4 relay anycast
		netip.MustParsePrefix("192.168.0.0/16"),  // private
		netip.MustParsePrefix("198.18.0.0/15"),   // benchmarking
		netip.MustParsePrefix("198.51.100.0/24"), // documentation
		netip.MustParsePrefix("203.0.113.0/24"),  // documentation
		netip.MustParsePrefix("224.0.0.0/4"),     // multicast
		netip.MustParsePrefix("240.0.0.0/4"),     // reserved, broadcast
		netip.MustParsePrefix("2001::/23"),       // IETF protocol assignments, Teredo
		netip.MustParsePrefix("2001:db8::/32"),   // documentation
		netip.MustParsePrefix("2002::/16"),       // 6to4, which embeds any IPv4 address
		netip.MustParsePrefix("3fff::/20"),       // documentation
	}
)

// publicAddr reports whether a is a public unicast address: one that
// routes on the internet to a single host, outside every special-purpose
// range. An IPv4-mapped IPv6 address is judged as the IPv4 address it is.
func publicAddr(a netip.Addr) bool {
	a = a.Unmap()
	if !a.IsValid() || (a.Is6() && !globalUnicast6.Contains(a)) {
		return false
	}
	for _, p := range special {
		if p.Contains(a) {
			return false
		}
	}
	return true
}

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
