package lifecycle

import (
	"context"
	"time"

	"github.com/edgeproxy/edgeproxy/dnsverify"
)

// Certs is what the engine needs of the certificate manager
// (*certs.Manager): get, cache, serve, release and drop the certificate
// of a domain.
type Certs interface {
	// Obtain gets the domain's certificate from the CA (or storage) and
	// caches it; Load only from storage.
	Obtain(ctx context.Context, domain string) (notAfter time.Time, err error)
	Load(ctx context.Context, domain string) (notAfter time.Time, err error)
	// Info returns the expiry of the domain's cached certificate.
	Info(domain string) (notAfter time.Time, ok bool)
	// Serve puts the domain on the edge's allowlist or takes it off;
	// ServeOnly makes the allowlist exactly domains.
	Serve(domain string, on bool)
	ServeOnly(domains []string)
	// Release drops the domain's certificate from the cache, keeping it
	// in storage; Drop removes it from storage too.
	Release(ctx context.Context, domain string) error
	Drop(ctx context.Context, domain string) error
	// StoredDomains lists the domains with a certificate in storage.
	StoredDomains(ctx context.Context) ([]string, error)
	// SetDCVDelegation makes the domain's certificate be obtained and
	// renewed with ACME DNS-01 through the target zone, the challenge TXT
	// written at target (its DCV delegation's target), or with an empty
	// target over HTTP-01/TLS-ALPN-01 again. Only with Config.ZoneServed.
	SetDCVDelegation(ctx context.Context, domain, target string) error
}

// DNS is what the engine needs of the DNS verifier (*dnsverify.Verifier).
type DNS interface {
	// CheckCNAME reports whether the domain points at the target with its
	// ownership proven: by a CNAME (or chain) to the target, or by the
	// target's addresses together with the ownership TXT record own.
	CheckCNAME(ctx context.Context, domain, target string, own dnsverify.Ownership) dnsverify.CNAMEResult
	CheckCAA(ctx context.Context, domain string, identities []string) dnsverify.CAAResult
	// CheckDelegation reports whether name (the record's
	// _acme-challenge.<domain>) is a CNAME, or a chain, to target.
	CheckDelegation(ctx context.Context, name, target string) dnsverify.DelegationResult
	// CheckOwnership reports whether the ownership TXT record holds the
	// record's token.
	CheckOwnership(ctx context.Context, own dnsverify.Ownership) dnsverify.OwnershipResult
}
