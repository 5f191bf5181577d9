package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	for _, c := range []struct {
		live, headroom uint64
		want           int
	}{
		{3 << 20, 32 << 20, 1066},  // the edge under load: next collection at ~35 MB, not 6
		{32 << 20, 32 << 20, 100},  // live as large as the headroom: GOGC=100
		{400 << 20, 32 << 20, 100}, // 10,000 idle connections: GOGC=100, as without the tuner
		{1 << 10, 32 << 20, 5000},  // almost nothing live: bounded
		{0, 32 << 20, 100},         // no reading
		{16 << 20, 32 << 20, 200},  // in between
	} {
		if got := gcPercentFor(c.live, c.headroom); got != c.want {
			t.Errorf("gcPercentFor(%d, %d) = %d, want %d", c.live, c.headroom, got, c.want)
		}
	}
}

// gogc reads GOGC without setting it.
func gogc() int {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return int(s[0].Value.Uint64())
}

// TestGCTuner checks that the tuner raises GOGC after collections when
// little is live, brings it to 100 when the live heap outgrows the
// headroom and up again when it shrinks, and gives the previous GOGC back
// when stopped.
func TestGCTuner(t *testing.T) {
	orig := debug.SetGCPercent(100)
	defer debug.SetGCPercent(orig)
	stop := startGCTuner(64 << 20)
	defer stop()
	waitGOGC := func(ok func(int) bool, what string) {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for !ok(gogc()) {
			if time.Now().After(deadline) {
				t.Fatalf("GOGC = %d after 30 s, want %s", gogc(), what)
			}
			runtime.GC()
			time.Sleep(10 * time.Millisecond)
		}
	}
	// A test binary has a few MB live, far below 64 MB.
	waitGOGC(func(p int) bool { return p > 200 }, "over 200")
	live := make([]byte, 256<<20)
	waitGOGC(func(p int) bool { return p == 100 }, "100 with 256 MB live")
	runtime.KeepAlive(live)
	live = nil
	waitGOGC(func(p int) bool { return p > 200 }, "over 200 once the 256 MB are garbage")
	stop()
	if got := gogc(); got != 100 {
		t.Errorf("GOGC = %d after stop, want 100 (as before the tuner)", got)
	}
	runtime.GC()
	runtime.GC()
	time.Sleep(50 * time.Millisecond)
	if got := gogc(); got != 100 {
		t.Errorf("GOGC = %d after stop and two collections, want 100", got)
	}
}
