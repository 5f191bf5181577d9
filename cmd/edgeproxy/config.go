package main

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/idna"
)

// letsEncryptProduction is the default ACME directory.
const letsEncryptProduction = "https://acme-v02.api.letsencrypt.org/directory"

// config is everything `edgeproxy serve` is told, validated.
type config struct {
	DataDir          string
	APIAddr          string
	HTTPAddr         string
	HTTPSAddr        string
	TargetCNAMEBase  string
	Upstream         *url.URL
	AssetsUpstream   *url.URL
	ACMECA           string
	ACMECARoot       *x509.CertPool // nil: only the system's roots
	ACMECARootFile   string
	ACMEEmail        string
	CAAIdentities    []string
	DNSResolvers     []string // empty: the system's, from /etc/resolv.conf
	DNSWaitTimeout   time.Duration
	IssueTimeout     time.Duration
	RecheckMax       time.Duration
	MonitorInterval  time.Duration
	OrgOrdersPerHour int
	CertRetention    time.Duration
	MaxProxyRecords  int
	MaxBodyBytes     int64
	LogFormat        string
	AccessLogEvery   int // 0: off; 1: every request; N: one in N
	MetricsPerDomain bool
	Dev              bool
}

// flagError is a bad flag value: one line naming the flag and why.
type flagError struct {
	flag string
	why  string
}

func (e *flagError) Error() string { return fmt.Sprintf("--%s: %s", e.flag, e.why) }

// envName is the environment variable that stands in for a flag.
func envName(flagName string) string {
	return "EDGEPROXY_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses fs from args, then fills every flag not given on the
// command line from its EDGEPROXY_ variable: a flag beats the environment.
// It returns the names of the flags that came from the environment.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) (map[string]bool, error) {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, err
		}
		if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: "); ok {
			return nil, fmt.Errorf("%s: unknown flag (see --help)", name)
		}
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fromEnv := map[string]bool{}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			fromEnv[f.Name] = true
			if serr := fs.Set(f.Name, v); serr != nil {
				err = &flagError{f.Name, fmt.Sprintf("%s=%q: %v", envName(f.Name), v, serr)}
			}
		}
	})
	return fromEnv, err
}

// serveFlags declares the flags of `edgeproxy serve` on fs and returns a
// function that validates what they hold once fs is parsed.
func serveFlags(fs *flag.FlagSet) func(fromEnv map[string]bool) (*config, error) {
	dataDir := fs.String("data-dir", "./data", "directory holding edgeproxy.db, admin.sock and bootstrap-key")
	apiAddr := fs.String("api-addr", "127.0.0.1:8080", "management API, /metrics, /healthz, /readyz")
	httpAddr := fs.String("http-addr", ":80", "plain HTTP: ACME HTTP-01 answers and redirects to HTTPS")
	httpsAddr := fs.String("https-addr", ":443", "the TLS edge (and ACME TLS-ALPN-01)")
	base := fs.String("target-cname-base", "", "zone customers point their CNAME into, e.g. proxy.example.net (required outside --dev)")
	upstream := fs.String("upstream", "https://us.i.posthog.com", "where proxied requests go")
	assets := fs.String("assets-upstream", "https://us-assets.i.posthog.com", "where /static/* goes")
	acmeCA := fs.String("acme-ca", letsEncryptProduction, "ACME directory URL")
	acmeRoot := fs.String("acme-ca-root", "", "PEM file of extra roots trusted when talking to the ACME CA")
	acmeEmail := fs.String("acme-email", "", "ACME account contact")
	caa := fs.String("acme-caa-identities", "letsencrypt.org", "the CA's CAA issuer domains, comma-separated")
	resolvers := fs.String("dns-resolvers", "", "comma-separated host:port resolvers for verification (default: /etc/resolv.conf)")
	dnsWait := fs.String("dns-wait-timeout", "168h", "a record still unverified after this goes to timed_out")
	issueTimeout := fs.String("issue-timeout", "1h", "a record without a certificate this long goes to erroring")
	recheckMax := fs.String("recheck-max", "5m", "longest pause between two DNS checks of a waiting record")
	monitor := fs.String("monitor-interval", "24h", "how often a live record is re-checked")
	ordersPerHour := fs.String("org-orders-per-hour", "10", "most new certificate orders one organization's records place in a rolling hour")
	retention := fs.String("cert-retention", "168h", "how long a deleted record's certificate is kept, never served, for a re-created record of the domain")
	maxRecords := fs.String("max-proxy-records", "2", "per-organization limit unless the organization has its own")
	maxBody := fs.String("max-body-bytes", "67108864", "largest proxied request body")
	logFormat := fs.String("log-format", "text", "text or json")
	accessLog := fs.String("access-log", "off", "on, off or sample:N")
	perDomain := fs.Bool("metrics-per-domain", false, "add a capped domain label to the edge's request counters")
	dev := fs.Bool("dev", false, "local trial: proxy.localhost base, 127.0.0.1:8081 and :8443, bootstrap key printed")

	return func(fromEnv map[string]bool) (*config, error) {
		given := map[string]bool{}
		fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
		c := &config{DataDir: *dataDir, Dev: *dev, MetricsPerDomain: *perDomain, ACMEEmail: *acmeEmail}
		// Flags filled from the environment count as given: parseFlags
		// applies them with fs.Set, which Visit reports.
		c.APIAddr, c.HTTPAddr, c.HTTPSAddr, c.TargetCNAMEBase = *apiAddr, *httpAddr, *httpsAddr, *base
		if c.Dev {
			if !given["target-cname-base"] {
				c.TargetCNAMEBase = "proxy.localhost"
			}
			if !given["http-addr"] {
				c.HTTPAddr = "127.0.0.1:8081"
			}
			if !given["https-addr"] {
				c.HTTPSAddr = "127.0.0.1:8443"
			}
		}
		var err error
		check := func(name string, fn func() error) {
			if err == nil {
				if ferr := fn(); ferr != nil {
					why := ferr.Error()
					if fromEnv[name] {
						why = "from " + envName(name) + ": " + why
					}
					err = &flagError{name, why}
				}
			}
		}
		check("data-dir", func() error { return nonEmpty(c.DataDir) })
		check("api-addr", func() error { return checkAddr(c.APIAddr) })
		check("http-addr", func() error { return checkAddr(c.HTTPAddr) })
		check("https-addr", func() error { return checkAddr(c.HTTPSAddr) })
		check("target-cname-base", func() error {
			if c.TargetCNAMEBase == "" {
				return errors.New("is required (the zone whose wildcard *.<base> points at this machine); --dev uses proxy.localhost")
			}
			name, herr := checkHostname(c.TargetCNAMEBase)
			c.TargetCNAMEBase = name
			return herr
		})
		check("upstream", func() (err error) { c.Upstream, err = checkUpstream(*upstream); return })
		check("assets-upstream", func() (err error) { c.AssetsUpstream, err = checkUpstream(*assets); return })
		check("acme-ca", func() error {
			u, err := checkHTTPURL(*acmeCA)
			if err == nil {
				c.ACMECA = u.String()
			}
			return err
		})
		check("acme-ca-root", func() error {
			if *acmeRoot == "" {
				return nil
			}
			pem, err := os.ReadFile(*acmeRoot)
			if err != nil {
				return err
			}
			c.ACMECARoot, c.ACMECARootFile = x509.NewCertPool(), *acmeRoot
			if !c.ACMECARoot.AppendCertsFromPEM(pem) {
				return fmt.Errorf("%s holds no PEM certificate", *acmeRoot)
			}
			return nil
		})
		check("acme-email", func() error {
			if c.ACMEEmail != "" && !strings.Contains(c.ACMEEmail, "@") {
				return fmt.Errorf("%q is not an email address", c.ACMEEmail)
			}
			return nil
		})
		check("acme-caa-identities", func() error {
			for _, id := range splitList(*caa) {
				name, err := checkHostname(id)
				if err != nil {
					return err
				}
				c.CAAIdentities = append(c.CAAIdentities, name)
			}
			if len(c.CAAIdentities) == 0 {
				return errors.New("must name at least one issuer domain, e.g. letsencrypt.org")
			}
			return nil
		})
		check("dns-resolvers", func() error {
			for _, r := range splitList(*resolvers) {
				host, port, err := net.SplitHostPort(r)
				if err != nil || host == "" || port == "" {
					return fmt.Errorf("%q is not host:port (e.g. 1.1.1.1:53 or [::1]:53)", r)
				}
				c.DNSResolvers = append(c.DNSResolvers, r)
			}
			return nil
		})
		check("dns-wait-timeout", func() (err error) { c.DNSWaitTimeout, err = positiveDuration(*dnsWait); return })
		check("issue-timeout", func() (err error) { c.IssueTimeout, err = positiveDuration(*issueTimeout); return })
		check("recheck-max", func() (err error) { c.RecheckMax, err = positiveDuration(*recheckMax); return })
		check("monitor-interval", func() (err error) { c.MonitorInterval, err = positiveDuration(*monitor); return })
		check("org-orders-per-hour", func() error {
			n, err := strconv.Atoi(*ordersPerHour)
			if err != nil || n < 1 {
				return fmt.Errorf("%q is not a whole number of 1 or more", *ordersPerHour)
			}
			c.OrgOrdersPerHour = n
			return nil
		})
		check("cert-retention", func() (err error) { c.CertRetention, err = positiveDuration(*retention); return })
		check("max-proxy-records", func() error {
			n, err := strconv.Atoi(*maxRecords)
			if err != nil || n < 0 {
				return fmt.Errorf("%q is not a whole number of 0 or more", *maxRecords)
			}
			c.MaxProxyRecords = n
			return nil
		})
		check("max-body-bytes", func() error {
			n, err := strconv.ParseInt(*maxBody, 10, 64)
			if err != nil || n <= 0 {
				return fmt.Errorf("%q is not a positive number of bytes", *maxBody)
			}
			c.MaxBodyBytes = n
			return nil
		})
		check("log-format", func() error {
			if *logFormat != "text" && *logFormat != "json" {
				return fmt.Errorf("%q is not text or json", *logFormat)
			}
			c.LogFormat = *logFormat
			return nil
		})
		check("access-log", func() (err error) { c.AccessLogEvery, err = parseAccessLog(*accessLog); return })
		if err != nil {
			return nil, err
		}
		return c, nil
	}
}

func nonEmpty(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	return nil
}

func splitList(s string) []string {
	var out []string
	for _, part := range strings.Split(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			out = append(out, part)
		}
	}
	return out
}

func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q is not host:port (e.g. 127.0.0.1:8080 or :443)", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return fmt.Errorf("%q: host must be an IP address, localhost or empty (all interfaces)", addr)
	}
	return nil
}

// checkHostname lower-cases a DNS name, drops one trailing dot and refuses
// what is not a name of at least two labels.
func checkHostname(s string) (string, error) {
	name := strings.TrimSuffix(strings.ToLower(strings.TrimSpace(s)), ".")
	ascii, err := idna.Lookup.ToASCII(name)
	if err != nil || !strings.Contains(ascii, ".") || net.ParseIP(ascii) != nil {
		return "", fmt.Errorf("%q is not a domain name of two or more labels", s)
	}
	return ascii, nil
}

func checkHTTPURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is not an http:// or https:// URL", s)
	}
	return u, nil
}

// checkUpstream accepts an http(s) URL of a host, with no path, query or
// user info: the proxy keeps the request's own path.
func checkUpstream(s string) (*url.URL, error) {
	u, err := checkHTTPURL(s)
	if err != nil {
		return nil, err
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return nil, fmt.Errorf("%q must be a scheme and host only, such as https://us.i.posthog.com", s)
	}
	u.Path = ""
	return u, nil
}

func positiveDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration such as 90s or 168h", s)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be more than zero", s)
	}
	return d, nil
}

// parseAccessLog turns on, off or sample:N into "one line per N requests"
// (0 for off).
func parseAccessLog(s string) (int, error) {
	switch s {
	case "off":
		return 0, nil
	case "on":
		return 1, nil
	}
	if n, ok := strings.CutPrefix(s, "sample:"); ok {
		if every, err := strconv.Atoi(n); err == nil && every >= 1 {
			return every, nil
		}
	}
	return 0, fmt.Errorf("%q is not on, off or sample:N with N 1 or more", s)
}
