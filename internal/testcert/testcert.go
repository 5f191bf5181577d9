// Package testcert makes the certificates that tests and the benchmark
// programs serve and trust: a throw-away certificate authority, the
// certificates it issues, and self-signed ones. Every key is ECDSA P-256,
// as an ACME order's is, and lives only in memory. Nothing here is for
// production use.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"time"
)

// caValidity is how long a CA's certificate is valid: longer than any
// test or benchmark runs.
const caValidity = 10 * 365 * 24 * time.Hour

// A CA issues certificates. It is a root (NewCA) or an intermediate
// signed by another CA (Intermediate); either way Pool trusts the root.
type CA struct {
	// Cert is the CA's own certificate; PEM is its PEM form.
	Cert *x509.Certificate
	PEM  []byte
	// Pool holds the root, the only certificate a client needs to trust.
	Pool *x509.CertPool

	key *ecdsa.PrivateKey
	// chain is what a leaf this CA issues is sent with: this CA's
	// certificate and the intermediates above it, root excluded.
	chain [][]byte
}

// NewCA returns a root CA named name, valid from an hour ago for ten
// years.
func NewCA(name string) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(name)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("testcert: root %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, PEM: pemCert(der), Pool: pool, key: key}, nil
}

// Intermediate returns a CA named name whose certificate ca signs; the
// leaves it issues carry it in their chain.
func (ca *CA) Intermediate(name string) (*CA, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := caTemplate(name)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("testcert: intermediate %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, PEM: pemCert(der), Pool: ca.Pool, key: key,
		chain: append([][]byte{der}, ca.chain...)}, nil
}

// Cert is a certificate with its key, in the forms its users load.
type Cert struct {
	// TLS is the chain (leaf first) and key, Leaf set, for a tls.Config.
	TLS tls.Certificate
	// Leaf is the certificate itself.
	Leaf *x509.Certificate
	// ChainPEM is the leaf then its intermediates; KeyPEM the key as an
	// "EC PRIVATE KEY" block, as certmagic stores it.
	ChainPEM, KeyPEM []byte
}

// Issue returns a server certificate for names (the first is also the
// subject's common name), valid from notBefore to notAfter.
func (ca *CA) Issue(notBefore, notAfter time.Time, names ...string) (*Cert, error) {
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	tmpl, err := leafTemplate(notBefore, notAfter, names)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("testcert: certificate for %v: %w", names, err)
	}
	return newCert(append([][]byte{der}, ca.chain...), key)
}

// SelfSigned returns a certificate for names, valid from notBefore to
// notAfter, that signs itself, and a pool that trusts it.
func SelfSigned(notBefore, notAfter time.Time, names ...string) (*Cert, *x509.CertPool, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	tmpl, err := leafTemplate(notBefore, notAfter, names)
	if err != nil {
		return nil, nil, err
	}
	// A certificate that is its own issuer must be allowed to sign.
	tmpl.IsCA, tmpl.BasicConstraintsValid = true, true
	tmpl.KeyUsage |= x509.KeyUsageCertSign
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("testcert: self-signed certificate for %v: %w", names, err)
	}
	c, err := newCert([][]byte{der}, key)
	if err != nil {
		return nil, nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(c.Leaf)
	return c, pool, nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// serial is a random 127-bit serial number: certificates of one issuer
// must not share one.
func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func caTemplate(name string) (*x509.Certificate, error) {
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(caValidity),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}, nil
}

func leafTemplate(notBefore, notAfter time.Time, names []string) (*x509.Certificate, error) {
	if len(names) == 0 {
		return nil, fmt.Errorf("testcert: a certificate needs at least one name")
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	return &x509.Certificate{
		SerialNumber: sn, Subject: pkix.Name{CommonName: names[0]}, DNSNames: names,
		NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}, nil
}

func newCert(chain [][]byte, key *ecdsa.PrivateKey) (*Cert, error) {
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, err
	}
	var chainPEM []byte
	for _, der := range chain {
		chainPEM = append(chainPEM, pemCert(der)...)
	}
	return &Cert{
		TLS:      tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf},
		Leaf:     leaf,
		ChainPEM: chainPEM,
		KeyPEM:   pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}, nil
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}
