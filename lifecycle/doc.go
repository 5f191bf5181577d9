// Package lifecycle is the engine that moves every proxy record through
// its statuses over time: it checks DNS, orders and renews certificates,
// keeps the edge's allowlist equal to the served records, monitors live
// records and finishes deletions.
//
// # Statuses
//
//   - waiting: registered; DNS does not yet point at target_cname, or
//     reaches it by its addresses alone without the record's ownership
//     TXT record (every target has the same addresses, so they prove
//     nothing; a CNAME to the target does).
//   - issuing: DNS points at us and proves the domain is the record's (or,
//     with the target zone served, its DCV delegation proves it); a
//     certificate is being obtained.
//   - valid: a certificate is held and the domain is served.
//   - warning: served, but the last monitor pass found a problem (DNS
//     moved away, the ownership proof is gone, the certificate is close to
//     expiry, the edge did not answer).
//   - erroring: no certificate could be had, or serving broke; retry allowed.
//   - timed_out: DNS never pointed at us in time; retry allowed.
//   - deleting: deletion was asked for while a certificate may exist; the
//     record disappears once the certificate is no longer served. The
//     certificate stays in storage, never served, for the retention
//     (Config.CertRetention), for a new record of the domain.
//
// # Model
//
// All of the engine's state is in the store: each record carries the time
// of its next step, and the store indexes records by it, so a restart
// picks up exactly the steps that were due. A step does the one thing the
// record's status calls for and saves its outcome only if the record is
// still in the status the step began with: an API call that moved the
// record meanwhile wins, and the step in flight is cancelled.
//
// # Orders to the CA
//
// Before a record orders a certificate, the CA gate (cagate.go) looks at
// what the CA answered earlier orders: a rate limit on one name or
// registered domain holds the orders for it only, one on the whole account
// pauses every order, and an outage pauses every order with a growing
// backoff. Each organization also has a budget of orders per rolling hour
// (Config.OrgOrdersPerHour), so that one tenant's burst cannot spend the
// account's limits for all. A held record stays issuing and tells why and
// until when; only the record whose own order met a limit quotes the CA.
//
// # Certificates before traffic
//
// With Config.ZoneServed (the target zone served by edgeproxy itself,
// --dns-addr), a record's DCV delegation CNAME (_acme-challenge.<domain>
// to _acme-challenge.<target_cname>) is a proof of its own: the record
// gets its certificate with ACME DNS-01 through the zone and becomes valid,
// and served, while its traffic may still go elsewhere, its message naming
// the record to add; it is looked at again with a waiting record's pauses
// until the traffic arrives and the message clears. How each certificate
// is validated (DNS-01 while the delegation is in place, else HTTP-01 and
// TLS-ALPN-01) is decided again before every order and at every monitor
// pass, so renewals follow. dcv.go has the details.
//
// # Several nodes
//
// On one process, Run does everything. When several nodes share a store
// on etcd, the work splits in two. Every node runs a Follower, which keeps
// that node's allowlist and certificate cache equal to the served
// records: it loads from storage (shared by the nodes) the certificate of
// every record that becomes served and serves it, and stops serving what
// stops being served. One node at a time, elected on etcd, runs Lead for
// the length of its leadership: the steps of due records, the retention
// sweep and the cancelling of stale steps, writing through a store handle
// fenced on the leadership, so that a node that has lost it without
// knowing yet cannot overwrite its successor's work. Lead ends when its
// context does (the caller cancels it when the leadership is lost) or
// at the first write the fence refuses; the steps in flight are
// cancelled and redone by the next leader, since all the engine's state
// is in the store.
//
// The engine reaches the certificate manager and the DNS verifier through
// the small interfaces Certs and DNS.
package lifecycle
