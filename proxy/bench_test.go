package proxy_test

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkEdgePost is the edge's HTTP/1.1 path for a 1 KB JSON POST, as
// serve configures it (metrics registered, no access log), over one TLS
// keep-alive connection to a keep-alive upstream: for allocation profiles
// (go test -run '^$' -bench EdgePost -benchmem -memprofile mem.out
// ./proxy/). The client and the upstream run in the same process, so read
// the profile focused on the edge (-focus 'proxy\.|net/http\.\(\*conn\)').
// make bench-proxy measures the edge's CPU against nginx's.
func BenchmarkEdgePost(b *testing.B) {
	answer := []byte(`{"status":1}`)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer)
	}))
	defer up.Close()
	edge, err := proxy.New(newHostSet(served), proxy.Config{
		Upstream:       mustParse(b, up.URL),
		AssetsUpstream: mustParse(b, up.URL),
		Logger:         slog.New(slog.DiscardHandler),
		Registerer:     prometheus.NewRegistry(),
	})
	if err != nil {
		b.Fatal(err)
	}
	cert, roots := selfSigned(b, served)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := proxy.NewTLSServer(edge, &tls.Config{
		NextProtos:   []string{"http/1.1"},
		Certificates: []tls.Certificate{cert},
	}, slog.New(slog.DiscardHandler))
	go srv.ServeTLS(ln, "", "")
	defer srv.Close()

	conn, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: served, NextProtos: []string{"http/1.1"}})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	body := `{"event":"$pageview","properties":{"pad":"` + strings.Repeat("x", 1024-40) + `"}}`
	req := []byte(fmt.Sprintf("POST /i/v0/e/ HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s", served, len(body), body))
	br := bufio.NewReader(conn)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := conn.Write(req); err != nil {
			b.Fatal(err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			b.Fatal(err)
		}
		got, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK || !bytes.Equal(got, answer) {
			b.Fatal(errors.Join(err, fmt.Errorf("%s %q", resp.Status, got)))
		}
	}
}
