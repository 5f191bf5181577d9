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

	// After a pause the next failure is logged with the count dropped.
	time.Sleep(1100 * time.Millisecond)
	do(t, c, newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
	last := h.logs.last(t, "upstream failed")
	suppressed := false
	last.Attrs(func(a slog.Attr) bool {
		suppressed = suppressed || a.Key == "suppressed" && a.Value.Int64() > 0
		return true
	})
	if !suppressed {
		t.Errorf("the warning after the burst does not say how many were suppressed")
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
