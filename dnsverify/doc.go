// Package dnsverify checks, with real DNS queries, whether a customer's domain points at the
// target name edgeproxy gave it, and whether the domain's CAA records let our CA issue for it.
//
// # Model
//
// A [Verifier] asks recursive resolvers (the configured ones, or the system's from
// /etc/resolv.conf), never authoritative servers: the answer is what the rest of the internet,
// the ACME CA included, sees now, caches and all. Each query sets RD, goes over UDP with an
// EDNS0 buffer of 1232 bytes, and is repeated over TCP when the answer comes back truncated.
// The resolvers are tried in order: a network error, a timeout, SERVFAIL, REFUSED or any rcode
// other than NOERROR and NXDOMAIN moves on to the next one, and only when all of them fail is
// the check a resolver failure. Every query is bounded by the Verifier's timeout and by ctx.
//
// [Verifier.CheckCNAME] queries A and AAAA for the domain. A recursive resolver returns the
// domain's CNAME chain in the answer section, so one pair of queries shows both the chain and
// the addresses at its end. The domain points at the target, its ownership proven, when
//   - its CNAME is the target ([ViaCNAME]; case and the trailing dot are ignored),
//   - a later hop of its CNAME chain is the target ([ViaChain]), or
//   - it has no CNAME, its A/AAAA set is non-empty and equal to the target's, and its ownership
//     TXT record (_edgeproxy.<domain>) holds the record's token ([ViaFlattened]: CNAME
//     flattening, an ALIAS/ANAME record, or address records at a zone apex). Only then are the
//     target and the TXT record queried.
//
// The target is made from the organization and the domain, so a CNAME to it is a choice only
// the domain's owner can have made for this record. Addresses are not: every target resolves to
// the same edge addresses, so without the TXT record anyone could register a domain that merely
// resolves to the edge and have it served. Equal addresses without the token are
// [OwnershipMissing], whose message gives the TXT record to add. The token is the record's own,
// so a TXT record published for another record (of another organization, or an earlier record
// of the same domain) proves nothing. [Verifier.CheckOwnership] checks the TXT record alone.
//
// Anything else is an [Outcome] with a [CNAMEResult.Message] a customer can act on: what DNS
// shows now and the exact record to add. A registrable domain ([IsApex]: example.com,
// example.co.uk) cannot hold a CNAME, so its messages ask for an ALIAS record or the target's
// addresses, and the ownership TXT record. A chain that leaves the domain through a CNAME to a
// name other than the target is [WrongTarget] even if its addresses end up equal to the
// target's: the record to fix is that CNAME. Addresses inside Cloudflare's published ranges
// (embedded in this package, see cloudflareRanges) mean the record is proxied by Cloudflare
// ("orange cloud"), which hides any CNAME; the fix is to make it "DNS only".
//
// [Verifier.CheckDelegation] reports whether a name, such as _acme-challenge.<domain>, is a
// CNAME (or a chain) to a given target: the DCV delegation that lets edgeproxy's own zone
// answer the certificate authority's DNS-01 validation.
//
// [Verifier.CheckCAA] implements the RFC 8659 pre-flight: climb from the domain toward the
// TLD, take the first non-empty CAA RRset (following CNAMEs, as the resolver does), and decide
// whether one of the CA's issuer domains may issue a non-wildcard certificate.
//
// # Caveats
//
// Resolvers cache. A record the customer just added may stay invisible for as long as the
// absence was cached; [CNAMEResult.NegativeTTL] reports that bound from the zone's SOA so the
// message can say when to expect a change. A positive answer is likewise only as fresh as the
// resolver's cache. DNSSEC is not validated here (a validating resolver answers SERVFAIL for
// a broken chain, which this package reports as a resolver failure). CAA "accounturi" is not
// checked: the ACME account is not known here.
package dnsverify
