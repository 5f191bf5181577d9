package main

import (
	"crypto/x509"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testcert"
)

// certSet is the one certificate every peer serves: a leaf for
// benchDomain signed by a test CA made for this run.
type certSet struct {
	caPEM, leafPEM, keyPEM []byte
	pool                   *x509.CertPool
	leaf                   *x509.Certificate
}

func newCertSet(domain string) (*certSet, error) {
	ca, err := testcert.NewCA("benchproxy test CA")
	if err != nil {
		return nil, err
	}
	// A year of validity: certmagic renews at two thirds of the lifetime,
	// so the edge never wants to talk to the (unreachable) CA.
	now := time.Now()
	c, err := ca.Issue(now.Add(-time.Hour), now.Add(365*24*time.Hour), domain)
	if err != nil {
		return nil, err
	}
	return &certSet{caPEM: ca.PEM, leafPEM: c.ChainPEM, keyPEM: c.KeyPEM, pool: ca.Pool, leaf: c.Leaf}, nil
}
