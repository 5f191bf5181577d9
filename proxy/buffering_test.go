package proxy_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// roundTripFunc is an http.RoundTripper made of a function.
type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// watchedTransport forwards to the real upstreams over a plain
// http.Transport and records, for each request, whether the client had
// sent the whole body when the edge handed the request to it.
type watchedTransport struct {
	next     *http.Transport
	restSent atomic.Bool // set by the client just before it sends the rest
	calls    atomic.Int64
	early    atomic.Bool // a request reached the transport before its body had
	called   chan struct{}
	once     sync.Once
}

func newWatchedTransport(t *testing.T) *watchedTransport {
	tr := &http.Transport{Proxy: nil}
	t.Cleanup(tr.CloseIdleConnections)
	return &watchedTransport{next: tr, called: make(chan struct{})}
}

func (w *watchedTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	w.calls.Add(1)
	if !w.restSent.Load() {
		w.early.Store(true)
	}
	w.once.Do(func() { close(w.called) })
	return w.next.RoundTrip(r)
}

// TestSmallBodyForwardedWhole: a request body of announced length up to
// 16 KB reaches the upstream transport only once the client has sent all
// of it (so that the transport writes head and body at once), over
// HTTP/1.1 and HTTP/2; a longer body streams from the start. The client
// sends half the body and holds the rest until the transport has the
// request, or 2 s have passed: a small body that was not buffered reaches
// the transport early.
func TestSmallBodyForwardedWhole(t *testing.T) {
	for _, proto := range []string{"h1", "h2"} {
		for _, tc := range []struct {
			size     int
			buffered bool
		}{{1024, true}, {16 << 10, true}, {16<<10 + 1, false}} {
			t.Run(fmt.Sprintf("%s/%d", proto, tc.size), func(t *testing.T) {
				tr := newWatchedTransport(t)
				h := newHarness(t, func(c *proxy.Config) { c.Transport = tr })
				body := bytes.Repeat([]byte("e"), tc.size)
				pr, pw := io.Pipe()
				go func() {
					pw.Write(body[:tc.size/2])
					select {
					case <-tr.called:
					case <-time.After(2 * time.Second):
					}
					tr.restSent.Store(true)
					pw.Write(body[tc.size/2:])
					pw.Close()
				}()
				req := newRequest(t, "POST", "https://"+served+"/i/v0/e/", pr)
				req.ContentLength = int64(tc.size)
				resp, answer := do(t, h.client(proto, ""), req)
				if resp.StatusCode != 200 {
					t.Fatalf("answer %d %q", resp.StatusCode, answer)
				}
				if got := h.ingest.only(t); got.BodyLen != int64(tc.size) || got.BodyErr != nil || got.ContentLength != int64(tc.size) {
					t.Errorf("upstream got %d bytes (Content-Length %d, error %v), want %d", got.BodyLen, got.ContentLength, got.BodyErr, tc.size)
				}
				if early := tr.early.Load(); early == tc.buffered {
					t.Errorf("the request reached the transport before its body was complete: %v, want %v", early, !tc.buffered)
				}
			})
		}
	}
}

// TestSmallBodyCutShort: a client that announces a small body and closes
// its side halfway gets no request forwarded: none reaches the upstream
// transport (a streamed body would have been forwarded, then aborted), and
// the request is counted as the client's doing, never as a 502.
func TestSmallBodyCutShort(t *testing.T) {
	tr := newWatchedTransport(t)
	h := newHarness(t, func(c *proxy.Config) { c.Transport = tr })
	conn := h.dialRaw(served)
	head := "POST /i/v0/e/ HTTP/1.1\r\nHost: " + served + "\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
	if _, err := io.WriteString(conn, head+strings.Repeat("x", 50)); err != nil {
		t.Fatal(err)
	}
	// close_notify: the edge reads the end of the stream mid-body.
	if err := conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	// The client closed its side, so net/http treats it as gone (499);
	// the answer, if any, is not for the upstream to give.
	if resp, err := http.ReadResponse(bufio.NewReader(conn), nil); err == nil {
		resp.Body.Close()
		if resp.StatusCode != 499 && resp.StatusCode != 400 {
			t.Errorf("status %d, want 499 or 400", resp.StatusCode)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for h.edge.Stats().ClientGone+h.edge.Stats().BadRequest == 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if n := tr.calls.Load(); n != 0 {
		t.Errorf("%d requests reached the upstream transport", n)
	}
	if st := h.edge.Stats(); st.ClientGone+st.BadRequest != 1 || st.BadGateway != 0 {
		t.Errorf("stats %+v, want one client gone or bad request, and no bad gateway", st)
	}
}
