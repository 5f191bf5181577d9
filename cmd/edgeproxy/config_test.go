package main

import (
	"bytes"
	"flag"
	"strings"
	"testing"
	"time"
)

func parseServe(t *testing.T, args []string, env map[string]string) (*config, error) {
	t.Helper()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	validate := serveFlags(fs)
	fromEnv, err := parseFlags(fs, args, func(k string) string { return env[k] })
	if err != nil {
		return nil, err
	}
	return validate(fromEnv)
}

func TestServeDefaults(t *testing.T) {
	cfg, err := parseServe(t, []string{"--target-cname-base", "Proxy.Example.NET."}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.TargetCNAMEBase, "proxy.example.net"; got != want {
		t.Errorf("base = %q, want %q", got, want)
	}
	if got, want := cfg.HTTPSAddr, ":443"; got != want {
		t.Errorf("https-addr = %q, want %q", got, want)
	}
	if got, want := cfg.Upstream.String(), "https://us.i.posthog.com"; got != want {
		t.Errorf("upstream = %q, want %q", got, want)
	}
	if got, want := cfg.DNSWaitTimeout, 168*time.Hour; got != want {
		t.Errorf("dns-wait-timeout = %v, want %v", got, want)
	}
	if got, want := cfg.MaxProxyRecords, 2; got != want {
		t.Errorf("max-proxy-records = %d, want %d", got, want)
	}
	if got, want := cfg.MaxBodyBytes, int64(64<<20); got != want {
		t.Errorf("max-body-bytes = %d, want %d", got, want)
	}
	if got, want := strings.Join(cfg.CAAIdentities, ","), "letsencrypt.org"; got != want {
		t.Errorf("caa identities = %q, want %q", got, want)
	}
	if got, want := cfg.OrgOrdersPerHour, 10; got != want {
		t.Errorf("org-orders-per-hour = %d, want %d", got, want)
	}
	if got, want := cfg.CertRetention, 168*time.Hour; got != want {
		t.Errorf("cert-retention = %v, want %v", got, want)
	}
}

func TestDevDefaults(t *testing.T) {
	cfg, err := parseServe(t, []string{"--dev"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.TargetCNAMEBase != "proxy.localhost" || cfg.HTTPAddr != "127.0.0.1:8081" || cfg.HTTPSAddr != "127.0.0.1:8443" {
		t.Errorf("dev defaults = %q %q %q", cfg.TargetCNAMEBase, cfg.HTTPAddr, cfg.HTTPSAddr)
	}
	// Given values beat --dev's defaults, from a flag or the environment.
	cfg, err = parseServe(t, []string{"--dev", "--https-addr", "127.0.0.1:9443"}, map[string]string{"EDGEPROXY_TARGET_CNAME_BASE": "p.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPSAddr != "127.0.0.1:9443" || cfg.TargetCNAMEBase != "p.example.org" {
		t.Errorf("dev with overrides = %q %q", cfg.HTTPSAddr, cfg.TargetCNAMEBase)
	}
}

func TestEnvironmentFallback(t *testing.T) {
	env := map[string]string{
		"EDGEPROXY_MAX_PROXY_RECORDS":   "7",
		"EDGEPROXY_DATA_DIR":            "/var/lib/edgeproxy",
		"EDGEPROXY_TARGET_CNAME_BASE":   "proxy.example.net",
		"EDGEPROXY_METRICS_PER_DOMAIN":  "true",
		"EDGEPROXY_ACCESS_LOG":          "sample:10",
		"EDGEPROXY_ORG_ORDERS_PER_HOUR": "25",
		"EDGEPROXY_CERT_RETENTION":      "24h",
	}
	cfg, err := parseServe(t, []string{"--max-proxy-records", "3"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := cfg.MaxProxyRecords, 3; got != want {
		t.Errorf("a flag must beat the environment: max = %d, want %d", got, want)
	}
	if got, want := cfg.DataDir, "/var/lib/edgeproxy"; got != want {
		t.Errorf("data dir = %q, want %q", got, want)
	}
	if !cfg.MetricsPerDomain || cfg.AccessLogEvery != 10 {
		t.Errorf("metrics-per-domain = %v, access log every = %d", cfg.MetricsPerDomain, cfg.AccessLogEvery)
	}
	if cfg.OrgOrdersPerHour != 25 || cfg.CertRetention != 24*time.Hour {
		t.Errorf("org-orders-per-hour = %d, cert-retention = %v; want 25 and 24h from the environment", cfg.OrgOrdersPerHour, cfg.CertRetention)
	}
}

// TestBadFlags checks that every bad value stops the program with exit 2
// and one line naming the flag.
func TestBadFlags(t *testing.T) {
	base := []string{"--target-cname-base", "proxy.example.net"}
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{}, nil, "--target-cname-base: is required"},
		{[]string{"--target-cname-base", "localhost"}, nil, "--target-cname-base:"},
		{append(base, "--api-addr", "nonsense"), nil, "--api-addr:"},
		{append(base, "--api-addr", "127.0.0.1:99999"), nil, "--api-addr:"},
		{append(base, "--https-addr", "example.com:443"), nil, "--https-addr:"},
		{append(base, "--upstream", "ftp://x.example"), nil, "--upstream:"},
		{append(base, "--upstream", "https://x.example/path"), nil, "--upstream:"},
		{append(base, "--assets-upstream", "not a url"), nil, "--assets-upstream:"},
		{append(base, "--acme-ca", "acme.example"), nil, "--acme-ca:"},
		{append(base, "--acme-ca-root", "/nonexistent/root.pem"), nil, "--acme-ca-root:"},
		{append(base, "--acme-email", "nobody"), nil, "--acme-email:"},
		{append(base, "--dns-resolvers", "1.1.1.1"), nil, "--dns-resolvers:"},
		{append(base, "--dns-wait-timeout", "forever"), nil, "--dns-wait-timeout:"},
		{append(base, "--issue-timeout", "-1h"), nil, "--issue-timeout:"},
		{append(base, "--recheck-max", "0s"), nil, "--recheck-max:"},
		{append(base, "--monitor-interval", "1d"), nil, "--monitor-interval:"},
		{append(base, "--max-proxy-records", "-1"), nil, "--max-proxy-records:"},
		{append(base, "--org-orders-per-hour", "0"), nil, "--org-orders-per-hour:"},
		{append(base, "--org-orders-per-hour", "ten"), nil, "--org-orders-per-hour:"},
		{append(base, "--cert-retention", "0s"), nil, "--cert-retention:"},
		{append(base, "--cert-retention", "1w"), nil, "--cert-retention:"},
		{base, map[string]string{"EDGEPROXY_ORG_ORDERS_PER_HOUR": "-3"}, "--org-orders-per-hour: from EDGEPROXY_ORG_ORDERS_PER_HOUR"},
		{append(base, "--max-body-bytes", "64MiB"), nil, "--max-body-bytes:"},
		{append(base, "--log-format", "xml"), nil, "--log-format:"},
		{append(base, "--access-log", "sample:0"), nil, "--access-log:"},
		{append(base, "--no-such-flag"), nil, "-no-such-flag: unknown flag"},
		{base, map[string]string{"EDGEPROXY_RECHECK_MAX": "soon"}, "EDGEPROXY_RECHECK_MAX"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"serve"}, tc.args...), &stdout, &stderr, func(k string) string { return tc.env[k] })
			if code != 2 {
				t.Errorf("exit code = %d, want 2", code)
			}
			out := stderr.String()
			if strings.Count(out, "\n") != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("stderr = %q, want one line containing %q", out, tc.want)
			}
		})
	}
}

func TestAdminWithoutServer(t *testing.T) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"org", "list", "--data-dir", t.TempDir()}, &stdout, &stderr, func(string) string { return "" })
	if code != 1 {
		t.Errorf("exit code = %d, want 1", code)
	}
	if out := stderr.String(); strings.Count(out, "\n") != 1 || !strings.Contains(out, "no edgeproxy server is running") {
		t.Errorf("stderr = %q, want one line saying no server runs", out)
	}
}
