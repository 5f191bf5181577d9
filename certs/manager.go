package certs

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/edgeproxy/edgeproxy/store"
	"github.com/prometheus/client_golang/prometheus"
)

// DefaultCA is Let's Encrypt's production ACME directory, and
// DefaultCAAIdentity the issuer domain its CAA records must name: the CAA
// pre-flight checks a domain's CAA records against it unless told the
// identities of another CA.
const (
	DefaultCA          = certmagic.LetsEncryptProductionCA
	DefaultCAAIdentity = "letsencrypt.org"
)

// Config configures New. The zero value works (Let's Encrypt production,
// system roots, no contact, ports 80 and 443, no logging).
type Config struct {
	// CA is the ACME directory URL. If empty, DefaultCA.
	CA string
	// CARoots are the roots trusted when talking to the CA. If nil, the
	// system's roots.
	CARoots *x509.CertPool
	// Email is the ACME account's contact. If empty, the account has none.
	Email string
	// HTTPPort and TLSPort are the ports of the edge's plain HTTP and TLS
	// listeners, which answer the HTTP-01 and TLS-ALPN-01 challenges. They
	// are given to certmagic so that its solvers find the ports taken and
	// do not open listeners of their own. If zero, 80 and 443.
	HTTPPort, TLSPort int
	// Logger receives certmagic's warnings and errors and the manager's
	// own logs. If nil, nothing is logged.
	Logger *slog.Logger
	// Registerer gets the manager's metrics. If nil, they are kept but not
	// registered.
	Registerer prometheus.Registerer
	// Zone, when set, is the provider of the target zone edgeproxy serves
	// itself (--dns-addr): the domains given a DCV delegation
	// (SetDCVDelegation) then get and renew their certificates with ACME
	// DNS-01, the challenge TXT written there. If nil, every certificate
	// is validated with HTTP-01 or TLS-ALPN-01.
	Zone *ZoneDNSProvider
}

// Manager obtains, renews, stores and serves certificates. It is safe for
// concurrent use. Call Close when done.
type Manager struct {
	storage *Storage
	cache   *certmagic.Cache
	magic   *certmagic.Config
	acme    *certmagic.ACMEIssuer
	log     *slog.Logger

	// zone and dnsMagic obtain and renew the certificates of the domains
	// with a DCV delegation, with DNS-01 (dns01.go); nil without
	// Config.Zone.
	zone     *ZoneDNSProvider
	dnsMagic *certmagic.Config
	// routesMu serializes the writers of routes, the delegation target of
	// each domain validated with DNS-01; readers load it without a lock.
	routesMu sync.Mutex
	routes   atomic.Pointer[map[string]string]

	// servedMu serializes the writers of served; readers load it without
	// a lock.
	servedMu sync.Mutex
	served   atomic.Pointer[map[string]struct{}]

	stats         counters
	metrics       *metrics
	lastRefusalAt atomic.Int64 // Unix nanoseconds of the last refusal logged

	closeOnce sync.Once
	closeErr  error
}

// Stats counts what the manager has done since New.
type Stats struct {
	// HandshakesServed got a certificate; HandshakesRefused were for a
	// name not served (or a TLS-ALPN-01 hello with no challenge pending);
	// HandshakesChallenge got a TLS-ALPN-01 challenge certificate;
	// HandshakesMissing were for a served name with no certificate in the
	// cache.
	HandshakesServed, HandshakesRefused, HandshakesChallenge, HandshakesMissing uint64
	// Renewals and RenewalFailures count renewals: certmagic's background
	// ones, and Obtain's of an expired certificate.
	Renewals, RenewalFailures uint64
}

type counters struct {
	served, refused, challenge, missing, renewals, renewalFailures atomic.Uint64
}

// New returns a Manager keeping its certificates in st. It starts
// certmagic's maintenance goroutine (renewals), which Close stops.
func New(st *store.Store, cfg Config) (*Manager, error) {
	if st == nil {
		return nil, errors.New("certs: nil store")
	}
	if cfg.CA == "" {
		cfg.CA = DefaultCA
	}
	if u, err := url.Parse(cfg.CA); err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("certs: ACME directory %q: not an https URL", cfg.CA)
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	zl := newZapLogger(log)

	if z := cfg.Zone; z != nil && (z.Store == nil || normalizeName(z.Zone) == "") {
		return nil, errors.New("certs: the zone's DNS provider needs a store and a zone")
	}

	m := &Manager{log: log, zone: cfg.Zone}
	m.metrics = newMetrics(m, cfg.Registerer)
	m.served.Store(&map[string]struct{}{})
	m.routes.Store(&map[string]string{})
	m.storage = NewStorage(st, StorageOptions{Logger: log})
	m.cache = certmagic.NewCache(certmagic.CacheOptions{
		GetConfigForCert: func(c certmagic.Certificate) (*certmagic.Config, error) {
			if len(c.Names) == 0 {
				return m.magic, nil
			}
			return m.configFor(c.Names[0]), nil
		},
		Logger: zl,
	})
	base := certmagic.Config{
		Storage: m.storage,
		Logger:  zl,
		// Let's Encrypt stopped running OCSP in 2025, and stapling costs a
		// PEM parse and a storage read per certificate at every start.
		OCSP:           certmagic.OCSPConfig{DisableStapling: true},
		OnEvent:        m.onEvent,
		ShouldEmitFunc: func(event string) bool { return event == "cert_obtained" || event == "cert_failed" },
	}
	m.magic = certmagic.New(m.cache, base)
	m.acme = certmagic.NewACMEIssuer(m.magic, certmagic.ACMEIssuer{
		CA:             cfg.CA,
		TestCA:         cfg.CA,
		Email:          cfg.Email,
		Agreed:         true,
		TrustedRoots:   cfg.CARoots,
		AltHTTPPort:    cfg.HTTPPort,
		AltTLSALPNPort: cfg.TLSPort,
		Logger:         zl,
	})
	var issuer certmagic.Issuer = m.acme
	if cfg.Email == "" {
		// With no email anywhere, certmagic's interactive pre-check (used
		// by ObtainCertSync) would prompt on stdin for one.
		issuer = quietIssuer{m.acme}
	}
	m.magic.Issuers = []certmagic.Issuer{issuer}
	if m.zone != nil {
		m.newDNSConfig(cfg, base)
	}
	return m, nil
}

// quietIssuer is the ACME issuer used when no email is configured. Its
// pre-check skips certmagic's email discovery entirely: that discovery
// would prompt on stdin, and, once an account without email is in
// storage, it "discovers" the email "default" from the account's folder
// name and registers a new account with the contact mailto:default, which
// CAs refuse. Every order after the first would fail. Without the
// discovery the issuer keeps the empty email and reuses the stored
// account. It loses one thing: certmagic tells the CA which certificate a
// renewal replaces (ARI) only for a plain *ACMEIssuer.
type quietIssuer struct{ *certmagic.ACMEIssuer }

func (q quietIssuer) PreCheck(context.Context, []string, bool) error {
	// Names reach here already validated by the control plane's domain
	// rules, which are stricter than certmagic's public-CA checks.
	return nil
}

// Close stops certmagic's maintenance and releases the storage locks this
// manager holds. Cancel the contexts of running calls first. Closing twice
// is harmless.
func (m *Manager) Close() error {
	m.closeOnce.Do(func() {
		m.cache.Stop()
		m.closeErr = m.storage.Close()
	})
	return m.closeErr
}

// Obtain makes sure a certificate for domain is cached and managed
// (renewed by certmagic) and returns its expiry. A certificate already in
// storage is loaded without ACME traffic (one that has expired is renewed
// first); otherwise one is obtained from the CA now: one attempt, bounded
// by ctx. Use IsPermanent and Reason on the error.
func (m *Manager) Obtain(ctx context.Context, domain string) (notAfter time.Time, err error) {
	name := normalizeName(domain)
	if name == "" {
		return time.Time{}, errors.New("certs: obtaining certificate: empty domain")
	}
	cert, err := m.cacheStored(ctx, name)
	magic := m.configFor(name)
	switch {
	case err == nil && !cert.Expired():
		return cert.Leaf.NotAfter, nil
	case err == nil:
		err := magic.RenewCertSync(ctx, name, false)
		m.metrics.record("renewal", err)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: renewing expired certificate: %w", name, err)
		}
	case errors.Is(err, fs.ErrNotExist):
		err := magic.ObtainCertSync(ctx, name)
		m.metrics.record("obtain", err)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: obtaining certificate: %w", name, err)
		}
	default:
		return time.Time{}, err
	}
	cert, err = m.cacheStored(ctx, name)
	if err != nil {
		return time.Time{}, err
	}
	return cert.Leaf.NotAfter, nil
}

// Load caches the stored certificate for domain as managed and returns its
// expiry, and reads from storage how the certificate is validated (its DCV
// delegation, see SetDCVDelegation), for its renewals. It never talks to
// the CA; a domain with no certificate in storage is an error wrapping
// fs.ErrNotExist.
func (m *Manager) Load(ctx context.Context, domain string) (notAfter time.Time, err error) {
	name := normalizeName(domain)
	m.loadRoute(ctx, name)
	cert, err := m.cacheStored(ctx, name)
	if err != nil {
		return time.Time{}, err
	}
	return cert.Leaf.NotAfter, nil
}

// cacheStored caches the certificate stored for name and evicts any other
// certificate cached for exactly that name (one replaced in storage).
func (m *Manager) cacheStored(ctx context.Context, name string) (certmagic.Certificate, error) {
	cert, err := m.magic.CacheManagedCertificate(ctx, name)
	if err != nil {
		return cert, fmt.Errorf("%s: loading certificate: %w", name, err)
	}
	var stale []string
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if c.Hash() != cert.Hash() && slices.Contains(c.Names, name) {
			stale = append(stale, c.Hash())
		}
	}
	m.cache.Remove(stale)
	return cert, nil
}

// Release takes domain off the allowlist and its certificate out of the
// cache, so it is neither served nor renewed, and leaves it in storage,
// where Load and Obtain find it again (a deleted record's certificate,
// kept for the retention). Its DCV delegation, which belonged to the
// record, is forgotten. It waits for an obtain or renewal of the
// domain in progress to finish first. Releasing a domain that has nothing
// is not an error.
func (m *Manager) Release(ctx context.Context, domain string) error {
	name := normalizeName(domain)
	if name == "" {
		return errors.New("certs: releasing certificate: empty domain")
	}
	m.Serve(name, false)
	lock := "issue_cert_" + name // certmagic's lock for obtaining and renewing name
	if err := m.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("%s: releasing certificate: %w", name, err)
	}
	defer func() {
		if err := m.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			m.log.Warn("releasing certificate lock", "domain", name, "err", err)
		}
	}()
	m.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: name}})
	if err := m.forgetRoute(ctx, name); err != nil {
		return fmt.Errorf("%s: releasing certificate: forgetting its DCV delegation: %w", name, err)
	}
	return nil
}

// Drop removes domain's certificate from the cache and deletes every
// storage key of it (certificate, key and metadata of every issuer, OCSP
// staples, DCV delegation). It waits for an obtain or renewal of the domain in progress to
// finish first. Dropping a domain that has nothing is not an error.
func (m *Manager) Drop(ctx context.Context, domain string) error {
	name := normalizeName(domain)
	if name == "" {
		return errors.New("certs: dropping certificate: empty domain")
	}
	lock := "issue_cert_" + name // certmagic's lock for obtaining and renewing name
	if err := m.storage.Lock(ctx, lock); err != nil {
		return fmt.Errorf("%s: dropping certificate: %w", name, err)
	}
	defer func() {
		if err := m.storage.Unlock(context.WithoutCancel(ctx), lock); err != nil {
			m.log.Warn("releasing certificate lock", "domain", name, "err", err)
		}
	}()
	m.cache.RemoveManaged([]certmagic.SubjectIssuer{{Subject: name}})
	if err := m.forgetRoute(ctx, name); err != nil {
		return fmt.Errorf("%s: dropping certificate: forgetting its DCV delegation: %w", name, err)
	}

	safe := certmagic.StorageKeys.Safe(name)
	issuers, err := m.storage.List(ctx, "certificates", false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: dropping certificate: %w", name, err)
	}
	for _, dir := range issuers {
		if err := m.storage.Delete(ctx, path.Join(dir, safe)); err != nil {
			return fmt.Errorf("%s: dropping certificate: %w", name, err)
		}
	}
	staples, err := m.storage.List(ctx, "ocsp", false)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: dropping OCSP staples: %w", name, err)
	}
	for _, key := range staples {
		// A staple is named <safe name>-<hash>; the hash has no dot, so
		// "e.example.com-x.org-<hash>" is not e.example.com's.
		rest, ok := strings.CutPrefix(path.Base(key), safe+"-")
		if !ok || strings.Contains(rest, ".") {
			continue
		}
		if err := m.storage.Delete(ctx, key); err != nil {
			return fmt.Errorf("%s: dropping OCSP staples: %w", name, err)
		}
	}
	return nil
}

// Info returns the expiry of the newest certificate cached for domain.
func (m *Manager) Info(domain string) (notAfter time.Time, ok bool) {
	name := normalizeName(domain)
	for _, c := range m.cache.AllMatchingCertificates(name) {
		if c.Leaf != nil && c.Leaf.NotAfter.After(notAfter) {
			notAfter, ok = c.Leaf.NotAfter, true
		}
	}
	return notAfter, ok
}

// StoredDomains lists, sorted, the domains that have a certificate in
// storage under any issuer. (A domain is listed by its storage name, which
// for a lower-case ASCII domain is the domain itself.)
func (m *Manager) StoredDomains(ctx context.Context) ([]string, error) {
	keys, err := m.storage.List(ctx, "certificates", true)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("certs: listing stored certificates: %w", err)
	}
	var domains []string
	for _, k := range keys {
		// certificates/<issuer>/<domain>/<domain>.crt
		parts := strings.Split(k, "/")
		if len(parts) == 4 && parts[3] == parts[2]+".crt" {
			domains = append(domains, parts[2])
		}
	}
	slices.Sort(domains)
	return slices.Compact(domains), nil
}

// Stats returns the manager's counters.
func (m *Manager) Stats() Stats {
	return Stats{
		HandshakesServed:    m.stats.served.Load(),
		HandshakesRefused:   m.stats.refused.Load(),
		HandshakesChallenge: m.stats.challenge.Load(),
		HandshakesMissing:   m.stats.missing.Load(),
		Renewals:            m.stats.renewals.Load(),
		RenewalFailures:     m.stats.renewalFailures.Load(),
	}
}

// onEvent logs and counts renewals, which mostly happen in the background
// where no caller sees them; first obtains are Obtain's callers' to report.
func (m *Manager) onEvent(_ context.Context, event string, data map[string]any) error {
	if renewal, _ := data["renewal"].(bool); !renewal {
		return nil
	}
	domain, _ := data["identifier"].(string)
	switch event {
	case "cert_obtained":
		m.stats.renewals.Add(1)
		m.metrics.record("renewal", nil)
		m.log.Info("certificate renewed", "domain", domain)
	case "cert_failed":
		m.stats.renewalFailures.Add(1)
		err, _ := data["error"].(error)
		if err == nil {
			err = errors.New("renewal failed")
		}
		m.metrics.record("renewal", err)
		m.log.Warn("certificate renewal failed", "domain", domain, "err", data["error"])
	}
	return nil
}

// normalizeName lower-cases name and drops surrounding space and one
// trailing dot.
func normalizeName(name string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(name), "."))
}
