package certs

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"strings"
	"sync"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
	"github.com/mholt/acmez/v3/acme"
)

// routeKeyPrefix starts the storage keys of the DCV delegations: one key
// per domain whose certificate is obtained and renewed with DNS-01,
// holding its delegation target. They are in the certificates' storage,
// so that every node, and this one after a restart, renews a domain the
// way it was last seen to be validated.
const routeKeyPrefix = "edgeproxy/dcv_delegations/"

func routeKey(domain string) string {
	return routeKeyPrefix + certmagic.StorageKeys.Safe(domain)
}

// newDNSConfig sets up the second certmagic configuration, used only for
// the domains with a DCV delegation: the same cache and storage as the
// first, and one ACME issuer (same CA, roots and account) whose only
// solver is the zone's DNS-01 solver. Its issuer key is the first
// issuer's (it is made from the CA's URL), so a certificate it obtains
// is stored where the first finds it, and the reverse.
func (m *Manager) newDNSConfig(cfg Config, base certmagic.Config) {
	m.dnsMagic = certmagic.New(m.cache, base)
	acme := certmagic.NewACMEIssuer(m.dnsMagic, certmagic.ACMEIssuer{
		CA:           cfg.CA,
		TestCA:       cfg.CA,
		Email:        cfg.Email,
		Agreed:       true,
		TrustedRoots: cfg.CARoots,
		DNS01Solver:  &zoneSolver{provider: m.zone, target: m.delegation},
		Logger:       base.Logger,
	})
	var issuer certmagic.Issuer = acme
	if cfg.Email == "" {
		issuer = quietIssuer{acme}
	}
	m.dnsMagic.Issuers = []certmagic.Issuer{issuer}
}

// configFor is the certmagic configuration that obtains and renews
// name's certificate: the DNS-01 one for a domain with a DCV delegation,
// else the HTTP-01/TLS-ALPN-01 one. certmagic's maintenance asks it for
// every certificate it renews, at each of its passes: it reads memory
// only.
func (m *Manager) configFor(name string) *certmagic.Config {
	if m.dnsMagic != nil {
		if _, ok := m.delegation(name); ok {
			return m.dnsMagic
		}
	}
	return m.magic
}

// delegation returns the DCV delegation target of domain, if it has one.
func (m *Manager) delegation(domain string) (string, bool) {
	target, ok := (*m.routes.Load())[normalizeName(domain)]
	return target, ok
}

// setRouteMemory records domain's delegation target (none when target is
// empty) in memory.
func (m *Manager) setRouteMemory(name, target string) {
	m.routesMu.Lock()
	defer m.routesMu.Unlock()
	old := *m.routes.Load()
	if cur, ok := old[name]; ok == (target != "") && cur == target {
		return
	}
	next := maps.Clone(old)
	if target == "" {
		delete(next, name)
	} else {
		next[name] = target
	}
	m.routes.Store(&next)
}

// SetDCVDelegation says how the domain's certificate is validated from
// now on, for its first order and for its renewals: with a non-empty
// target, ACME DNS-01 through the zone (Config.Zone), the challenge TXT
// being written at target, the name the domain's _acme-challenge CNAME
// points at (the record's dcv_delegation value); with an empty target,
// HTTP-01 and TLS-ALPN-01 on the edge's listeners. The choice is kept in
// storage, where Load finds it again after a restart or on another node.
// Setting what is already set writes nothing.
func (m *Manager) SetDCVDelegation(ctx context.Context, domain, target string) error {
	name, target := normalizeName(domain), normalizeName(target)
	if name == "" {
		return errors.New("certs: setting DCV delegation: empty domain")
	}
	if target != "" {
		if m.zone == nil {
			return fmt.Errorf("%s: setting DCV delegation: DNS-01 through the zone is not configured", name)
		}
		if zone := normalizeName(m.zone.Zone); !strings.HasSuffix(target, "."+zone) {
			return fmt.Errorf("%s: setting DCV delegation: target %s is not a name under the zone %s", name, target, zone)
		}
	}
	if cur, ok := m.delegation(name); ok == (target != "") && cur == target {
		return nil
	}
	stored, err := m.storedRoute(ctx, name)
	if err != nil {
		return fmt.Errorf("%s: setting DCV delegation: %w", name, err)
	}
	if stored != target {
		if target == "" {
			err = m.storage.Delete(ctx, routeKey(name))
		} else {
			err = m.storage.Store(ctx, routeKey(name), []byte(target))
		}
		if err != nil {
			return fmt.Errorf("%s: setting DCV delegation: %w", name, err)
		}
	}
	m.setRouteMemory(name, target)
	return nil
}

// DCVDelegation returns the domain's delegation target, and whether its
// certificate is validated with DNS-01 through the zone, as this process
// knows them (SetDCVDelegation, or storage as Load or Obtain read it).
func (m *Manager) DCVDelegation(domain string) (target string, ok bool) {
	return m.delegation(domain)
}

// storedRoute reads name's delegation target from storage ("" when it has
// none).
func (m *Manager) storedRoute(ctx context.Context, name string) (string, error) {
	data, err := m.storage.Load(ctx, routeKey(name))
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	return string(data), nil
}

// loadRoute brings name's delegation target in memory up to date with
// storage. A storage error keeps what memory has.
func (m *Manager) loadRoute(ctx context.Context, name string) {
	if m.zone == nil {
		// Without the zone only HTTP-01 and TLS-ALPN-01 can be answered,
		// whatever was stored while it was served: nothing to read.
		m.setRouteMemory(name, "")
		return
	}
	target, err := m.storedRoute(ctx, name)
	if err != nil {
		m.log.Warn("reading the DCV delegation of a certificate", "domain", name, "err", err)
		return
	}
	m.setRouteMemory(name, target)
}

// forgetRoute removes name's delegation, in memory and in storage.
func (m *Manager) forgetRoute(ctx context.Context, name string) error {
	m.setRouteMemory(name, "")
	if err := m.storage.Delete(ctx, routeKey(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// zoneSolver answers ACME DNS-01 challenges through the zone edgeproxy
// serves itself: Present writes the challenge's TXT value with the zone's
// provider at the domain's delegation target, the name the customer's
// _acme-challenge.<domain> CNAME points at, and CleanUp removes it.
//
// certmagic's own DNS01Solver is not used: it writes at
// _acme-challenge.<domain> unless given one OverrideDomain for all the
// names it solves (it does not follow the customer's CNAME), and before
// writing it asks recursive resolvers for the SOA of the name to find its
// zone, which is known here. There is no Wait: the value is committed to
// the store before Present returns, and every node's DNS server answers
// from the store, so there is nothing to propagate.
type zoneSolver struct {
	provider *ZoneDNSProvider
	target   func(domain string) (string, bool)

	// mu guards presented.
	mu sync.Mutex
	// presented holds what Present wrote for each challenge (by token),
	// so that CleanUp removes it even if the delegation changed since.
	presented map[string]libdns.TXT
}

func (s *zoneSolver) record(chal acme.Challenge) (libdns.TXT, error) {
	domain := normalizeName(chal.Identifier.Value)
	target, ok := s.target(domain)
	if !ok {
		return libdns.TXT{}, fmt.Errorf("%s: DNS-01 challenge: the domain has no DCV delegation", domain)
	}
	zone := normalizeName(s.provider.Zone)
	return libdns.TXT{
		Name: libdns.RelativeName(target+".", zone+"."),
		Text: chal.DNS01KeyAuthorization(),
	}, nil
}

// Present writes the challenge's TXT value at the domain's delegation
// target.
func (s *zoneSolver) Present(ctx context.Context, chal acme.Challenge) error {
	rec, err := s.record(chal)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if s.presented == nil {
		s.presented = map[string]libdns.TXT{}
	}
	s.presented[chal.Token] = rec
	s.mu.Unlock()
	_, err = s.provider.AppendRecords(ctx, s.provider.Zone, []libdns.Record{rec})
	return err
}

// CleanUp removes the challenge's TXT value.
func (s *zoneSolver) CleanUp(ctx context.Context, chal acme.Challenge) error {
	s.mu.Lock()
	rec, ok := s.presented[chal.Token]
	delete(s.presented, chal.Token)
	s.mu.Unlock()
	if !ok {
		return nil // Present wrote nothing
	}
	_, err := s.provider.DeleteRecords(ctx, s.provider.Zone, []libdns.Record{rec})
	return err
}
