package proxy

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// levelCounter is an slog.Handler that counts records by level and keeps
// their attributes, enabled from min.
type levelCounter struct {
	min slog.Level

	// mu guards records.
	mu      sync.Mutex
	records []slog.Record
}

func (c *levelCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= c.min }
func (c *levelCounter) Handle(_ context.Context, r slog.Record) error {
	c.mu.Lock()
	c.records = append(c.records, r.Clone())
	c.mu.Unlock()
	return nil
}
func (c *levelCounter) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *levelCounter) WithGroup(string) slog.Handler      { return c }

func (c *levelCounter) snapshot() []slog.Record {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]slog.Record(nil), c.records...)
}

func suppressedOf(r slog.Record) int64 {
	var n int64
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "suppressed" {
			n = a.Value.Int64()
		}
		return true
	})
	return n
}

// TestServerLogRateLimited writes a flood of server log lines under a
// stopped clock: one line per level gets through, and the next line
// after a second carries the count of the dropped ones. Lines clients
// cause go to Debug, others to Warn, each level limited on its own.
func TestServerLogRateLimited(t *testing.T) {
	now := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	rec := &levelCounter{min: slog.LevelDebug}
	w := newServerLog(slog.New(rec), func() time.Time { return now })
	handshake := "http: TLS handshake error from 192.0.2.1:1234: certs: no certificate for this server name\n"
	panicLine := "http: panic serving 192.0.2.1:1234: boom\ngoroutine 1 [running]:\n"
	for range 1000 {
		w.Write([]byte(handshake))
		w.Write([]byte(panicLine))
	}
	got := rec.snapshot()
	if len(got) != 2 || got[0].Level != slog.LevelDebug || got[1].Level != slog.LevelWarn {
		t.Fatalf("after a flood in one instant: %d records %v, want one Debug and one Warn", len(got), got)
	}
	if got[0].Message != "http: TLS handshake error from 192.0.2.1:1234: certs: no certificate for this server name" {
		t.Errorf("message %q (the newline must be trimmed)", got[0].Message)
	}
	now = now.Add(serverLogEvery - time.Nanosecond)
	w.Write([]byte(handshake))
	if n := len(rec.snapshot()); n != 2 {
		t.Errorf("%d records before a second passed, want 2", n)
	}
	now = now.Add(time.Nanosecond)
	w.Write([]byte(handshake))
	w.Write([]byte(panicLine))
	got = rec.snapshot()
	if len(got) != 4 {
		t.Fatalf("%d records a second later, want 4", len(got))
	}
	if n := suppressedOf(got[2]); got[2].Level != slog.LevelDebug || n != 1000 {
		t.Errorf("debug line a second later: level %v suppressed %d, want 1000", got[2].Level, n)
	}
	if n := suppressedOf(got[3]); got[3].Level != slog.LevelWarn || n != 999 {
		t.Errorf("warn line a second later: level %v suppressed %d, want 999", got[3].Level, n)
	}

	// At Info, the client-caused lines are not even counted: they never
	// show up as suppressed.
	info := &levelCounter{min: slog.LevelInfo}
	w = newServerLog(slog.New(info), func() time.Time { return now })
	for range 100 {
		w.Write([]byte(handshake))
	}
	if n := len(info.snapshot()); n != 0 {
		t.Errorf("at Info, %d records of refused handshakes", n)
	}
}

func TestClientCaused(t *testing.T) {
	for msg, want := range map[string]bool{
		"http: TLS handshake error from 1.2.3.4:5: EOF":                                   true,
		"http2: server connection error from 1.2.3.4:5: connection error: PROTOCOL_ERROR": true,
		"http2: server closing client connection: timeout":                                true,
		"http2: server: error reading preface from client 1.2.3.4:5: EOF":                 true,
		"http: panic serving 1.2.3.4:5: boom":                                             false,
		"http2: panic serving 1.2.3.4:5: boom":                                            false,
		"http: Accept error: accept tcp: too many open files; retrying in 5ms":            false,
		"http: superfluous response.WriteHeader call from x (y.go:1)":                     false,
	} {
		if got := clientCaused(msg); got != want {
			t.Errorf("clientCaused(%q) = %v, want %v", msg, got, want)
		}
	}
}
