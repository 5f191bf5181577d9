// Package control is edgeproxy's control plane: the management API through
// which organizations register proxy records, the personal API keys that
// authenticate it, and the rules every record's status follows.
//
// # Requests
//
// Every API request goes through the same checks, in this order: the
// personal API key (Authorization header, then body, then query
// string; the first place holding a key is the only one tried), the method,
// the organization in the path (a UUID or @current), the organizations the
// key is limited to, the key's scopes (write implies read, "*" implies
// all), the caller's membership, and for writes the admin level. Each
// failure has one fixed answer; another organization's record is answered
// exactly like a missing one, so no caller learns what other organizations
// hold.
//
// A request that fails to authenticate counts against its client address;
// past the address's allowance such requests get 429 (ratelimit.go). A
// valid key is resolved before the limiter is consulted, so it is never
// refused by it.
//
// # Probes on a customer's behalf
//
// A diagnosis sends HTTP requests where the customer's DNS points, so its
// dialer admits only this deployment's own addresses (the HTTP listener's,
// what the record's target_cname resolves to) and public unicast ones,
// checked in the dialer's Control hook on the address actually dialled;
// its reports describe failures in our own words and never quote what a
// host answered. Diagnoses run one at a time per record and ten a minute
// per organization. The other probes (the live checks' TLS handshakes)
// dial only the configured edge address.
//
// # Statuses
//
//   - waiting: registered; DNS does not yet point at target_cname.
//   - issuing: DNS points at us; a certificate is being obtained.
//   - valid: a certificate is held and the domain is served.
//   - warning: served, but the last monitor pass found a problem.
//   - erroring: no certificate could be had, or serving broke; retry allowed.
//   - timed_out: DNS never pointed at us in time; retry allowed.
//   - deleting: deletion was asked for while a certificate may exist; the
//     record disappears once the certificate is dropped.
//
// A DELETE removes a waiting, erroring or timed_out record at once and
// moves an issuing, valid or warning one to deleting. Retry moves erroring
// or timed_out back to waiting. Every transition is one store transaction,
// so no race between two API calls can skip a rule.
package control
