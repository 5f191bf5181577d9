package dnszone

import (
	"net/netip"
	"testing"
	"time"
)

// TestLimiterTableIsBounded: past MaxClients addresses, new ones share
// the overflow bucket, so forging source addresses buys no more answers;
// once the table's addresses fall quiet their buckets are swept and new
// addresses get their own again.
func TestLimiterTableIsBounded(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	l := newLimiter(1, 2, 3, func() time.Time { return now })
	addr := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, 100, byte(i)}) }
	for i := range 3 {
		if l.check(addr(i)) != allow {
			t.Fatalf("address %d refused on its first query", i)
		}
	}
	// The table is full of addresses with queries in their budget:
	// addresses 3 and 4 share one bucket of 2.
	allowed := 0
	for i := 3; i < 5; i++ {
		for range 2 {
			if l.check(addr(i)) == allow {
				allowed++
			}
		}
	}
	if allowed != 2 {
		t.Errorf("two new addresses over a full table got %d answers, want the overflow's burst, 2", allowed)
	}
	if got := len(l.clients); got != 3 {
		t.Errorf("table holds %d addresses, want at most 3", got)
	}
	// Everyone quiet long enough to refill: the next new address sweeps
	// the table and gets a bucket of its own.
	now = now.Add(10 * time.Second)
	for range 2 {
		if l.check(addr(9)) != allow {
			t.Error("a new address after the sweep was limited")
		}
	}
	if _, ok := l.clients[clientKey(addr(9))]; !ok || len(l.clients) != 1 {
		t.Errorf("after the sweep the table holds %d addresses, want only the new one", len(l.clients))
	}
}

// TestClientKey: an IPv6 host's /64 is one client; IPv4 addresses (also
// when mapped into IPv6) are each their own.
func TestClientKey(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:2:ffff::9"},
		{"192.0.2.1", "::ffff:192.0.2.1"},
	} {
		if clientKey(netip.MustParseAddr(tc.a)) != clientKey(netip.MustParseAddr(tc.b)) {
			t.Errorf("%s and %s are different clients, want one", tc.a, tc.b)
		}
	}
	for _, tc := range []struct{ a, b string }{
		{"2001:db8:1:2::1", "2001:db8:1:3::1"},
		{"192.0.2.1", "192.0.2.2"},
	} {
		if clientKey(netip.MustParseAddr(tc.a)) == clientKey(netip.MustParseAddr(tc.b)) {
			t.Errorf("%s and %s are one client, want two", tc.a, tc.b)
		}
	}
}
