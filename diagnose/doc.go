// Package diagnose runs the diagnostic report of one proxy record: the
// cname, ownership, dcv_delegation, caa, http_challenge, certificate and
// live checks against the world as it is now, each with a status (pass,
// warn, fail, skip) and, when something is to be done, a remediation
// (change DNS, change the server's configuration, wait, retry). A
// diagnosis only reads; it never changes a record.
//
// # Ownership and delegation
//
// The cname check passes when traffic for the domain reaches the target:
// by a CNAME, a chain, or the same addresses. The ownership check says
// whether the domain is proven to be this record's: a CNAME to the target
// proves it; the same addresses do not (every target has them), so a
// flattened domain, a zone apex, or one kept behind Cloudflare's proxy
// needs the record's ownership TXT record. The dcv_delegation check looks
// at the optional _acme-challenge CNAME that hands the certificate
// authority's DNS-01 validation to this deployment's zone; for a domain
// behind Cloudflare's proxy it and the ownership TXT record are the way to
// keep the proxy, and the report says so. All of that holds only where the
// zone is served (--dns-addr, Diagnoser.ZoneServed): elsewhere the
// delegation has no effect, the dcv_delegation check says so, and no
// remediation proposes it.
//
// # Probes on a customer's behalf
//
// A diagnosis sends HTTP requests where the customer's DNS points, so its
// dialer admits only this deployment's own addresses (the HTTP listener's,
// what the record's target_cname resolves to) and public unicast ones,
// checked in the dialer's Control hook on the address actually dialled
// (internal/netguard); its reports describe failures in our own words and
// never quote what a host answered. The live check's TLS handshake dials
// only the configured edge address.
//
// # Limits
//
// Diagnoses run one at a time per record and ten a minute per
// organization (Diagnoser.Admit); the management API answers 429 beyond
// that.
package diagnose
