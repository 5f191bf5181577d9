package etcdtest

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
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
)

// TLSFiles are the PEM files of a cluster made by NewTLSCluster, in the
// forms edgeproxy's flags take: CA for --etcd-ca (it signed the members'
// server certificates, issued for 127.0.0.1 and localhost), Cert and Key
// for --etcd-cert and --etcd-key (a client certificate the members
// accept). OtherCert and OtherKey are a client certificate from a CA the
// members do not trust, for tests of a refused client.
type TLSFiles struct {
	CA, Cert, Key       string
	OtherCert, OtherKey string

	serverCert, serverKey string
	client                *tls.Config
}

// NewTLSCluster is NewCluster with TLS on the members' client URLs and
// client certificate authentication: a client needs TLSFiles.CA to trust
// the members and TLSFiles.Cert/Key to be let in. Client and ClientOf
// return clients that have both. Peer traffic stays plain.
func NewTLSCluster(tb testing.TB, n int) *Cluster {
	tb.Helper()
	files, err := writeTLSFiles(tb.TempDir())
	if err != nil {
		tb.Fatalf("etcdtest: TLS files: %v", err)
	}
	return newCluster(tb, n, files)
}

// TLS returns the cluster's certificate files, or nil for a cluster
// without TLS.
func (c *Cluster) TLS() *TLSFiles { return c.tls }

// serverTLSInfo is what a member serves its client URL with.
func (f *TLSFiles) serverTLSInfo() transport.TLSInfo {
	return transport.TLSInfo{
		CertFile:       f.serverCert,
		KeyFile:        f.serverKey,
		TrustedCAFile:  f.CA,
		ClientCertAuth: true,
	}
}

// writeTLSFiles makes a CA, a server certificate for loopback and a
// client certificate, and another CA's client certificate, into dir.
func writeTLSFiles(dir string) (*TLSFiles, error) {
	ca, caKey, err := newTestCA("etcdtest CA")
	if err != nil {
		return nil, err
	}
	other, otherKey, err := newTestCA("etcdtest untrusted CA")
	if err != nil {
		return nil, err
	}
	f := &TLSFiles{
		CA:         filepath.Join(dir, "ca.pem"),
		Cert:       filepath.Join(dir, "client.pem"),
		Key:        filepath.Join(dir, "client-key.pem"),
		OtherCert:  filepath.Join(dir, "other-client.pem"),
		OtherKey:   filepath.Join(dir, "other-client-key.pem"),
		serverCert: filepath.Join(dir, "server.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
	}
	if err := os.WriteFile(f.CA, pemBlock("CERTIFICATE", ca.Raw), 0o600); err != nil {
		return nil, err
	}
	// The server certificate is also a client one: an embedded member
	// dials itself with it for its HTTP gateway.
	server := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "etcdtest member"},
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	client := &x509.Certificate{
		Subject:     pkix.Name{CommonName: "edgeproxy"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	for _, leaf := range []struct {
		tmpl        *x509.Certificate
		ca          *x509.Certificate
		caKey       *ecdsa.PrivateKey
		cert, keyTo string
	}{
		{server, ca, caKey, f.serverCert, f.serverKey},
		{client, ca, caKey, f.Cert, f.Key},
		{client, other, otherKey, f.OtherCert, f.OtherKey},
	} {
		if err := issueLeaf(leaf.tmpl, leaf.ca, leaf.caKey, leaf.cert, leaf.keyTo); err != nil {
			return nil, err
		}
	}
	pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	f.client = &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	return f, nil
}

func newTestCA(name string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: randomSerial(), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("CA %s: %w", name, err)
	}
	cert, err := x509.ParseCertificate(der)
	return cert, key, err
}

// issueLeaf signs a copy of tmpl with a fresh key and writes the
// certificate and the key as PEM files.
func issueLeaf(tmpl, ca *x509.Certificate, caKey *ecdsa.PrivateKey, certFile, keyFile string) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	t := *tmpl
	t.SerialNumber = randomSerial()
	t.NotBefore, t.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
	t.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, &t, ca, &key.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("certificate %s: %w", t.Subject.CommonName, err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(certFile, pemBlock("CERTIFICATE", der), 0o600); err != nil {
		return err
	}
	return os.WriteFile(keyFile, pemBlock("EC PRIVATE KEY", keyDER), 0o600)
}

func randomSerial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
