package certs

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"slices"
	"time"
)

// ExpiryWarning: a served certificate this close to expiry is a problem
// worth a warning, since certmagic renews long before it.
const ExpiryWarning = 21 * 24 * time.Hour

// probeTimeout bounds ProbeServed.
const probeTimeout = 5 * time.Second

// ProbeServed makes a TLS handshake with addr for domain and checks that the
// certificate presented names the domain. It does not verify the chain: the
// question is whether the edge serves the domain, not whether this machine
// trusts the CA.
func ProbeServed(ctx context.Context, addr, domain string) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if host == "" || host == "0.0.0.0" || host == "::" {
		host = "127.0.0.1"
	}
	d := tls.Dialer{Config: &tls.Config{ServerName: domain, InsecureSkipVerify: true, NextProtos: []string{"http/1.1"}}}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port))
	if err != nil {
		return fmt.Errorf("handshake with SNI %s: %w", domain, err)
	}
	defer conn.Close()
	chain := conn.(*tls.Conn).ConnectionState().PeerCertificates
	if len(chain) == 0 || !slices.Contains(chain[0].DNSNames, domain) {
		return fmt.Errorf("the certificate presented for %s does not name it", domain)
	}
	return nil
}
