package proxy

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
)

// The HTTP/2 server flushes its frames whenever its write queue runs
// empty. Under load on few cores that is after nearly every response: each
// stream's HEADERS and DATA leave as a TLS record and a write(2) of their
// own, while the responses of the connection's other streams are already
// on their way. nginx gathers them. gatherConn does the same under the
// server: a flush hands its bytes over, and a goroutine of the connection
// writes them once the goroutines that were already runnable (other
// streams' handlers, finishing their answers) have had their turn, so the
// frames they produce leave in the same record and system call. On an idle
// connection nothing else is runnable and the write goes out at once.

// gatherLimit is how many bytes may wait for the writer before a flush
// blocks until they are out: the server's backpressure (a client that does
// not read) still reaches it, after at most this much.
const gatherLimit = 64 << 10

// gatherCloseTimeout bounds how long a closed connection's last bytes (the
// server's GOAWAY) may take to leave before the connection is cut.
const gatherCloseTimeout = time.Second

// gatherBufs holds the writers' buffers between bursts, so that an idle
// connection keeps none.
var gatherBufs = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

// gatherConn is the connection the HTTP/2 server is given: reads, the TLS
// state, addresses and deadlines are the TLS connection's; writes are
// gathered as described above.
type gatherConn struct {
	*tls.Conn

	mu      sync.Mutex
	drained sync.Cond // broadcast when the writer has taken or finished a batch
	pending *[]byte   // bytes not yet taken by the writer; nil when none
	writing bool      // the writer goroutine runs
	closed  bool      // Close was called
	err     error     // the first write error: every later Write returns it
}

func newGatherConn(c *tls.Conn) *gatherConn {
	g := &gatherConn{Conn: c}
	g.drained.L = &g.mu
	return g
}

// Write queues p for the writer and returns: an error of an earlier write
// is reported here, on the next flush, as the server would have seen it
// from a write that was still in progress.
func (g *gatherConn) Write(p []byte) (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for g.err == nil && !g.closed && g.pending != nil && len(*g.pending) >= gatherLimit {
		g.drained.Wait()
	}
	if g.err != nil {
		return 0, g.err
	}
	if g.closed {
		return 0, net.ErrClosed
	}
	if g.pending == nil {
		g.pending = gatherBufs.Get().(*[]byte)
	}
	*g.pending = append(*g.pending, p...)
	if !g.writing {
		g.writing = true
		go g.writeOut()
	}
	return len(p), nil
}

// writeOut writes what is pending until nothing is, then ends.
func (g *gatherConn) writeOut() {
	// Let the goroutines that are already runnable go first: their frames
	// join this batch.
	runtime.Gosched()
	g.mu.Lock()
	for g.pending != nil && g.err == nil {
		buf := g.pending
		g.pending = nil
		g.drained.Broadcast()
		g.mu.Unlock()
		_, err := g.Conn.Write(*buf)
		*buf = (*buf)[:0]
		if cap(*buf) <= 2*gatherLimit {
			gatherBufs.Put(buf)
		}
		g.mu.Lock()
		if err != nil {
			g.err = err
		}
	}
	g.writing = false
	g.drained.Broadcast()
	g.mu.Unlock()
}

// Close closes the connection once what is pending has been written,
// waiting for that at most gatherCloseTimeout: net/http closes the TLS
// connection as soon as the HTTP/2 server returns, and the server's last
// frames (its GOAWAY) must be out by then.
func (g *gatherConn) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		return net.ErrClosed
	}
	g.closed = true
	g.drained.Broadcast()
	if g.writing {
		g.Conn.SetWriteDeadline(time.Now().Add(gatherCloseTimeout))
		for g.writing {
			g.drained.Wait()
		}
	}
	failed := g.err != nil
	g.mu.Unlock()
	if failed {
		// The TLS connection's close_notify would wait its own five
		// seconds on a client that has already stopped reading.
		return g.Conn.NetConn().Close()
	}
	return g.Conn.Close()
}

// serveHTTP2 makes srv serve HTTP/2 over gatherConn: the server is
// golang.org/x/net/http2's (net/http bundles a copy of it, which takes only
// a *tls.Conn), configured from srv as net/http's would be. x/net marks
// ServeConn deprecated, and from Go 1.27 its server wraps net/http's: if
// that ever bypassed gatherConn, the ConnState hook below would no longer
// see one, and TestHTTP2ShutdownReachesLateConnection fails.
//
// On shutdown the HTTP/2 server sends each of its connections a GOAWAY
// from a hook, and a connection whose handshake ends after the hook ran
// (it was accepted just before the listener closed) is never told: it
// stays open, and http.Server.Shutdown waits on it until its deadline.
// So the hook is registered on a server of its own (notifier, never
// served), and the edge runs it on srv's shutdown and again whenever a
// connection becomes active during it. A connection is known to the HTTP/2
// server before it becomes active, so either the first run finds it or a
// later one does.
func serveHTTP2(srv *http.Server) {
	h2 := &http2.Server{IdleTimeout: srv.IdleTimeout}
	notifier := &http.Server{}
	if err := http2.ConfigureServer(notifier, h2); err != nil {
		// Only a TLS configuration with no HTTP/2 cipher suite fails,
		// and notifier's is empty.
		panic(err)
	}
	var shuttingDown atomic.Bool
	goAwayAll := func() {
		// Shutdown of a server that never served only runs its hooks.
		notifier.Shutdown(context.Background())
	}
	srv.RegisterOnShutdown(func() {
		shuttingDown.Store(true)
		goAwayAll()
	})
	// The HTTP/2 server reports a connection active once its preface is
	// read and whenever its first stream opens; HTTP/1.1 connections pass
	// through this hook on every request, for a type assertion.
	srv.ConnState = func(c net.Conn, state http.ConnState) {
		if _, h2conn := c.(*gatherConn); h2conn && state == http.StateActive && shuttingDown.Load() {
			goAwayAll()
		}
	}
	// As net/http's own HTTP/2 set-up does: h2 is offered even when the
	// configuration does not list it (after the protocols it lists).
	if srv.TLSConfig != nil && !slices.Contains(srv.TLSConfig.NextProtos, http2.NextProtoTLS) {
		cfg := srv.TLSConfig.Clone()
		cfg.NextProtos = append(cfg.NextProtos, http2.NextProtoTLS)
		srv.TLSConfig = cfg
	}
	// Set, TLSNextProto keeps net/http from configuring its own HTTP/2
	// server; cleartext HTTP/2 is not served.
	srv.TLSNextProto = map[string]func(*http.Server, *tls.Conn, http.Handler){
		http2.NextProtoTLS: func(hs *http.Server, c *tls.Conn, h http.Handler) {
			ctx := context.Background()
			// net/http passes its per-connection base context down this
			// way (see http2.ConfigureServer).
			if bc, ok := h.(interface{ BaseContext() context.Context }); ok {
				ctx = bc.BaseContext()
			}
			h2.ServeConn(newGatherConn(c), &http2.ServeConnOpts{Context: ctx, Handler: h, BaseConfig: hs})
		},
	}
}
