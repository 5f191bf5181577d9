// Package certs holds edgeproxy's TLS certificates: it obtains them over
// ACME with certmagic, keeps them in the store's bbolt file, and serves them
// to the TLS edge for the domains it is told to serve, and to nobody else.
//
// # Storage
//
// Storage implements certmagic.Storage on the store's blob API, in the same
// bbolt file as everything else: certmagic's keys
// ("certificates/<issuer>/<domain>/<domain>.crt", ".key", ".json", the ACME
// account under "acme/<issuer>/users/...", challenge tokens)
// are blobs in the certmagic_data bucket, and certmagic's named locks are
// entries of the certmagic_locks bucket with an owner and an expiry. A lock
// is taken for LockTTL (two minutes) and refreshed by a goroutine while it
// is held, so a process killed with a lock held blocks the others for at
// most LockTTL. Lock honours its context: it polls with a growing pause
// (up to a second) until the lock is free or the context is done.
//
// # When ACME traffic happens
//
// Only in two places: Manager.Obtain, which asks the CA for a certificate
// when storage holds none for the domain (one attempt, bounded by its
// context), and certmagic's own maintenance, which renews the managed
// certificates in the cache (checked every ten minutes; a certificate is
// renewed in the last third of its lifetime, or when the CA's renewal
// information says so) and refreshes their renewal information. Load reads
// storage only. A TLS handshake never causes ACME traffic: OnDemand is off,
// so certmagic never issues during a handshake, and GetCertificate turns
// away every server name that is not on the allowlist before certmagic sees
// it.
//
// # Serving
//
// The allowlist (Serve, ServeOnly) is an immutable set behind an atomic
// pointer, replaced whole on change, so a handshake takes no lock. A
// handshake for a name on it gets the certificate from certmagic's cache; a
// handshake for any other name fails, without logging each one (the count
// is in HandshakeStats and a summary is logged at most once a minute). A
// TLS-ALPN-01 validation handshake (ALPN exactly "acme-tls/1") is answered
// only while a challenge for its name is pending, in this process or, on
// several nodes, in another node's (the shared storage holds it).
//
// # Challenges
//
// The edge's own listeners answer the ACME challenges: HTTP-01 through
// HandleHTTPChallenge on the plain HTTP listener, TLS-ALPN-01 through
// GetCertificate on the TLS listener. certmagic's solvers would open their
// own listeners on Config.HTTPPort and Config.TLSPort if those ports were
// free; they find them taken by ours and stand aside, so Obtain must only be
// called once the listeners are up.
//
// ZoneDNSProvider is the libdns provider (certmagic.DNSProvider) for ACME
// DNS-01 through the target zone edgeproxy serves itself (dnszone): it
// writes and deletes the challenge TXT values in the store, where every
// node's DNS server answers them.
//
// # DNS-01 through the zone (certificates before traffic)
//
// With Config.Zone set, a domain given a DCV delegation (SetDCVDelegation:
// its _acme-challenge.<domain> CNAME points at _acme-challenge.<20
// hex>.<base>, a name of our zone) gets and renews its certificate with
// DNS-01 instead: the CA follows the customer's CNAME into our zone and
// finds there the TXT value the manager wrote, whether or not the
// domain's traffic reaches the edge. A second certmagic configuration does
// this, sharing the first one's cache, storage, locks, CA and account,
// with one ACME issuer whose only solver writes the challenge TXT at the
// domain's delegation target (certmagic's DNS01Solver would write under
// the customer's own name, and asks resolvers for the zone's SOA first).
// Every other domain is validated exactly as before. The choice is made
// per domain: certmagic's maintenance asks which configuration manages a
// certificate each time it looks at it, and gets the DNS-01 one for a
// domain with a delegation. The delegation is kept in storage
// ("edgeproxy/dcv_delegations/<domain>") besides memory, so Load finds it
// again after a restart and on another node; Release and Drop forget it,
// since it belongs to the record. A node that loaded a certificate before
// its delegation changed learns the change only at its next Load of the
// domain. No propagation check is made: the value is in the store before
// the CA is told to look, and every node's zone answers from the store.
package certs
