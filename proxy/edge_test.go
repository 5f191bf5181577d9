package proxy_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/proxy"
)

func TestHeaderRules(t *testing.T) {
	h := newHarness(t)
	h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		hd := w.Header()
		hd.Set("Connection", "X-Up-Hop")
		hd.Set("X-Up-Hop", "1")
		hd.Set("Keep-Alive", "timeout=9")
		hd.Set("Proxy-Authenticate", `Basic realm="up"`)
		hd.Set("Proxy-Connection", "keep-alive")
		hd.Set("Upgrade", "foo/1")
		hd.Set("Te", "gzip")
		hd.Set("X-Up-Kept", "yes")
		hd.Add("Set-Cookie", "ph_a=1; Path=/; Domain=a.example.com; Secure; HttpOnly; SameSite=Lax")
		hd.Add("Set-Cookie", `ph_b="x y"; Max-Age=31536000; Expires=Wed, 21 Oct 2099 07:28:00 GMT`)
		io.WriteString(w, "ok")
	})
	const cookie1 = `ph_phc_abc_posthog=%7B%22distinct_id%22%3A%22x%22%7D; other="quoted value"`
	const cookie2 = `third=3`

	conn := h.dialRaw(served)
	resp, body := exchange(t, conn, "POST /i/v0/e/?ip=1 HTTP/1.1\r\n"+
		"Host: a.example.com\r\n"+
		"Connection: keep-alive, X-Custom-Hop\r\n"+
		"X-Custom-Hop: 1\r\n"+
		"Keep-Alive: timeout=5\r\n"+
		"Proxy-Authorization: Basic Zm9vOmJhcg==\r\n"+
		"Proxy-Connection: keep-alive\r\n"+
		"TE: gzip\r\n"+
		"Trailer: X-Trailer\r\n"+
		"Upgrade: foo/1\r\n"+
		"Transfer-Encoding: chunked\r\n"+
		"Cookie: "+cookie1+"\r\n"+
		"Cookie: "+cookie2+"\r\n"+
		"X-Forwarded-For: 203.0.113.7, 198.51.100.2\r\n"+
		"X-Forwarded-For: 192.0.2.1\r\n"+
		"X-Forwarded-Proto: http\r\n"+
		"X-Forwarded-Host: evil.example\r\n"+
		"Forwarded: for=192.0.2.66;host=evil.example;proto=http\r\n"+
		"X-End-To-End: kept\r\n"+
		"\r\n"+
		"5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n")
	if resp.StatusCode != 200 || string(body) != "ok" {
		t.Fatalf("answer %d %q", resp.StatusCode, body)
	}
	got := h.ingest.only(t)

	t.Run("Host is the upstream's", func(t *testing.T) {
		if got.Host != h.ingest.hostport() {
			t.Errorf("upstream got Host %q, want %q", got.Host, h.ingest.hostport())
		}
		if got.RequestURI != "/i/v0/e/?ip=1" {
			t.Errorf("upstream got request URI %q", got.RequestURI)
		}
	})
	t.Run("X-Forwarded-For appends the client", func(t *testing.T) {
		want := []string{"203.0.113.7, 198.51.100.2, 192.0.2.1, 127.0.0.1"}
		if v := got.Header.Values("X-Forwarded-For"); !slices.Equal(v, want) {
			t.Errorf("X-Forwarded-For %q, want %q", v, want)
		}
	})
	t.Run("X-Forwarded-Proto is https", func(t *testing.T) {
		if v := got.Header.Values("X-Forwarded-Proto"); !slices.Equal(v, []string{"https"}) {
			t.Errorf("X-Forwarded-Proto %q", v)
		}
	})
	t.Run("X-Forwarded-Host is the customer domain", func(t *testing.T) {
		if v := got.Header.Values("X-Forwarded-Host"); !slices.Equal(v, []string{served}) {
			t.Errorf("X-Forwarded-Host %q", v)
		}
		if v := got.Header.Values("Forwarded"); len(v) != 0 {
			t.Errorf("the client's Forwarded reached the upstream: %q", v)
		}
	})
	t.Run("hop-by-hop request headers removed", func(t *testing.T) {
		for _, name := range []string{"Connection", "X-Custom-Hop", "Keep-Alive", "Proxy-Authorization",
			"Proxy-Connection", "Te", "Trailer", "Upgrade", "Transfer-Encoding"} {
			if v, ok := got.Header[name]; ok {
				t.Errorf("upstream got %s: %q", name, v)
			}
		}
		if v := got.Header.Get("X-End-To-End"); v != "kept" {
			t.Errorf("X-End-To-End %q, want kept", v)
		}
	})
	t.Run("Cookie unchanged", func(t *testing.T) {
		if v := got.Header.Values("Cookie"); !slices.Equal(v, []string{cookie1, cookie2}) {
			t.Errorf("Cookie %q, want %q", v, []string{cookie1, cookie2})
		}
	})
	t.Run("hop-by-hop response headers removed", func(t *testing.T) {
		for _, name := range []string{"X-Up-Hop", "Keep-Alive", "Proxy-Authenticate", "Proxy-Connection", "Upgrade", "Te"} {
			if v, ok := resp.Header[name]; ok {
				t.Errorf("client got %s: %q", name, v)
			}
		}
		if v := resp.Header.Values("Connection"); slices.ContainsFunc(v, func(s string) bool {
			return strings.Contains(strings.ToLower(s), "x-up-hop")
		}) {
			t.Errorf("client got Connection: %q", v)
		}
		if v := resp.Header.Get("X-Up-Kept"); v != "yes" {
			t.Errorf("X-Up-Kept %q, want yes", v)
		}
	})
	t.Run("Set-Cookie unchanged", func(t *testing.T) {
		want := []string{
			"ph_a=1; Path=/; Domain=a.example.com; Secure; HttpOnly; SameSite=Lax",
			`ph_b="x y"; Max-Age=31536000; Expires=Wed, 21 Oct 2099 07:28:00 GMT`,
		}
		if v := resp.Header.Values("Set-Cookie"); !slices.Equal(v, want) {
			t.Errorf("Set-Cookie %q, want %q", v, want)
		}
	})
	h.wantCounts(t, 1, 0)
}

// TestHeaderRulesHTTP2 checks the rules for a client speaking HTTP/2 and
// without a prior X-Forwarded-For.
func TestHeaderRulesHTTP2(t *testing.T) {
	h := newHarness(t)
	h.assets.handle(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Add("Set-Cookie", "a=1; Secure")
		w.Header().Add("Set-Cookie", "b=2; HttpOnly")
		io.WriteString(w, "asset")
	})
	req := newRequest(t, "GET", "https://A.Example.COM/static/array.js?v=1", nil)
	req.Header.Set("Cookie", "ph_x=1; ph_y=2")
	req.Header.Set("X-Forwarded-Proto", "http")
	resp, body := do(t, h.client("h2", ""), req)
	if resp.Proto != "HTTP/2.0" || resp.StatusCode != 200 || string(body) != "asset" {
		t.Fatalf("answer %s %d %q", resp.Proto, resp.StatusCode, body)
	}
	got := h.assets.only(t)
	for _, c := range []struct{ name, got, want string }{
		{"Host", got.Host, h.assets.hostport()},
		{"request URI", got.RequestURI, "/static/array.js?v=1"},
		{"X-Forwarded-For", strings.Join(got.Header.Values("X-Forwarded-For"), "|"), "127.0.0.1"},
		{"X-Forwarded-Proto", strings.Join(got.Header.Values("X-Forwarded-Proto"), "|"), "https"},
		{"X-Forwarded-Host", strings.Join(got.Header.Values("X-Forwarded-Host"), "|"), served},
		{"Cookie", strings.Join(got.Header.Values("Cookie"), "|"), "ph_x=1; ph_y=2"},
		{"Set-Cookie", strings.Join(resp.Header.Values("Set-Cookie"), "|"), "a=1; Secure|b=2; HttpOnly"},
	} {
		if c.got != c.want {
			t.Errorf("%s: %q, want %q", c.name, c.got, c.want)
		}
	}
	h.wantCounts(t, 0, 1)
}

func TestRoutes(t *testing.T) {
	h := newHarness(t)
	cases := []struct {
		path  string
		route string
	}{
		{"/static/x", "assets"},
		{"/static/", "assets"},
		{"/static/js/array.js?v=1.2.3", "assets"},
		{"/static", "ingest"},
		{"/static?x=/static/", "ingest"},
		{"/staticfoo/x", "ingest"},
		{"/Static/x", "ingest"},
		{"/i/v0/e/", "ingest"},
		{"/i/v0/e/?ip=1&_=1700000000000&ver=1.2", "ingest"},
		{"/decide/?v=3", "ingest"},
		{"/", "ingest"},
	}
	ingest, assets := 0, 0
	for _, proto := range []string{"h1", "h2"} {
		c := h.client(proto, "")
		for _, tc := range cases {
			resp, body := do(t, c, newRequest(t, "GET", "https://"+served+tc.path, nil))
			if resp.StatusCode != 200 || resp.Header.Get("X-Upstream") != tc.route {
				t.Errorf("%s %s: %d from %q (%q), want 200 from %s", proto, tc.path, resp.StatusCode,
					resp.Header.Get("X-Upstream"), body, tc.route)
			}
			up := h.ingest
			if tc.route == "assets" {
				up, assets = h.assets, assets+1
			} else {
				ingest++
			}
			seen := up.requests(t)
			if len(seen) == 0 {
				t.Errorf("%s %s: %s upstream received nothing", proto, tc.path, tc.route)
			} else if last := seen[len(seen)-1]; last.RequestURI != tc.path {
				t.Errorf("%s %s: %s upstream got %q", proto, tc.path, tc.route, last.RequestURI)
			}
		}
	}
	h.wantCounts(t, ingest, assets)
}

func TestMethods(t *testing.T) {
	h := newHarness(t)
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
	n := 0
	for _, proto := range []string{"h1", "h2"} {
		c := h.client(proto, "")
		for _, method := range methods {
			payload := ""
			var body io.Reader
			if method != "GET" && method != "HEAD" && method != "OPTIONS" {
				payload = "payload of " + method
				body = strings.NewReader(payload)
			}
			resp, got := do(t, c, newRequest(t, method, "https://"+served+"/i/v0/e/", body))
			n++
			if resp.StatusCode != 200 {
				t.Errorf("%s %s: status %d (%q)", proto, method, resp.StatusCode, got)
			}
			if method == "HEAD" && len(got) != 0 {
				t.Errorf("%s HEAD: body %q", proto, got)
			}
			seen := h.ingest.requests(t)
			if len(seen) != n {
				t.Fatalf("%s %s: upstream received %d requests, want %d", proto, method, len(seen), n)
			}
			if last := seen[n-1]; last.Method != method || string(last.Body) != payload {
				t.Errorf("%s %s: upstream got %s with body %q", proto, method, last.Method, last.Body)
			}
		}
	}

	t.Run("CONNECT", func(t *testing.T) {
		conn := h.dialRaw(served)
		resp, body := exchange(t, conn, "CONNECT a.example.com:443 HTTP/1.1\r\nHost: a.example.com:443\r\n\r\n")
		wantError(t, resp, body, 405, "method_not_allowed", "CONNECT is not supported: this is a reverse proxy.")

		req := newRequest(t, "CONNECT", "https://"+served, nil)
		req.URL = &url.URL{Scheme: "https", Host: served + ":443"}
		req.Host = served + ":443"
		resp, body = do(t, h.client("h2", served), req)
		wantError(t, resp, body, 405, "method_not_allowed", "CONNECT is not supported: this is a reverse proxy.")
	})
	h.wantCounts(t, n, 0)
}

// patternReader yields n bytes of a fixed pattern without holding them.
type patternReader struct {
	n, off int64
}

// pattern repeats with a period that is prime, so a shifted or repeated
// stretch changes the digest.
var pattern = func() []byte {
	b := make([]byte, 65521)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}()

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	b = b[:min(int64(len(b)), p.n-p.off)]
	n := 0
	for n < len(b) {
		n += copy(b[n:], pattern[(p.off+int64(n))%int64(len(pattern)):])
	}
	p.off += int64(n)
	return n, nil
}

// hashingReader hashes what is read through it.
type hashingReader struct {
	r io.Reader
	h hash.Hash
}

func (h *hashingReader) Read(b []byte) (int, error) {
	n, err := h.r.Read(b)
	h.h.Write(b[:n])
	return n, err
}

func TestBodyLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		size    int64
		chunked bool
	}{
		{"64MiB with Content-Length", maxBody, false},
		{"64MiB chunked", maxBody, true},
		{"64MiB+1 with Content-Length", maxBody + 1, false},
		{"64MiB+1 chunked", maxBody + 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			body := &hashingReader{r: &patternReader{n: tc.size}, h: sha256.New()}
			req := newRequest(t, "POST", "https://"+served+"/i/v0/e/", io.NopCloser(body))
			req.ContentLength = tc.size
			if tc.chunked {
				req.ContentLength = -1
			}
			resp, got := do(t, h.client("h1", ""), req)
			seen := h.ingest.requests(t)

			if tc.size > maxBody {
				wantError(t, resp, got, 413, "request_too_large",
					"The request body is larger than the limit of 67108864 bytes.")
				if !tc.chunked && len(seen) != 0 {
					t.Errorf("an announced oversized body reached the upstream: %+v", seen)
				}
				for _, s := range seen {
					if s.BodyErr == nil || s.BodyLen > maxBody {
						t.Errorf("upstream received a complete body of %d bytes (read error %v)", s.BodyLen, s.BodyErr)
					}
				}
				if st := h.edge.Stats(); st.TooLarge != 1 || st.BadGateway != 0 {
					t.Errorf("stats %+v, want one too large and no bad gateway", st)
				}
				return
			}
			if resp.StatusCode != 200 {
				t.Fatalf("status %d (%q)", resp.StatusCode, got)
			}
			if len(seen) != 1 {
				t.Fatalf("upstream received %d requests", len(seen))
			}
			s := seen[0]
			var want [sha256.Size]byte
			copy(want[:], body.h.Sum(nil))
			if s.BodyErr != nil || s.BodyLen != tc.size || s.BodySum != want {
				t.Errorf("upstream received %d bytes (err %v, digest match %v), want %d", s.BodyLen, s.BodyErr, s.BodySum == want, tc.size)
			}
			if chunked := slices.Contains(s.TransferEncoding, "chunked"); chunked != tc.chunked {
				t.Errorf("upstream transfer encoding %q, content length %d", s.TransferEncoding, s.ContentLength)
			}
		})
	}
}

// TestBodyLimitHTTP2 checks the limit for HTTP/2 clients, whose bodies have
// no chunked encoding: announced with content-length or not announced.
func TestBodyLimitHTTP2(t *testing.T) {
	const limit = 1000
	for _, tc := range []struct {
		name      string
		size      int64
		announced bool
	}{
		{"at the limit announced", limit, true},
		{"at the limit unannounced", limit, false},
		{"over the limit announced", limit + 1, true},
		{"over the limit unannounced", 100 * limit, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, func(c *proxy.Config) { c.MaxBodyBytes = limit })
			req := newRequest(t, "POST", "https://"+served+"/i/v0/e/", io.NopCloser(&patternReader{n: tc.size}))
			req.ContentLength = -1
			if tc.announced {
				req.ContentLength = tc.size
			}
			resp, got := do(t, h.client("h2", ""), req)
			seen := h.ingest.requests(t)
			if tc.size > limit {
				wantError(t, resp, got, 413, "request_too_large", "The request body is larger than the limit of 1000 bytes.")
				for _, s := range seen {
					if s.BodyErr == nil {
						t.Errorf("upstream received a complete body of %d bytes", s.BodyLen)
					}
				}
				return
			}
			if resp.StatusCode != 200 || len(seen) != 1 || seen[0].BodyLen != tc.size || seen[0].BodyErr != nil {
				t.Errorf("status %d (%q); upstream saw %+v", resp.StatusCode, got, seen)
			}
		})
	}
}

// TestStreamingResponse has the upstream write a chunk and wait for the
// client to read it before it finishes the response.
func TestStreamingResponse(t *testing.T) {
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			h := newHarness(t)
			gotFirst := make(chan struct{})
			h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
				w.Header().Set("Content-Type", "text/event-stream")
				io.WriteString(w, "first\n")
				w.(http.Flusher).Flush()
				select {
				case <-gotFirst:
				case <-time.After(30 * time.Second):
					t.Error("the first chunk had not reached the client 30s after the upstream flushed it")
				case <-h.release:
				}
				io.WriteString(w, "second\n")
			})
			resp, err := h.client(proto, "").Get("https://" + served + "/i/v0/e/stream")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			br := bufio.NewReader(resp.Body)
			first, err := br.ReadString('\n')
			if err != nil || first != "first\n" {
				t.Fatalf("first read %q, %v", first, err)
			}
			close(gotFirst)
			rest, err := io.ReadAll(br)
			if err != nil || string(rest) != "second\n" {
				t.Errorf("rest %q, %v", rest, err)
			}
		})
	}
}

// TestStreamingRequest has the client send part of the body and wait for
// the upstream to read it before it sends the rest.
func TestStreamingRequest(t *testing.T) {
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			h := newHarness(t)
			gotFirst := make(chan struct{})
			h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
				first := make([]byte, 6)
				if _, err := io.ReadFull(r.Body, first); err != nil || string(first) != "first\n" {
					t.Errorf("upstream read %q, %v", first, err)
					return
				}
				close(gotFirst)
				rest, err := io.ReadAll(r.Body)
				fmt.Fprintf(w, "%s|%q|%v", first, rest, err)
			})
			pr, pw := io.Pipe()
			go func() {
				io.WriteString(pw, "first\n")
				select {
				case <-gotFirst:
					io.WriteString(pw, "second\n")
					pw.Close()
				case <-time.After(30 * time.Second):
					pw.CloseWithError(errors.New("the upstream had not read the first part 30s after it was sent"))
				}
			}()
			req := newRequest(t, "POST", "https://"+served+"/i/v0/e/", pr)
			resp, body := do(t, h.client(proto, ""), req)
			if resp.StatusCode != 200 || string(body) != `first`+"\n"+`|"second\n"|<nil>` {
				t.Errorf("answer %d %q", resp.StatusCode, body)
			}
		})
	}
}

// closedURL is the URL of a listener that was closed: connecting to it is
// refused.
func closedURL(t *testing.T) *url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	u := &url.URL{Scheme: "http", Host: ln.Addr().String()}
	ln.Close()
	return u
}

// hijack takes the raw connection of an upstream request.
func hijack(t *testing.T, w http.ResponseWriter) (*net.TCPConn, *bufio.ReadWriter) {
	conn, rw, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Error(err)
		panic(http.ErrAbortHandler)
	}
	return conn.(*net.TCPConn), rw
}

func TestBadGateway(t *testing.T) {
	const unreachable = "upstream_unreachable"
	detail := func(host, cause string) string {
		return fmt.Sprintf("The upstream %s could not be reached or broke the connection: %s.", host, cause)
	}

	t.Run("ingest listener closed", func(t *testing.T) {
		dead := closedURL(t)
		h := newHarness(t, func(c *proxy.Config) { c.Upstream = dead })
		c := h.client("h1", "")
		resp, body := do(t, c, newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
		wantError(t, resp, body, 502, unreachable, detail(dead.Host, "could not connect"))
		// The other route is unaffected.
		resp, body = do(t, c, newRequest(t, "GET", "https://"+served+"/static/x", nil))
		if resp.StatusCode != 200 {
			t.Errorf("assets route: %d %q", resp.StatusCode, body)
		}
		if st := h.edge.Stats(); st.BadGateway != 1 {
			t.Errorf("stats %+v, want one bad gateway", st)
		}
		h.wantCounts(t, 0, 1)
	})
	t.Run("assets listener closed", func(t *testing.T) {
		dead := closedURL(t)
		h := newHarness(t, func(c *proxy.Config) { c.AssetsUpstream = dead })
		resp, body := do(t, h.client("h2", ""), newRequest(t, "GET", "https://"+served+"/static/array.js", nil))
		wantError(t, resp, body, 502, unreachable, detail(dead.Host, "could not connect"))
	})
	t.Run("reset before answering", func(t *testing.T) {
		h := newHarness(t)
		h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
			io.ReadAll(r.Body)
			conn, _ := hijack(t, w)
			conn.SetLinger(0)
			conn.Close()
		})
		resp, body := do(t, h.client("h1", ""), newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
		wantError(t, resp, body, 502, unreachable, detail(h.ingest.hostport(), "connection reset"))
	})
	// The upstream resets while the request body is still being sent: the
	// transport sees its write fail on a connection it closed for the read
	// error, or the read error itself.
	t.Run("reset during the upload", func(t *testing.T) {
		h := newHarness(t)
		h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
			conn, _ := hijack(t, w)
			conn.SetLinger(0)
			conn.Close()
		})
		for i := 0; i < 20; i++ {
			req := newRequest(t, "POST", "https://"+served+"/i/v0/e/", io.NopCloser(&patternReader{n: 8 << 20}))
			req.ContentLength = -1
			resp, body := do(t, h.client("h1", ""), req)
			var got struct{ Error, Detail string }
			json.Unmarshal(body, &got)
			if resp.StatusCode != 502 || got.Error != unreachable ||
				got.Detail != detail(h.ingest.hostport(), "connection reset") &&
					got.Detail != detail(h.ingest.hostport(), "connection closed before a complete response") {
				t.Errorf("answer %d %s", resp.StatusCode, body)
			}
		}
	})
	t.Run("closed mid-header", func(t *testing.T) {
		h := newHarness(t)
		h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
			conn, rw := hijack(t, w)
			rw.WriteString("HTTP/1.1 200 OK\r\nContent-Type: appl")
			rw.Flush()
			conn.Close()
		})
		resp, body := do(t, h.client("h1", ""), newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
		wantError(t, resp, body, 502, unreachable, detail(h.ingest.hostport(), "connection closed before a complete response"))
	})
	// Once the upstream's headers have gone to the client, a reset can
	// only break the client's response: it must not look complete. The
	// upstream resets once the client has the headers (a reset that came
	// first could discard them unread at the edge, which then answers a
	// whole 502); it sends more than the edge and its server buffer, so
	// the headers reach the client before the body ends.
	for _, proto := range []string{"h1", "h2"} {
		t.Run("reset mid-body "+proto, func(t *testing.T) {
			h := newHarness(t)
			gotHeaders := make(chan struct{})
			h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
				conn, rw := hijack(t, w)
				rw.WriteString("HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
				rw.WriteString(strings.Repeat("x", 32<<10))
				rw.Flush()
				select {
				case <-gotHeaders:
				case <-h.release:
				}
				conn.SetLinger(0)
				conn.Close()
			})
			resp, err := h.client(proto, "").Post("https://"+served+"/i/v0/e/", "application/json", strings.NewReader("{}"))
			close(gotHeaders)
			if err != nil {
				t.Fatalf("no response headers although the upstream sent them: %v", err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err == nil {
				t.Errorf("client read a complete %d response of %d bytes from a reset upstream", resp.StatusCode, len(body))
			}
		})
	}
}

func TestGatewayTimeout(t *testing.T) {
	h := newHarness(t, func(c *proxy.Config) { c.UpstreamTimeout = 200 * time.Millisecond })
	h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-h.release:
		}
	})
	start := time.Now()
	resp, body := do(t, h.client("h1", ""), newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader("{}")))
	elapsed := time.Since(start)
	wantError(t, resp, body, 504, "upstream_timeout",
		fmt.Sprintf("The upstream %s did not answer in time.", h.ingest.hostport()))
	if elapsed < 200*time.Millisecond || elapsed > 5*time.Second {
		t.Errorf("answered after %v, want about 200ms", elapsed)
	}
	if st := h.edge.Stats(); st.GatewayTimeout != 1 || st.BadGateway != 0 {
		t.Errorf("stats %+v, want one gateway timeout", st)
	}
}

// TestClientGone checks that a client giving up is counted, not answered
// with a gateway error nor logged as one.
func TestClientGone(t *testing.T) {
	h := newHarness(t)
	// The client goes away once the upstream has the request.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	h.ingest.handle(func(w http.ResponseWriter, r *http.Request) {
		cancel()
		select {
		case <-r.Context().Done():
		case <-h.release:
		}
	})
	req := newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil).WithContext(ctx)
	if resp, err := h.client("h2", "").Do(req); err == nil {
		resp.Body.Close()
		t.Fatalf("answered %d to a client that went away", resp.StatusCode)
	}
	deadline := time.Now().Add(5 * time.Second)
	for h.edge.Stats().ClientGone == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if st := h.edge.Stats(); st.ClientGone != 1 || st.BadGateway != 0 || st.GatewayTimeout != 0 {
		t.Errorf("stats %+v, want one client gone", st)
	}
	if m := h.logs.messages(slog.LevelWarn); len(m) != 0 {
		t.Errorf("logged %q", m)
	}
}

func TestMisdirected(t *testing.T) {
	for _, proto := range []string{"h1", "h2"} {
		t.Run(proto, func(t *testing.T) {
			h := newHarness(t)
			// SNI a.example.com, Host (HTTP/2 :authority) b.example.com:
			// both served, so only the mismatch refuses it.
			resp, body := do(t, h.client(proto, served), newRequest(t, "GET", "https://"+alsoServed+"/i/v0/e/", nil))
			if got := map[string]int{"h1": 1, "h2": 2}[proto]; resp.ProtoMajor != got {
				t.Errorf("answered over %s", resp.Proto)
			}
			wantError(t, resp, body, 421, "misdirected_request",
				`The request's host "b.example.com" is not the name this connection was opened for ("a.example.com").`)
			if st := h.edge.Stats(); st.Misdirected != 1 {
				t.Errorf("stats %+v, want one misdirected", st)
			}
			h.wantCounts(t, 0, 0)
		})
	}
}

func TestNotServed(t *testing.T) {
	const detail = `edgeproxy does not serve "a.example.com".`
	t.Run("taken off after the handshake", func(t *testing.T) {
		h := newHarness(t)
		conn := h.dialRaw(served)
		h.hosts.set(served, false)
		resp, body := exchange(t, conn, "GET /i/v0/e/ HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
		wantError(t, resp, body, 404, "not_served", detail)
		if st := h.edge.Stats(); st.NotServed != 1 {
			t.Errorf("stats %+v, want one not served", st)
		}
		h.wantCounts(t, 0, 0)
	})
	t.Run("on a kept-alive HTTP/2 connection", func(t *testing.T) {
		h := newHarness(t)
		c := h.client("h2", "")
		get := func() (*http.Response, []byte) {
			return do(t, c, newRequest(t, "GET", "https://"+served+"/static/x", nil))
		}
		if resp, body := get(); resp.StatusCode != 200 {
			t.Fatalf("served: %d %q", resp.StatusCode, body)
		}
		h.hosts.set(served, false)
		resp, body := get()
		wantError(t, resp, body, 404, "not_served", detail)
		h.hosts.set(served, true)
		if resp, body := get(); resp.StatusCode != 200 {
			t.Errorf("served again: %d %q", resp.StatusCode, body)
		}
		h.wantCounts(t, 0, 2)
	})
}

func TestRedirectHandler(t *testing.T) {
	hosts := newHostSet(served)
	var consulted atomic.Int64
	challenge := func(w http.ResponseWriter, r *http.Request) bool {
		consulted.Add(1)
		if r.URL.Path == "/.well-known/acme-challenge/token1" {
			io.WriteString(w, "token1.keyauth")
			return true
		}
		return false
	}
	srv := httptest.NewServer(proxy.RedirectHandler(hosts, challenge))
	defer srv.Close()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

	cases := []struct {
		method, host, target string
		status               int
		location, body       string
	}{
		{"GET", served, "/i/v0/e/?ip=1&x=%2F", 308, "https://a.example.com/i/v0/e/?ip=1&x=%2F", ""},
		{"POST", served, "/i/v0/e/", 308, "https://a.example.com/i/v0/e/", ""},
		{"GET", "A.Example.COM.:80", "/static/x", 308, "https://a.example.com/static/x", ""},
		{"GET", served, "//evil.example/x", 308, "https://a.example.com//evil.example/x", ""},
		{"GET", served, "/.well-known/acme-challenge/other", 308, "https://a.example.com/.well-known/acme-challenge/other", ""},
		{"GET", "evil.example", "/i/v0/e/", 404, "", `edgeproxy does not serve "evil.example".`},
		{"GET", notServed, "/", 404, "", `edgeproxy does not serve "c.example.com".`},
		// The challenge is answered before any host check: the name is
		// not served until its certificate is issued.
		{"GET", "new.example.com", "/.well-known/acme-challenge/token1", 200, "", "token1.keyauth"},
		{"GET", served, "/.well-known/acme-challenge/token1", 200, "", "token1.keyauth"},
	}
	for i, tc := range cases {
		req := newRequest(t, tc.method, srv.URL+tc.target, nil)
		req.Host = tc.host
		resp, body := do(t, client, req)
		if int(consulted.Load()) != i+1 {
			t.Errorf("%s %s%s: challenge consulted %d times, want %d", tc.method, tc.host, tc.target, consulted.Load(), i+1)
		}
		switch tc.status {
		case 308:
			if resp.StatusCode != 308 || resp.Header.Get("Location") != tc.location {
				t.Errorf("%s %s%s: %d to %q, want 308 to %q", tc.method, tc.host, tc.target,
					resp.StatusCode, resp.Header.Get("Location"), tc.location)
			}
		case 404:
			wantError(t, resp, body, 404, "not_served", tc.body)
		default:
			if resp.StatusCode != tc.status || string(body) != tc.body {
				t.Errorf("%s %s%s: %d %q", tc.method, tc.host, tc.target, resp.StatusCode, body)
			}
		}
	}

	t.Run("absolute-form cannot redirect elsewhere", func(t *testing.T) {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		resp, body := exchange(t, conn, "GET http://evil.example/x HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
		wantError(t, resp, body, 404, "not_served", `edgeproxy does not serve "evil.example".`)
	})
	t.Run("no challenge func", func(t *testing.T) {
		srv := httptest.NewServer(proxy.RedirectHandler(hosts, nil))
		defer srv.Close()
		req := newRequest(t, "GET", srv.URL+"/x", nil)
		req.Host = served
		if resp, _ := do(t, client, req); resp.StatusCode != 308 || resp.Header.Get("Location") != "https://a.example.com/x" {
			t.Errorf("%d to %q", resp.StatusCode, resp.Header.Get("Location"))
		}
	})
}

func TestNewNeedsBothUpstreams(t *testing.T) {
	u := mustParse(t, "http://127.0.0.1:1")
	for _, cfg := range []proxy.Config{{}, {Upstream: u}, {AssetsUpstream: u}} {
		if _, err := proxy.New(newHostSet(), cfg); err == nil {
			t.Errorf("New(%+v) succeeded", cfg)
		}
	}
}
