// Command e2e runs the edgeproxy binary against a real ACME CA (Pebble, in
// this process), a DNS server on loopback and an upstream on loopback, and
// prints what a customer would see: each status of one record from waiting
// to valid, then a TLS handshake for the domain with the issued
// certificate. `make e2e` runs it.
//
//	go run ./cmd/e2e -bin bin/edgeproxy
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

func main() {
	bin := flag.String("bin", "bin/edgeproxy", "the edgeproxy binary to run")
	domain := flag.String("domain", "e.shop.example.com", "the customer domain to register")
	timeout := flag.Duration("timeout", 2*time.Minute, "give up after this long")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := run(ctx, os.Stdout, *bin, *domain); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer, bin, domain string) error {
	dir, err := os.MkdirTemp("", "edgeproxy-e2e")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	dns, err := dnstest.New()
	if err != nil {
		return err
	}
	defer dns.Stop()
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, `{"status":1,"host":%q}`, r.Host)
	}))
	defer upstream.Close()

	ports, err := testbin.FreePorts(3)
	if err != nil {
		return err
	}
	httpPort, httpsPort := ports[1], ports[2]
	apiAddr := fmt.Sprintf("127.0.0.1:%d", ports[0])
	httpAddr, httpsAddr := fmt.Sprintf("127.0.0.1:%d", httpPort), fmt.Sprintf("127.0.0.1:%d", httpsPort)
	pebble := certstest.NewPebble(dns.Addr(), httpPort, httpsPort)
	defer pebble.Close()
	caRoot := filepath.Join(dir, "pebble-server.pem")
	if err := os.WriteFile(caRoot, pebble.ServerCertPEM(), 0o600); err != nil {
		return err
	}

	fmt.Fprintf(out, "DNS server   %s\nACME CA      %s (Pebble)\nupstream     %s\n", dns.Addr(), pebble.DirectoryURL(), upstream.URL)
	cmd := exec.CommandContext(ctx, bin, "serve", "--dev",
		"--data-dir", filepath.Join(dir, "data"),
		"--api-addr", apiAddr, "--http-addr", httpAddr, "--https-addr", httpsAddr,
		"--acme-ca", pebble.DirectoryURL(), "--acme-ca-root", caRoot,
		"--acme-caa-identities", certstest.CAAIdentity,
		"--dns-resolvers", dns.Addr(),
		"--upstream", upstream.URL, "--assets-upstream", upstream.URL,
		"--recheck-max", "2s")
	logFile, err := os.Create(filepath.Join(dir, "edgeproxy.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", bin, err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	fmt.Fprintf(out, "edgeproxy    api http://%s, edge https://%s, http %s\n\n", apiAddr, httpsAddr, httpAddr)

	api := "http://" + apiAddr
	if err := waitReady(ctx, api); err != nil {
		return fmt.Errorf("%w; log:\n%s", err, readFile(logFile.Name()))
	}
	key := strings.TrimSpace(readFile(filepath.Join(dir, "data", "bootstrap-key")))

	var rec record
	if err := call(ctx, api, key, "POST", "", `{"domain":"`+domain+`"}`, &rec); err != nil {
		return err
	}
	fmt.Fprintf(out, "created %s → point a CNAME at %s\n", rec.Domain, rec.TargetCNAME)
	// The operator's wildcard: *.<target-cname-base> resolves to this machine.
	dns.SetA(rec.TargetCNAME, "127.0.0.1")

	last, cnameAdded := "", false
	for {
		if err := call(ctx, api, key, "GET", rec.ID+"/", "", &rec); err != nil {
			return err
		}
		line := rec.Status
		if rec.Message != nil {
			line += "  " + *rec.Message
		}
		if line != last {
			fmt.Fprintf(out, "%s  %s\n", time.Now().Format("15:04:05.000"), line)
			last = line
		}
		if rec.Status == "waiting" && rec.Message != nil && !cnameAdded {
			fmt.Fprintf(out, "             (the customer adds: %s CNAME %s)\n", domain, rec.TargetCNAME)
			dns.SetCNAME(domain, rec.TargetCNAME)
			cnameAdded = true
		}
		if rec.Status == "valid" {
			break
		}
		if rec.Status == "erroring" || rec.Status == "timed_out" {
			return fmt.Errorf("record ended %s; log:\n%s", rec.Status, readFile(logFile.Name()))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("record still %s: %w", rec.Status, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}

	roots := pebble.IssuerRootPEM()
	conf := &tls.Config{ServerName: domain, RootCAs: poolOf(roots)}
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", httpsAddr, conf)
	if err != nil {
		return fmt.Errorf("TLS handshake for %s: %w", domain, err)
	}
	defer conn.Close()
	state := conn.ConnectionState()
	leaf := state.PeerCertificates[0]
	fmt.Fprintf(out, "\nTLS handshake with SNI %s: %s, %s\n", domain, tls.VersionName(state.Version), tls.CipherSuiteName(state.CipherSuite))
	fmt.Fprintf(out, "  certificate for %v\n  issued by       %s\n  valid           %s to %s\n  chain verified against Pebble's root\n",
		leaf.DNSNames, leaf.Issuer.CommonName, leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

type record struct {
	ID          string  `json:"id"`
	Domain      string  `json:"domain"`
	TargetCNAME string  `json:"target_cname"`
	Status      string  `json:"status"`
	Message     *string `json:"message"`
}

func call(ctx context.Context, api, key, method, path, body string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, api+"/api/organizations/@current/proxy_records/"+path, strings.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode >= 300 {
		return fmt.Errorf("%s %s: %s %s", method, path, resp.Status, data)
	}
	return json.Unmarshal(data, out)
}

func waitReady(ctx context.Context, api string) error {
	for {
		resp, err := http.Get(api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return errors.New("edgeproxy never became ready")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func readFile(path string) string {
	data, _ := os.ReadFile(path)
	return string(data)
}

func poolOf(pemBytes []byte) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pemBytes)
	return pool
}
