package proxy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// forwarded is a request the ingest upstream must receive, complete.
type forwarded struct {
	method, path, body string
	chunked            bool
	header             map[string]string // values the upstream must see
}

// smuggleCase is a hand-framed request sent raw over TLS, followed on the
// same connection by a marker request. answers are the statuses the client
// reads before the marker's answer (or before the connection closes, when
// !marker). The ingest upstream must receive exactly want and then the
// marker (when answered); with aborted, it may also receive one request
// whose body broke off, never a complete one.
type smuggleCase struct {
	name    string
	raw     string
	answers []int
	marker  bool
	want    []forwarded
	aborted bool
}

const marker = "GET /marker HTTP/1.1\r\nHost: " + served + "\r\n\r\n"

// TestRequestSmuggling sends the framings that make two HTTP parsers
// disagree about where a request ends: conflicting Content-Length and
// Transfer-Encoding, duplicate lengths, unsupported codings, obs-fold,
// bare CR and LF, HTTP/1.0 with chunked, malformed chunks. Each is refused
// (400, or 501 for a transfer coding net/http does not implement) or read
// one way only, and the upstream, which parses again what the edge sends,
// receives exactly the requests the edge answered, with the bodies the
// edge read. A chunked request closes its connection, so nothing after it
// is read as another request.
func TestRequestSmuggling(t *testing.T) {
	post := func(headers ...string) string {
		return "POST /i/v0/e/ HTTP/1.1\r\nHost: " + served + "\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	}
	const chunkedHello = "5\r\nhello\r\n0\r\n\r\n"
	smuggled := "GET /smuggled HTTP/1.1\r\nHost: " + served + "\r\n\r\n"
	hello := forwarded{method: "POST", path: "/i/v0/e/", body: "hello"}
	helloChunked := forwarded{method: "POST", path: "/i/v0/e/", body: "hello", chunked: true}
	cases := []smuggleCase{
		{name: "CL.TE: the chunked body ends where the length says more", answers: []int{200},
			raw:  post("Content-Length: 40", "Transfer-Encoding: chunked") + "0\r\n\r\n" + smuggled,
			want: []forwarded{{method: "POST", path: "/i/v0/e/", body: "", chunked: true}}},
		{name: "TE.CL: the length is shorter than the chunked body", answers: []int{200},
			raw: post("Content-Length: 4", "Transfer-Encoding: chunked") + chunkedHello, want: []forwarded{helloChunked}},
		{name: "TE.CL with the length first and zero", answers: []int{200},
			raw: post("Transfer-Encoding: chunked", "Content-Length: 0") + chunkedHello + smuggled, want: []forwarded{helloChunked}},
		{name: "two differing Content-Length", answers: []int{400},
			raw: post("Content-Length: 5", "Content-Length: 6") + "hello!" + smuggled},
		{name: "two differing Content-Length and chunked", answers: []int{400},
			raw: post("Content-Length: 5", "Content-Length: 6", "Transfer-Encoding: chunked") + chunkedHello},
		{name: "two equal Content-Length", answers: []int{200}, marker: true,
			raw: post("Content-Length: 5", "Content-Length: 5") + "hello", want: []forwarded{hello}},
		{name: "Content-Length as a list", answers: []int{400}, raw: post("Content-Length: 5, 5") + "hello"},
		{name: "Content-Length with a sign", answers: []int{400}, raw: post("Content-Length: +5") + "hello"},
		{name: "Content-Length negative", answers: []int{400}, raw: post("Content-Length: -1") + "hello"},
		{name: "Content-Length in hex", answers: []int{400}, raw: post("Content-Length: 0x5") + "hello"},
		{name: "Transfer-Encoding chunked, identity", answers: []int{501},
			raw: post("Transfer-Encoding: chunked, identity") + chunkedHello},
		{name: "Transfer-Encoding identity with a length", answers: []int{501},
			raw: post("Transfer-Encoding: identity", "Content-Length: 5") + "hello"},
		{name: "two Transfer-Encoding headers", answers: []int{501},
			raw: post("Transfer-Encoding: chunked", "Transfer-Encoding: chunked") + chunkedHello},
		{name: "Transfer-Encoding xchunked", answers: []int{501},
			raw: post("Transfer-Encoding: xchunked", "Content-Length: 5") + "hello"},
		{name: "Transfer-Encoding gzip, chunked", answers: []int{501},
			raw: post("Transfer-Encoding: gzip, chunked") + chunkedHello},
		{name: "Transfer-Encoding upper case", answers: []int{200},
			raw: post("Transfer-Encoding: CHUNKED") + chunkedHello + smuggled, want: []forwarded{helloChunked}},
		{name: "Transfer-Encoding after a tab", answers: []int{200},
			raw: post("Transfer-Encoding:\tchunked", "Content-Length: 5") + chunkedHello + smuggled, want: []forwarded{helloChunked}},
		{name: "space before the colon", answers: []int{400},
			raw: post("Transfer-Encoding : chunked", "Content-Length: 5") + "hello"},
		{name: "obs-fold in Transfer-Encoding", answers: []int{200},
			raw: post("Transfer-Encoding:", " chunked") + chunkedHello + smuggled, want: []forwarded{helloChunked}},
		{name: "obs-fold in Content-Length", answers: []int{400}, raw: post("Content-Length: 5", " 0") + "hello"},
		{name: "obs-fold in another header", answers: []int{200}, marker: true,
			raw:  post("X-Fold: a", " b", "Content-Length: 5") + "hello",
			want: []forwarded{{method: "POST", path: "/i/v0/e/", body: "hello", header: map[string]string{"X-Fold": "a b"}}}},
		{name: "bare LF line ends", answers: []int{200}, marker: true,
			raw: "POST /i/v0/e/ HTTP/1.1\nHost: " + served + "\nContent-Length: 5\n\nhello", want: []forwarded{hello}},
		{name: "bare CR in a header", answers: []int{400}, raw: post("X-A: b\rContent-Length: 0", "Content-Length: 5") + "hello"},
		{name: "NUL in a header", answers: []int{400}, raw: post("X-A: b\x00c", "Content-Length: 5") + "hello"},
		{name: "HTTP/1.0 with chunked: no body, connection closed", answers: []int{200},
			raw:  strings.Replace(post("Transfer-Encoding: chunked"), "HTTP/1.1", "HTTP/1.0", 1) + chunkedHello,
			want: []forwarded{{method: "POST", path: "/i/v0/e/", body: ""}}},
		{name: "HTTP/1.0 keep-alive with chunked: the chunks are no request", answers: []int{200, 400},
			raw:  strings.Replace(post("Connection: keep-alive", "Transfer-Encoding: chunked"), "HTTP/1.1", "HTTP/1.0", 1) + chunkedHello,
			want: []forwarded{{method: "POST", path: "/i/v0/e/", body: ""}}},
		{name: "Content-Length in the chunked trailer", answers: []int{200},
			raw: post("Transfer-Encoding: chunked") + "5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n" + smuggled, want: []forwarded{helloChunked}},
		{name: "malformed chunk size", answers: []int{400}, aborted: true,
			raw: post("Transfer-Encoding: chunked") + "5 x\r\nhello\r\n0\r\n\r\n" + smuggled},
		{name: "chunk size overflowing", answers: []int{400}, aborted: true,
			raw: post("Transfer-Encoding: chunked") + "fffffffffffffffffff\r\nhello\r\n0\r\n\r\n" + smuggled},
		{name: "chunk shorter than its size", answers: []int{400}, aborted: true,
			raw: post("Transfer-Encoding: chunked") + "9\r\nhello\r\n0\r\n\r\n" + smuggled},
		{name: "HTTP/0.9 request line", answers: []int{400}, raw: "GET /i/v0/e/\r\n\r\n"},
		{name: "HTTP/2 preface over HTTP/1.1: no Host, so misdirected", answers: []int{421}, raw: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h *harness
			// Registered before the harness, so it runs after the
			// upstreams have closed, when every request that reached
			// them, late ones included, is recorded.
			t.Cleanup(func() { checkUpstream(t, h, tc) })
			h = newHarness(t)
			conn := h.dialRaw(served)
			if _, err := io.WriteString(conn, tc.raw+marker); err != nil {
				t.Fatalf("writing: %v", err)
			}
			br := bufio.NewReader(conn)
			var got []int
			for range len(tc.answers) {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatalf("after answers %v: %v; want answers %v", got, err, tc.answers)
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got = append(got, resp.StatusCode)
			}
			if !slices.Equal(got, tc.answers) {
				t.Errorf("answers %v, want %v", got, tc.answers)
			}
			resp, err := http.ReadResponse(br, nil)
			switch {
			case tc.marker && err != nil:
				t.Errorf("no answer to the marker request after %v: %v", got, err)
			case tc.marker && resp.StatusCode != 200:
				t.Errorf("marker answered %d", resp.StatusCode)
			case !tc.marker && err == nil:
				t.Errorf("connection still open after %v: another answer %d (want the connection closed)", got, resp.StatusCode)
			case !tc.marker && isTimeout(err):
				t.Errorf("connection neither answered nor closed after %v: %v", got, err)
			}
		})
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// checkUpstream holds what the upstreams received to tc, once they have
// closed.
func checkUpstream(t *testing.T, h *harness, tc smuggleCase) {
	if h == nil {
		return
	}
	if n := h.evil.arrived.Load() + h.assets.arrived.Load(); n != 0 {
		t.Errorf("assets or evil server received %d requests", n)
	}
	h.ingest.mu.Lock()
	seen := slices.Clone(h.ingest.seen)
	h.ingest.mu.Unlock()
	var complete []seenRequest
	for _, s := range seen {
		if s.BodyErr != nil {
			if !tc.aborted {
				t.Errorf("upstream received %s %s with a broken body: %v", s.Method, s.Path, s.BodyErr)
			}
			continue
		}
		complete = append(complete, s)
	}
	want := slices.Clone(tc.want)
	if tc.marker {
		want = append(want, forwarded{method: "GET", path: "/marker"})
	}
	if len(complete) != len(want) {
		var names []string
		for _, s := range complete {
			names = append(names, s.Method+" "+s.Path)
		}
		t.Fatalf("upstream received %d complete requests %q, want %d", len(complete), names, len(want))
	}
	for i, w := range want {
		s := complete[i]
		if s.Method != w.method || s.Path != w.path || string(s.Body) != w.body {
			t.Errorf("upstream request %d: %s %s body %q, want %s %s body %q", i, s.Method, s.Path, s.Body, w.method, w.path, w.body)
		}
		// Exactly one framing: a length, or chunked with no length.
		te := slices.Equal(s.TransferEncoding, []string{"chunked"})
		_, hasCL := s.Header["Content-Length"]
		switch {
		case len(s.TransferEncoding) > 0 && !te:
			t.Errorf("upstream request %d framed %q", i, s.TransferEncoding)
		case te && hasCL:
			t.Errorf("upstream request %d has Transfer-Encoding and Content-Length", i)
		case te != w.chunked:
			t.Errorf("upstream request %d chunked %v, want %v", i, te, w.chunked)
		case !te && s.ContentLength != int64(len(w.body)):
			t.Errorf("upstream request %d Content-Length %d for a body of %d", i, s.ContentLength, len(w.body))
		}
		if _, ok := s.Trailer["Content-Length"]; ok {
			t.Errorf("upstream request %d has a Content-Length trailer", i)
		}
		for k, v := range w.header {
			if got := s.Header.Values(k); !slices.Equal(got, []string{v}) {
				t.Errorf("upstream request %d header %s = %q, want %q", i, k, got, v)
			}
		}
	}
}

// TestChunkedBodyBrokenOff checks that a chunked body the client frames
// badly is answered 400 naming the cause, not 502 blaming the upstream.
func TestChunkedBodyBrokenOff(t *testing.T) {
	h := newHarness(t)
	conn := h.dialRaw(served)
	resp, body := exchange(t, conn, "POST /i/v0/e/ HTTP/1.1\r\nHost: "+served+"\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
	wantError(t, resp, body, 400, "bad_request", "")
	if st := h.edge.Stats(); st.BadRequest != 1 || st.BadGateway != 0 {
		t.Errorf("stats %+v, want one bad request and no bad gateway", st)
	}
}

// TestOversizedHeaders sends request heads over the TLS edge's limit, in
// one header, many headers and the request line: each is answered 431
// and the connection closed, never forwarded. A head just under the limit
// is forwarded, so the limit is the one intended.
func TestOversizedHeaders(t *testing.T) {
	h := newHarness(t)
	over := proxy.MaxHeaderBytes + 8<<10 // net/http allows 4 KiB of slack
	var many strings.Builder
	for i := 0; many.Len() < over; i++ {
		many.WriteString("X-Many-" + strings.Repeat("a", 20) + ": " + strings.Repeat("b", 40) + "\r\n")
	}
	for _, tc := range []struct{ name, raw string }{
		{"one large header", "GET /i/v0/e/ HTTP/1.1\r\nHost: " + served + "\r\nX-Big: " + strings.Repeat("x", over) + "\r\n\r\n"},
		{"many headers", "GET /i/v0/e/ HTTP/1.1\r\nHost: " + served + "\r\n" + many.String() + "\r\n"},
		{"long request line", "GET /i/v0/e/?q=" + strings.Repeat("x", over) + " HTTP/1.1\r\nHost: " + served + "\r\n\r\n"},
		{"header without end", "GET /i/v0/e/ HTTP/1.1\r\nHost: " + served + "\r\nX-Big: " + strings.Repeat("x", over)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := h.dialRaw(served)
			// Written concurrently: the server answers once it has read
			// its limit, while the rest may still be on its way.
			go io.WriteString(conn, tc.raw)
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("no answer: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
				t.Errorf("status %d, want 431", resp.StatusCode)
			}
			if _, err := br.ReadByte(); err == nil || isTimeout(err) {
				t.Errorf("connection not closed after the 431: %v", err)
			}
		})
	}
	h.wantCounts(t, 0, 0)

	t.Run("just under the limit", func(t *testing.T) {
		raw := "GET /i/v0/e/ HTTP/1.1\r\nHost: " + served + "\r\nX-Big: " + strings.Repeat("x", proxy.MaxHeaderBytes-1024) + "\r\n\r\n"
		resp, body := exchange(t, h.dialRaw(served), raw)
		if resp.StatusCode != 200 {
			t.Errorf("status %d (%q), want 200", resp.StatusCode, body)
		}
		if n := len(h.ingest.only(t).Header.Get("X-Big")); n != proxy.MaxHeaderBytes-1024 {
			t.Errorf("upstream got X-Big of %d bytes", n)
		}
	})
}

// TestSlowloris opens connections that never finish their request head:
// some dribble a header line every half second, some finished the TLS
// handshake and send nothing, some never start the handshake. While they
// hang, fresh clients are served. Each is cut off by the server, not
// before proxy.HeaderTimeout, and the upstream never hears of them.
func TestSlowloris(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	const dribblers, silentTLS, silentTCP = 60, 20, 20
	// giveUp bounds every loop: a connection still open then is a failure.
	giveUp := 4 * proxy.HeaderTimeout

	type result struct {
		kind    string
		elapsed time.Duration
		err     error
	}
	results := make(chan result, dribblers+silentTLS+silentTCP)
	var wg, established sync.WaitGroup
	start := func(kind string, run func(conn net.Conn, start time.Time)) {
		wg.Add(1)
		established.Add(1)
		go func() {
			defer wg.Done()
			begin := time.Now()
			raw, err := net.DialTimeout("tcp", h.addr, 10*time.Second)
			if err != nil {
				established.Done()
				results <- result{kind, 0, err}
				return
			}
			defer raw.Close()
			raw.SetDeadline(begin.Add(giveUp))
			var conn net.Conn = raw
			if kind != "silent tcp" {
				tc := tls.Client(raw, &tls.Config{ServerName: served, RootCAs: h.roots, NextProtos: []string{"http/1.1"}})
				if err := tc.Handshake(); err != nil {
					established.Done()
					results <- result{kind, 0, err}
					return
				}
				conn = tc
			}
			established.Done()
			// Every clock of the server starts after begin, so no cut
			// may come before begin plus the header timeout.
			run(conn, begin)
			results <- result{kind, time.Since(begin), nil}
		}()
	}
	type cut struct {
		kind  string
		after time.Duration // -1: never
	}
	cutAt := make(chan cut, dribblers+silentTLS+silentTCP)
	readUntilClosed := func(kind string) func(conn net.Conn, from time.Time) {
		return func(conn net.Conn, from time.Time) {
			_, err := conn.Read(make([]byte, 1))
			if isTimeout(err) {
				cutAt <- cut{kind, -1}
				return
			}
			cutAt <- cut{kind, time.Since(from)}
		}
	}
	for range dribblers {
		start("dribbler", func(conn net.Conn, from time.Time) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				readUntilClosed("dribbler")(conn, from)
			}()
			io.WriteString(conn, "GET /i/v0/e/ HTTP/1.1\r\nHost: "+served+"\r\n")
			for i := 0; ; i++ {
				select {
				case <-done:
					return
				case <-time.After(500 * time.Millisecond):
				}
				if _, err := io.WriteString(conn, "X-Slow-"+string(rune('a'+i%26))+": x\r\n"); err != nil {
					<-done
					return
				}
			}
		})
	}
	for range silentTLS {
		start("silent tls", readUntilClosed("silent tls"))
	}
	for range silentTCP {
		start("silent tcp", readUntilClosed("silent tcp"))
	}

	// Fresh clients are served while all of those hang.
	established.Wait()
	for i := range 5 {
		resp, body := do(t, h.client("h1", ""), newRequest(t, "GET", "https://"+served+"/i/v0/e/", nil))
		if resp.StatusCode != 200 {
			t.Errorf("client %d during the attack: %d %q", i, resp.StatusCode, body)
		}
	}
	wg.Wait()
	close(results)
	close(cutAt)
	for r := range results {
		if r.err != nil {
			t.Errorf("%s: %v", r.kind, r.err)
		}
	}
	var slowest time.Duration
	for c := range cutAt {
		switch {
		case c.after < 0:
			t.Errorf("%s: still open after %v", c.kind, giveUp)
		case c.after < proxy.HeaderTimeout:
			t.Errorf("%s: cut after %v, before the header timeout %v", c.kind, c.after, proxy.HeaderTimeout)
		}
		slowest = max(slowest, c.after)
	}
	t.Logf("%d hanging connections all cut, the last after %v (header timeout %v)", dribblers+silentTLS+silentTCP, slowest, proxy.HeaderTimeout)
	h.wantCounts(t, 5, 0)
}

// TestServerLogUnderFlood runs the edge's server with a logger that keeps
// every level: 1,000 handshakes for random names, all refused, write at
// most one Debug line per second of the flood, and 50 requests whose
// handler panics at most one Warn line per second, at least one (a panic
// must be visible at the default level).
func TestServerLogUnderFlood(t *testing.T) {
	logs := &logRecorder{}
	cert, roots := selfSigned(t, served)
	srv := proxy.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		panic("handler bug")
	}), &tls.Config{
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			if hello.ServerName == served {
				return &cert, nil
			}
			return nil, errors.New("not served")
		},
	}, slog.New(logs))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })

	count := func(level slog.Level) int {
		n := 0
		logs.mu.Lock()
		defer logs.mu.Unlock()
		for _, r := range logs.records {
			if r.Level == level {
				n++
			}
		}
		return n
	}
	const handshakes, workers = 1000, 4
	began := time.Now()
	var wg sync.WaitGroup
	var mu sync.Mutex
	accepted := 0
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range handshakes / workers {
				name := fmt.Sprintf("r%d-%d-%x.example.net", w, i, rand.Uint64())
				conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", ln.Addr().String(),
					&tls.Config{ServerName: name, RootCAs: roots})
				if err == nil {
					conn.Close()
					mu.Lock()
					accepted++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	flood := time.Since(began)
	if accepted != 0 {
		t.Errorf("%d handshakes for random names succeeded", accepted)
	}
	// Refusals are logged as the server notices them, which may trail
	// the client by a moment: wait for the first. The bound is the time
	// from the flood's start to the count, not to the flood's end: a line
	// may be written after the last client gave up, but none after the
	// count, and one a second lets through at most one line per started
	// second.
	deadline := time.Now().Add(10 * time.Second)
	for count(slog.LevelDebug) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	debug := count(slog.LevelDebug)
	counted := time.Since(began)
	if limit := int(counted/time.Second) + 1; debug > limit || debug == 0 {
		t.Errorf("%d refused handshakes in %v wrote %d Debug lines in %v, want 1 to %d", handshakes, flood, debug, counted, limit)
	}
	t.Logf("%d refused handshakes in %v: %d Debug lines", handshakes, flood, debug)

	began = time.Now()
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{ServerName: served, RootCAs: roots},
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", ln.Addr().String())
		},
	}, Timeout: 10 * time.Second}
	for range 50 {
		if resp, err := client.Get("https://" + served + "/"); err == nil {
			resp.Body.Close()
			t.Errorf("a panicking handler answered %d", resp.StatusCode)
		}
	}
	panics := time.Since(began)
	deadline = time.Now().Add(10 * time.Second)
	for count(slog.LevelWarn) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	warn := count(slog.LevelWarn)
	counted = time.Since(began)
	if limit := int(counted/time.Second) + 1; warn > limit || warn == 0 {
		t.Errorf("50 handler panics in %v wrote %d Warn lines in %v, want 1 to %d", panics, warn, counted, limit)
	}
	for _, m := range logs.messages(slog.LevelWarn) {
		if !strings.HasPrefix(m, "http: panic serving") {
			t.Errorf("Warn line %q", m)
		}
	}
}
