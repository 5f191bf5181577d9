package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testcert"
)

// countingConn counts the writes that reach it.
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(p []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(p)
}

// gatherCert is a certificate for gather.example and a pool trusting it.
func gatherCert(t *testing.T) (*testcert.Cert, *x509.CertPool) {
	t.Helper()
	c, pool, err := testcert.SelfSigned(time.Now().Add(-time.Hour), time.Now().Add(time.Hour), "gather.example")
	if err != nil {
		t.Fatal(err)
	}
	return c, pool
}

// gatherPair returns a gatherConn over a TLS server connection on one end
// of a net.Pipe, the TLS client on the other end, and the counter of the
// server side's writes. A net.Pipe write blocks until the other end reads
// it, so a test decides when the writer's writes complete.
func gatherPair(t *testing.T) (*gatherConn, *tls.Conn, *countingConn) {
	t.Helper()
	c, pool := gatherCert(t)
	a, b := net.Pipe()
	counted := &countingConn{Conn: a}
	srv := tls.Server(counted, &tls.Config{Certificates: []tls.Certificate{c.TLS}})
	cli := tls.Client(b, &tls.Config{RootCAs: pool, ServerName: "gather.example"})
	errc := make(chan error, 1)
	go func() { errc <- srv.Handshake() }()
	if err := cli.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	// Closing the pipe, not the TLS connections, whose close_notify would
	// wait for a reader.
	t.Cleanup(func() { a.Close(); b.Close() })
	counted.writes.Store(0)
	return newGatherConn(srv), cli, counted
}

// Flushes made while the writer is still writing an earlier one leave
// together: one TLS record, one write to the connection.
func TestGatherConnGathersWhileWriting(t *testing.T) {
	g, cli, counted := gatherPair(t)
	parts := [][]byte{[]byte("first flush;"), []byte("second flush;"), []byte("third flush")}
	for _, p := range parts {
		// The client reads nothing yet, so the writer's first write
		// blocks and the later flushes wait in the buffer.
		if n, err := g.Write(p); n != len(p) || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	want := bytes.Join(parts, nil)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(cli, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
	// Either the writer took the first flush alone before the others
	// came, or all three together; never one write per flush.
	if n := counted.writes.Load(); n > 2 {
		t.Errorf("%d writes reached the connection for 3 flushes made while the first was being written; want at most 2", n)
	}
}

// Flushes well over gatherLimit, written while the client reads slowly,
// arrive whole and in order. (That a flush past the limit waits is
// TestGatherConnBlocksAtLimit.)
func TestGatherConnInOrder(t *testing.T) {
	g, cli, _ := gatherPair(t)
	const flushes, size = 12, 20 << 10 // 240 KB, well over gatherLimit
	var want bytes.Buffer
	for i := range flushes {
		want.Write(bytes.Repeat([]byte{byte('a' + i)}, size))
	}
	wrote := make(chan error, 1)
	go func() {
		b := want.Bytes()
		for i := range flushes {
			if _, err := g.Write(b[i*size : (i+1)*size]); err != nil {
				wrote <- err
				return
			}
		}
		wrote <- nil
	}()
	// Read one byte, then the rest.
	first := make([]byte, 1)
	if _, err := io.ReadFull(cli, first); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, want.Len()-1)
	if _, err := io.ReadFull(cli, got); err != nil {
		t.Fatal(err)
	}
	if err := <-wrote; err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(append(first, got...), want.Bytes()) {
		t.Fatal("the bytes read differ from the bytes written")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.pending != nil {
		t.Errorf("%d bytes still pending after everything was read", len(*g.pending))
	}
}

// pendingLimitReached reports whether a Write would wait now.
func (g *gatherConn) pendingLimitReached() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.pending != nil && len(*g.pending) >= gatherLimit
}

// A flush beyond gatherLimit waits for the client: the server sees the
// backpressure it would see from a connection it writes to directly.
func TestGatherConnBlocksAtLimit(t *testing.T) {
	g, cli, _ := gatherPair(t)
	chunk := make([]byte, 16<<10)
	if _, err := g.Write(chunk); err != nil {
		t.Fatal(err)
	}
	// Wait until the writer has taken the first chunk: it is then blocked
	// in the pipe, since the client reads nothing.
	g.mu.Lock()
	for g.pending != nil {
		g.drained.Wait()
	}
	g.mu.Unlock()
	for !g.pendingLimitReached() {
		if _, err := g.Write(chunk); err != nil {
			t.Fatal(err)
		}
	}
	blocked := make(chan error, 1)
	go func() { _, err := g.Write(chunk); blocked <- err }()
	select {
	case err := <-blocked:
		t.Fatalf("a write past the limit returned (%v) while the client read nothing", err)
	case <-time.After(100 * time.Millisecond):
	}
	// The client starts reading: the blocked write completes.
	go io.Copy(io.Discard, cli)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
}

// A write that fails is reported by the next flush, and every one after
// it: the server then ends the connection as it would on its own error.
func TestGatherConnWriteErrorSticks(t *testing.T) {
	g, cli, _ := gatherPair(t)
	cli.NetConn().Close() // the pipe: the writer's write fails
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		_, err = g.Write([]byte("to nobody"))
		// Wait for the writer to finish, so that the next Write
		// sees its outcome.
		g.mu.Lock()
		for g.writing {
			g.drained.Wait()
		}
		g.mu.Unlock()
	}
	if err == nil {
		t.Fatal("writes to a closed connection kept succeeding")
	}
	if _, err2 := g.Write([]byte("again")); err2 == nil {
		t.Fatal("a write after a failed one succeeded")
	}
}

// Close waits for the pending bytes (the server's GOAWAY) to leave, and
// for a client that reads nothing, no longer than gatherCloseTimeout.
func TestGatherConnClose(t *testing.T) {
	t.Run("flushes what is pending", func(t *testing.T) {
		g, cli, _ := gatherPair(t)
		if _, err := g.Write([]byte("goaway")); err != nil {
			t.Fatal(err)
		}
		read := make(chan []byte, 1)
		go func() { b, _ := io.ReadAll(cli); read <- b }()
		if err := g.Close(); err != nil {
			t.Fatal(err)
		}
		if b := <-read; string(b) != "goaway" {
			t.Fatalf("the client read %q before the close, want %q", b, "goaway")
		}
		if _, err := g.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
		}
	})
	t.Run("a client that reads nothing", func(t *testing.T) {
		g, _, _ := gatherPair(t)
		if _, err := g.Write([]byte("never read")); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- g.Close() }()
		select {
		case <-done:
		case <-time.After(gatherCloseTimeout + 30*time.Second):
			t.Fatal("Close still waits for a client that reads nothing")
		}
	})
}

// The edge's HTTP/2 server, given a gatherConn, still takes part in a
// graceful shutdown: a request in flight is answered in full, the client
// is sent a GOAWAY, and Shutdown returns once the connection is closed.
// Without it Shutdown would wait on the connection until its deadline.
func TestHTTP2GracefulShutdown(t *testing.T) {
	c, pool := gatherCert(t)
	arrived, release := make(chan struct{}), make(chan struct{})
	srv := NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ProtoMajor != 2 {
			t.Errorf("request over %s, want HTTP/2", r.Proto)
		}
		if r.TLS == nil || r.TLS.ServerName != "gather.example" {
			t.Errorf("request's TLS state = %+v, want the connection's, SNI gather.example", r.TLS)
		}
		close(arrived)
		<-release
		io.WriteString(w, "answered in full")
	}), &tls.Config{Certificates: []tls.Certificate{c.TLS}, NextProtos: []string{"h2", "http/1.1"}}, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	client := h2Client(pool)
	type result struct {
		body string
		err  error
	}
	got := make(chan result, 1)
	go func() {
		res, err := client.Get("https://gather.example:" + portOf(ln) + "/")
		if err != nil {
			got <- result{err: err}
			return
		}
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		got <- result{string(b), err}
	}()
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	close(release)
	if r := <-got; r.err != nil || r.body != "answered in full" {
		t.Fatalf("the request in flight got %q, %v", r.body, r.err)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v, want nil once the HTTP/2 connection has closed", err)
	}
}

func h2Client(pool *x509.CertPool) *http.Client {
	var protocols http.Protocols
	protocols.SetHTTP2(true)
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, "127.0.0.1:"+addr[len("gather.example:"):])
		},
		TLSClientConfig: &tls.Config{RootCAs: pool},
		Protocols:       &protocols,
	}}
}

func portOf(ln net.Listener) string {
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	return port
}

// acceptSignal reports each connection its listener accepts.
type acceptSignal struct {
	net.Listener
	accepted chan struct{}
}

func (l acceptSignal) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.accepted <- struct{}{}
	}
	return c, err
}

// A connection accepted before the listener closed whose HTTP/2 begins
// only after the shutdown has started is still sent its GOAWAY and
// closed: Shutdown returns instead of waiting on it until its deadline.
func TestHTTP2ShutdownReachesLateConnection(t *testing.T) {
	c, pool := gatherCert(t)
	srv := NewTLSServer(http.NotFoundHandler(), &tls.Config{Certificates: []tls.Certificate{c.TLS}, NextProtos: []string{"h2", "http/1.1"}}, slog.New(slog.DiscardHandler))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	accepted := make(chan struct{}, 1)
	go srv.ServeTLS(acceptSignal{ln, accepted}, "", "")
	t.Cleanup(func() { srv.Close() })

	raw, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	<-accepted
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	shut := make(chan error, 1)
	go func() { shut <- srv.Shutdown(ctx) }()
	// Give the shutdown hooks time to run before the connection's
	// HTTP/2 starts; a slower machine only makes the case less sharp.
	time.Sleep(50 * time.Millisecond)
	tc := tls.Client(raw, &tls.Config{RootCAs: pool, ServerName: "gather.example", NextProtos: []string{"h2"}})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		t.Fatalf("negotiated %q, want h2", p)
	}
	// The client preface and an empty SETTINGS frame.
	if _, err := io.WriteString(tc, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"); err != nil {
		t.Fatal(err)
	}
	go io.Copy(io.Discard, tc) // until the server closes the connection
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown = %v, want nil: the connection that began during it was never closed", err)
	}
}

// A TLS configuration that lists no ALPN protocols still gets HTTP/2, as
// with net/http's own set-up, and the caller's configuration is not
// changed; one that lists http/1.1 alone keeps it first.
func TestHTTP2OfferedWhenNotListed(t *testing.T) {
	c, pool := gatherCert(t)
	for _, tc := range []struct {
		listed    []string
		clientALP []string
		want      string
	}{
		{nil, []string{"h2", "http/1.1"}, "h2"},
		{[]string{"http/1.1"}, []string{"h2", "http/1.1"}, "http/1.1"},
		{[]string{"http/1.1"}, []string{"h2"}, "h2"},
	} {
		cfg := &tls.Config{Certificates: []tls.Certificate{c.TLS}, NextProtos: tc.listed}
		srv := NewTLSServer(http.NotFoundHandler(), cfg, slog.New(slog.DiscardHandler))
		if !slices.Equal(cfg.NextProtos, tc.listed) {
			t.Errorf("the caller's NextProtos became %q, was %q", cfg.NextProtos, tc.listed)
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go srv.ServeTLS(ln, "", "")
		conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: "gather.example", NextProtos: tc.clientALP})
		if err != nil {
			t.Fatal(err)
		}
		if got := conn.ConnectionState().NegotiatedProtocol; got != tc.want {
			t.Errorf("server lists %q, client offers %q: negotiated %q, want %q", tc.listed, tc.clientALP, got, tc.want)
		}
		conn.Close()
		srv.Close()
	}
}
