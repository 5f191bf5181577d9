package dnszone

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/edgeproxy/edgeproxy/store"
)

// Store is what the zone needs of the store (*store.Store). Its methods
// are safe for concurrent use.
type Store interface {
	// Records returns every record keep accepts (every one when keep is
	// nil).
	Records(keep func(*store.Record) bool) ([]store.Record, error)
	// Record returns the record with the id, or an error wrapping
	// store.ErrNotFound when there is none.
	Record(id string) (store.Record, error)
	// Subscribe starts a feed of record changes committed from now on.
	Subscribe() *store.Subscription
	// ChallengeTXT returns the DNS-01 challenge values of a name (lower
	// case, no trailing dot); none when it has none.
	ChallengeTXT(fqdn string) ([]string, error)
}

// Limits on the configuration, so that no answer grows large.
const (
	// MaxEdgeIPs is the most edge addresses the zone answers with.
	MaxEdgeIPs = 16
	// MaxNameservers is the most NS records at the apex.
	MaxNameservers = 8
)

// TTLs of the zone's records, in seconds.
const (
	// AddressTTL is the TTL of the A and AAAA answers.
	AddressTTL = 300
	// NSTTL is the TTL of the NS records.
	NSTTL = 3600
	// ChallengeTTL is the TTL of challenge TXT answers: short, since a
	// CA asks again for each validation.
	ChallengeTTL = 10
	// NegativeTTL is the SOA record's TTL and its minimum: how long
	// resolvers keep NXDOMAIN and NODATA answers (RFC 2308 has them take
	// the smaller of the two).
	NegativeTTL = 60
)

// Defaults of the rate limit.
const (
	// DefaultRateLimit is the sustained UDP queries per second allowed
	// from one client address. A busy public resolver asks an
	// authoritative server far less often than this for one zone: it
	// caches the answers.
	DefaultRateLimit = 100
	// DefaultRateBurst is the UDP queries one address may send at once.
	DefaultRateBurst = 200
	// DefaultMaxClients bounds the table of client addresses.
	DefaultMaxClients = 10000
)

// labelLen is the length of a target CNAME's first label: 20 hex digits.
const labelLen = 20

// Config configures a Zone. Zone, EdgeIPs and Nameservers are required;
// the zero value of every other field works.
type Config struct {
	// Zone is the zone served: the target CNAME base, e.g.
	// proxy.example.net.
	Zone string
	// EdgeIPs are the addresses of the edge, answered for every name of
	// a record: 1 to MaxEdgeIPs, IPv4 and IPv6 in any mix.
	EdgeIPs []netip.Addr
	// Nameservers are the host names of the zone's NS records (the
	// nodes' names): 1 to MaxNameservers, each outside Zone, since the
	// zone cannot give their addresses. The first is the SOA's primary.
	Nameservers []string
	// RateLimit is the sustained UDP queries per second allowed from one
	// client address. If zero, DefaultRateLimit.
	RateLimit rate.Limit
	// RateBurst is the UDP queries one address may send at once. If
	// zero, DefaultRateBurst.
	RateBurst int
	// MaxClients bounds the table of client addresses. If zero,
	// DefaultMaxClients.
	MaxClients int
	// Logger receives the zone's log. If nil, slog.Default().
	Logger *slog.Logger
	// Registerer receives the zone's metrics. If nil, they are not
	// registered.
	Registerer prometheus.Registerer
	// Now is the clock of the rate limiter. If nil, time.Now.
	Now func() time.Time
}

// Zone answers DNS queries for one zone. It is safe for concurrent use.
type Zone struct {
	st      Store
	origin  string // the zone, lower case, fully qualified (trailing dot)
	v4, v6  []netip.Addr
	ns      []string // fully qualified
	cfgHash uint64   // what the serial takes from the configuration
	log     *slog.Logger
	limiter *limiter
	metrics *metrics

	// mu guards labels, byID and labelsHash.
	mu sync.RWMutex
	// labels counts the records whose target CNAME has each label (one,
	// unless a record of an old base comes back under it).
	labels map[string]int
	// byID is the label of each record in the zone.
	byID map[string]string
	// labelsHash is the XOR of a hash of each label present, for the
	// serial: one label in or out changes it, in any order.
	labelsHash uint64

	sub      *store.Subscription
	stop     context.CancelFunc
	followed chan struct{}

	// srvMu guards servers and closed.
	srvMu   sync.Mutex
	servers []*dns.Server
	closed  bool
}

// New checks cfg and returns a zone that answers nothing until Start.
func New(st Store, cfg Config) (*Zone, error) {
	origin := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(cfg.Zone), "."))
	if _, ok := dns.IsDomainName(origin); !ok || !strings.Contains(origin, ".") {
		return nil, fmt.Errorf("dnszone: zone %q is not a domain name of two or more labels", cfg.Zone)
	}
	origin = dns.Fqdn(origin)
	z := &Zone{st: st, origin: origin, labels: map[string]int{}, byID: map[string]string{}, log: cfg.Logger}
	if z.log == nil {
		z.log = slog.Default()
	}
	if len(cfg.EdgeIPs) == 0 || len(cfg.EdgeIPs) > MaxEdgeIPs {
		return nil, fmt.Errorf("dnszone: edge IPs: need 1 to %d addresses, got %d", MaxEdgeIPs, len(cfg.EdgeIPs))
	}
	for _, ip := range cfg.EdgeIPs {
		if err := CheckEdgeIP(ip); err != nil {
			return nil, fmt.Errorf("dnszone: edge IPs: %w", err)
		}
		ip = ip.Unmap()
		if ip.Is4() {
			z.v4 = append(z.v4, ip)
		} else {
			z.v6 = append(z.v6, ip)
		}
	}
	if len(cfg.Nameservers) == 0 || len(cfg.Nameservers) > MaxNameservers {
		return nil, fmt.Errorf("dnszone: nameservers: need 1 to %d names, got %d", MaxNameservers, len(cfg.Nameservers))
	}
	for _, n := range cfg.Nameservers {
		name, err := CheckNameserver(origin, n)
		if err != nil {
			return nil, fmt.Errorf("dnszone: nameservers: %w", err)
		}
		z.ns = append(z.ns, name)
	}
	z.cfgHash = hashStrings(append(append(addrStrings(z.v4), addrStrings(z.v6)...), z.ns...))
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	z.limiter = newLimiter(cfg.RateLimit, cfg.RateBurst, cfg.MaxClients, cfg.Now)
	z.metrics = newMetrics(cfg.Registerer)
	return z, nil
}

// CheckEdgeIP says why an address cannot be an edge address: unspecified,
// multicast or invalid ones cannot be connected to.
func CheckEdgeIP(ip netip.Addr) error {
	if !ip.IsValid() || ip.IsUnspecified() || ip.IsMulticast() {
		return fmt.Errorf("%v is not a unicast address", ip)
	}
	return nil
}

// CheckNameserver returns the fully qualified form of a nameserver's host
// name, or says why it cannot be one of the zone's: it must be a domain
// name of two or more labels outside the zone (the zone does not hold the
// nameservers' addresses, so a name inside it could not be resolved).
// zone may be given with or without its trailing dot.
func CheckNameserver(zone, name string) (string, error) {
	n := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
	if _, ok := dns.IsDomainName(n); !ok || !strings.Contains(n, ".") || strings.ContainsAny(n, " *") || isIP(n) {
		return "", fmt.Errorf("%q is not a host name of two or more labels", name)
	}
	if dns.IsSubDomain(dns.Fqdn(strings.ToLower(zone)), dns.Fqdn(n)) {
		return "", fmt.Errorf("%q is inside the zone %s, which cannot hold its address; use a name outside it (e.g. ns1.example.net)", name, strings.TrimSuffix(zone, "."))
	}
	return dns.Fqdn(n), nil
}

func isIP(s string) bool {
	_, err := netip.ParseAddr(s)
	return err == nil
}

// Start reads every record into the zone and keeps following the store's
// changes until Shutdown (or ctx ends). Call it once, before serving.
func (z *Zone) Start(ctx context.Context) error {
	// Subscribed before the read: a change committed in between is seen
	// again, never missed.
	sub := z.st.Subscribe()
	records, err := z.st.Records(nil)
	if err != nil {
		sub.Close()
		return fmt.Errorf("dnszone: reading records: %w", err)
	}
	z.mu.Lock()
	for i := range records {
		z.setLocked(records[i].ID, records[i].TargetCNAME)
	}
	z.mu.Unlock()
	ctx, z.stop = context.WithCancel(ctx)
	z.sub, z.followed = sub, make(chan struct{})
	go z.follow(ctx)
	return nil
}

// follow applies the store's changes until ctx ends.
func (z *Zone) follow(ctx context.Context) {
	defer close(z.followed)
	defer z.sub.Close()
	for {
		select {
		case <-ctx.Done():
			return
		case <-z.sub.Ready():
			for _, c := range z.sub.Take() {
				z.apply(c)
			}
		}
	}
}

// apply brings one record up to date after a change: the change is a
// hint, so the record is read again. When the store cannot be read the
// change's own copy stands in, the best knowledge there is.
func (z *Zone) apply(c store.Change) {
	r, err := z.st.Record(c.ID)
	var target string
	switch {
	case err == nil:
		target = r.TargetCNAME
	case errors.Is(err, store.ErrNotFound):
	default:
		z.log.Warn("dnszone: reading a changed record; using the change's copy", "record_id", c.ID, "err", err)
		if c.Record != nil {
			target = c.Record.TargetCNAME
		}
	}
	z.mu.Lock()
	z.setLocked(c.ID, target)
	z.mu.Unlock()
}

// setLocked makes the record id hold the target CNAME's label, or no
// label when target is empty or outside the zone.
func (z *Zone) setLocked(id, target string) {
	label := z.labelOf(target)
	old, had := z.byID[id]
	if had && old == label {
		return
	}
	if had {
		delete(z.byID, id)
		if z.labels[old]--; z.labels[old] <= 0 {
			delete(z.labels, old)
			z.labelsHash ^= hashStrings([]string{old})
		}
	}
	if label == "" {
		return
	}
	z.byID[id] = label
	if z.labels[label]++; z.labels[label] == 1 {
		z.labelsHash ^= hashStrings([]string{label})
	}
}

// labelOf returns the 20-hex label of a target CNAME in this zone, or ""
// when it is not one.
func (z *Zone) labelOf(target string) string {
	name := dns.Fqdn(strings.ToLower(target))
	label, ok := strings.CutSuffix(name, "."+z.origin)
	if !ok || !isLabel(label) {
		return ""
	}
	return label
}

// isLabel reports whether s has the form of a target CNAME's first label.
func isLabel(s string) bool {
	if len(s) != labelLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// has reports whether a record holds the label, and the zone's serial.
func (z *Zone) has(label string) (ok bool, serial uint32) {
	z.mu.RLock()
	defer z.mu.RUnlock()
	return z.labels[label] > 0, z.serialLocked()
}

func (z *Zone) serial() uint32 {
	z.mu.RLock()
	defer z.mu.RUnlock()
	return z.serialLocked()
}

func (z *Zone) serialLocked() uint32 {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], z.labelsHash)
	binary.BigEndian.PutUint64(b[8:], z.cfgHash)
	h := fnv.New32a()
	h.Write(b[:])
	return h.Sum32()
}

// hashStrings is a 64-bit FNV-1a hash of the strings, in order.
func hashStrings(ss []string) uint64 {
	h := fnv.New64a()
	for _, s := range ss {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return h.Sum64()
}

func addrStrings(addrs []netip.Addr) []string {
	out := make([]string, 0, len(addrs))
	for _, a := range addrs {
		out = append(out, a.String())
	}
	slices.Sort(out)
	return out
}
