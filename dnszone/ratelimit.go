package dnszone

import (
	"net/netip"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// verdict is what the limiter decides for one UDP query.
type verdict int

const (
	allow    verdict = iota
	drop             // send nothing
	truncate         // send an empty answer with TC set
)

// sweepEvery is the least time between two sweeps of a full table.
const sweepEvery = time.Second

// limiter holds a token bucket per client address (an IPv4 address, an
// IPv6 /64: one host's share). The table is bounded: when it is full, the
// buckets that have refilled (their addresses idle) are dropped, at most
// once per sweepEvery; an address that finds the table still full shares
// the overflow bucket with every other such address, so forging many
// source addresses buys no more answers than one address gets.
type limiter struct {
	limit rate.Limit
	burst int
	max   int
	now   func() time.Time

	// mu guards clients, overflow and lastSweep.
	mu        sync.Mutex
	clients   map[netip.Prefix]*client
	overflow  *client
	lastSweep time.Time
}

type client struct {
	bucket *rate.Limiter
	// over counts the queries over the limit, so every second one is
	// answered truncated.
	over uint64
}

func newLimiter(limit rate.Limit, burst, maxClients int, now func() time.Time) *limiter {
	if limit <= 0 {
		limit = DefaultRateLimit
	}
	if burst <= 0 {
		burst = DefaultRateBurst
	}
	if maxClients <= 0 {
		maxClients = DefaultMaxClients
	}
	return &limiter{
		limit: limit, burst: burst, max: maxClients, now: now,
		clients:  map[netip.Prefix]*client{},
		overflow: &client{bucket: rate.NewLimiter(limit, burst)},
	}
}

// clientKey is the part of an address that names one client.
func clientKey(addr netip.Addr) netip.Prefix {
	addr = addr.Unmap()
	bits := 32
	if addr.Is6() {
		bits = 64
	}
	p, _ := addr.Prefix(bits)
	return p
}

// check spends one query of addr's budget and says what to do with it.
func (l *limiter) check(addr netip.Addr) verdict {
	key := clientKey(addr)
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	c := l.clients[key]
	if c == nil {
		if len(l.clients) >= l.max {
			l.sweepLocked(now)
		}
		if len(l.clients) < l.max {
			c = &client{bucket: rate.NewLimiter(l.limit, l.burst)}
			l.clients[key] = c
		} else {
			c = l.overflow
		}
	}
	if c.bucket.AllowN(now, 1) {
		return allow
	}
	c.over++
	if c.over%2 == 0 {
		return truncate
	}
	return drop
}

// sweepLocked drops the buckets that are full again: their addresses
// have been quiet long enough that a fresh bucket is the same.
func (l *limiter) sweepLocked(now time.Time) {
	if now.Sub(l.lastSweep) < sweepEvery {
		return
	}
	l.lastSweep = now
	for key, c := range l.clients {
		if c.bucket.TokensAt(now) >= float64(l.burst) {
			delete(l.clients, key)
		}
	}
}
