package main

import (
	"bufio"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// rssKiB is the resident set size of process pid.
func rssKiB(t *testing.T, pid int) int {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(rest), " kB"))
			if err != nil {
				t.Fatalf("VmRSS line %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatalf("no VmRSS in /proc/%d/status", pid)
	return 0
}

// rawEdge sends a hand-written request to the binary's TLS edge with SNI
// sni and reads one answer.
func (w *acmeWorld) rawEdge(t *testing.T, sni, request string) (*http.Response, string) {
	t.Helper()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", w.httpsAddr,
		&tls.Config{ServerName: sni, RootCAs: w.pebble.IssuerRoots(t), NextProtos: []string{"http/1.1"}})
	if err != nil {
		t.Fatalf("handshake for %s: %v", sni, err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(20 * time.Second))
	go io.WriteString(conn, request)
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("no answer to %.60q: %v", request, err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.Close || resp.StatusCode == http.StatusRequestHeaderFieldsTooLarge {
		// The server closes after this answer: the connection must not
		// hang.
		if _, err := br.ReadByte(); err == nil {
			t.Errorf("more bytes after a closing answer to %.60q", request)
		} else if ne, ok := err.(net.Error); ok && ne.Timeout() {
			t.Errorf("connection not closed after the answer to %.60q", request)
		}
	}
	return resp, string(body)
}

// TestHostileClients runs the binary, serving one domain with a
// certificate from Pebble, against hostile clients: 5,000 TLS handshakes
// for random names (a fifth of them as ACME TLS-ALPN-01 validations) all
// fail, start no ACME order, leave memory about where it was and write
// almost nothing to the log at the default level; an oversized request
// head gets 431; absolute-form targets and CONNECT never reach anything
// but the configured upstream. The served domain is served throughout.
func TestHostileClients(t *testing.T) {
	w := newACMEWorld(t)
	ingest := newEdgeUpstream(t, "ingest")
	assets := newEdgeUpstream(t, "assets")
	evil := newEdgeUpstream(t, "evil")
	s := startServer(t, t.TempDir(), append(w.args, "--upstream", ingest.URL, "--assets-upstream", assets.URL)...)
	key := s.key(t)
	const domain = "e.hostile.example.com"
	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	s.waitStatus(t, key, rec.ID, "valid")
	if err := w.handshake(t, domain); err != nil {
		t.Fatalf("handshake for the valid record: %v", err)
	}

	t.Run("handshake flood", func(t *testing.T) {
		const handshakes, workers = 5000, 8
		orders := w.pebble.Orders()
		logBefore := strings.Count(s.stderr.String(), "\n")
		// Warm the process up with a few hundred before measuring
		// memory, so the runtime's first growth is not counted.
		flood := func(n int) (succeeded int64) {
			var ok atomic.Int64
			var wg sync.WaitGroup
			for g := range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range n / workers {
						// X25519 alone: the hybrid post-quantum key share
						// costs the client more than the refusal costs
						// the server.
						cfg := &tls.Config{ServerName: fmt.Sprintf("x%x.r%d-%d.example.org", rand.Uint64(), g, i),
							InsecureSkipVerify: true, CurvePreferences: []tls.CurveID{tls.X25519}}
						if i%5 == 0 {
							cfg.NextProtos = []string{"acme-tls/1"}
						}
						conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", w.httpsAddr, cfg)
						if err == nil {
							ok.Add(1)
							conn.Close()
						}
					}
				}()
			}
			wg.Wait()
			return ok.Load()
		}
		succeeded := flood(400)
		rssBefore := rssKiB(t, s.cmd.Process.Pid)
		began := time.Now()
		succeeded += flood(handshakes)
		took := time.Since(began)
		rssAfter := rssKiB(t, s.cmd.Process.Pid)

		if succeeded != 0 {
			t.Errorf("%d handshakes for random names succeeded", succeeded)
		}
		if got := w.pebble.Orders(); got != orders {
			t.Errorf("Pebble received %d orders during the flood, want 0", got-orders)
		}
		// Loose: a leak of even 10 KiB per handshake would be 50 MiB.
		if grown := rssAfter - rssBefore; grown > 48<<10 {
			t.Errorf("RSS grew by %d KiB over %d refused handshakes (from %d KiB)", grown, handshakes, rssBefore)
		}
		// The certs manager logs refusals once a minute; the server's
		// error log keeps them at Debug.
		lines := strings.Count(s.stderr.String(), "\n") - logBefore
		if lines > 3 {
			t.Errorf("%d refused handshakes wrote %d log lines at the default level:\n%s", handshakes, lines, s.stderr)
		}
		t.Logf("%d refused handshakes in %v (%.0f/s): 0 orders, RSS %d → %d KiB, %d log lines",
			handshakes, took, float64(handshakes)/took.Seconds(), rssBefore, rssAfter, lines)
		if err := w.handshake(t, domain); err != nil {
			t.Errorf("handshake for the served domain after the flood: %v", err)
		}
	})

	t.Run("oversized head", func(t *testing.T) {
		resp, _ := w.rawEdge(t, domain, "GET /i/v0/e/ HTTP/1.1\r\nHost: "+domain+"\r\nX-Big: "+
			strings.Repeat("x", proxy.MaxHeaderBytes+8<<10)+"\r\n\r\n")
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("status %d, want 431", resp.StatusCode)
		}
	})

	t.Run("absolute-form and CONNECT", func(t *testing.T) {
		evilHost := strings.TrimPrefix(evil.URL, "http://")
		before := len(ingest.requests())
		for _, tc := range []struct {
			request string
			status  int
			reaches bool // the ingest upstream
		}{
			{"GET http://evil.example/ HTTP/1.1\r\nHost: " + domain + "\r\n\r\n", 421, false},
			{"GET http://" + evilHost + "/i/v0/e/ HTTP/1.1\r\nHost: " + domain + "\r\n\r\n", 421, false},
			{"GET https://" + domain + "/i/v0/e/ HTTP/1.1\r\nHost: " + domain + "\r\n\r\n", 200, true},
			{"GET http://" + domain + ":" + strings.Split(evilHost, ":")[1] + "/x HTTP/1.1\r\nHost: " + domain + "\r\n\r\n", 200, true},
			{"CONNECT " + evilHost + " HTTP/1.1\r\nHost: " + evilHost + "\r\n\r\n", 421, false},
			{"CONNECT " + domain + ":443 HTTP/1.1\r\nHost: " + domain + ":443\r\n\r\n", 405, false},
		} {
			n := len(ingest.requests())
			resp, body := w.rawEdge(t, domain, tc.request)
			if resp.StatusCode != tc.status {
				t.Errorf("%.50q: %d %q, want %d", tc.request, resp.StatusCode, body, tc.status)
			}
			if tc.reaches {
				if seen := ingest.requests(); len(seen) != n+1 || seen[n].host != strings.TrimPrefix(ingest.URL, "http://") ||
					strings.Contains(seen[n].requestURI, "://") {
					t.Errorf("%.50q: ingest upstream received %+v", tc.request, seen[n:])
				}
			} else if got := len(ingest.requests()); got != n {
				t.Errorf("%.50q reached the ingest upstream", tc.request)
			}
		}
		if got := len(ingest.requests()) - before; got != 2 {
			t.Errorf("ingest upstream received %d requests, want 2", got)
		}
		if n := len(evil.requests()) + len(assets.requests()); n != 0 {
			t.Errorf("evil or assets server received %d requests", n)
		}
	})

	// The served domain is still served after all of it.
	resp, body := w.rawEdge(t, domain, "POST /i/v0/e/ HTTP/1.1\r\nHost: "+domain+"\r\nContent-Length: 2\r\n\r\n{}")
	if resp.StatusCode != 200 || body != "ingest" {
		t.Errorf("after the hostile clients: %d %q", resp.StatusCode, body)
	}
}
