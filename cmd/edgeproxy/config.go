package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/idna"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/dnszone"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/proxy"
)

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
	// GCHeadroom is how far the heap may grow past the live heap before
	// a collection, when that is more than GOGC=100 allows (gctune.go);
	// 0 leaves GOGC alone. Ignored when GOGC or GOMEMLIMIT is set.
	GCHeadroom       int64
	LogFormat        string
	AccessLogEvery   int // 0: off; 1: every request; N: one in N
	MetricsPerDomain bool
	// WebhookAllowPrivate lets webhooks use http:// URLs and any address;
	// --dev implies it.
	WebhookAllowPrivate bool
	// DNSAddr is where the target zone's DNS server listens (UDP and
	// TCP); empty: no DNS server. EdgeIPs and DNSNameservers are then
	// required: the addresses it answers and its NS records.
	DNSAddr        string
	EdgeIPs        []netip.Addr
	DNSNameservers []string
	Dev            bool
	// Etcd puts the store on an etcd cluster; with no endpoints, the
	// bbolt file in DataDir.
	Etcd etcdConfig
	// NodeName names this node in logs, metrics and the leader key.
	NodeName string
}

// clustered reports whether the store is on etcd.
func (c *config) clustered() bool { return len(c.Etcd.Endpoints) > 0 }

// etcdConfig is how to reach the etcd cluster: serve's and migrate's
// --etcd-* flags.
type etcdConfig struct {
	Endpoints []string
	Prefix    string
	CAFile    string
	CA        *x509.CertPool // nil: the system's roots
	CertFile  string
	KeyFile   string
	// Cert is the client certificate of CertFile and KeyFile (finish
	// loads it); nil without them.
	Cert *tls.Certificate
}

// Defaults of the flags that belong to no package: where the server
// listens and where it proxies to. The others come from the package whose
// Config field the flag sets.
const (
	defaultDataDir         = "./data"
	defaultAPIAddr         = "127.0.0.1:8080"
	defaultHTTPAddr        = ":80"
	defaultHTTPSAddr       = ":443"
	defaultUpstream        = "https://us.i.posthog.com"
	defaultAssetsUpstream  = "https://us-assets.i.posthog.com"
	defaultMaxProxyRecords = 2
	defaultEtcdPrefix      = "/edgeproxy/"
)

// What --dev puts in place of the flags it was not given.
const (
	devTargetCNAMEBase = "proxy.localhost"
	devHTTPAddr        = "127.0.0.1:8081"
	devHTTPSAddr       = "127.0.0.1:8443"
)

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
// A value a flag refuses is reported as a *flagError naming the flag, the
// variable when it came from there, and the rule.
func parseFlags(fs *flag.FlagSet, args []string, getenv func(string) string) error {
	fs.SetOutput(io.Discard)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		if name, ok := strings.CutPrefix(err.Error(), "flag provided but not defined: "); ok {
			return fmt.Errorf("%s: unknown flag (see --help)", name)
		}
		// The flag package words a refused value as "invalid value … for
		// flag -name: rule"; the flag's own value kept the rule.
		var refused *flagError
		fs.VisitAll(func(f *flag.Flag) {
			if r, ok := f.Value.(interface{ refused() error }); ok && refused == nil {
				if rerr := r.refused(); rerr != nil {
					refused = &flagError{f.Name, rerr.Error()}
				}
			}
		})
		if refused != nil {
			return refused
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || given[f.Name] {
			return
		}
		if v := getenv(envName(f.Name)); v != "" {
			if serr := fs.Set(f.Name, v); serr != nil {
				err = &flagError{f.Name, "from " + envName(f.Name) + ": " + serr.Error()}
			}
		}
	})
	return err
}

// typedValue is a flag holding a T. parse checks the text it is set to
// and turns it into a T, or says which rule the text breaks; show writes
// a T back, for the default --help prints.
type typedValue[T any] struct {
	p     *T
	parse func(string) (T, error)
	show  func(T) string
	// err is the rule the last Set broke, for parseFlags.
	err error
}

// defineFlag declares on fs the flag name, held in *p: its default is
// what *p holds now.
func defineFlag[T any](fs *flag.FlagSet, p *T, name, usage string, parse func(string) (T, error), show func(T) string) {
	fs.Var(&typedValue[T]{p: p, parse: parse, show: show}, name, usage)
}

func (v *typedValue[T]) Set(s string) error {
	x, err := v.parse(s)
	if v.err = err; err != nil {
		return err
	}
	*v.p = x
	return nil
}

// String is nil-safe: flag.PrintDefaults calls it on a zero typedValue.
func (v *typedValue[T]) String() string {
	if v == nil || v.p == nil {
		if v.IsBoolFlag() {
			return "false"
		}
		return ""
	}
	return v.show(*v.p)
}

// IsBoolFlag lets a bool flag stand alone (--dev for --dev=true).
func (v *typedValue[T]) IsBoolFlag() bool {
	_, ok := any((*T)(nil)).(*bool)
	return ok
}

func (v *typedValue[T]) refused() error { return v.err }

// serveFlags declares the flags of `edgeproxy serve` on fs and returns
// the config they fill: each value is checked and stored as it is set,
// from the command line or the environment. Once fs is parsed, finish
// applies --dev and the rules that involve more than one flag.
func serveFlags(fs *flag.FlagSet) *config {
	c := &config{
		DataDir:          defaultDataDir,
		APIAddr:          defaultAPIAddr,
		HTTPAddr:         defaultHTTPAddr,
		HTTPSAddr:        defaultHTTPSAddr,
		Upstream:         mustUpstream(defaultUpstream),
		AssetsUpstream:   mustUpstream(defaultAssetsUpstream),
		ACMECA:           certs.DefaultCA,
		CAAIdentities:    []string{certs.DefaultCAAIdentity},
		DNSWaitTimeout:   lifecycle.DefaultDNSWaitTimeout,
		IssueTimeout:     lifecycle.DefaultIssueTimeout,
		RecheckMax:       lifecycle.DefaultRecheckMax,
		MonitorInterval:  lifecycle.DefaultMonitorInterval,
		OrgOrdersPerHour: lifecycle.DefaultOrgOrdersPerHour,
		CertRetention:    lifecycle.DefaultCertRetention,
		MaxProxyRecords:  defaultMaxProxyRecords,
		MaxBodyBytes:     proxy.DefaultMaxBodyBytes,
		GCHeadroom:       defaultGCHeadroom,
		LogFormat:        "text",
		Etcd:             etcdConfig{Prefix: defaultEtcdPrefix},
	}
	// A host name that cannot be read leaves the flag empty; finish
	// requires it then, in cluster mode only.
	c.NodeName, _ = os.Hostname()
	str := func(p *string, name, usage string, parse func(string) (string, error)) {
		defineFlag(fs, p, name, usage, parse, func(s string) string { return s })
	}
	duration := func(p *time.Duration, name, usage string) {
		defineFlag(fs, p, name, usage, positiveDuration, showDuration)
	}
	boolean := func(p *bool, name, usage string) {
		defineFlag(fs, p, name, usage, parseBool, strconv.FormatBool)
	}
	upstream := func(p **url.URL, name, usage string) {
		defineFlag(fs, p, name, usage, checkUpstream, (*url.URL).String)
	}

	str(&c.DataDir, "data-dir", "`directory` holding edgeproxy.db, admin.sock and bootstrap-key", nonEmpty)
	str(&c.APIAddr, "api-addr", "`host:port` of the management API, /metrics, /healthz, /readyz", checkAddr)
	str(&c.HTTPAddr, "http-addr", "`host:port` of plain HTTP: ACME HTTP-01 answers and redirects to HTTPS", checkAddr)
	str(&c.HTTPSAddr, "https-addr", "`host:port` of the TLS edge (and ACME TLS-ALPN-01)", checkAddr)
	str(&c.TargetCNAMEBase, "target-cname-base", "`zone` customers point their CNAME into, e.g. proxy.example.net (required outside --dev)", checkHostname)
	upstream(&c.Upstream, "upstream", "`URL` where proxied requests go")
	upstream(&c.AssetsUpstream, "assets-upstream", "`URL` where /static/* goes")
	str(&c.ACMECA, "acme-ca", "ACME directory `URL`", checkACMECA)
	str(&c.ACMECARootFile, "acme-ca-root", "PEM `file` of extra roots trusted when talking to the ACME CA", func(file string) (string, error) {
		pool, err := readRoots(file)
		if err != nil {
			return "", err
		}
		c.ACMECARoot = pool
		return file, nil
	})
	str(&c.ACMEEmail, "acme-email", "ACME account contact (an `email` address)", checkEmail)
	defineFlag(fs, &c.CAAIdentities, "acme-caa-identities", "the CA's CAA issuer `domains`, comma-separated", parseCAAIdentities, joinList)
	defineFlag(fs, &c.DNSResolvers, "dns-resolvers", "comma-separated `host:port` resolvers for verification (default: /etc/resolv.conf)", parseResolvers, joinList)
	duration(&c.DNSWaitTimeout, "dns-wait-timeout", "a record still unverified after this `duration` goes to timed_out")
	duration(&c.IssueTimeout, "issue-timeout", "a record without a certificate this long (a `duration`) goes to erroring")
	duration(&c.RecheckMax, "recheck-max", "longest pause (a `duration`) between two DNS checks of a waiting record")
	duration(&c.MonitorInterval, "monitor-interval", "how often (a `duration`) a live record is re-checked")
	defineFlag(fs, &c.OrgOrdersPerHour, "org-orders-per-hour", "most new certificate `orders` one organization's records place in a rolling hour", wholeNumber(1), strconv.Itoa)
	duration(&c.CertRetention, "cert-retention", "how long (a `duration`) a deleted record's certificate is kept, never served, for a re-created record of the domain")
	defineFlag(fs, &c.MaxProxyRecords, "max-proxy-records", "per-organization limit (a `number` of records) unless the organization has its own", wholeNumber(0), strconv.Itoa)
	defineFlag(fs, &c.MaxBodyBytes, "max-body-bytes", "largest proxied request body, in `bytes`", positiveBytes, func(n int64) string { return strconv.FormatInt(n, 10) })
	defineFlag(fs, &c.GCHeadroom, "gc-headroom", "`bytes` the heap may grow past the live heap before the garbage collector runs, when more than GOGC=100 allows, e.g. 33554432: less GC CPU per request for that much more memory; 0: the Go runtime's own pacing (always when GOGC or GOMEMLIMIT is set)", nonNegativeBytes, func(n int64) string { return strconv.FormatInt(n, 10) })
	str(&c.LogFormat, "log-format", "`format` of the log: text or json", checkLogFormat)
	defineFlag(fs, &c.AccessLogEvery, "access-log", "access `log`: on, off or sample:N", parseAccessLog, showAccessLog)
	boolean(&c.MetricsPerDomain, "metrics-per-domain", "add a capped domain label to the edge's request counters")
	defineFlag(fs, &c.DNSAddr, "dns-addr", "`host:port` (UDP and TCP) of the authoritative DNS server of --target-cname-base, or off", parseDNSAddr, showDNSAddr)
	defineFlag(fs, &c.EdgeIPs, "edge-ips", "comma-separated IPv4/IPv6 `addresses` the zone answers for every record's target_cname (required with --dns-addr)", parseEdgeIPs, joinAddrs)
	defineFlag(fs, &c.DNSNameservers, "dns-ns", "comma-separated host `names` of the zone's nameservers, the nodes' names, outside the zone (required with --dns-addr)", parseNameservers, joinList)
	boolean(&c.WebhookAllowPrivate, "webhook-allow-private", "accept webhook URLs that are http:// or resolve to loopback or private addresses (tests, local trials; --dev implies it)")
	boolean(&c.Dev, "dev", "local trial: proxy.localhost base, 127.0.0.1:8081 and :8443, bootstrap key printed")
	etcdFlags(fs, &c.Etcd, "comma-separated `host:port` list of etcd members: the store goes on that cluster, shared with the other nodes, instead of the bbolt file (empty: the bbolt file)")
	str(&c.NodeName, "node-name", "`name` of this node in logs, metrics and the leader key (with --etcd-endpoints)", checkNodeName)
	return c
}

// etcdFlags declares the flags of c on fs: serve's and migrate's, which
// say what the endpoints are for.
func etcdFlags(fs *flag.FlagSet, c *etcdConfig, endpointsUsage string) {
	str := func(p *string, name, usage string, parse func(string) (string, error)) {
		defineFlag(fs, p, name, usage, parse, func(s string) string { return s })
	}
	defineFlag(fs, &c.Endpoints, "etcd-endpoints", endpointsUsage, parseEtcdEndpoints, joinList)
	str(&c.Prefix, "etcd-prefix", "etcd key `prefix` of this deployment; starts and ends with /", checkEtcdPrefix)
	str(&c.CAFile, "etcd-ca", "PEM `file` of the roots that sign etcd's server certificates (TLS to etcd)", func(file string) (string, error) {
		pool, err := readRoots(file)
		if err != nil {
			return "", err
		}
		c.CA = pool
		return file, nil
	})
	str(&c.CertFile, "etcd-cert", "PEM `file` of the client certificate presented to etcd (with --etcd-key)", readableFile)
	str(&c.KeyFile, "etcd-key", "PEM `file` of the client certificate's private key (with --etcd-cert)", readableFile)
}

// finish checks what no single --etcd-* flag can: TLS settings only with
// endpoints, a certificate and its key together and matching.
func (c *etcdConfig) finish() error {
	if len(c.Endpoints) == 0 {
		for _, f := range []struct{ name, file string }{{"etcd-ca", c.CAFile}, {"etcd-cert", c.CertFile}, {"etcd-key", c.KeyFile}} {
			if f.file != "" {
				return &flagError{f.name, "needs --etcd-endpoints (TLS settings for an etcd cluster that is not configured)"}
			}
		}
		return nil
	}
	switch {
	case c.CertFile != "" && c.KeyFile == "":
		return &flagError{"etcd-cert", "needs --etcd-key (a client certificate and its key go together)"}
	case c.KeyFile != "" && c.CertFile == "":
		return &flagError{"etcd-key", "needs --etcd-cert (a client certificate and its key go together)"}
	case c.CertFile != "":
		cert, err := tls.LoadX509KeyPair(c.CertFile, c.KeyFile)
		if err != nil {
			return &flagError{"etcd-cert", fmt.Sprintf("%s with key %s: %v", c.CertFile, c.KeyFile, err)}
		}
		c.Cert = &cert
	}
	return nil
}

// finish applies --dev to the flags it was not given and checks what no
// single flag's value can: that a target CNAME base is known. fs is the
// parsed set serveFlags declared c on.
func (c *config) finish(fs *flag.FlagSet) error {
	// Flags filled from the environment count as given: parseFlags
	// applies them with fs.Set, which Visit reports.
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if c.Dev {
		c.WebhookAllowPrivate = true
		if !given["target-cname-base"] {
			c.TargetCNAMEBase = devTargetCNAMEBase
		}
		if !given["http-addr"] {
			c.HTTPAddr = devHTTPAddr
		}
		if !given["https-addr"] {
			c.HTTPSAddr = devHTTPSAddr
		}
	}
	if c.TargetCNAMEBase == "" {
		return &flagError{"target-cname-base", "is required (the zone whose wildcard *.<base> points at this machine); --dev uses " + devTargetCNAMEBase}
	}
	if c.DNSAddr != "" {
		if len(c.EdgeIPs) == 0 {
			return &flagError{"edge-ips", "is required with --dns-addr: the addresses the zone answers for every record's target_cname"}
		}
		if len(c.DNSNameservers) == 0 {
			return &flagError{"dns-ns", "is required with --dns-addr: the host names of the zone's nameservers (its NS records)"}
		}
		for _, ns := range c.DNSNameservers {
			if _, err := dnszone.CheckNameserver(c.TargetCNAMEBase, ns); err != nil {
				return &flagError{"dns-ns", err.Error()}
			}
		}
	}
	if err := c.Etcd.finish(); err != nil {
		return err
	}
	if c.clustered() && c.NodeName == "" {
		return &flagError{"node-name", "is required with --etcd-endpoints (the host name could not be read)"}
	}
	return nil
}

// parseDNSAddr takes off (or nothing) for no DNS server, else host:port.
func parseDNSAddr(s string) (string, error) {
	if s == "" || s == "off" {
		return "", nil
	}
	return checkAddr(s)
}

func showDNSAddr(addr string) string {
	if addr == "" {
		return "off"
	}
	return addr
}

func parseEdgeIPs(s string) ([]netip.Addr, error) {
	var out []netip.Addr
	for _, part := range splitList(s) {
		ip, err := netip.ParseAddr(part)
		if err != nil || ip.Zone() != "" {
			return nil, fmt.Errorf("%q is not an IPv4 or IPv6 address", part)
		}
		if err := dnszone.CheckEdgeIP(ip); err != nil {
			return nil, err
		}
		if slices.Contains(out, ip.Unmap()) {
			return nil, fmt.Errorf("%s is listed twice", ip)
		}
		out = append(out, ip.Unmap())
	}
	if len(out) > dnszone.MaxEdgeIPs {
		return nil, fmt.Errorf("lists %d addresses; at most %d", len(out), dnszone.MaxEdgeIPs)
	}
	return out, nil
}

func joinAddrs(addrs []netip.Addr) string {
	parts := make([]string, len(addrs))
	for i, a := range addrs {
		parts[i] = a.String()
	}
	return joinList(parts)
}

func parseNameservers(s string) ([]string, error) {
	var out []string
	for _, part := range splitList(s) {
		name, err := checkHostname(part)
		if err != nil {
			return nil, err
		}
		if slices.Contains(out, name) {
			return nil, fmt.Errorf("%s is listed twice", name)
		}
		out = append(out, name)
	}
	if len(out) > dnszone.MaxNameservers {
		return nil, fmt.Errorf("lists %d names; at most %d", len(out), dnszone.MaxNameservers)
	}
	return out, nil
}

func nonEmpty(s string) (string, error) {
	if s == "" {
		return "", errors.New("must not be empty")
	}
	return s, nil
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

func joinList(list []string) string { return strings.Join(list, ",") }

func checkAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%q is not host:port (e.g. 127.0.0.1:8080 or :443)", addr)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
		return "", fmt.Errorf("%q: port %q is not a number from 0 to 65535", addr, port)
	}
	if host != "" && net.ParseIP(host) == nil && host != "localhost" {
		return "", fmt.Errorf("%q: host must be an IP address, localhost or empty (all interfaces)", addr)
	}
	return addr, nil
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

func checkACMECA(s string) (string, error) {
	u, err := checkHTTPURL(s)
	if err != nil {
		return "", err
	}
	return u.String(), nil
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

// mustUpstream is checkUpstream for the built-in defaults.
func mustUpstream(s string) *url.URL {
	u, err := checkUpstream(s)
	if err != nil {
		panic(err)
	}
	return u
}

// readRoots reads a PEM file of CA certificates; an empty name means
// none (nil: the system's roots only).
func readRoots(file string) (*x509.CertPool, error) {
	if file == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", file)
	}
	return pool, nil
}

// parseEtcdEndpoints accepts host:port, or an http:// or https:// URL of
// one, for each comma-separated member.
func parseEtcdEndpoints(s string) ([]string, error) {
	var out []string
	for _, ep := range splitList(s) {
		hostport := ep
		if scheme, rest, ok := strings.Cut(ep, "://"); ok {
			if scheme != "http" && scheme != "https" {
				return nil, fmt.Errorf("%q: the scheme must be http or https, or none (host:port)", ep)
			}
			hostport = strings.TrimSuffix(rest, "/")
		}
		host, port, err := net.SplitHostPort(hostport)
		if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
			return nil, fmt.Errorf("%q is not host:port (e.g. 10.0.0.1:2379)", ep)
		}
		out = append(out, ep)
	}
	return out, nil
}

func checkEtcdPrefix(s string) (string, error) {
	if !strings.HasPrefix(s, "/") || !strings.HasSuffix(s, "/") {
		return "", fmt.Errorf("%q must start and end with / (e.g. %s)", s, defaultEtcdPrefix)
	}
	return s, nil
}

// readableFile checks that file can be read now (empty: none).
func readableFile(file string) (string, error) {
	if file == "" {
		return "", nil
	}
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	f.Close()
	return file, nil
}

// checkNodeName accepts 1 to 253 letters, digits, '.', '-' and '_': a
// host name, or any name that reads well in a log line and a label.
func checkNodeName(s string) (string, error) {
	if s == "" || len(s) > 253 || strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' || r == '_')
	}) >= 0 {
		return "", fmt.Errorf("%q is not 1 to 253 letters, digits, '.', '-' or '_'", s)
	}
	return s, nil
}

func checkEmail(s string) (string, error) {
	if s != "" && !strings.Contains(s, "@") {
		return "", fmt.Errorf("%q is not an email address", s)
	}
	return s, nil
}

func parseCAAIdentities(s string) ([]string, error) {
	var ids []string
	for _, id := range splitList(s) {
		name, err := checkHostname(id)
		if err != nil {
			return nil, err
		}
		ids = append(ids, name)
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("must name at least one issuer domain, e.g. %s", certs.DefaultCAAIdentity)
	}
	return ids, nil
}

func parseResolvers(s string) ([]string, error) {
	var out []string
	for _, r := range splitList(s) {
		host, port, err := net.SplitHostPort(r)
		if err != nil || host == "" || port == "" {
			return nil, fmt.Errorf("%q is not host:port (e.g. 1.1.1.1:53 or [::1]:53)", r)
		}
		out = append(out, r)
	}
	return out, nil
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

// showDuration writes d as the flags are documented: 168h, 5m, 1h30m
// rather than time.Duration's 168h0m0s.
func showDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// wholeNumber parses a whole number of min or more.
func wholeNumber(min int) func(string) (int, error) {
	return func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil || n < min {
			return 0, fmt.Errorf("%q is not a whole number of %d or more", s, min)
		}
		return n, nil
	}
}

func positiveBytes(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("%q is not a positive number of bytes", s)
	}
	return n, nil
}

func nonNegativeBytes(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("%q is not a number of bytes (0 or more)", s)
	}
	return n, nil
}

func parseBool(s string) (bool, error) {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("%q is not true or false", s)
	}
	return b, nil
}

func checkLogFormat(s string) (string, error) {
	if s != "text" && s != "json" {
		return "", fmt.Errorf("%q is not text or json", s)
	}
	return s, nil
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

// showAccessLog is parseAccessLog backwards.
func showAccessLog(every int) string {
	switch every {
	case 0:
		return "off"
	case 1:
		return "on"
	}
	return "sample:" + strconv.Itoa(every)
}
