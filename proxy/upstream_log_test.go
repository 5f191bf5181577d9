package proxy_test

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// TestUpstreamOutageLogLimited sends a burst of requests while the upstream
// refuses connections: each one is answered 502, but the log gets at most
// one "upstream failed" warning per second, and the next one says how
// many were dropped.
func TestUpstreamOutageLogLimited(t *testing.T) {
	h := newHarness(t, func(c *proxy.Config) {
		c.Upstream = closedURL(t)
		c.AccessLogEvery = 0
	})
	c := h.client("h1", served)
	const requests = 200
	start := time.Now()
	for range requests {
		resp, body := do(t, c, newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
		if resp.StatusCode != 502 {
			t.Fatalf("status %d (%q), want 502", resp.StatusCode, body)
		}
	}
	elapsed := time.Since(start)
	warnings := 0
	for _, m := range h.logs.messages(slog.LevelWarn) {
		if strings.HasPrefix(m, "upstream failed") {
			warnings++
		}
	}
	// One line per started second of the burst, at most.
	if max := int(elapsed/time.Second) + 1; warnings < 1 || warnings > max {
		t.Errorf("%d requests failed in %v: %d warnings logged, want 1 to %d", requests, elapsed, warnings, max)
	}
	t.Logf("%d requests failed in %v: %d warnings logged", requests, elapsed.Round(time.Millisecond), warnings)

	// The next warning says how many failures were dropped since the one
	// before. Failures go on (each one dropped while the second is not
	// over) until one is let through: no fixed pause, whose end could fall
	// just after a warning with nothing dropped since.
	logged := func() int {
		n := 0
		for _, m := range h.logs.messages(slog.LevelWarn) {
			if strings.HasPrefix(m, "upstream failed") {
				n++
			}
		}
		return n
	}
	dropped := -1 // unknown until a warning is seen after the burst
	deadline := time.Now().Add(30 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no warning let through in 30 s after the burst (%d failures dropped)", dropped)
		}
		n := logged()
		do(t, c, newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
		if logged() == n {
			if dropped >= 0 {
				dropped++
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if dropped <= 0 {
			dropped = 0 // a warning with nothing (or an unknown number) dropped before it
			continue
		}
		var suppressed int64
		h.logs.last(t, "upstream failed").Attrs(func(a slog.Attr) bool {
			if a.Key == "suppressed" {
				suppressed = a.Value.Int64()
			}
			return true
		})
		if suppressed != int64(dropped) {
			t.Errorf("the warning after %d dropped failures says %d were suppressed", dropped, suppressed)
		}
		break
	}
}

// last is the last record logged with the message.
func (l *logRecorder) last(t *testing.T, msg string) slog.Record {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	for i := len(l.records) - 1; i >= 0; i-- {
		if l.records[i].Message == msg {
			return l.records[i]
		}
	}
	t.Fatalf("no %q logged", msg)
	return slog.Record{}
}
