package certs

import (
	"crypto/tls"
	"errors"
	"maps"
	"net/http"
	"time"

	"github.com/mholt/acmez/v3"
)

// errNotServed fails the handshake for a name that is not served. It does
// not name the server name: callers log it per handshake.
var errNotServed = errors.New("certs: no certificate for this server name")

// refusalLogEvery is the least time between two log lines about refused
// handshakes: anyone can send any server name.
const refusalLogEvery = time.Minute

// Serve puts domain on the allowlist of names that get a certificate in a
// handshake (on) or takes it off. The domain's certificate must be cached
// (Obtain or Load) for the handshake to succeed.
func (m *Manager) Serve(domain string, on bool) {
	name := normalizeName(domain)
	m.servedMu.Lock()
	defer m.servedMu.Unlock()
	old := *m.served.Load()
	if _, ok := old[name]; ok == on {
		return
	}
	next := maps.Clone(old)
	if on {
		next[name] = struct{}{}
	} else {
		delete(next, name)
	}
	m.served.Store(&next)
}

// ServeOnly replaces the whole allowlist with domains.
func (m *Manager) ServeOnly(domains []string) {
	next := make(map[string]struct{}, len(domains))
	for _, d := range domains {
		next[normalizeName(d)] = struct{}{}
	}
	m.servedMu.Lock()
	m.served.Store(&next)
	m.servedMu.Unlock()
}

// Serving reports whether domain is on the allowlist.
func (m *Manager) Serving(domain string) bool {
	_, ok := (*m.served.Load())[normalizeName(domain)]
	return ok
}

// GetCertificate is the tls.Config callback of the edge. A TLS-ALPN-01
// validation hello (ALPN exactly "acme-tls/1") gets the challenge
// certificate if this process has that challenge pending. Any other hello
// gets the cached certificate of its server name if the name is served,
// and fails otherwise. It never causes ACME traffic.
func (m *Manager) GetCertificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := normalizeName(hello.ServerName)
	if len(hello.SupportedProtos) == 1 && hello.SupportedProtos[0] == acmez.ACMETLS1Protocol {
		if name == "" {
			return nil, m.refuse(name)
		}
		// certmagic answers from the challenges this process has pending
		// and, failing those, from the ones another node stored (the
		// challenge data is in the shared storage), so the CA may
		// validate through any node; with no challenge for the name it
		// fails the handshake and starts nothing.
		cert, err := m.magic.GetCertificate(hello)
		if err != nil {
			return nil, m.refuse(name)
		}
		m.stats.challenge.Add(1)
		return cert, nil
	}
	if name == "" || !m.Serving(name) {
		return nil, m.refuse(name)
	}
	cert, err := m.magic.GetCertificate(hello)
	if err != nil || cert == nil || len(cert.Certificate) == 0 {
		m.stats.missing.Add(1)
		return nil, errNotServed
	}
	m.stats.served.Add(1)
	return cert, nil
}

// refuse counts a refused handshake and logs one at most every
// refusalLogEvery.
func (m *Manager) refuse(name string) error {
	n := m.stats.refused.Add(1)
	now := time.Now().UnixNano()
	last := m.lastRefusalAt.Load()
	if now-last >= int64(refusalLogEvery) && m.lastRefusalAt.CompareAndSwap(last, now) {
		m.log.Info("refusing TLS handshakes for server names not served",
			"server_name", name, "refused_total", n)
	}
	return errNotServed
}

// TLSConfig returns the edge's TLS configuration: GetCertificate, TLS 1.2
// or later, and ALPN for HTTP/2, HTTP/1.1 and TLS-ALPN-01.
func (m *Manager) TLSConfig() *tls.Config {
	return &tls.Config{
		GetCertificate: m.GetCertificate,
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2", "http/1.1", acmez.ACMETLS1Protocol},
	}
}

// HandleHTTPChallenge answers r if it is an ACME HTTP-01 challenge request
// (GET /.well-known/acme-challenge/<token>) for a challenge pending in
// this process or in storage, and reports whether it did. The plain HTTP
// listener calls it before anything else.
func (m *Manager) HandleHTTPChallenge(w http.ResponseWriter, r *http.Request) bool {
	return m.acme.HandleHTTPChallenge(w, r)
}
