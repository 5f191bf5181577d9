package etcdtest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// clientFromFiles builds a client the way a program given --etcd-ca,
// --etcd-cert and --etcd-key would: from the PEM files alone. An empty
// caFile means no TLS at all; an empty certFile, no client certificate.
func clientFromFiles(t *testing.T, endpoints []string, caFile, certFile, keyFile string) *clientv3.Client {
	t.Helper()
	cfg := clientv3.Config{Endpoints: endpoints, DialTimeout: 2 * time.Second, Logger: zap.NewNop()}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			t.Fatal(err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			t.Fatalf("%s holds no certificate", caFile)
		}
		cfg.TLS = &tls.Config{RootCAs: pool}
		if certFile != "" {
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.TLS.Certificates = []tls.Certificate{pair}
		}
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestTLSCluster checks that a TLS cluster lets in a client with the CA
// and client certificate of its TLSFiles, and no other.
func TestTLSCluster(t *testing.T) {
	c := NewTLSCluster(t, 1)
	f := c.TLS()
	if f == nil {
		t.Fatal("TLS() is nil on a TLS cluster")
	}
	put(t, c.Client(t), "/k", "v")

	good := clientFromFiles(t, c.Endpoints(), f.CA, f.Cert, f.Key)
	if got := get(t, good, "/k"); got != "v" {
		t.Errorf("client from the TLS files: /k = %q, want v", got)
	}
	put(t, good, "/k", "w")

	for name, cli := range map[string]*clientv3.Client{
		"plain":                  clientFromFiles(t, c.Endpoints(), "", "", ""),
		"no client certificate":  clientFromFiles(t, c.Endpoints(), f.CA, "", ""),
		"untrusted client cert.": clientFromFiles(t, c.Endpoints(), f.CA, f.OtherCert, f.OtherKey),
	} {
		ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
		_, err := cli.Get(ctx, "/k")
		cancel()
		if err == nil {
			t.Errorf("%s client: get succeeded on a cluster that requires a trusted client certificate", name)
		}
	}
}

func TestPlainClusterHasNoTLS(t *testing.T) {
	c := NewCluster(t, 1)
	if c.TLS() != nil {
		t.Error("TLS() is not nil on a plain cluster")
	}
}
