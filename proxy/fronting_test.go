package proxy_test

import (
	"net"
	"net/url"
	"slices"
	"strings"
	"testing"
)

// frontingCase is a hand-written request on a TLS connection opened for
// sni (served if empty). forwarded says whether it may reach the ingest
// upstream; nothing may reach the assets upstream or the evil server.
type frontingCase struct {
	name      string
	sni       string
	request   string
	status    []int
	forwarded bool
}

// TestDomainFronting sends requests that try to reach another host than
// the two upstreams, or another customer than the connection's: absolute
// URIs, CONNECT, odd Host forms. The evil server listens on loopback, so
// any of them that the edge followed would arrive there.
func TestDomainFronting(t *testing.T) {
	h := newHarness(t)
	evil := h.evil.hostport()
	_, evilPort, _ := net.SplitHostPort(evil)
	get := func(target string, headers ...string) string {
		return "GET " + target + " HTTP/1.1\r\n" + strings.Join(headers, "\r\n") + "\r\n\r\n"
	}
	const host = "Host: " + served
	misdirected := []int{421}
	refused := []int{400, 421}
	cases := []frontingCase{
		{name: "absolute-form to another host", request: get("http://evil.example/i/v0/e/", "Host: evil.example"), status: misdirected},
		{name: "absolute-form to the evil server, Host served", request: get("http://"+evil+"/i/v0/e/", host), status: misdirected},
		{name: "absolute-form https to the evil server", request: get("https://"+evil+"/static/x", "Host: "+evil), status: misdirected},
		{name: "absolute-form with the served name as userinfo", request: get("http://"+served+"@"+evil+"/", host), status: misdirected},
		{name: "absolute-form to another customer", request: get("https://"+alsoServed+"/i/v0/e/", host), status: misdirected},
		{name: "absolute-form to the served domain", request: get("https://"+served+"/i/v0/e/?x=1", host), status: []int{200}, forwarded: true},
		{name: "absolute-form to the served domain on the evil port", request: get("http://"+served+":"+evilPort+"/i/v0/e/", "Host: "+served+":"+evilPort), status: []int{200}, forwarded: true},
		{name: "absolute-form with the evil server as userinfo", request: get("http://"+evil+"@"+served+"/i/v0/e/", host), status: []int{200}, forwarded: true},
		{name: "CONNECT to another host", request: "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", status: []int{405, 421}},
		{name: "CONNECT to the evil server", request: "CONNECT " + evil + " HTTP/1.1\r\nHost: " + evil + "\r\n\r\n", status: []int{405, 421}},
		{name: "CONNECT to the evil server, Host served", request: "CONNECT " + evil + " HTTP/1.1\r\n" + host + "\r\n\r\n", status: []int{405, 421}},
		{name: "CONNECT to the served domain", request: "CONNECT " + served + ":443 HTTP/1.1\r\nHost: " + served + ":443\r\n\r\n", status: []int{405}},
		{name: "authority-form GET", request: get(evil, host), status: refused},
		{name: "scheme-relative target", request: get("//"+evil+"/i/v0/e/", host), status: []int{200}, forwarded: true},
		{name: "Host with port 443", request: get("/i/v0/e/", "Host: "+served+":443"), status: []int{200}, forwarded: true},
		{name: "Host with another port", request: get("/i/v0/e/", "Host: "+served+":8443"), status: []int{200}, forwarded: true},
		{name: "Host upper case", request: get("/i/v0/e/", "Host: A.EXAMPLE.COM"), status: []int{200}, forwarded: true},
		{name: "Host with trailing dot", request: get("/i/v0/e/", "Host: "+served+"."), status: []int{200}, forwarded: true},
		{name: "Host mixed case, dot and port", request: get("/i/v0/e/", "Host: A.Example.Com.:443"), status: []int{200}, forwarded: true},
		{name: "SNI upper case", sni: "A.EXAMPLE.COM", request: get("/i/v0/e/", host), status: []int{200}, forwarded: true},
		{name: "X-Forwarded-Host names the evil server", request: get("/i/v0/e/", host, "X-Forwarded-Host: "+evil, "X-Forwarded-Server: "+evil, "X-Original-URL: http://"+evil+"/"), status: []int{200}, forwarded: true},
		{name: "Host of another customer", request: get("/i/v0/e/", "Host: "+alsoServed), status: misdirected},
		{name: "Host of the evil server", request: get("/i/v0/e/", "Host: "+evil), status: misdirected},
		{name: "Host with userinfo", request: get("/i/v0/e/", "Host: user@"+served), status: refused},
		{name: "Host with the evil server after userinfo", request: get("/i/v0/e/", "Host: "+served+"@"+evil), status: refused},
		{name: "Host with a path", request: get("/i/v0/e/", "Host: "+served+"/evil"), status: refused},
		{name: "Host with two ports", request: get("/i/v0/e/", "Host: "+served+":443:443"), status: refused},
		{name: "Host as a list", request: get("/i/v0/e/", "Host: "+served+", evil.example"), status: refused},
		{name: "Host with a space", request: get("/i/v0/e/", "Host: "+served+" evil.example"), status: refused},
		{name: "Host IPv6 literal", request: get("/i/v0/e/", "Host: [::1]:443"), status: refused},
		{name: "Host empty", request: get("/i/v0/e/", "Host: "), status: refused},
		{name: "Host missing", request: get("/i/v0/e/"), status: []int{400}},
		{name: "HTTP/1.0 without Host", request: "GET /i/v0/e/ HTTP/1.0\r\n\r\n", status: refused},
		{name: "two Host headers", request: get("/i/v0/e/", host, "Host: "+evil), status: []int{400}},
		{name: "two equal Host headers", request: get("/i/v0/e/", host, host), status: []int{400}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ingestBefore := len(h.ingest.requests(t))
			assetsBefore := len(h.assets.requests(t))
			sni := tc.sni
			if sni == "" {
				sni = served
			}
			resp, body := exchange(t, h.dialRaw(sni), tc.request)
			if !slices.Contains(tc.status, resp.StatusCode) {
				t.Errorf("status %d (%q), want one of %v", resp.StatusCode, body, tc.status)
			}
			switch resp.StatusCode {
			case 421:
				wantError(t, resp, body, 421, "misdirected_request", "")
			case 405:
				wantError(t, resp, body, 405, "method_not_allowed", "")
			}
			seen := h.ingest.requests(t)
			want := ingestBefore
			if tc.forwarded && resp.StatusCode == 200 {
				want++
			}
			if len(seen) != want {
				t.Errorf("ingest upstream received %d requests, want %d", len(seen)-ingestBefore, want-ingestBefore)
			}
			if got := len(h.assets.requests(t)); got != assetsBefore {
				t.Errorf("assets upstream received %d requests", got-assetsBefore)
			}
			if n := h.evil.arrived.Load(); n != 0 {
				t.Fatalf("the evil server received %d requests", n)
			}
			if len(seen) > ingestBefore {
				last := seen[len(seen)-1]
				if last.Host != h.ingest.hostport() {
					t.Errorf("upstream got Host %q", last.Host)
				}
				if v := last.Header.Values("X-Forwarded-Host"); !slices.Equal(v, []string{served}) {
					t.Errorf("upstream got X-Forwarded-Host %q", v)
				}
				if v, ok := last.Header["Authorization"]; ok {
					t.Errorf("upstream got Authorization %q (from userinfo?)", v)
				}
				if strings.Contains(last.RequestURI, "://") {
					t.Errorf("upstream got an absolute target %q", last.RequestURI)
				}
			}
		})
	}
}

// TestDomainFrontingHTTP2 sends HTTP/2 requests whose :authority is not
// the connection's name.
func TestDomainFrontingHTTP2(t *testing.T) {
	h := newHarness(t)
	evil := h.evil.hostport()
	c := h.client("h2", served)
	for _, tc := range []struct {
		method, authority string
		status            int
	}{
		{"GET", alsoServed, 421},
		{"GET", evil, 421},
		{"GET", "evil.example", 421},
		{"POST", alsoServed + ":443", 421},
		{"CONNECT", evil, 421},
		{"CONNECT", "evil.example:443", 421},
		{"GET", "A.EXAMPLE.COM:443", 200},
		{"GET", served + ".", 200},
	} {
		req := newRequest(t, tc.method, "https://"+served+"/i/v0/e/", nil)
		if tc.method == "CONNECT" {
			req.URL = &url.URL{Scheme: "https", Host: tc.authority}
		}
		req.Host = tc.authority
		resp, body := do(t, c, req)
		if resp.ProtoMajor != 2 {
			t.Errorf("%s %s: answered over %s", tc.method, tc.authority, resp.Proto)
		}
		if tc.status == 421 {
			wantError(t, resp, body, 421, "misdirected_request", "")
		} else if resp.StatusCode != tc.status {
			t.Errorf("%s %s: status %d (%q), want %d", tc.method, tc.authority, resp.StatusCode, body, tc.status)
		}
	}
	h.wantCounts(t, 2, 0)
	for _, s := range h.ingest.requests(t) {
		if s.Host != h.ingest.hostport() || s.Header.Get("X-Forwarded-Host") != served {
			t.Errorf("upstream got Host %q, X-Forwarded-Host %q", s.Host, s.Header.Get("X-Forwarded-Host"))
		}
	}
}
