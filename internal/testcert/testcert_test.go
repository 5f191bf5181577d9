package testcert

import (
	"crypto/tls"
	"crypto/x509"
	"testing"
	"time"
)

// handshake serves cert on a loopback TLS listener and has a client that
// trusts roots connect to name; it returns the client's error.
func handshake(t *testing.T, cert tls.Certificate, roots *x509.CertPool, name string) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		c.(*tls.Conn).Handshake()
	}()
	c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: roots, ServerName: name})
	if err != nil {
		return err
	}
	return c.Close()
}

func TestIntermediateChainVerifies(t *testing.T) {
	root, err := NewCA("test root")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.Intermediate("test intermediate")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	c, err := inter.Issue(now.Add(-time.Hour), now.Add(time.Hour), "a.example.com", "b.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(c.TLS.Certificate), 2; got != want {
		t.Fatalf("chain has %d certificates, want %d (leaf, intermediate)", got, want)
	}
	// The PEM forms load as a key pair, as certmagic and nginx load them.
	pair, err := tls.X509KeyPair(c.ChainPEM, c.KeyPEM)
	if err != nil {
		t.Fatalf("X509KeyPair: %v", err)
	}
	if err := handshake(t, pair, inter.Pool, "b.example.com"); err != nil {
		t.Errorf("a client trusting the root refuses the chain: %v", err)
	}
	if err := handshake(t, c.TLS, x509.NewCertPool(), "a.example.com"); err == nil {
		t.Error("a client trusting nothing accepted the chain")
	}
	if err := handshake(t, c.TLS, root.Pool, "c.example.com"); err == nil {
		t.Error("a client accepted the certificate for a name it does not hold")
	}
}

func TestSelfSigned(t *testing.T) {
	now := time.Now()
	c, pool, err := SelfSigned(now.Add(-time.Hour), now.Add(time.Hour), "self.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, c.TLS, pool, "self.example.com"); err != nil {
		t.Errorf("a client trusting the pool refuses it: %v", err)
	}
	expired, pool, err := SelfSigned(now.Add(-48*time.Hour), now.Add(-24*time.Hour), "old.example.com")
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, expired.TLS, pool, "old.example.com"); err == nil {
		t.Error("a client accepted an expired certificate")
	}
	if _, _, err := SelfSigned(now, now.Add(time.Hour)); err == nil {
		t.Error("a certificate without a name was made")
	}
}
