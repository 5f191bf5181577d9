// Package diagnose runs the diagnostic report of one proxy record: the
// cname, caa, http_challenge, certificate and live checks against the world
// as it is now, each with a status (pass, warn, fail, skip) and, when
// something is to be done, a remediation (change DNS, change the server's
// configuration, wait, retry). A diagnosis only reads; it never changes a
// record.
//
// # Probes on a customer's behalf
//
// A diagnosis sends HTTP requests where the customer's DNS points, so its
// dialer admits only this deployment's own addresses (the HTTP listener's,
// what the record's target_cname resolves to) and public unicast ones,
// checked in the dialer's Control hook on the address actually dialled
// (dialpolicy.go); its reports describe failures in our own words and
// never quote what a host answered. The live check's TLS handshake dials
// only the configured edge address.
//
// # Limits
//
// Diagnoses run one at a time per record and ten a minute per
// organization (Diagnoser.Admit); the management API answers 429 beyond
// that.
package diagnose
