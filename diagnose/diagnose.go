package diagnose

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/internal/netguard"
	"github.com/edgeproxy/edgeproxy/store"
)

// Bounds of the diagnosis. The checks run concurrently where they do not
// depend on each other: the CNAME and CAA checks, the address lookup of
// the HTTP check and the TLS handshake start together, and only the HTTP
// request waits for the CNAME check. So a report takes at most about one
// DNS bound plus one HTTP bound, and diagnoseTimeout caps it whatever
// happens.
const (
	diagnoseDNSTimeout  = 2 * time.Second
	diagnoseHTTPTimeout = 2 * time.Second
	diagnoseTLSTimeout  = 2 * time.Second
	diagnoseTimeout     = 5 * time.Second
	// probeTTL is how long a probe token is answered: longer than the
	// HTTP check can take.
	probeTTL = 10 * time.Second
	// maxProbeAddrs bounds how many of the domain's addresses the HTTP
	// check tries.
	maxProbeAddrs = 4
)

// The statuses of a check and of a report's summary.
const (
	checkPass = "pass"
	checkWarn = "warn"
	checkFail = "fail"
	checkSkip = "skip"

	reportHealthy = "healthy"
)

// The kinds of remediation: change DNS, change the server's configuration
// (the operator's part), wait, or retry the record.
const (
	remedyDNS    = "dns"
	remedyConfig = "config"
	remedyWait   = "wait"
	remedyRetry  = "retry"
)

// Report is the diagnostic report of one proxy record, as
// the API sends it.
type Report struct {
	// RanAt is when the diagnosis started, RFC 3339 in UTC.
	RanAt   string  `json:"ran_at"`
	Summary Summary `json:"summary"`
	// Checks are cname, ownership, dcv_delegation, caa, http_challenge,
	// certificate and live, in that order.
	Checks []Check `json:"checks"`
}

// Summary sums up a report: fail if any check failed, warn if any warned,
// else healthy. PrimaryIssue is the detail of the first failed check (else
// the first warning) and NextAction its remediation's summary; both are
// nil when healthy.
type Summary struct {
	Status       string  `json:"status"`
	PrimaryIssue *string `json:"primary_issue"`
	NextAction   *string `json:"next_action"`
}

// Check is one check of a report. Status is pass, warn, fail or skip;
// Remediation is nil when there is nothing to do.
type Check struct {
	ID          string       `json:"id"`
	Name        string       `json:"name"`
	Status      string       `json:"status"`
	Detail      string       `json:"detail"`
	Remediation *Remediation `json:"remediation"`
}

// Remediation says what would fix a check: Type is dns, config, wait or
// retry; Records are the DNS records to add (never nil, empty unless Type
// is dns).
type Remediation struct {
	Type    string      `json:"type"`
	Summary string      `json:"summary"`
	Records []DNSRecord `json:"records"`
}

// DNSRecord is a DNS record to add, in presentation form: name without the
// trailing dot, type such as CNAME, value as written in a zone file.
type DNSRecord struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

func remedy(typ, summary string, records ...DNSRecord) *Remediation {
	return &Remediation{Type: typ, Summary: summary, Records: append([]DNSRecord{}, records...)}
}

// Diagnoser runs the checks of a diagnostic report against the world as it
// is now: DNS through the same resolvers as the engine, a real HTTP request
// and a real TLS handshake to this server. It only reads; a diagnosis never
// changes a record. It is safe for concurrent use, and must not be copied
// after first use. Admit limits how often it runs, on the Diagnoser's
// clock.
type Diagnoser struct {
	// DNS runs the DNS checks. Required.
	DNS *dnsverify.Verifier
	// Certs tells which certificates are held. Required.
	Certs *certs.Manager
	// CAAIdentities are the CA's issuer domains for the CAA check. If
	// empty, certs.DefaultCAAIdentity.
	CAAIdentities []string
	// HTTPAddr is the plain HTTP listener's address (--http-addr); the
	// HTTP check sends its request to the domain's addresses on its port,
	// to those that are this listener's, the target's or public only
	// (see internal/netguard). If empty, or if Probes is nil, that check is
	// skipped.
	HTTPAddr string
	// HTTPSAddr is the TLS edge's address (--https-addr); the live check
	// makes a handshake there (0.0.0.0, :: or no host mean 127.0.0.1). If
	// empty, that check is skipped.
	HTTPSAddr string
	// Probes is the registry of the HTTP check's tokens. The plain HTTP
	// listener must call its Handle before anything else.
	Probes *Probes
	// ZoneServed says this deployment serves the target zone itself
	// (--dns-addr), so a record's DCV delegation is used: the certificate
	// is then validated through the zone (DNS-01), before traffic points
	// here or behind Cloudflare's proxy. If false, the dcv_delegation
	// check says the delegation has no effect here, and no remediation
	// proposes it.
	ZoneServed bool
	// Now is the clock, of the reports and of the limits on diagnoses.
	// If nil, time.Now.
	Now func() time.Time

	limiterOnce sync.Once
	limiter     *limiter
}

// Admit starts a diagnosis of record, of organization org, within the
// limits on diagnoses (see limiter.admit). It returns the func to call
// once the diagnosis is over, or nil and how long until one may start.
func (d *Diagnoser) Admit(org, record string) (done func(), wait time.Duration) {
	d.limiterOnce.Do(func() { d.limiter = newLimiter(d.now) })
	return d.limiter.admit(org, record)
}

func (d *Diagnoser) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Diagnoser) caaIdentities() []string {
	if len(d.CAAIdentities) == 0 {
		return []string{certs.DefaultCAAIdentity}
	}
	return d.CAAIdentities
}

// Diagnose is Run for the management API, which sends the report as JSON.
func (d *Diagnoser) Diagnose(ctx context.Context, rec store.Record) any { return d.Run(ctx, rec) }

// Run runs every check for rec and returns the report, within about five
// seconds.
func (d *Diagnoser) Run(ctx context.Context, rec store.Record) Report {
	ctx, cancel := context.WithTimeout(ctx, diagnoseTimeout)
	defer cancel()
	ranAt := d.now()
	cert, held := d.checkCertificate(rec, ranAt)
	var (
		cname, caa, httpc, live Check
		res                     dnsverify.CNAMEResult
		txt                     dnsverify.OwnershipResult
		deleg                   dnsverify.DelegationResult
	)
	pointing := make(chan bool, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		res = d.lookupCNAME(ctx, rec)
		cname = cnameCheck(rec, res, d.ZoneServed)
		pointing <- cname.Status == checkPass
	})
	wg.Go(func() { txt = d.lookupOwnership(ctx, rec) })
	wg.Go(func() { deleg = d.lookupDelegation(ctx, rec) })
	wg.Go(func() { caa = d.checkCAA(ctx, rec) })
	wg.Go(func() { httpc = d.checkHTTP(ctx, rec, pointing) })
	wg.Go(func() { live = d.checkLive(ctx, rec, held) })
	wg.Wait()
	own := ownershipCheck(rec, res, txt, d.ZoneServed)
	dcv := delegationCheck(rec, res, txt, deleg, d.ZoneServed)
	checks := []Check{cname, own, dcv, caa, httpc, cert, live}
	return Report{RanAt: ranAt.UTC().Format(store.TimeFormat), Summary: summarize(checks), Checks: checks}
}

func summarize(checks []Check) Summary {
	s := Summary{Status: reportHealthy}
	for _, status := range []string{checkFail, checkWarn} {
		for _, c := range checks {
			if c.Status != status {
				continue
			}
			s.Status = status
			s.PrimaryIssue = ptr(c.Detail)
			if c.Remediation != nil {
				s.NextAction = ptr(c.Remediation.Summary)
			}
			return s
		}
	}
	return s
}

// ownershipOf is the record's ownership TXT record, as the DNS checks
// take it.
func ownershipOf(rec store.Record) dnsverify.Ownership {
	o := rec.Ownership()
	return dnsverify.Ownership{Name: o.Name, Token: o.Value}
}

// lookupCNAME runs the DNS check the engine runs: does the domain point at
// its target, with its ownership proven?
func (d *Diagnoser) lookupCNAME(ctx context.Context, rec store.Record) dnsverify.CNAMEResult {
	ctx, cancel := context.WithTimeout(ctx, diagnoseDNSTimeout)
	defer cancel()
	return d.DNS.CheckCNAME(ctx, rec.Domain, rec.TargetCNAME, ownershipOf(rec))
}

// lookupOwnership looks up the record's ownership TXT record by itself,
// whatever the domain's other records.
func (d *Diagnoser) lookupOwnership(ctx context.Context, rec store.Record) dnsverify.OwnershipResult {
	ctx, cancel := context.WithTimeout(ctx, diagnoseDNSTimeout)
	defer cancel()
	return d.DNS.CheckOwnership(ctx, ownershipOf(rec))
}

// lookupDelegation looks up the record's DCV delegation CNAME.
func (d *Diagnoser) lookupDelegation(ctx context.Context, rec store.Record) dnsverify.DelegationResult {
	ctx, cancel := context.WithTimeout(ctx, diagnoseDNSTimeout)
	defer cancel()
	dcv := rec.DCVDelegation()
	return d.DNS.CheckDelegation(ctx, dcv.Name, dcv.Value)
}

// cnameCheck: does the domain point at its target? A domain that reaches
// it by its addresses alone passes here (traffic would arrive); the
// ownership check says what else it needs. For a domain behind
// Cloudflare's proxy the remediation names the delegation's way only when
// the zone is served.
func cnameCheck(rec store.Record, res dnsverify.CNAMEResult, zoneServed bool) Check {
	c := Check{ID: "cname", Name: "DNS points at the target"}
	c.Detail = res.Message
	domain, target := rec.Domain, rec.TargetCNAME
	switch res.Outcome {
	case dnsverify.Pointing:
		c.Status = checkPass
		return c
	case dnsverify.OwnershipMissing:
		c.Status = checkPass
		c.Detail = fmt.Sprintf("%s has no CNAME but the same addresses as %s (CNAME flattening, an ALIAS record or address records), "+
			"so its traffic reaches this server; the ownership check says whether it is proven to be this record's.", domain, target)
		return c
	case dnsverify.ResolverFailure:
		c.Status = checkWarn
		c.Remediation = remedy(remedyWait, "Run the diagnosis again in a few minutes: the DNS resolver did not answer, "+
			"which says nothing about your records.")
		return c
	}
	if dnsverify.IsApex(domain) {
		// A CNAME cannot sit at a zone apex: the addresses, and the
		// ownership TXT record (the ownership check's).
		summary := fmt.Sprintf("%s is a zone apex: give it the addresses of %s with an ALIAS or ANAME record (or CNAME flattening) "+
			"at your DNS host, or with A/AAAA records equal to those of %s.", domain, target, target)
		if res.Outcome == dnsverify.CloudflareProxied {
			summary = fmt.Sprintf("In Cloudflare, set the record of %s to \"DNS only\" (grey cloud) and flatten it to %s.", domain, target)
			if zoneServed {
				summary = strings.TrimSuffix(summary, ".") + ", or keep the proxy and add the records of the dcv_delegation check."
			}
		}
		c.Status = checkFail
		c.Remediation = remedy(remedyDNS, summary, DNSRecord{Name: domain, Type: "ALIAS", Value: target})
		return c
	}
	var summary string
	switch res.Outcome {
	case dnsverify.WrongTarget:
		summary = fmt.Sprintf("Change the CNAME record of %s to point at %s.", domain, target)
	case dnsverify.CloudflareProxied:
		summary = fmt.Sprintf("In Cloudflare, set the record of %s to \"DNS only\" (grey cloud) and make it a CNAME to %s.", domain, target)
		if zoneServed {
			summary = strings.TrimSuffix(summary, ".") + ", or keep the proxy and add the records of the dcv_delegation check."
		}
	case dnsverify.OtherAddresses:
		summary = fmt.Sprintf("Replace the address records of %s with a CNAME record pointing at %s.", domain, target)
	default:
		summary = fmt.Sprintf("Add a CNAME record for %s pointing at %s.", domain, target)
	}
	c.Status = checkFail
	c.Remediation = remedy(remedyDNS, summary, DNSRecord{Name: domain, Type: "CNAME", Value: target})
	return c
}

// ownershipCheck: is the domain proven to be this record's? A CNAME (or
// chain) to the target proves it by itself; otherwise the ownership TXT
// record must hold the record's token. It applies when the domain cannot
// or does not use a CNAME: it reaches the target by its addresses, it is
// a zone apex, or Cloudflare's proxy hides its records (a way open only
// with the zone served, together with the DCV delegation).
func ownershipCheck(rec store.Record, res dnsverify.CNAMEResult, txt dnsverify.OwnershipResult, zoneServed bool) Check {
	c := Check{ID: "ownership", Name: "The domain is proven to be this record's"}
	domain, target := rec.Domain, rec.TargetCNAME
	o := rec.Ownership()
	record := DNSRecord{Name: o.Name, Type: o.Type, Value: o.Value}
	addTXT := fmt.Sprintf("Add the TXT record %s with the value %s.", o.Name, o.Value)
	found := o.Name + " has no TXT record"
	if len(txt.Found) > 0 {
		found = "the TXT records of " + o.Name + " do not hold this record's token"
	}
	apex := dnsverify.IsApex(domain)
	switch {
	case res.Outcome == dnsverify.Pointing && res.Via != dnsverify.ViaFlattened:
		c.Status = checkPass
		c.Detail = fmt.Sprintf("The CNAME of %s to %s proves that the domain is this record's; no TXT record is needed.", domain, target)
	case txt.Proven || res.Outcome == dnsverify.Pointing:
		// Pointing by flattening means the cname check's own look at the
		// TXT record found the token.
		c.Status = checkPass
		c.Detail = fmt.Sprintf("The ownership TXT record %s holds this record's token.", o.Name)
	case txt.Err != nil && (res.Outcome == dnsverify.OwnershipMissing || apex || res.Outcome == dnsverify.CloudflareProxied):
		c.Status = checkWarn
		c.Detail = fmt.Sprintf("The ownership TXT record %s could not be looked up: the DNS resolver did not answer.", o.Name)
		c.Remediation = remedy(remedyWait, "Run the diagnosis again in a few minutes: the DNS resolver did not answer, "+
			"which says nothing about your records.")
	case res.Outcome == dnsverify.OwnershipMissing:
		c.Status = checkFail
		c.Detail = fmt.Sprintf("%s reaches %s by its addresses alone, which every domain served here shares, so they do not prove "+
			"that %s is yours; %s.", domain, target, domain, found)
		c.Remediation = remedy(remedyDNS, addTXT, record)
	case apex:
		c.Status = checkFail
		c.Detail = fmt.Sprintf("%s is a zone apex, which cannot hold a CNAME: only its ownership TXT record can prove that it is "+
			"this record's, and %s.", domain, found)
		c.Remediation = remedy(remedyDNS, addTXT, record)
	case res.Outcome == dnsverify.CloudflareProxied && !zoneServed:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Cloudflare's proxy hides the records of %s. This server cannot validate a certificate for a domain "+
			"kept behind the proxy (it does not serve the zone that DCV delegation needs), so the ownership TXT record would not "+
			"help: set the record to \"DNS only\" and use a CNAME, as the cname check says.", domain)
	case res.Outcome == dnsverify.CloudflareProxied:
		c.Status = checkFail
		c.Detail = fmt.Sprintf("Cloudflare's proxy hides the records of %s, so no CNAME can prove that it is this record's; "+
			"while it stays proxied, only its ownership TXT record can, and %s.", domain, found)
		c.Remediation = remedy(remedyDNS, addTXT+" (Or set the record to \"DNS only\" and use a CNAME, as the cname check says.)", record)
	case res.Outcome == dnsverify.ResolverFailure:
		c.Status = checkSkip
		c.Detail = "Not checked: the cname check could not resolve the domain."
	default:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not needed once %s has a CNAME to %s, which proves by itself that the domain is this record's. "+
			"Only if %s reaches %s by address records instead (CNAME flattening, ALIAS) must it also publish the TXT record "+
			"%s with the value %s.", domain, target, domain, target, o.Name, o.Value)
	}
	return c
}

// delegationCheck: is _acme-challenge.<domain> a CNAME to the record's
// delegation target? It is optional: it lets the certificate authority's
// DNS-01 validation be answered by this deployment's own zone, so a
// certificate can be had before traffic points here, and it is the way
// for a domain kept behind Cloudflare's proxy, together with the
// ownership TXT record. Only when the zone is served here (zoneServed):
// otherwise the check says the delegation is not used.
func delegationCheck(rec store.Record, res dnsverify.CNAMEResult, txt dnsverify.OwnershipResult, deleg dnsverify.DelegationResult, zoneServed bool) Check {
	c := Check{ID: "dcv_delegation", Name: "Certificate validation is delegated to this server"}
	dcv := rec.DCVDelegation()
	record := DNSRecord{Name: dcv.Name, Type: dcv.Type, Value: dcv.Value}
	cloudflare := res.Outcome == dnsverify.CloudflareProxied
	now := "there is no such record now"
	if len(deleg.Chain) > 0 {
		now = "it is now a CNAME to " + strings.TrimSuffix(deleg.Chain[0], ".")
	}
	if !zoneServed {
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not used by this server: it does not serve the zone of its target names (the operator has not "+
			"enabled --dns-addr), so it cannot answer the certificate authority's DNS-01 validation, and a CNAME from %s to %s "+
			"(%s) has no effect. Certificates are validated over HTTP-01 or TLS-ALPN-01, which need %s's traffic to reach this "+
			"server.", dcv.Name, dcv.Value, now, rec.Domain)
		return c
	}
	switch {
	case deleg.Delegated:
		c.Status = checkPass
		c.Detail = fmt.Sprintf("%s is a CNAME to %s: the certificate authority's DNS-01 validation of %s is answered by this "+
			"server's zone, so its certificate is obtained and renewed whether or not its traffic points here.", dcv.Name, dcv.Value, rec.Domain)
	case deleg.Err != nil:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not checked: the DNS resolver did not answer for %s.", dcv.Name)
	case cloudflare:
		c.Status = checkWarn
		c.Detail = fmt.Sprintf("%s is proxied by Cloudflare (orange cloud), which hides its DNS records, so no CNAME to %s can "+
			"be seen. To keep the proxy, delegate the certificate authority's validation to this server with a CNAME from %s "+
			"to %s (%s), and prove the domain is yours with its ownership TXT record.", rec.Domain, rec.TargetCNAME, dcv.Name, dcv.Value, now)
		records := []DNSRecord{record}
		if !txt.Proven {
			o := rec.Ownership()
			records = append(records, DNSRecord{Name: o.Name, Type: o.Type, Value: o.Value})
		}
		c.Remediation = remedy(remedyDNS, "To keep Cloudflare's proxy, add these records (set the CNAME to \"DNS only\"): the delegation "+
			"lets the certificate be validated through this server's zone, and the TXT record proves the domain is yours.", records...)
	case len(deleg.Chain) > 0:
		c.Status = checkWarn
		c.Detail = fmt.Sprintf("%s is a CNAME to %s, not to %s, so this server cannot answer the certificate authority's DNS-01 "+
			"validation of %s.", dcv.Name, strings.TrimSuffix(deleg.Chain[0], "."), dcv.Value, rec.Domain)
		c.Remediation = remedy(remedyDNS, fmt.Sprintf("Change the CNAME of %s to point at %s.", dcv.Name, dcv.Value), record)
	default:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Optional, and not set up (%s): with a CNAME from %s to %s, the certificate authority validates %s "+
			"through this server's zone (DNS-01), so a certificate can be had before traffic points here, and a domain behind "+
			"Cloudflare's proxy can be served with its ownership TXT record.", now, dcv.Name, dcv.Value, rec.Domain)
	}
	return c
}

// checkCAA: do the domain's CAA records let the CA issue?
func (d *Diagnoser) checkCAA(ctx context.Context, rec store.Record) Check {
	c := Check{ID: "caa", Name: "CAA records allow the certificate authority"}
	ids := d.caaIdentities()
	ctx, cancel := context.WithTimeout(ctx, diagnoseDNSTimeout)
	res := d.DNS.CheckCAA(ctx, rec.Domain, ids)
	cancel()
	c.Detail = res.Message
	switch {
	case res.Err != nil:
		c.Status = checkWarn
		c.Remediation = remedy(remedyWait, "Run the diagnosis again in a few minutes: the DNS resolver did not answer, "+
			"which says nothing about your records.")
	case res.Allowed:
		c.Status = checkPass
	default:
		// The set lives at its owner: At, or the target of a CNAME at At.
		owner := res.At
		if len(res.Found) > 0 {
			owner = strings.Fields(res.Found[0])[0]
		}
		if owner == "" {
			owner = rec.Domain
		}
		summary := fmt.Sprintf("Add a CAA record at %s that allows %s to issue certificates", owner, ids[0])
		if rec.Status.CanRetry() {
			summary += ", then retry the record."
		} else {
			summary += "."
		}
		c.Status = checkFail
		c.Remediation = remedy(remedyDNS, summary,
			DNSRecord{Name: owner, Type: "CAA", Value: fmt.Sprintf("0 issue %q", ids[0])})
	}
	return c
}

// checkHTTP: does an HTTP request for the domain, sent where DNS says the
// domain is, reach this server? It is the path of the ACME HTTP-01
// challenge. The address lookups run while the CNAME check does: the
// domain's, and the target's, whose addresses are this deployment's own.
// The requests are sent only if that check passed, and only to addresses
// the dial policy allows: own or public, never an internal address a
// customer's DNS names.
func (d *Diagnoser) checkHTTP(ctx context.Context, rec store.Record, pointing <-chan bool) Check {
	c := Check{ID: "http_challenge", Name: "HTTP requests reach this server"}
	domain := rec.Domain
	_, port, err := net.SplitHostPort(d.HTTPAddr)
	if d.Probes == nil || err != nil || port == "" {
		c.Status = checkSkip
		c.Detail = "This server is not set up to check HTTP reachability."
		return c
	}
	lctx, cancel := context.WithTimeout(ctx, diagnoseDNSTimeout)
	var own []netip.Addr
	var wg sync.WaitGroup
	wg.Go(func() {
		// A failed lookup leaves the target out: its addresses are then
		// allowed only if public.
		own, _ = d.DNS.LookupAddrs(lctx, rec.TargetCNAME)
		own = append(own, listenerAddrs(lctx, d.HTTPAddr)...)
	})
	addrs, lookupErr := d.DNS.LookupAddrs(lctx, domain)
	wg.Wait()
	cancel()
	ok := false
	select {
	case ok = <-pointing:
	case <-ctx.Done():
	}
	switch {
	case !ok:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not checked: until the cname check passes, requests for %s are not known to come here.", domain)
		return c
	case len(addrs) == 0 && lookupErr != nil:
		c.Status = checkWarn
		c.Detail = fmt.Sprintf("The addresses of %s could not be looked up, so HTTP reachability was not checked.", domain)
		c.Remediation = remedy(remedyWait, "Run the diagnosis again in a few minutes: the DNS resolver did not answer.")
		return c
	case len(addrs) == 0:
		c.Status = checkFail
		c.Detail = fmt.Sprintf("%s points at %s, but that name has no A or AAAA record, so no request can reach this server.",
			domain, rec.TargetCNAME)
		c.Remediation = remedy(remedyConfig, fmt.Sprintf("The operator of this server must point %s (a wildcard A/AAAA "+
			"record for its zone) at the server.", rec.TargetCNAME))
		return c
	}
	addrs = addrs[:min(len(addrs), maxProbeAddrs)]

	policy := netguard.Allow(own...)
	token, release := d.Probes.Register(probeTTL)
	defer release()
	results := make([]probeResult, len(addrs))
	for i, addr := range addrs {
		wg.Go(func() { results[i] = probeHTTP(ctx, policy, addr, port, domain, token) })
	}
	wg.Wait()
	var reached, failed []string
	refused := false
	for i, addr := range addrs {
		switch results[i] {
		case probeReached:
			reached = append(reached, addr.String())
		case probeRefused:
			refused = true
			fallthrough
		default:
			failed = append(failed, fmt.Sprintf("%s: %s", addr, results[i]))
		}
	}
	all := make([]string, len(addrs))
	for i, a := range addrs {
		all[i] = a.String()
	}
	switch {
	case len(failed) == 0:
		c.Status = checkPass
		c.Detail = fmt.Sprintf("An HTTP request for %s to port %s reached this server (at %s).",
			domain, port, strings.Join(reached, ", "))
		return c
	case len(reached) > 0:
		c.Status = checkWarn
		c.Detail = fmt.Sprintf("HTTP requests for %s to port %s reach this server at %s, but not at %s.",
			domain, port, strings.Join(reached, ", "), strings.Join(failed, "; "))
		c.Remediation = remedy(remedyConfig, fmt.Sprintf("Every address of %s (%s) must reach this server on port %s: "+
			"the certificate authority may use any of them.", rec.TargetCNAME, strings.Join(all, ", "), port))
	default:
		c.Status = checkFail
		c.Detail = fmt.Sprintf("An HTTP request for %s to port %s did not reach this server: %s.",
			domain, port, strings.Join(failed, "; "))
		c.Remediation = remedy(remedyConfig, fmt.Sprintf("Port %s at %s must reach this edgeproxy server, with no firewall, "+
			"load balancer or other web server in between: the certificate authority validates there.", port, strings.Join(all, ", ")))
	}
	if refused {
		// The domain's DNS gives addresses that are not the target's: the
		// customer's records are at fault, not the operator's setup.
		c.Remediation = remedy(remedyDNS, fmt.Sprintf("Every A and AAAA answer for %s must come from its CNAME to %s: "+
			"remove the other address records of %s, whatever the query type.", domain, rec.TargetCNAME, domain),
			DNSRecord{Name: domain, Type: "CNAME", Value: rec.TargetCNAME})
	}
	return c
}

// probeResult is what became of the HTTP check's request to one address,
// in our own words: a report never quotes what a host answered (status
// line, headers, body), since the host may not be ours.
type probeResult int

const (
	// probeReached: this server answered with the probe's token.
	probeReached probeResult = iota
	// probeRefused: the dial policy refused the address; nothing was sent.
	probeRefused
	// probeNoConnection: the connection could not be made.
	probeNoConnection
	// probeNoAnswer: nothing came back within diagnoseHTTPTimeout.
	probeNoAnswer
	// probeOtherAnswer: something answered, but not with the token.
	probeOtherAnswer
)

func (r probeResult) String() string {
	switch r {
	case probeReached:
		return "reached this server"
	case probeRefused:
		return "not contacted, as it is neither an address of this server nor a public one"
	case probeNoConnection:
		return "no connection could be made"
	case probeNoAnswer:
		return fmt.Sprintf("no answer within %s", diagnoseHTTPTimeout)
	default:
		return "something other than this server answered"
	}
}

// probeClient returns the client of the HTTP check's requests: it
// connects only where policy allows, straight to the address (never
// through an HTTP proxy from the environment), one connection each, and
// follows no redirect.
func probeClient(policy netguard.Policy) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                  nil,
			DialContext:            policy.Dialer(diagnoseHTTPTimeout).DialContext,
			DisableKeepAlives:      true,
			ResponseHeaderTimeout:  diagnoseHTTPTimeout,
			MaxResponseHeaderBytes: 16 << 10,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// probeHTTP asks addr:port for the probe token with Host domain and says
// whether the answer is the token.
func probeHTTP(ctx context.Context, policy netguard.Policy, addr netip.Addr, port, domain, token string) probeResult {
	ctx, cancel := context.WithTimeout(ctx, diagnoseHTTPTimeout)
	defer cancel()
	u := "http://" + net.JoinHostPort(addr.String(), port) + probePathPrefix + token
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return probeNoConnection
	}
	req.Host = domain
	resp, err := probeClient(policy).Do(req)
	var nerr net.Error
	var operr *net.OpError
	switch {
	case errors.Is(err, netguard.ErrRefused):
		return probeRefused
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &nerr) && nerr.Timeout():
		return probeNoAnswer
	case errors.As(err, &operr) && operr.Op == "dial":
		return probeNoConnection
	case err != nil:
		return probeOtherAnswer
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode == http.StatusOK && strings.TrimSpace(string(body)) == token {
		return probeReached
	}
	return probeOtherAnswer
}

// checkCertificate: is a certificate held, and how long until it expires?
// It also reports whether one is held, for the live check.
func (d *Diagnoser) checkCertificate(rec store.Record, now time.Time) (Check, bool) {
	c := Check{ID: "certificate", Name: "Certificate"}
	domain := rec.Domain
	notAfter, held := d.Certs.Info(domain)
	if held {
		left := notAfter.Sub(now)
		exp := notAfter.UTC().Format(time.RFC3339)
		days := int(left.Hours() / 24)
		switch {
		case left <= 0:
			c.Status = checkFail
			c.Detail = fmt.Sprintf("The certificate for %s expired at %s.", domain, exp)
			if rec.Status.CanRetry() {
				c.Remediation = remedy(remedyRetry, "Retry the record so that edgeproxy obtains a new certificate.")
			} else {
				c.Remediation = remedy(remedyWait, "edgeproxy replaces an expired certificate on the record's next check; "+
					"if the record turns erroring, retry it.")
			}
		case left < certs.ExpiryWarning:
			c.Status = checkWarn
			c.Detail = fmt.Sprintf("The certificate for %s expires at %s (in %d days) and has not been renewed yet.", domain, exp, days)
			c.Remediation = remedy(remedyWait, "Renewal is automatic and is retried until it succeeds; check again later.")
		default:
			c.Status = checkPass
			c.Detail = fmt.Sprintf("A certificate for %s is held, valid until %s (%d days left).", domain, exp, days)
		}
		return c, true
	}
	switch rec.Status {
	case store.StatusWaiting:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not yet issued: edgeproxy requests a certificate once DNS for %s points at %s.", domain, rec.TargetCNAME)
		c.Remediation = remedy(remedyWait, "Once DNS points at the target, the certificate follows on its own.")
	case store.StatusIssuing:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not yet issued: a certificate for %s is being requested from the certificate authority.", domain)
		c.Remediation = remedy(remedyWait, "Wait a few minutes: the record turns valid once the certificate is issued.")
	case store.StatusDeleting:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("The record is being deleted; no certificate is held for %s.", domain)
	case store.StatusValid, store.StatusWarning:
		c.Status = checkFail
		c.Detail = fmt.Sprintf("No certificate is held for %s, so the edge cannot serve it.", domain)
		c.Remediation = remedy(remedyWait, "edgeproxy obtains a new certificate on the record's next check; "+
			"if the record turns erroring, retry it.")
	default: // erroring, timed_out
		c.Status = checkWarn
		c.Detail = fmt.Sprintf("No certificate is held for %s.", domain)
		c.Remediation = remedy(remedyRetry, "Fix what the other checks report, then retry the record.")
	}
	return c, false
}

// checkLive: does the edge complete a TLS handshake for the domain with a
// certificate naming it?
func (d *Diagnoser) checkLive(ctx context.Context, rec store.Record, held bool) Check {
	c := Check{ID: "live", Name: "The edge serves the domain"}
	domain := rec.Domain
	switch {
	case !held:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not checked: no certificate is held for %s.", domain)
		return c
	case d.HTTPSAddr == "":
		c.Status = checkSkip
		c.Detail = "This server is not set up to check its TLS edge."
		return c
	case rec.Status == store.StatusDeleting:
		c.Status = checkSkip
		c.Detail = fmt.Sprintf("Not checked: the record is being deleted, so the edge no longer serves %s.", domain)
		return c
	}
	ctx, cancel := context.WithTimeout(ctx, diagnoseTLSTimeout)
	err := certs.ProbeServed(ctx, d.HTTPSAddr, domain)
	cancel()
	if err == nil {
		c.Status = checkPass
		c.Detail = fmt.Sprintf("The edge completed a TLS handshake for %s with a certificate naming it.", domain)
		return c
	}
	c.Status = checkFail
	if errors.Is(err, context.DeadlineExceeded) {
		err = fmt.Errorf("no TLS handshake within %s", diagnoseTLSTimeout)
	}
	c.Detail = fmt.Sprintf("The edge at %s did not serve %s: %v.", d.HTTPSAddr, domain, err)
	switch rec.Status {
	case store.StatusWaiting, store.StatusIssuing:
		c.Remediation = remedy(remedyWait, "The edge serves the domain once the record is valid; check again in a few minutes.")
	case store.StatusErroring, store.StatusTimedOut:
		c.Remediation = remedy(remedyRetry, "Fix what the other checks report, then retry the record.")
	default:
		c.Remediation = remedy(remedyConfig, "Ask the operator of this edgeproxy server to check its TLS listener "+
			"(--https-addr) and its log.")
	}
	return c
}

// probePathPrefix is the path of the HTTP check's requests, before the
// token: under the ACME HTTP-01 path, so it takes the same way through
// anything in front of the server as the CA's requests do.
const probePathPrefix = "/.well-known/acme-challenge/edgeproxy-probe-"

// Probes is the registry of the tokens the HTTP check sends to the
// server's own plain HTTP listener: an in-memory set, each token answered
// only until it expires. The zero value is ready to use; it is safe for
// concurrent use. A nil *Probes answers nothing.
type Probes struct {
	// mu guards tokens.
	mu     sync.Mutex
	tokens map[string]time.Time // token → expiry
}

// Register adds a new random token, answered by Handle for ttl (never,
// when ttl is not positive), and returns it with a func that removes it
// at once. Expired tokens are dropped here.
func (p *Probes) Register(ttl time.Duration) (token string, release func()) {
	token = strings.ToLower(rand.Text())
	now := time.Now()
	p.mu.Lock()
	if p.tokens == nil {
		p.tokens = map[string]time.Time{}
	}
	for t, exp := range p.tokens {
		if !now.Before(exp) {
			delete(p.tokens, t)
		}
	}
	p.tokens[token] = now.Add(ttl)
	p.mu.Unlock()
	return token, func() {
		p.mu.Lock()
		delete(p.tokens, token)
		p.mu.Unlock()
	}
}

// Handle answers r, and reports true, if it is
// GET /.well-known/acme-challenge/edgeproxy-probe-<token> for a registered
// token that has not expired: 200 with the token as the body, whatever the
// Host. Anything else it leaves alone and reports false. The plain HTTP
// listener calls it first, before the ACME challenge handler.
func (p *Probes) Handle(w http.ResponseWriter, r *http.Request) bool {
	if p == nil || r.Method != http.MethodGet {
		return false
	}
	token, ok := strings.CutPrefix(r.URL.Path, probePathPrefix)
	if !ok || token == "" {
		return false
	}
	p.mu.Lock()
	exp, found := p.tokens[token]
	p.mu.Unlock()
	if !found || !time.Now().Before(exp) {
		return false
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	io.WriteString(w, token)
	return true
}

// A diagnosis makes the server send DNS queries and HTTP requests on a
// customer's behalf, so nobody may run them at will: one at a time per
// record, and at most diagnosesPerOrg per diagnoseWindow per
// organization (a sliding window over the start times of its last
// diagnoses). Beyond that Admit refuses it (the API answers 429 throttled).
const (
	diagnosesPerOrg = 10
	diagnoseWindow  = time.Minute
)

// limiter keeps the diagnoses running and recently started. It is safe
// for concurrent use.
type limiter struct {
	now func() time.Time

	// mu guards running and started.
	mu sync.Mutex
	// running maps each record being diagnosed to when its diagnosis
	// began.
	running map[string]time.Time
	// started maps an organization to the start times of its diagnoses
	// within the last diagnoseWindow, oldest first: at most
	// diagnosesPerOrg times for each organization that has diagnosed.
	started map[string][]time.Time
}

func newLimiter(now func() time.Time) *limiter {
	return &limiter{now: now, running: map[string]time.Time{}, started: map[string][]time.Time{}}
}

// admit starts a diagnosis of record, of organization org. It returns the
// func to call once the diagnosis is over; or, when record is being
// diagnosed already or org has started diagnosesPerOrg diagnoses within
// diagnoseWindow, nil and how long until another may start. A refused
// diagnosis does not count.
func (l *limiter) admit(org, record string) (done func(), wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	if began, busy := l.running[record]; busy {
		// The running one ends within diagnoseTimeout.
		return nil, max(began.Add(diagnoseTimeout).Sub(now), time.Second)
	}
	recent := l.started[org]
	expired := 0
	for expired < len(recent) && !now.Before(recent[expired].Add(diagnoseWindow)) {
		expired++
	}
	recent = slices.Delete(recent, 0, expired)
	if len(recent) >= diagnosesPerOrg {
		l.started[org] = recent
		return nil, max(recent[0].Add(diagnoseWindow).Sub(now), time.Second)
	}
	l.started[org] = append(recent, now)
	l.running[record] = now
	return func() {
		l.mu.Lock()
		delete(l.running, record)
		l.mu.Unlock()
	}, 0
}

func ptr(s string) *string { return &s }
