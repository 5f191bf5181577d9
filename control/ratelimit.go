package control

import (
	"fmt"
	"math"
	"net"
	"net/http"
	"sync"
	"time"
)

// Failed authentications are limited per client address, so nobody can
// try keys at speed: each address has a bucket of authFailBurst failures
// that refills at one per authFailRefill. An address whose bucket is
// empty gets 429 for every request until it refills, whatever key it
// sends. Successful authentications cost nothing.
const (
	authFailBurst  = 100
	authFailRefill = 500 * time.Millisecond
	// maxFailBuckets bounds the table; full (idle) buckets are dropped
	// first when it is reached.
	maxFailBuckets = 100_000
)

type bucket struct {
	tokens float64
	at     time.Time
}

// failLimiter is the per-address table of failed-authentication buckets.
type failLimiter struct {
	now func() time.Time

	// mu guards buckets.
	mu      sync.Mutex
	buckets map[string]*bucket
}

func newFailLimiter(now func() time.Time) *failLimiter {
	return &failLimiter{now: now, buckets: map[string]*bucket{}}
}

// refillLocked brings b up to date and returns it.
func (l *failLimiter) refillLocked(b *bucket, now time.Time) {
	b.tokens = math.Min(authFailBurst, b.tokens+now.Sub(b.at).Seconds()/authFailRefill.Seconds())
	b.at = now
}

// wait is how long addr must wait before trying again; zero when it may.
func (l *failLimiter) wait(addr string) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.buckets[addr]
	if !ok {
		return 0
	}
	now := l.now()
	l.refillLocked(b, now)
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) * float64(authFailRefill))
}

// fail takes one token from addr's bucket.
func (l *failLimiter) fail(addr string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	b, ok := l.buckets[addr]
	if !ok {
		if len(l.buckets) >= maxFailBuckets {
			l.sweepLocked(now)
		}
		b = &bucket{tokens: authFailBurst, at: now}
		l.buckets[addr] = b
	}
	l.refillLocked(b, now)
	b.tokens = math.Max(b.tokens-1, 0)
}

// sweepLocked drops the buckets that have refilled, and if none has, an
// arbitrary half, so the table never grows past maxFailBuckets.
func (l *failLimiter) sweepLocked(now time.Time) {
	for addr, b := range l.buckets {
		l.refillLocked(b, now)
		if b.tokens >= authFailBurst {
			delete(l.buckets, addr)
		}
	}
	for addr := range l.buckets {
		if len(l.buckets) < maxFailBuckets/2 {
			break
		}
		delete(l.buckets, addr)
	}
}

// clientAddr is the address failures are counted against: the peer's IP.
func clientAddr(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func throttled(wait time.Duration) *apiError {
	secs := int(math.Ceil(wait.Seconds()))
	return &apiError{Status: http.StatusTooManyRequests, Type: "throttled_error", Code: "throttled",
		Detail:     fmt.Sprintf("Request was throttled. Expected available in %d seconds.", secs),
		retryAfter: secs}
}
