package proxy_test

import (
	"bufio"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// switchDetail is the edge's answer to an upstream's 101.
func switchDetail(upstream string) string {
	return fmt.Sprintf("The upstream %s answered 101 Switching Protocols; the edge does not pass protocol switches.", upstream)
}

// TestUpgradeNotForwarded plays a client that asks the edge to switch
// protocols (a websocket handshake, an h2c upgrade as used to smuggle
// requests past a proxy's rules): the upstream must receive a plain
// request, with neither Upgrade nor a Connection header naming it, so it
// has nothing to switch to.
func TestUpgradeNotForwarded(t *testing.T) {
	for _, tc := range []struct {
		name, head string
	}{
		{"websocket", "Connection: Upgrade\r\nUpgrade: websocket\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"},
		{"websocket, lower case, among other tokens", "connection: keep-alive, upgrade\r\nupgrade: websocket\r\n" +
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"},
		{"h2c", "Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"},
		{"two protocols", "Connection: Upgrade\r\nUpgrade: websocket, h2c\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			conn := h.dialRaw(served)
			resp, body := exchange(t, conn, "GET /i/v0/e/ HTTP/1.1\r\nHost: "+served+"\r\n"+tc.head+"\r\n")
			if resp.StatusCode != 200 {
				t.Errorf("answer %d %q, want the upstream's 200", resp.StatusCode, body)
			}
			got := h.ingest.only(t)
			for _, name := range []string{"Upgrade", "Connection", "Http2-Settings"} {
				if v, ok := got.Header[name]; ok {
					t.Errorf("upstream got %s: %q", name, v)
				}
			}
		})
	}
}

// switchingUpstream makes u answer every request with 101 Switching
// Protocols, as a websocket server does, whatever the request asked for,
// then count what arrives on the connection until it closes. The count is
// sent on the returned channel.
func switchingUpstream(t *testing.T, u *upstream) <-chan int64 {
	after := make(chan int64, 16)
	u.handle(func(w http.ResponseWriter, r *http.Request) {
		conn, rw := hijack(t, w)
		defer conn.Close()
		rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
			"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
		rw.Flush()
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		n, _ := io.Copy(io.Discard, rw)
		after <- n
	})
	return after
}

// waitAfterSwitch returns what the switching upstream received after its
// 101, once the edge has closed that connection.
func waitAfterSwitch(t *testing.T, after <-chan int64) int64 {
	t.Helper()
	select {
	case n := <-after:
		return n
	case <-time.After(20 * time.Second):
		t.Fatal("the upstream's connection was still open 20 s after its 101")
		return 0
	}
}

// TestUpstreamProtocolSwitch plays an upstream that answers 101 (a
// compromised or misconfigured one, or a request that reached a websocket
// endpoint) to a client that wants a tunnel: the client must get 502
// naming the cause, and nothing it sends afterwards may reach the
// upstream. Through a tunnel, a client would stream past --max-body-bytes
// and every request rule; here it sends four times the limit.
func TestUpstreamProtocolSwitch(t *testing.T) {
	const limit = 1 << 10
	withLimit := func(c *proxy.Config) { c.MaxBodyBytes = limit }
	tunnelBytes := strings.Repeat("\x82\x7e\x10\x00", limit) // binary websocket frames' worth of bytes

	t.Run("HTTP/1.1, asked for", func(t *testing.T) {
		h := newHarness(t, withLimit)
		after := switchingUpstream(t, h.ingest)
		conn := h.dialRaw(served)
		io.WriteString(conn, "GET /i/v0/e/ HTTP/1.1\r\nHost: "+served+"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"+
			"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatalf("reading the answer: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode == 502 {
			wantError(t, resp, body, 502, "upstream_protocol_switch", switchDetail(h.ingest.hostport()))
		} else {
			// Go on, to measure what a tunnel lets through.
			t.Errorf("answer %d %q, want 502", resp.StatusCode, body)
		}
		// Whatever the edge makes of these bytes, none may reach the
		// upstream.
		conn.Write([]byte(tunnelBytes))
		conn.Close()
		if n := waitAfterSwitch(t, after); n != 0 {
			t.Errorf("the upstream received %d bytes after its 101 (the client sent %d; the body limit is %d)", n, len(tunnelBytes), limit)
		}
		if got := h.ingest.only(t); got.Header.Get("Upgrade") != "" {
			t.Errorf("upstream got Upgrade: %q", got.Header.Get("Upgrade"))
		}
		if st := h.edge.Stats(); st.BadGateway != 1 {
			t.Errorf("stats %+v, want one bad gateway", st)
		}
	})
	t.Run("HTTP/1.1, not asked for", func(t *testing.T) {
		h := newHarness(t, withLimit)
		after := switchingUpstream(t, h.assets)
		resp, body := do(t, h.client("h1", ""), newRequest(t, "GET", "https://"+served+"/static/array.js", nil))
		wantError(t, resp, body, 502, "upstream_protocol_switch", switchDetail(h.assets.hostport()))
		if n := waitAfterSwitch(t, after); n != 0 {
			t.Errorf("the upstream received %d bytes after its 101", n)
		}
	})
	// HTTP/2 has no Upgrade (net/http refuses the header), but an
	// upstream may still answer 101.
	t.Run("HTTP/2", func(t *testing.T) {
		h := newHarness(t, withLimit)
		after := switchingUpstream(t, h.ingest)
		resp, body := do(t, h.client("h2", ""), newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
		if resp.Proto != "HTTP/2.0" {
			t.Errorf("answered over %s, want HTTP/2.0", resp.Proto)
		}
		wantError(t, resp, body, 502, "upstream_protocol_switch", switchDetail(h.ingest.hostport()))
		if n := waitAfterSwitch(t, after); n != 0 {
			t.Errorf("the upstream received %d bytes after its 101", n)
		}
	})
	t.Run("the edge still serves", func(t *testing.T) {
		h := newHarness(t)
		switchingUpstream(t, h.ingest)
		h.assets.handle(nil)
		resp, body := do(t, h.client("h2", ""), newRequest(t, "GET", "https://"+served+"/static/x.js", nil))
		if resp.StatusCode != 200 {
			t.Errorf("the other upstream: %d %q", resp.StatusCode, body)
		}
	})
}

// xconnectChild marks the run of TestHTTP2ExtendedConnect that has
// net/http's extended CONNECT turned on.
const xconnectChild = "EDGEPROXY_TEST_XCONNECT"

// TestHTTP2ExtendedConnect plays a client that opens a websocket over
// HTTP/2 (RFC 8441: CONNECT with :protocol): no stream may reach an
// upstream or be answered 2xx, and the edge keeps serving. net/http
// resets such a stream unless GODEBUG=http2xconnect=1, which an operator
// may set; the test runs again in a child process with it set, where the
// request reaches the edge and its CONNECT refusal must answer 405.
func TestHTTP2ExtendedConnect(t *testing.T) {
	child := os.Getenv(xconnectChild) != ""
	if !child {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHTTP2ExtendedConnect$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), xconnectChild+"=1", "GODEBUG=http2xconnect=1")
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "extended CONNECT on") {
			t.Errorf("with GODEBUG=http2xconnect=1: %v\n%s", err, out)
		}
	}
	h := newHarness(t)
	c := h.dialH2(served)
	c.writeHeaders(1, false, c.headers(":method", "CONNECT", ":protocol", "websocket", ":scheme", "https",
		":authority", served, ":path", "/i/v0/e/", "sec-websocket-version", "13"))
	c.fr.WriteData(1, true, []byte("\x82\x05hello"))
	out := c.outcome(1)
	t.Logf("extended CONNECT on: %v; status %q, reset %v, goaway %v, err %v", child, out.status, out.reset, out.goaway, out.err)
	if child && out.status != "405" {
		t.Errorf("status %q, want 405 from the edge", out.status)
	}
	if strings.HasPrefix(out.status, "2") {
		t.Errorf("answered %s (body %q)", out.status, out.body)
	}
	if out.status == "" && out.reset == 0 && !out.goaway && out.err == nil {
		t.Errorf("the stream ended with nothing")
	}
	h.wantCounts(t, 0, 0)
	resp, body := do(t, h.client("h2", served), newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
	if resp.StatusCode != 200 {
		t.Errorf("a normal request after it: %d %q", resp.StatusCode, body)
	}
}

// TestClientAddressHeadersRemoved plays a client that claims another
// address in X-Real-IP or Forwarded, headers an upstream may read as the
// client's address: neither may reach the upstream, over HTTP/1.1 or
// HTTP/2, while X-Forwarded-For still ends with the real client.
func TestClientAddressHeadersRemoved(t *testing.T) {
	spoofed := map[string][]string{
		"X-Real-Ip": {"198.51.100.66", "203.0.113.9"},
		"Forwarded": {"for=198.51.100.66;proto=https;host=b.example.com", `for="[2001:db8::66]"`},
	}
	check := func(t *testing.T, got seenRequest) {
		t.Helper()
		for name := range spoofed {
			if v, ok := got.Header[name]; ok {
				t.Errorf("upstream got %s: %q", name, v)
			}
		}
		xff := got.Header.Values("X-Forwarded-For")
		if len(xff) != 1 || !strings.HasSuffix(xff[0], "127.0.0.1") {
			t.Errorf("X-Forwarded-For %q, want it to end with the client, 127.0.0.1", xff)
		}
	}
	t.Run("HTTP/1.1", func(t *testing.T) {
		h := newHarness(t)
		conn := h.dialRaw(served)
		resp, body := exchange(t, conn, "POST /i/v0/e/ HTTP/1.1\r\nHost: "+served+"\r\n"+
			"x-real-ip: 198.51.100.66\r\nX-REAL-IP: 203.0.113.9\r\n"+
			"Forwarded: for=198.51.100.66;proto=https;host=b.example.com\r\nforwarded: for=\"[2001:db8::66]\"\r\n"+
			"Content-Length: 2\r\n\r\n{}")
		if resp.StatusCode != 200 {
			t.Fatalf("answer %d %q", resp.StatusCode, body)
		}
		check(t, h.ingest.only(t))
	})
	t.Run("HTTP/2", func(t *testing.T) {
		h := newHarness(t)
		req := newRequest(t, "GET", "https://"+served+"/static/array.js", nil)
		for name, vv := range spoofed {
			req.Header[name] = slices.Clone(vv)
		}
		resp, body := do(t, h.client("h2", ""), req)
		if resp.Proto != "HTTP/2.0" || resp.StatusCode != 200 {
			t.Fatalf("answer %s %d %q", resp.Proto, resp.StatusCode, body)
		}
		check(t, h.assets.only(t))
	})
}
