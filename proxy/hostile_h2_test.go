package proxy_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// h2Client is a hand-driven HTTP/2 connection to the edge: it writes
// frames as a hostile client would, which net/http's client never does.
type h2Client struct {
	t    *testing.T
	conn *tls.Conn
	fr   *http2.Framer
	enc  *hpack.Encoder
	hbuf bytes.Buffer
	dec  *hpack.Decoder
}

func (h *harness) dialH2(sni string) *h2Client {
	h.t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", h.addr,
		&tls.Config{ServerName: sni, RootCAs: h.roots, NextProtos: []string{"h2"}})
	if err != nil {
		h.t.Fatalf("handshake for %q: %v", sni, err)
	}
	if p := conn.ConnectionState().NegotiatedProtocol; p != "h2" {
		h.t.Fatalf("negotiated %q, want h2", p)
	}
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	h.t.Cleanup(func() { conn.Close() })
	c := &h2Client{t: h.t, conn: conn, fr: http2.NewFramer(conn, conn)}
	c.enc = hpack.NewEncoder(&c.hbuf)
	c.dec = hpack.NewDecoder(4096, nil)
	c.fr.ReadMetaHeaders = c.dec
	if _, err := conn.Write([]byte(http2.ClientPreface)); err != nil {
		h.t.Fatal(err)
	}
	if err := c.fr.WriteSettings(); err != nil {
		h.t.Fatal(err)
	}
	return c
}

// headers encodes a header block: pseudo-headers first, in order.
func (c *h2Client) headers(fields ...string) []byte {
	c.hbuf.Reset()
	for i := 0; i+1 < len(fields); i += 2 {
		c.enc.WriteField(hpack.HeaderField{Name: fields[i], Value: fields[i+1]})
	}
	return bytes.Clone(c.hbuf.Bytes())
}

func (c *h2Client) writeHeaders(stream uint32, endStream bool, block []byte) {
	c.t.Helper()
	if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: block, EndStream: endStream, EndHeaders: true}); err != nil {
		c.t.Fatalf("writing HEADERS: %v", err)
	}
}

// h2Outcome is how the edge ended a stream.
type h2Outcome struct {
	status string          // the :status of a response, if one came
	reset  http2.ErrCode   // the RST_STREAM code, if the stream was reset
	goaway bool            // the connection was closed with GOAWAY
	err    error           // the connection failed
	body   []byte          // the response body read until END_STREAM
	codes  []http2.ErrCode // every RST_STREAM code seen on the connection
}

// outcome reads frames until stream ends (END_STREAM of its response, its
// reset, or the end of the connection), answering pings and settings.
func (c *h2Client) outcome(stream uint32) h2Outcome {
	c.t.Helper()
	var out h2Outcome
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			out.err = err
			return out
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if !f.IsAck() {
				c.fr.WriteSettingsAck()
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.fr.WritePing(true, f.Data)
			}
		case *http2.GoAwayFrame:
			out.goaway = true
			return out
		case *http2.RSTStreamFrame:
			out.codes = append(out.codes, f.ErrCode)
			if f.StreamID == stream {
				out.reset = f.ErrCode
				return out
			}
		case *http2.MetaHeadersFrame:
			if f.StreamID == stream && out.status == "" {
				out.status = f.PseudoValue("status")
			}
			if f.StreamID == stream && f.StreamEnded() {
				return out
			}
		case *http2.DataFrame:
			if f.StreamID == stream {
				out.body = append(out.body, f.Data()...)
				if len(f.Data()) > 0 {
					c.fr.WriteWindowUpdate(0, uint32(len(f.Data())))
					c.fr.WriteWindowUpdate(stream, uint32(len(f.Data())))
				}
				if f.StreamEnded() {
					return out
				}
			}
		}
	}
}

// noMismatchedBody fails if the upstream received, in full, a request
// whose body length differs from its declared Content-Length: the framing
// the client lied about must not reach it as a different request.
func noMismatchedBody(t *testing.T, u *upstream) {
	t.Helper()
	for _, s := range u.requests(t) {
		if s.BodyErr == nil && s.ContentLength >= 0 && s.BodyLen != s.ContentLength {
			t.Errorf("upstream received %s %s declaring %d bytes with a body of %d", s.Method, s.RequestURI, s.ContentLength, s.BodyLen)
		}
	}
}

// TestHTTP2HostileFraming sends HTTP/2 streams that lie about their body
// or carry what HTTP/2 forbids: none may reach the upstream as a complete
// request, none may get a 200, and the edge keeps serving.
func TestHTTP2HostileFraming(t *testing.T) {
	post := func(c *h2Client, extra ...string) []byte {
		return c.headers(append([]string{":method", "POST", ":scheme", "https", ":authority", served, ":path", "/i/v0/e/"}, extra...)...)
	}
	for _, tc := range []struct {
		name string
		send func(c *h2Client)
		// noRequest: the upstream must receive nothing at all (the head
		// itself is refused).
		noRequest bool
		// wantStatus, when set, is the answer the edge must give.
		wantStatus string
	}{
		{"DATA longer than content-length", func(c *h2Client) {
			c.writeHeaders(1, false, post(c, "content-length", "5"))
			c.fr.WriteData(1, true, []byte("0123456789"))
		}, false, ""},
		{"DATA shorter than content-length", func(c *h2Client) {
			c.writeHeaders(1, false, post(c, "content-length", "10"))
			c.fr.WriteData(1, true, []byte("012"))
		}, false, ""},
		{"two content-lengths", func(c *h2Client) {
			c.writeHeaders(1, false, post(c, "content-length", "3", "content-length", "10"))
			c.fr.WriteData(1, true, []byte("012"))
		}, true, "400"},
		{"a content-length list that disagrees", func(c *h2Client) {
			c.writeHeaders(1, false, post(c, "content-length", "3, 10"))
			c.fr.WriteData(1, true, []byte("012"))
		}, true, ""},
		{"transfer-encoding chunked", func(c *h2Client) {
			c.writeHeaders(1, false, post(c, "transfer-encoding", "chunked"))
			c.fr.WriteData(1, true, []byte("3\r\nabc\r\n0\r\n\r\n"))
		}, true, ""},
		{"connection header", func(c *h2Client) {
			c.writeHeaders(1, true, c.headers(":method", "GET", ":scheme", "https", ":authority", served, ":path", "/i/v0/e/", "connection", "keep-alive"))
		}, true, ""},
		{"upper-case header name", func(c *h2Client) {
			c.writeHeaders(1, true, c.headers(":method", "GET", ":scheme", "https", ":authority", served, ":path", "/i/v0/e/", "X-Upper", "1"))
		}, true, ""},
		{"missing :path", func(c *h2Client) {
			c.writeHeaders(1, true, c.headers(":method", "GET", ":scheme", "https", ":authority", served))
		}, true, ""},
		{"CONNECT", func(c *h2Client) {
			c.writeHeaders(1, false, c.headers(":method", "CONNECT", ":authority", "evil.example:443"))
		}, true, ""},
		{"header list over the limit", func(c *h2Client) {
			block := c.headers(":method", "GET", ":scheme", "https", ":authority", served, ":path", "/i/v0/e/",
				"x-big", strings.Repeat("x", 256<<10))
			// Split into CONTINUATION frames of the default frame size.
			const max = 16 << 10
			c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: block[:max], EndStream: true})
			for rest := block[max:]; len(rest) > 0; {
				n := min(max, len(rest))
				c.fr.WriteContinuation(1, n == len(rest), rest[:n])
				rest = rest[n:]
			}
		}, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			c := h.dialH2(served)
			tc.send(c)
			out := c.outcome(1)
			t.Logf("status %q, reset %v, goaway %v, err %v", out.status, out.reset, out.goaway, out.err)
			if out.status == "200" {
				t.Errorf("answered 200 (body %q)", out.body)
			}
			if out.status == "" && out.reset == 0 && !out.goaway && out.err == nil {
				t.Errorf("the stream ended with nothing")
			}
			if tc.noRequest {
				h.wantCounts(t, 0, 0)
			}
			if tc.wantStatus != "" && out.status != tc.wantStatus {
				t.Errorf("status %q, want %s", out.status, tc.wantStatus)
			}
			noMismatchedBody(t, h.ingest)
			// The edge still serves, on a new connection.
			resp, body := do(t, h.client("h2", served), newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
			if resp.StatusCode != 200 {
				t.Errorf("a normal request after it: %d %q", resp.StatusCode, body)
			}
		})
	}
}

// TestHTTP2RapidReset opens and at once cancels many streams (the
// "rapid reset" attack): the edge must stay responsive and settle back,
// and a normal request afterwards is served. Settled means no request in
// flight and, once every idle keep-alive connection is closed (the
// clients' to the edge and the edge's to its upstream: how many the pool
// keeps depends on how many streams overlapped, not on a leak), about as
// many goroutines as before.
func TestHTTP2RapidReset(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *proxy.Config) { c.Registerer = reg })
	// Warm up the client transports and the edge's upstream pool, then
	// drop the connections, so the baseline holds none.
	warm := h.client("h2", served)
	do(t, warm, newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
	closeIdle(h, warm)
	before := runtime.NumGoroutine()

	const streams = 2000
	c := h.dialH2(served)
	block := c.headers(":method", "GET", ":scheme", "https", ":authority", served, ":path", "/i/v0/e/")
	var writeErr error
	for i := range streams {
		id := uint32(2*i + 1)
		if err := c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
			writeErr = err
			break
		}
		if err := c.fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			writeErr = err
			break
		}
	}
	// The edge may close the connection on an abusive client; either way
	// it must not have queued 2,000 requests.
	c.conn.SetDeadline(time.Now().Add(5 * time.Second))
	for {
		if _, err := c.fr.ReadFrame(); err != nil {
			var ne net.Error
			if writeErr == nil && !(errors.As(err, &ne) && ne.Timeout()) {
				t.Logf("connection ended: %v", err)
			}
			break
		}
	}
	c.conn.Close()
	n := len(h.ingest.requests(t)) - 1
	t.Logf("%d streams opened and reset; the upstream saw %d of them; write error: %v", streams, n, writeErr)

	after := h.client("h2", served)
	resp, body := do(t, after, newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
	if resp.StatusCode != 200 {
		t.Errorf("a normal request after the resets: %d %q", resp.StatusCode, body)
	}

	// No request is left in flight: every reset stream's handler ended.
	deadline := time.Now().Add(10 * time.Second)
	for inFlight(t, reg) != 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := inFlight(t, reg); n != 0 {
		t.Fatalf("%v requests still in flight ten seconds after the resets", n)
	}
	// And nothing else the resets started is left running. The slack is
	// for the runtime's and the servers' own goroutines coming and going.
	const slack = 10
	closeIdle(h, after)
	deadline = time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before+slack && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	g := runtime.NumGoroutine()
	t.Logf("goroutines: %d before the resets, %d after, idle connections closed both times", before, g)
	if g > before+slack {
		var dump bytes.Buffer
		pprof.Lookup("goroutine").WriteTo(&dump, 1)
		t.Errorf("goroutines: %d before, %d after the resets, with every idle connection closed\n%s", before, g, dump.String())
	}
}

// closeIdle closes the keep-alive connections that outlive a request: the
// clients' to the edge, and the edge's to its upstreams (closed from the
// upstreams' side, which the edge's pool sees at once).
func closeIdle(h *harness, clients ...*http.Client) {
	for _, c := range clients {
		c.CloseIdleConnections()
	}
	for _, u := range []*upstream{h.ingest, h.assets, h.evil} {
		u.CloseClientConnections()
	}
}
