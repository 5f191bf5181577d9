// Package certstest runs Pebble, Let's Encrypt's test ACME server, inside
// the test process, for tests of anything that obtains certificates.
//
// Pebble validates challenges for real: it resolves the domain through the
// DNS server it is given (over TCP) and connects to the resolved address
// on the HTTP and TLS ports it is given, so the code under test must answer
// HTTP-01 or TLS-ALPN-01 there.
//
// Pebble itself (v2.10.3) does not check CAA. Like Let's Encrypt, the
// server started here does: a newOrder for a domain whose CAA record set
// (found by climbing the tree, RFC 8659) has "issue" properties, none of
// them naming CAAIdentity, is refused with an ACME "caa" problem, before
// Pebble sees it.
package certstest

import (
	"bytes"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
	"github.com/miekg/dns"
)

// CAAIdentity is the issuer domain the test CA answers to in CAA records.
const CAAIdentity = "pebble.letsencrypt.org"

// LogEnv names the environment variable that, set to anything, sends
// Pebble's log to stderr. By default it is discarded.
const LogEnv = "CERTSTEST_PEBBLE_LOG"

// Pebble is an ACME CA running in the test process on a loopback TLS
// server.
type Pebble struct {
	srv     *httptest.Server
	ca      *ca.CAImpl
	acme    http.Handler
	dnsAddr string

	orders atomic.Int64
	down   atomic.Bool
}

// StartPebble starts Pebble. It validates challenges by resolving names
// with the DNS server at dnsAddr (host:port; "" means the system resolver,
// and no CAA check) and connecting to httpPort (HTTP-01) and tlsPort
// (TLS-ALPN-01) on the address found. It stops when the test ends.
func StartPebble(t testing.TB, dnsAddr string, httpPort, tlsPort int) *Pebble {
	t.Helper()
	p := NewPebble(dnsAddr, httpPort, tlsPort)
	t.Cleanup(p.Close)
	return p
}

// NewPebble starts Pebble outside a test (the e2e tool uses it); the
// caller stops it with Close.
func NewPebble(dnsAddr string, httpPort, tlsPort int) *Pebble {
	// va.New and wfe.New read these once, when called. The values are the
	// same for every test, so setting them process-wide is harmless.
	os.Setenv("PEBBLE_VA_NOSLEEP", "1")
	os.Setenv("PEBBLE_WFE_NONCEREJECT", "0")

	out := io.Discard
	if os.Getenv(LogEnv) != "" {
		out = os.Stderr
	}
	logger := log.New(out, "pebble ", log.LstdFlags)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{
		"default": {Description: "The default profile"},
	})
	validator := va.New(logger, httpPort, tlsPort, false, dnsAddr, store)
	frontend := wfe.New(logger, store, validator, authority, []string{CAAIdentity}, false, false, 0, 0)

	p := &Pebble{ca: authority, acme: frontend.Handler(), dnsAddr: dnsAddr}
	p.srv = httptest.NewUnstartedServer(p)
	p.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	p.srv.StartTLS()
	return p
}

// DirectoryURL is the ACME directory's URL.
func (p *Pebble) DirectoryURL() string { return p.srv.URL + wfe.DirectoryPath }

// ServerRoots trusts the ACME server's own TLS certificate: give it to
// the ACME client.
func (p *Pebble) ServerRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.srv.Certificate())
	return pool
}

// IssuerRoots trusts the certificates Pebble issues: give it to the TLS
// clients of the server under test.
func (p *Pebble) IssuerRoots(t testing.TB) *x509.CertPool {
	t.Helper()
	root := p.ca.GetRootCert(0)
	if root == nil || root.Cert == nil {
		t.Fatal("certstest: Pebble has no root certificate")
	}
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	return pool
}

// IssuerRootPEM is Pebble's issuing root in PEM form.
func (p *Pebble) IssuerRootPEM() []byte {
	root := p.ca.GetRootCert(0)
	if root == nil || root.Cert == nil {
		return nil
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: root.Cert.Raw})
}

// ServerCertPEM is the ACME server's own TLS certificate in PEM form: the
// file to give edgeproxy's --acme-ca-root.
func (p *Pebble) ServerCertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.srv.Certificate().Raw})
}

// Orders counts the newOrder requests received, refused ones included.
func (p *Pebble) Orders() int { return int(p.orders.Load()) }

// SetDown makes the CA unreachable (every connection is closed without an
// answer) or reachable again.
func (p *Pebble) SetDown(down bool) {
	p.down.Store(down)
	if down {
		p.srv.CloseClientConnections()
	}
}

// Close stops the server.
func (p *Pebble) Close() { p.srv.Close() }

// ServeHTTP is the ACME server's handler: Pebble's, behind the switch of
// SetDown, the order count and the CAA check.
func (p *Pebble) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if p.down.Load() {
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		w.Header().Set("Connection", "close")
		http.Error(w, "down", http.StatusServiceUnavailable)
		return
	}
	if r.Method == http.MethodPost && r.URL.Path == "/order-plz" {
		p.orders.Add(1)
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if typ, detail := p.checkCAA(body); typ != "" {
			writeProblem(w, typ, detail)
			return
		}
	}
	p.acme.ServeHTTP(w, r)
}

func writeProblem(w http.ResponseWriter, typ, detail string) {
	status := http.StatusForbidden
	if typ == "dns" {
		status = http.StatusBadRequest
	}
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type":   "urn:ietf:params:acme:error:" + typ,
		"detail": detail,
		"status": status,
	})
}

// checkCAA returns the problem type and detail refusing the order whose
// JWS body is given, or "" to let it through.
func (p *Pebble) checkCAA(body []byte) (typ, detail string) {
	if p.dnsAddr == "" {
		return "", ""
	}
	var jws struct{ Payload string }
	if json.Unmarshal(body, &jws) != nil {
		return "", ""
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil {
		return "", ""
	}
	var order struct {
		Identifiers []struct{ Type, Value string }
	}
	if json.Unmarshal(payload, &order) != nil {
		return "", ""
	}
	for _, id := range order.Identifiers {
		if id.Type != "dns" {
			continue
		}
		forbidden, err := p.caaForbids(id.Value)
		if err != nil {
			return "dns", fmt.Sprintf("looking up CAA for %s: %v", id.Value, err)
		}
		if forbidden {
			return "caa", fmt.Sprintf("CAA record for %s prevents issuance", id.Value)
		}
	}
	return "", ""
}

// caaForbids climbs from name towards the root to the first non-empty CAA
// set and reports whether it forbids CAAIdentity to issue.
func (p *Pebble) caaForbids(name string) (bool, error) {
	labels := dns.SplitDomainName(name)
	for i := range labels {
		set, err := p.lookupCAA(dns.Fqdn(strings.Join(labels[i:], ".")))
		if err != nil {
			return false, err
		}
		if len(set) == 0 {
			continue
		}
		var issuers []string
		for _, rr := range set {
			switch tag := strings.ToLower(rr.Tag); tag {
			case "issue":
				issuers = append(issuers, rr.Value)
			case "issuewild", "iodef":
			default:
				if rr.Flag&128 != 0 {
					return true, nil // unknown critical property
				}
			}
		}
		if len(issuers) == 0 {
			return false, nil
		}
		for _, v := range issuers {
			domain, _, _ := strings.Cut(v, ";")
			if strings.EqualFold(strings.TrimSpace(domain), CAAIdentity) {
				return false, nil
			}
		}
		return true, nil
	}
	return false, nil
}

func (p *Pebble) lookupCAA(fqdn string) ([]*dns.CAA, error) {
	m := new(dns.Msg)
	m.SetQuestion(fqdn, dns.TypeCAA)
	c := &dns.Client{Timeout: 2 * time.Second}
	in, _, err := c.Exchange(m, p.dnsAddr)
	if err == nil && in.Truncated {
		c.Net = "tcp"
		in, _, err = c.Exchange(m, p.dnsAddr)
	}
	if err != nil {
		return nil, err
	}
	switch in.Rcode {
	case dns.RcodeSuccess, dns.RcodeNameError:
	default:
		return nil, fmt.Errorf("%s answering CAA query for %s", dns.RcodeToString[in.Rcode], fqdn)
	}
	var set []*dns.CAA
	for _, rr := range in.Answer {
		if caa, ok := rr.(*dns.CAA); ok {
			set = append(set, caa)
		}
	}
	return set, nil
}
