// Package netguard decides which addresses a connection made on a
// customer's behalf may reach. Diagnose probes a customer's domain and the
// webhook worker posts to a customer's URL: in both the address comes from
// a customer's DNS, so a customer could aim the server at its own
// loopback, the private network behind it or a cloud metadata service.
//
// A Policy admits public unicast addresses (Public) and the addresses it
// was given as the deployment's own. Its Control method is a net.Dialer
// Control hook: it runs on the address actually dialled, after name
// resolution and before the connection is made, so neither an answer that
// changed since it was looked at (DNS rebinding) nor a name resolved
// during the dial gets past it. Checking a name's addresses beforehand is
// only a courtesy that gives a clearer error earlier; the hook is the rule.
package netguard

import (
	"errors"
	"net"
	"net/netip"
	"slices"
	"syscall"
	"time"
)

// ErrRefused is the Control hook's refusal: the address is neither the
// deployment's own nor public, and nothing was sent to it. The hook
// returns a *RefusedError, which wraps it and names the address.
var ErrRefused = errors.New("address is neither this server's nor public: not contacted")

// RefusedError is a connection the policy refused.
type RefusedError struct {
	// Addr is the address refused, as dialled (or as given, when it could
	// not be read).
	Addr string
}

func (e *RefusedError) Error() string { return e.Addr + ": " + ErrRefused.Error() }

func (e *RefusedError) Unwrap() error { return ErrRefused }

// Policy is the set of addresses a connection may reach besides the public
// ones. The zero value admits public addresses only.
type Policy struct {
	// own are the deployment's addresses, unmapped and without zone.
	own []netip.Addr
}

// Allow returns a policy that admits the given addresses of the
// deployment's own as well as public ones.
func Allow(own ...netip.Addr) Policy {
	p := Policy{}
	for _, a := range own {
		a = a.Unmap().WithZone("")
		if !slices.Contains(p.own, a) {
			p.own = append(p.own, a)
		}
	}
	return p
}

// Allows reports whether a connection may reach a.
func (p Policy) Allows(a netip.Addr) bool {
	a = a.Unmap().WithZone("")
	return slices.Contains(p.own, a) || Public(a)
}

// Control is a net.Dialer Control hook: it runs after the socket is made
// and before it connects, and refuses an address the policy does not
// admit (or cannot read) with an error wrapping ErrRefused.
func (p Policy) Control(_, address string, _ syscall.RawConn) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &RefusedError{Addr: address}
	}
	if !p.Allows(ap.Addr()) {
		return &RefusedError{Addr: ap.Addr().Unmap().String()}
	}
	return nil
}

// Dialer returns a dialer bounded by timeout that connects only where the
// policy admits. Set its Resolver to choose the resolver; the hook judges
// whatever address it returns.
func (p Policy) Dialer(timeout time.Duration) *net.Dialer {
	return &net.Dialer{Timeout: timeout, Control: p.Control}
}

// Special-purpose ranges (the IANA IPv4 and IPv6 special-purpose address
// registries) that Public refuses. IPv6 outside 2000::/3 is refused whole:
// that covers ::, ::1, the IPv4-compatible ::/96, NAT64's 64:ff9b::/96,
// discard-only 100::/64, unique-local fc00::/7, link-local fe80::/10,
// site-local fec0::/10 and multicast ff00::/8.
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

// Public reports whether a is a public unicast address: one that routes on
// the internet to a single host, outside every special-purpose range. An
// IPv4-mapped IPv6 address is judged as the IPv4 address it is.
func Public(a netip.Addr) bool {
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
