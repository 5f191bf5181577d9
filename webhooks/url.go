package webhooks

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/netguard"
)

// maxURLLength bounds a webhook URL.
const maxURLLength = 2048

// resolveTimeout bounds the lookup CheckURL makes.
const resolveTimeout = 5 * time.Second

// URLError is a webhook URL that breaks a rule; its message names the
// rule, for the API's detail.
type URLError struct{ Reason string }

func (e *URLError) Error() string { return e.Reason }

func urlErrorf(format string, args ...any) error {
	return &URLError{Reason: fmt.Sprintf(format, args...)}
}

// CheckURL checks a webhook URL before it is stored and returns it as it
// will be stored. It must be an absolute https:// URL without user info
// or fragment, and every address its host resolves to (with resolver, or
// the system's when nil) must be public unicast. allowPrivate lifts both
// the https and the address rules, and then nothing is resolved.
//
// This check gives a clear error at once; it is not what keeps deliveries
// away from private addresses, since a name's answers can change after it
// is looked at. The worker's dialer checks the address of every
// connection it makes.
func CheckURL(ctx context.Context, raw string, allowPrivate bool, resolver *net.Resolver) (string, error) {
	raw = strings.TrimSpace(raw)
	if len(raw) > maxURLLength {
		return "", urlErrorf("Enter a URL of at most %d characters.", maxURLLength)
	}
	u, err := url.Parse(raw)
	if err != nil || !u.IsAbs() || u.Host == "" || u.Opaque != "" {
		return "", urlErrorf("Enter a valid URL such as https://hooks.example.com/edgeproxy.")
	}
	u.Scheme = strings.ToLower(u.Scheme)
	switch {
	case u.Scheme == "https":
	case u.Scheme == "http" && allowPrivate:
	default:
		return "", urlErrorf("The URL must start with https:// (a %s:// URL is not accepted).", u.Scheme)
	}
	if u.User != nil {
		return "", urlErrorf("The URL must not carry a user name or password; authenticate deliveries by their signature.")
	}
	if u.Fragment != "" || strings.Contains(raw, "#") {
		return "", urlErrorf("The URL must not have a fragment (#...).")
	}
	host := u.Hostname()
	if host == "" || strings.ContainsAny(host, " %") {
		return "", urlErrorf("The URL's host %q is not a host name or IP address.", host)
	}
	if port := u.Port(); port != "" {
		if n, err := net.LookupPort("tcp", port); err != nil || n == 0 {
			return "", urlErrorf("The URL's port %q is not a port number.", port)
		}
	}
	if allowPrivate {
		return u.String(), nil
	}
	addrs, err := lookup(ctx, host, resolver)
	if err != nil {
		return "", err
	}
	for _, a := range addrs {
		if netguard.Public(a) {
			continue
		}
		if _, err := netip.ParseAddr(host); err == nil {
			return "", urlErrorf("The URL's address %s is not a public address.", a.Unmap())
		}
		return "", urlErrorf("The URL's host %s resolves to %s, which is not a public address.", host, a.Unmap())
	}
	return u.String(), nil
}

// lookup returns the addresses of host: itself when it is an IP address.
func lookup(ctx context.Context, host string, resolver *net.Resolver) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	ctx, cancel := context.WithTimeout(ctx, resolveTimeout)
	defer cancel()
	addrs, err := resolver.LookupNetIP(ctx, "ip", host)
	if err != nil || len(addrs) == 0 {
		return nil, urlErrorf("The URL's host %s does not resolve to an address.", host)
	}
	return addrs, nil
}
