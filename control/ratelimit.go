package control

import (
	"fmt"
	"math"
	"net/http"
	"net/netip"
	"sync"
	"time"
)

// Requests that fail to authenticate (no key, an unknown or revoked key,
// an unreadable or oversized body searched for a key) are limited per
// client address, so nobody can try keys at speed: each address has a
// bucket of authFailBurst failures that refills at one per authFailRefill.
// A failure that finds its bucket empty is answered 429 instead of 401.
//
// The limiter only ever sees failures: a request carrying a valid key is
// served without looking at it. Behind a reverse proxy or a tunnel every
// user shares one address; a client with a revoked key there throttles
// other failures from that address, never a valid key.
const (
	authFailBurst  = 100
	authFailRefill = 500 * time.Millisecond
	// maxFailBuckets bounds the table of addresses (about 50 bytes each).
	// Addresses that find it full share one overflow bucket until a sweep
	// makes room, so cycling through addresses neither grows memory nor
	// buys a fresh burst for an address already throttled.
	maxFailBuckets = 100_000
	// failSweepEvery is how often buckets that have refilled are dropped:
	// a full bucket is the same as none. It is the time an empty bucket
	// takes to refill, so a sweep finds every address idle since the last.
	failSweepEvery = authFailBurst * authFailRefill
)

// failBucket is one address's failures: tokens left at time at.
type failBucket struct {
	tokens float64
	at     time.Time
}

// refill brings b up to now. A clock that goes back adds nothing.
func (b *failBucket) refill(now time.Time) {
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = math.Min(authFailBurst, b.tokens+float64(elapsed)/float64(authFailRefill))
	}
	b.at = now
}

// take spends one token; when there is none, it spends nothing and says
// how long until there is one.
func (b *failBucket) take(now time.Time) time.Duration {
	b.refill(now)
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(authFailRefill))
}

// failLimiter is the per-address table of failed-authentication buckets.
// It is safe for concurrent use.
type failLimiter struct {
	now func() time.Time

	// mu guards buckets, overflow and swept.
	mu       sync.Mutex
	buckets  map[netip.Addr]failBucket
	overflow failBucket
	swept    time.Time
}

func newFailLimiter(now func() time.Time) *failLimiter {
	t := now()
	return &failLimiter{now: now, buckets: map[netip.Addr]failBucket{},
		overflow: failBucket{tokens: authFailBurst, at: t}, swept: t}
}

// fail counts one failed authentication from addr. It returns zero when
// the failure is within addr's allowance, to be answered as it is, else
// how long addr must wait, to be answered 429.
func (l *failLimiter) fail(addr netip.Addr) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Sub(l.swept) >= failSweepEvery {
		l.sweepLocked(now)
	}
	b, ok := l.buckets[addr]
	if !ok {
		if len(l.buckets) >= maxFailBuckets {
			return l.overflow.take(now)
		}
		b = failBucket{tokens: authFailBurst, at: now}
	}
	wait := b.take(now)
	l.buckets[addr] = b
	return wait
}

// sweepLocked drops the buckets that have refilled.
func (l *failLimiter) sweepLocked(now time.Time) {
	for addr, b := range l.buckets {
		if b.refill(now); b.tokens >= authFailBurst {
			delete(l.buckets, addr)
		}
	}
	l.swept = now
}

// size is the number of addresses the table holds.
func (l *failLimiter) size() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.buckets)
}

// clientAddr is the address failures are counted against: the peer's IP,
// never a header the client writes (X-Forwarded-For is anyone's to forge).
// An IPv6 peer is counted by its /64, the block one host is usually given,
// so walking through its own /64 buys an attacker nothing.
func clientAddr(r *http.Request) netip.Addr {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		// Not an IP peer (a unix socket, a test's made-up address): all
		// such peers share one bucket.
		return netip.Addr{}
	}
	addr := ap.Addr().Unmap()
	if addr.Is6() {
		p, _ := addr.WithZone("").Prefix(64)
		return p.Addr()
	}
	return addr
}

// throttled is the answer to a failure past the address's allowance, in
// Django REST framework's words (PostHog's API answers the same).
func throttled(wait time.Duration) *apiError {
	secs := max(1, int(math.Ceil(wait.Seconds())))
	return &apiError{Status: http.StatusTooManyRequests, Type: "throttled_error", Code: "throttled",
		Detail:     fmt.Sprintf("Request was throttled. Expected available in %d seconds.", secs),
		retryAfter: secs}
}
