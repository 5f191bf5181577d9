package proxy_test

import (
	"crypto/tls"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/edgeproxy/edgeproxy/proxy"
)

// fuzzUpstream is a loopback upstream that keeps the last request's
// X-Forwarded-Host and counts arrivals.
type fuzzUpstream struct {
	*httptest.Server

	// mu guards arrived and forwardedHost.
	mu            sync.Mutex
	arrived       int
	forwardedHost string
}

func newFuzzUpstream(f *testing.F) *fuzzUpstream {
	u := &fuzzUpstream{}
	u.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.arrived++
		u.forwardedHost = r.Header.Get("X-Forwarded-Host")
		u.mu.Unlock()
	}))
	u.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.Cleanup(u.Close)
	return u
}

func (u *fuzzUpstream) take() (arrived int, forwardedHost string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	arrived, forwardedHost = u.arrived, u.forwardedHost
	u.arrived, u.forwardedHost = 0, ""
	return arrived, forwardedHost
}

var fuzzMethods = []string{"GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT"}

// FuzzEdgeHost feeds the edge a request with an arbitrary SNI, Host,
// method and path, the Host either arbitrary or made from the SNI (case
// flipped, a trailing dot, a port, by the bits of variant). A request is
// forwarded only if its Host, port stripped and case folded, is the SNI
// and served: then the upstream of its path receives it, with
// X-Forwarded-Host the served name. A Host made from a served SNI is
// always forwarded (but CONNECT). Anything not forwarded is answered by
// the edge itself, 421, 404 or 405, in JSON.
func FuzzEdgeHost(f *testing.F) {
	servedNames := newHostSet(served, alsoServed, "xn--bcher-kva.example")
	ingest, assets := newFuzzUpstream(f), newFuzzUpstream(f)
	edge, err := proxy.New(servedNames, proxy.Config{Upstream: mustParse(f, ingest.URL), AssetsUpstream: mustParse(f, assets.URL)})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(served, "", uint8(0b001), uint8(0), "/i/v0/e/")
	f.Add("A.Example.COM.", "", uint8(0b110), uint8(1), "/static/array.js")
	f.Add(served, "a.example.com:443", uint8(0), uint8(1), "/e/")
	f.Add(served, "b.example.com", uint8(0), uint8(0), "/")
	f.Add(served, "[a.example.com]:443", uint8(0), uint8(0), "/")
	f.Add(served, "a.example.com:abc", uint8(0), uint8(0), "/")
	f.Add("", "", uint8(0), uint8(0), "/")
	f.Add(served, "", uint8(0), uint8(8), "/")
	f.Fuzz(func(t *testing.T, sni, host string, variant, method uint8, path string) {
		if variant != 0 {
			host = sni
			if variant&1 != 0 {
				host = strings.ToUpper(host)
			}
			if variant&2 != 0 && !strings.HasSuffix(host, ".") {
				host += "."
			}
			if variant&4 != 0 {
				host += ":8443"
			}
		}
		m := fuzzMethods[int(method)%len(fuzzMethods)]
		r := &http.Request{
			Method: m, URL: &url.URL{Path: "/" + strings.TrimPrefix(path, "/")}, Host: host,
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1, Header: http.Header{}, Body: http.NoBody,
			RemoteAddr: "192.0.2.1:1234", TLS: &tls.ConnectionState{ServerName: sni},
		}
		w := httptest.NewRecorder()
		edge.ServeHTTP(w, r)
		toIngest, ingestHost := ingest.take()
		toAssets, assetsHost := assets.take()
		name := strings.ToLower(strings.TrimSuffix(sni, "."))

		if toIngest+toAssets > 1 {
			t.Fatalf("one request arrived %d times", toIngest+toAssets)
		}
		if toIngest+toAssets == 1 {
			forwardedHost := ingestHost + assetsHost
			static := strings.HasPrefix(r.URL.Path, "/static/")
			if static != (toAssets == 1) {
				t.Fatalf("path %q went to the wrong upstream", r.URL.Path)
			}
			if forwardedHost != name || !servedNames.Serving(name) {
				t.Fatalf("SNI %q Host %q forwarded with X-Forwarded-Host %q", sni, host, forwardedHost)
			}
			if !regexp.MustCompile(`^` + regexp.QuoteMeta(name) + `\.?(:[0-9]*)?$`).MatchString(strings.ToLower(host)) {
				t.Fatalf("Host %q forwarded for SNI %q: it is not that name with a port", host, sni)
			}
			if m == "CONNECT" {
				t.Fatalf("CONNECT forwarded")
			}
			return
		}
		if variant != 0 && servedNames.Serving(name) && m != "CONNECT" {
			t.Fatalf("SNI %q Host %q (%s) not forwarded: %d %s", sni, host, m, w.Code, w.Body)
		}
		switch w.Code {
		case 421, 404, 405:
		default:
			t.Fatalf("SNI %q Host %q: %d %s, want 421, 404 or 405", sni, host, w.Code, w.Body)
		}
		if ct := w.Header().Get("Content-Type"); ct != "application/json" {
			t.Fatalf("answer %d with Content-Type %q", w.Code, ct)
		}
	})
}
