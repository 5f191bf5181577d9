package dnsverify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/miekg/dns"
)

// DefaultTimeout bounds one query to one resolver when New is given no timeout.
const DefaultTimeout = 2 * time.Second

// ednsSize is the UDP payload size advertised in queries: the DNS Flag Day 2020 value, which
// avoids IP fragmentation. Larger answers come back truncated and are fetched over TCP.
const ednsSize = 1232

// resolvConf is where New finds the system's resolvers; a variable so tests can point it at a
// file of their own.
var resolvConf = "/etc/resolv.conf"

// ErrNoAnswer is wrapped by every error that means no resolver gave a usable answer: each was
// unreachable, timed out, or answered an rcode other than NOERROR and NXDOMAIN. The check may
// succeed when retried; it says nothing about the customer's records.
var ErrNoAnswer = errors.New("dnsverify: no resolver answered")

// Verifier runs DNS checks against a fixed list of recursive resolvers. It is safe for
// concurrent use; it holds no connections between queries.
type Verifier struct {
	// ValidationMethods are the ACME challenge types the issuer may use, for CAA records that
	// carry the RFC 8657 "validationmethods" parameter: an "issue" property naming the CA but
	// none of these methods does not authorize it. If nil, edgeproxy's own methods, "http-01"
	// and "tls-alpn-01", are used. Set it before the first check.
	ValidationMethods []string

	servers []string
	timeout time.Duration
	udp     *dns.Client
	tcp     *dns.Client
}

// New returns a Verifier that queries servers, a list of "host:port" addresses tried in order
// (a bare IP address means port 53). If servers is empty, the nameservers of the system's
// /etc/resolv.conf are used. timeout bounds each query to one resolver, a TCP retry after a
// truncated answer included; zero or negative means DefaultTimeout.
func New(servers []string, timeout time.Duration) (*Verifier, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	var addrs []string
	if len(servers) == 0 {
		cfg, err := dns.ClientConfigFromFile(resolvConf)
		if err != nil {
			return nil, fmt.Errorf("dnsverify: reading system resolvers: %w", err)
		}
		for _, s := range cfg.Servers {
			addrs = append(addrs, net.JoinHostPort(s, cfg.Port))
		}
		if len(addrs) == 0 {
			return nil, fmt.Errorf("dnsverify: reading system resolvers: no nameserver in %s", resolvConf)
		}
	}
	for _, s := range servers {
		addr, err := resolverAddr(s)
		if err != nil {
			return nil, fmt.Errorf("dnsverify: resolver %q: %w", s, err)
		}
		addrs = append(addrs, addr)
	}
	return &Verifier{
		servers: addrs,
		timeout: timeout,
		udp:     &dns.Client{Net: "udp", Timeout: timeout},
		tcp:     &dns.Client{Net: "tcp", Timeout: timeout},
	}, nil
}

// Servers returns the resolvers the Verifier queries, in order.
func (v *Verifier) Servers() []string { return append([]string(nil), v.servers...) }

// resolverAddr checks a "host:port" resolver address, giving a bare IP address port 53.
func resolverAddr(s string) (string, error) {
	s = strings.TrimSpace(s)
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		if ip := net.ParseIP(strings.Trim(s, "[]")); ip != nil {
			return net.JoinHostPort(ip.String(), "53"), nil
		}
		return "", err
	}
	if host == "" || port == "" {
		return "", errors.New("want host:port")
	}
	return s, nil
}

// rcodeError is a resolver's answer with an rcode that is neither NOERROR nor NXDOMAIN.
type rcodeError struct {
	server string
	rcode  int
}

func (e *rcodeError) Error() string {
	return fmt.Sprintf("%s answered %s", e.server, dns.RcodeToString[e.rcode])
}

// query asks the resolvers, in order, for (name, qtype) until one gives a NOERROR or NXDOMAIN
// answer. The error, when no resolver did, is a *queryError.
func (v *Verifier) query(ctx context.Context, name string, qtype uint16) (*dns.Msg, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype) // sets RD
	m.SetEdns0(ednsSize, false)
	var errs []error
	for _, server := range v.servers {
		if err := ctx.Err(); err != nil {
			errs = append(errs, err)
			break
		}
		r, err := v.exchange(ctx, server, m)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", server, err))
			continue
		}
		if r.Rcode != dns.RcodeSuccess && r.Rcode != dns.RcodeNameError {
			errs = append(errs, &rcodeError{server: server, rcode: r.Rcode})
			continue
		}
		return r, nil
	}
	return nil, &queryError{qtype: qtype, name: name, errs: errs}
}

// queryError is the failure of every resolver to answer one question. It wraps ErrNoAnswer
// and each resolver's error.
type queryError struct {
	qtype uint16
	name  string
	errs  []error
}

func (e *queryError) Error() string {
	msgs := make([]string, len(e.errs))
	for i, err := range e.errs {
		msgs[i] = err.Error()
	}
	return fmt.Sprintf("querying %s %s: no resolver answered: %s",
		dns.TypeToString[e.qtype], e.name, strings.Join(msgs, "; "))
}

func (e *queryError) Unwrap() []error { return append([]error{ErrNoAnswer}, e.errs...) }

// exchange sends m to one resolver over UDP, and again over TCP if the answer is truncated.
func (v *Verifier) exchange(ctx context.Context, server string, m *dns.Msg) (*dns.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	r, _, err := v.udp.ExchangeContext(ctx, m, server)
	// A truncated answer may also fail to unpack; either way TCP has the whole of it.
	if r != nil && r.Truncated {
		r, _, err = v.tcp.ExchangeContext(ctx, m, server)
		if err != nil {
			return nil, fmt.Errorf("retrying over TCP after a truncated answer: %w", err)
		}
		return r, nil
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// failureReason says in a few words why no resolver answered, for a customer's message.
func failureReason(err error) string {
	var rerr *rcodeError
	var nerr net.Error
	switch {
	case errors.As(err, &rerr):
		return "the resolver answered " + dns.RcodeToString[rerr.rcode]
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return "the resolver did not answer in time"
	case errors.Is(err, context.Canceled):
		return "the check was interrupted"
	default:
		return "the resolver could not be reached"
	}
}

// normalize lower-cases a domain name and drops its trailing dot, for comparison and display.
func normalize(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}

// sameName reports whether two domain names are equal, ignoring case and a trailing dot.
func sameName(a, b string) bool { return normalize(a) == normalize(b) }
