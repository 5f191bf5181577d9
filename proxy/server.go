package proxy

import (
	"context"
	"crypto/tls"
	"log"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"
)

// Bounds of the edge's listeners against clients that hold connections
// open or send too much. Both listeners face the internet.
const (
	// HeaderTimeout bounds reading a request's headers, the TLS handshake
	// included: a client that dribbles its headers (slowloris) or never
	// finishes its handshake is cut off after it. The body is not bounded
	// by time: uploads stream, and the body limit bounds their size.
	HeaderTimeout = 10 * time.Second
	// MaxHeaderBytes is the largest request head the TLS edge reads
	// (net/http allows 4 KiB more); a larger one is answered 431 and the
	// connection closed.
	MaxHeaderBytes = 64 << 10
	// PlainMaxHeaderBytes is the same for plain HTTP, which only answers
	// ACME challenges and redirects.
	PlainMaxHeaderBytes = 16 << 10
)

// serverLogEvery is the least time between two lines of a server's error
// log at one level: a client can make the server log at will (every
// refused handshake is a line), and the log must not grow with an attack.
const serverLogEvery = time.Second

// NewTLSServer returns the http.Server of the TLS edge (--https-addr)
// serving h with tlsConfig, with the bounds above, keep-alive connections
// closed after two idle minutes, and its error log going to logger as
// described at serverErrorLog. HTTP/2 is served by golang.org/x/net/http2
// (the server net/http bundles a copy of) over a connection that gathers
// the frames of concurrent streams into shared writes (see gatherConn).
// The server's ConnState and TLSNextProto are the edge's (serveHTTP2):
// replacing them would take HTTP/2 connections out of the shutdown.
func NewTLSServer(h http.Handler, tlsConfig *tls.Config, logger *slog.Logger) *http.Server {
	srv := &http.Server{
		Handler:           h,
		TLSConfig:         tlsConfig,
		ReadHeaderTimeout: HeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          serverErrorLog(logger),
	}
	serveHTTP2(srv)
	return srv
}

// NewPlainServer returns the http.Server of plain HTTP (--http-addr)
// serving h: the header timeout, PlainMaxHeaderBytes, one idle minute,
// and the same error log as NewTLSServer.
func NewPlainServer(h http.Handler, logger *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: HeaderTimeout,
		IdleTimeout:       time.Minute,
		MaxHeaderBytes:    PlainMaxHeaderBytes,
		ErrorLog:          serverErrorLog(logger),
	}
}

// serverErrorLog is the ErrorLog of the edge's servers. What clients cause
// (failed handshakes, such as every one for a name not served, and broken
// HTTP/2 connections) goes to Debug: it is routine on a public address,
// and the handshakes are counted in edgeproxy_tls_handshakes_total. The
// rest (a handler's panic, accept failures such as running out of file
// descriptors) goes to Warn. At each level at most one line is written
// per serverLogEvery; the next line written carries the number of lines
// dropped before it as "suppressed".
func serverErrorLog(logger *slog.Logger) *log.Logger {
	return log.New(newServerLog(logger, time.Now), "", 0)
}

// serverLog is the io.Writer behind serverErrorLog.
type serverLog struct {
	log   *slog.Logger
	debug *logLimiter
	warn  *logLimiter
}

func newServerLog(logger *slog.Logger, now func() time.Time) *serverLog {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &serverLog{
		log:   logger,
		debug: &logLimiter{every: serverLogEvery, now: now},
		warn:  &logLimiter{every: serverLogEvery, now: now},
	}
}

func (s *serverLog) Write(p []byte) (int, error) {
	msg := strings.TrimSuffix(string(p), "\n")
	level, limiter := slog.LevelWarn, s.warn
	if clientCaused(msg) {
		level, limiter = slog.LevelDebug, s.debug
	}
	ctx := context.Background()
	if !s.log.Enabled(ctx, level) {
		return len(p), nil
	}
	ok, suppressed := limiter.allow()
	if !ok {
		return len(p), nil
	}
	if suppressed > 0 {
		s.log.Log(ctx, level, msg, "suppressed", suppressed)
	} else {
		s.log.Log(ctx, level, msg)
	}
	return len(p), nil
}

// clientCaused reports whether a net/http server log line is about
// something a client did rather than a fault of this process.
func clientCaused(msg string) bool {
	for _, prefix := range []string{
		"http: TLS handshake error",
		"http2: server connection error",
		"http2: server closing client connection",
		"http2: server: error reading preface",
		"http2: server rejecting conn",
	} {
		if strings.HasPrefix(msg, prefix) {
			return true
		}
	}
	return false
}

// logLimiter lets one line through per every and counts the others.
type logLimiter struct {
	every time.Duration
	now   func() time.Time

	// mu guards next and suppressed.
	mu         sync.Mutex
	next       time.Time // when the next line may be written
	suppressed int
}

// allow reports whether a line may be written now, and if so how many
// were dropped since the last one written.
func (l *logLimiter) allow() (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if now.Before(l.next) {
		l.suppressed++
		return false, 0
	}
	l.next = now.Add(l.every)
	suppressed, l.suppressed = l.suppressed, 0
	return true, suppressed
}
