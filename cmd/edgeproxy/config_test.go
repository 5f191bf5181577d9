package main

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func parseServe(t *testing.T, args []string, env map[string]string) (*config, error) {
	t.Helper()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := serveFlags(fs)
	if err := parseFlags(fs, args, func(k string) string { return env[k] }); err != nil {
		return nil, err
	}
	return cfg, cfg.finish(fs)
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
	if cfg.IssueTimeout != time.Hour || cfg.RecheckMax != 5*time.Minute || cfg.MonitorInterval != 24*time.Hour {
		t.Errorf("issue-timeout, recheck-max, monitor-interval = %v, %v, %v; want 1h, 5m, 24h", cfg.IssueTimeout, cfg.RecheckMax, cfg.MonitorInterval)
	}
	if got, want := cfg.ACMECA, "https://acme-v02.api.letsencrypt.org/directory"; got != want {
		t.Errorf("acme-ca = %q, want %q", got, want)
	}
	if cfg.ACMECARoot != nil || cfg.ACMEEmail != "" || cfg.DNSResolvers != nil {
		t.Errorf("acme-ca-root, acme-email, dns-resolvers = %v, %q, %q; want none of each", cfg.ACMECARoot, cfg.ACMEEmail, cfg.DNSResolvers)
	}
	if cfg.DataDir != "./data" || cfg.APIAddr != "127.0.0.1:8080" || cfg.HTTPAddr != ":80" {
		t.Errorf("data-dir, api-addr, http-addr = %q, %q, %q", cfg.DataDir, cfg.APIAddr, cfg.HTTPAddr)
	}
	if got, want := cfg.AssetsUpstream.String(), "https://us-assets.i.posthog.com"; got != want {
		t.Errorf("assets-upstream = %q, want %q", got, want)
	}
	if cfg.LogFormat != "text" || cfg.AccessLogEvery != 0 || cfg.MetricsPerDomain || cfg.Dev {
		t.Errorf("log-format, access-log, metrics-per-domain, dev = %q, %d, %v, %v; want text, off, false, false", cfg.LogFormat, cfg.AccessLogEvery, cfg.MetricsPerDomain, cfg.Dev)
	}
}

// TestServeHelp checks that --help shows each default as the README's
// flag table and the example environment file write it (168h, not
// 168h0m0s), so that a value copied from the help means the same.
func TestServeHelp(t *testing.T) {
	var stdout, stderr bytes.Buffer
	if code := run([]string{"serve", "--help"}, &stdout, &stderr, func(string) string { return "" }); code != 0 {
		t.Fatalf("exit code = %d, stderr %q", code, stderr.String())
	}
	help := stdout.String()
	for _, want := range []string{
		"(default 168h)", "(default 1h)", "(default 5m)", "(default 24h)", "(default 10)", "(default 67108864)",
		"(default 2)", "(default off)", "(default text)", "(default letsencrypt.org)",
		"(default https://acme-v02.api.letsencrypt.org/directory)", "(default https://us.i.posthog.com)",
	} {
		if !strings.Contains(help, want) {
			t.Errorf("serve --help lacks %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "0m0s") || strings.Contains(help, "(default false)") {
		t.Errorf("serve --help shows a default in another form than the documented one:\n%s", help)
	}
}

// TestFlagValuesRoundTrip checks that every value a flag is set to reads
// back through the flag as the value the config holds: the environment
// and the command line go through the same parsing.
func TestFlagValuesRoundTrip(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := serveFlags(fs)
	args := []string{
		"--target-cname-base", "P.Example.Org.", "--dns-wait-timeout", "90m", "--access-log", "sample:7",
		"--acme-caa-identities", " letsencrypt.org , Example.COM ", "--dns-resolvers", "1.1.1.1:53,[::1]:53",
		"--max-body-bytes", "1024", "--metrics-per-domain", "--upstream", "http://127.0.0.1:9000/",
	}
	if err := parseFlags(fs, args, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	if err := cfg.finish(fs); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		"target-cname-base":   "p.example.org",
		"dns-wait-timeout":    "1h30m",
		"access-log":          "sample:7",
		"acme-caa-identities": "letsencrypt.org,example.com",
		"dns-resolvers":       "1.1.1.1:53,[::1]:53",
		"max-body-bytes":      "1024",
		"metrics-per-domain":  "true",
		"upstream":            "http://127.0.0.1:9000",
	} {
		if got := fs.Lookup(name).Value.String(); got != want {
			t.Errorf("--%s reads back %q, want %q", name, got, want)
		}
	}
	if cfg.DNSWaitTimeout != 90*time.Minute || cfg.AccessLogEvery != 7 || cfg.MaxBodyBytes != 1024 || len(cfg.DNSResolvers) != 2 {
		t.Errorf("config = %v, %d, %d, %q", cfg.DNSWaitTimeout, cfg.AccessLogEvery, cfg.MaxBodyBytes, cfg.DNSResolvers)
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
	notPEM := filepath.Join(t.TempDir(), "root.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
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
		{append(base, "--data-dir", ""), nil, "--data-dir: must not be empty"},
		{append(base, "--acme-caa-identities", " , "), nil, "--acme-caa-identities: must name at least one"},
		{append(base, "--acme-caa-identities", "letsencrypt.org,nodot"), nil, "--acme-caa-identities:"},
		{append(base, "--acme-ca-root", notPEM), nil, "--acme-ca-root: " + notPEM + " holds no PEM certificate"},
		{append(base, "--dev=maybe"), nil, `--dev: "maybe" is not true or false`},
		{base, map[string]string{"EDGEPROXY_METRICS_PER_DOMAIN": "yes please"}, "--metrics-per-domain: from EDGEPROXY_METRICS_PER_DOMAIN:"},
		{[]string{}, map[string]string{"EDGEPROXY_TARGET_CNAME_BASE": "localhost"}, "--target-cname-base: from EDGEPROXY_TARGET_CNAME_BASE:"},
		{[]string{"--target-cname-base"}, nil, "flag needs an argument: -target-cname-base"},
		{append(base, "stray"), nil, `unexpected argument "stray"`},
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

// TestWebhookAllowPrivate: off by default, on with the flag or its
// variable, and implied by --dev.
func TestWebhookAllowPrivate(t *testing.T) {
	for _, tt := range []struct {
		args []string
		env  map[string]string
		want bool
	}{
		{[]string{"--target-cname-base", "p.example.net"}, nil, false},
		{[]string{"--target-cname-base", "p.example.net", "--webhook-allow-private"}, nil, true},
		{[]string{"--target-cname-base", "p.example.net"}, map[string]string{"EDGEPROXY_WEBHOOK_ALLOW_PRIVATE": "true"}, true},
		{[]string{"--dev"}, nil, true},
	} {
		cfg, err := parseServe(t, tt.args, tt.env)
		if err != nil {
			t.Fatalf("%v %v: %v", tt.args, tt.env, err)
		}
		if cfg.WebhookAllowPrivate != tt.want {
			t.Errorf("%v %v: webhook-allow-private %t, want %t", tt.args, tt.env, cfg.WebhookAllowPrivate, tt.want)
		}
	}
	if _, err := parseServe(t, nil, map[string]string{"EDGEPROXY_WEBHOOK_ALLOW_PRIVATE": "maybe", "EDGEPROXY_TARGET_CNAME_BASE": "p.example.net"}); err == nil ||
		!strings.Contains(err.Error(), "webhook-allow-private") {
		t.Errorf("a bad value: %v, want an error naming the flag", err)
	}
}

// TestDNSZoneFlags: --dns-addr is off by default; with it, --edge-ips and
// --dns-ns are required and parsed, from flags or the environment.
func TestDNSZoneFlags(t *testing.T) {
	cfg, err := parseServe(t, []string{"--target-cname-base", "p.example.net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.DNSAddr != "" || cfg.EdgeIPs != nil || cfg.DNSNameservers != nil {
		t.Errorf("defaults: dns-addr %q, edge-ips %v, dns-ns %q; want off and none", cfg.DNSAddr, cfg.EdgeIPs, cfg.DNSNameservers)
	}
	cfg, err = parseServe(t, []string{"--target-cname-base", "p.example.net", "--dns-addr", ":53",
		"--edge-ips", " 192.0.2.1 , 2001:DB8::1,::ffff:192.0.2.2"}, map[string]string{"EDGEPROXY_DNS_NS": "NS1.Example.NET.,ns2.example.org"})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := joinAddrs(cfg.EdgeIPs), "192.0.2.1,2001:db8::1,192.0.2.2"; cfg.DNSAddr != ":53" || got != want {
		t.Errorf("dns-addr %q, edge-ips %q; want :53 and %q", cfg.DNSAddr, got, want)
	}
	if got, want := joinList(cfg.DNSNameservers), "ns1.example.net,ns2.example.org"; got != want {
		t.Errorf("dns-ns from the environment = %q, want %q", got, want)
	}
	cfg, err = parseServe(t, []string{"--target-cname-base", "p.example.net", "--dns-addr", "off"}, map[string]string{"EDGEPROXY_DNS_ADDR": "127.0.0.1:5353"})
	if err != nil || cfg.DNSAddr != "" {
		t.Errorf("--dns-addr off over the environment: %q, %v; want off", cfg.DNSAddr, err)
	}
	var stdout, stderr bytes.Buffer
	run([]string{"serve", "--help"}, &stdout, &stderr, func(string) string { return "" })
	if !strings.Contains(stdout.String(), "(default off)\n  -dns-ns") {
		t.Errorf("serve --help does not show --dns-addr's default as off:\n%s", stdout.String())
	}

	base := []string{"--target-cname-base", "p.example.net"}
	zone := append(slices.Clone(base), "--dns-addr", "127.0.0.1:5353")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{append(slices.Clone(base), "--dns-addr", "dns.example.net:53"), "--dns-addr: "},
		{append(slices.Clone(base), "--dns-addr", "53"), "--dns-addr: "},
		{append(slices.Clone(zone), "--dns-ns", "ns1.example.net"), "--edge-ips: is required with --dns-addr"},
		{append(slices.Clone(zone), "--edge-ips", "192.0.2.1"), "--dns-ns: is required with --dns-addr"},
		{append(slices.Clone(zone), "--edge-ips", "192.0.2.1,nonsense", "--dns-ns", "ns1.example.net"), `--edge-ips: "nonsense" is not an IPv4 or IPv6 address`},
		{append(slices.Clone(zone), "--edge-ips", "0.0.0.0", "--dns-ns", "ns1.example.net"), "--edge-ips: 0.0.0.0 is not a unicast address"},
		{append(slices.Clone(zone), "--edge-ips", "192.0.2.1,192.0.2.1", "--dns-ns", "ns1.example.net"), "--edge-ips: 192.0.2.1 is listed twice"},
		{append(slices.Clone(zone), "--edge-ips", "192.0.2.1", "--dns-ns", "ns1"), "--dns-ns: "},
		{append(slices.Clone(zone), "--edge-ips", "192.0.2.1", "--dns-ns", "ns1.p.example.net"), "--dns-ns: \"ns1.p.example.net\" is inside the zone p.example.net"},
		{append(slices.Clone(zone), "--edge-ips", manyIPs(17), "--dns-ns", "ns1.example.net"), "--edge-ips: lists 17 addresses; at most 16"},
	} {
		var stdout, stderr bytes.Buffer
		code := run(append([]string{"serve"}, tc.args...), &stdout, &stderr, func(string) string { return "" })
		if out := stderr.String(); code != 2 || strings.Count(out, "\n") != 1 || !strings.Contains(out, tc.want) {
			t.Errorf("serve %s: exit %d, stderr %q; want exit 2 and one line containing %q", strings.Join(tc.args, " "), code, out, tc.want)
		}
	}
}

func manyIPs(n int) string {
	var ips []string
	for i := range n {
		ips = append(ips, fmt.Sprintf("192.0.2.%d", i+1))
	}
	return strings.Join(ips, ",")
}
