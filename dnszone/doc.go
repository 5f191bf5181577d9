// Package dnszone is edgeproxy's authoritative DNS server for the zone of
// the target CNAMEs (--target-cname-base): the operator delegates that zone
// to the edge nodes with NS records, instead of keeping a wildcard
// *.<base> elsewhere, and every node answers it the same way from the
// store.
//
// # What the zone holds
//
//   - The apex: SOA and NS (the nodes' names, Config.Nameservers).
//   - <20 hex>.<base>, for every proxy record whose target_cname it is, in
//     any status (deleting included: the record, and so its name, exists
//     until the engine removes it; the edge itself stops serving its
//     certificate): A and AAAA, the edge addresses of that family
//     (Config.EdgeIPs). A family without addresses answers NOERROR with no
//     records (NODATA).
//   - _acme-challenge.<20 hex>.<base>, under a name that exists: TXT, the
//     values of the ACME DNS-01 challenges in progress for it, read from
//     the store (ChallengeTXT) so that every node gives the CA the same
//     values. The name exists, and answers NODATA, while it has none.
//   - Every other name under the base is NXDOMAIN. Negative answers
//     (NXDOMAIN and NODATA) carry the SOA in the authority section; its
//     minimum, NegativeTTL, is how long a resolver may remember them, so a
//     record created right after a lookup resolves within that time.
//
// Names outside the zone answer REFUSED: the server does no recursion (RA
// is never set). Only class IN is served; CHAOS (version.bind and the
// like) and every other class answer REFUSED. ANY answers, as RFC 8482
// allows, one synthesized HINFO record ("RFC8482") for a name that
// exists, so it costs no more than any other query. Opcodes other than
// QUERY answer NOTIMP; a message with other than one question, FORMERR.
// No zone transfers are offered.
//
// # Where the names come from
//
// The set of existing <20 hex> labels lives in memory: Start reads every
// record once (Records) after subscribing to the store's change feed, and
// from then on each change is taken as a hint to read that record again.
// A query for A or AAAA is answered from memory with no store read; only
// TXT under _acme-challenge reads the store, and only for a label that
// exists. A record whose target_cname lies under another base (the base
// was changed) is not in the zone.
//
// The SOA serial is a hash of the zone's content held in memory: the set
// of labels, the edge addresses and the nameservers. It changes whenever
// that content changes, and it is the same on every node that sees the
// same records, so comparing serials across nameservers shows whether they
// agree. It is not ordered (there are no secondaries to transfer to). The
// challenge values are not part of it: they come and go within minutes.
//
// # Size and abuse
//
// An answer over UDP never exceeds the size the query advertised in EDNS0
// (512 bytes without EDNS0; at most MaxUDPSize, whatever it advertised).
// An answer that would is sent with its records removed and TC set, and
// the client asks again over TCP. A query with EDNS0 gets an OPT record
// back; one with an EDNS version other than 0 gets BADVERS.
//
// Queries over UDP are limited per client address (IPv4 address, IPv6
// /64) with a token bucket (Config.RateLimit, Config.RateBurst), because a
// UDP source address can be forged and the server must not be usable to
// flood a victim with answers. Over the limit a query is dropped, except
// that every second one gets an empty answer with TC set (the size of the
// question, so nothing is amplified): a real resolver whose address is
// being forged still gets through, over TCP, where the source address is
// proven by the handshake and no limit by address applies. The table of
// addresses is bounded (Config.MaxClients); when it is full of addresses
// still spending their budget, new addresses share one overflow bucket.
//
// # Metrics
//
// edgeproxy_dns_queries_total{rcode} counts the answers sent, by response
// code (NOERROR, NXDOMAIN, REFUSED, NOTIMP, FORMERR, SERVFAIL, BADVERS);
// edgeproxy_dns_rate_limited_total{action="dropped|truncated"} the UDP
// queries over their address's limit.
package dnszone
