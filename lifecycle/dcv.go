package lifecycle

import (
	"context"
	"fmt"
	"strings"

	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/store"
)

// Certificates before traffic (Config.ZoneServed).
//
// A record's DCV delegation is the CNAME _acme-challenge.<domain> →
// _acme-challenge.<target_cname>. Its target is made from the
// organization and the domain, like target_cname, so only the domain's
// owner can have pointed a name under the domain at it for this record:
// it proves ownership as a CNAME to target_cname does. With the zone
// served here, it also lets the CA's DNS-01 validation be answered by our
// zone, so the certificate does not need the traffic.
//
//   - waiting → issuing when the traffic check proves the domain (as
//     without the zone), or when the delegation is in place; for a domain
//     whose addresses are Cloudflare's proxy (orange cloud), the delegation
//     and the ownership TXT record together, as the proxy hides where its
//     traffic goes.
//   - Before each order, and at each monitor pass, the delegation as DNS
//     shows it decides how the certificate is validated
//     (Certs.SetDCVDelegation): DNS-01 while it is in place, else HTTP-01
//     and TLS-ALPN-01. A resolver failure changes nothing.
//   - A valid record proven by its delegation alone, whose traffic does
//     not reach us yet, stays valid and is served (so it is served the
//     moment its traffic arrives, with no gap): its message says what to
//     add for the traffic (notPointedPrefix), and the monitor looks again
//     with the pauses of a waiting record, so the message clears soon
//     after the traffic arrives.
//   - The monitor accepts either proof; a valid record that has neither
//     goes to warning, as it does without the zone.

// notPointedPrefix starts the message of a valid record whose certificate
// was validated through its delegation but whose traffic does not come
// here yet.
const notPointedPrefix = "The certificate is ready, but traffic does not come here yet: "

// dcvProof is what a record's DCV delegation proves when its traffic
// check did not prove the domain.
type dcvProof struct {
	// proven: the delegation is in place (and, for a domain behind
	// Cloudflare's proxy, the ownership TXT record holds the token).
	proven bool
	// unknown: a resolver failed, so nothing was learned.
	unknown bool
	// looked: the delegation was looked up, and delegated is what DNS
	// showed (whatever the ownership TXT record showed).
	looked, delegated bool
	// advice ends a waiting record's message: what to add for the
	// delegation's way. Empty when there is nothing to say.
	advice string
}

// checkDelegation looks up the record's DCV delegation within
// dnsCheckTimeout.
func (e *Engine) checkDelegation(ctx context.Context, r store.Record) dnsverify.DelegationResult {
	ctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	defer cancel()
	dcv := r.DCVDelegation()
	return e.dns.CheckDelegation(ctx, dcv.Name, dcv.Value)
}

// proveByDelegation says whether the record's delegation proves the domain
// when its traffic check, res, did not. Only with Config.ZoneServed.
func (e *Engine) proveByDelegation(ctx context.Context, r store.Record, res dnsverify.CNAMEResult) dcvProof {
	deleg := e.checkDelegation(ctx, r)
	if deleg.Err != nil {
		return dcvProof{unknown: true}
	}
	p := e.delegationProof(ctx, r, res, deleg)
	p.looked, p.delegated = true, deleg.Delegated
	return p
}

// delegationProof is proveByDelegation once the delegation is looked up.
func (e *Engine) delegationProof(ctx context.Context, r store.Record, res dnsverify.CNAMEResult, deleg dnsverify.DelegationResult) dcvProof {
	dcv, own := r.DCVDelegation(), r.Ownership()
	cname := fmt.Sprintf("%s CNAME %s", dcv.Name, dcv.Value)
	txt := fmt.Sprintf("%s TXT %q", own.Name, own.Value)
	if res.Outcome != dnsverify.CloudflareProxied {
		if deleg.Delegated {
			return dcvProof{proven: true}
		}
		if len(deleg.Chain) > 0 {
			return dcvProof{advice: fmt.Sprintf("Its DCV delegation %s is a CNAME to %s, not to %s, so it cannot be used for the "+
				"certificate either; change it to: %s", dcv.Name, strings.TrimSuffix(deleg.Chain[0], "."), dcv.Value, cname)}
		}
		return dcvProof{}
	}
	ctx, cancel := context.WithTimeout(ctx, dnsCheckTimeout)
	proof := e.dns.CheckOwnership(ctx, ownership(r))
	cancel()
	if proof.Err != nil {
		return dcvProof{unknown: true}
	}
	switch {
	case deleg.Delegated && proof.Proven:
		return dcvProof{proven: true}
	case deleg.Delegated:
		return dcvProof{advice: fmt.Sprintf("To keep Cloudflare's proxy instead: the DCV delegation %s is in place; also add this "+
			"record, which proves the domain is yours: %s", dcv.Name, txt)}
	case proof.Proven:
		return dcvProof{advice: fmt.Sprintf("To keep Cloudflare's proxy instead: the ownership TXT record %s is in place; also add "+
			"this DCV delegation record (\"DNS only\"), which lets the certificate be validated through this server's zone: %s",
			own.Name, cname)}
	default:
		return dcvProof{advice: fmt.Sprintf("Or keep Cloudflare's proxy: add the DCV delegation record (\"DNS only\") %s, which lets "+
			"the certificate be validated through this server's zone, and the ownership TXT record %s.", cname, txt)}
	}
}

// route makes the record's certificate be validated the way its DCV
// delegation allows now (see the top of this file) and reports whether
// that is DNS-01. A resolver failure changes nothing and reports false.
func (e *Engine) route(ctx context.Context, r store.Record) (viaDNS bool) {
	deleg := e.checkDelegation(ctx, r)
	if deleg.Err != nil {
		return false
	}
	e.setRoute(ctx, r, deleg.Delegated)
	return deleg.Delegated
}

// setRoute tells the certificate manager how the record's certificate is
// validated: DNS-01 through the zone when delegated.
func (e *Engine) setRoute(ctx context.Context, r store.Record, delegated bool) {
	target := ""
	if delegated {
		target = r.DCVDelegation().Value
	}
	if err := e.certs.SetDCVDelegation(ctx, r.Domain, target); err != nil {
		e.log.Warn("engine: setting how a certificate is validated", "record_id", r.ID, "domain", r.Domain, "err", err)
	}
}

// notPointed reports whether res shows, for certain, that the domain's
// traffic does not reach the edge: no record, another target, other
// addresses. Addresses equal to the target's do reach it (only their
// ownership is unproven); Cloudflare's proxy hides where it sends traffic.
func notPointed(res dnsverify.CNAMEResult) bool {
	switch res.Outcome {
	case dnsverify.Missing, dnsverify.WrongTarget, dnsverify.OtherAddresses:
		return true
	}
	return false
}

// notPointedMessage is the message of a valid record proven by its
// delegation whose traffic does not come here: what DNS shows and the
// record to add (res.Message ends with it).
func notPointedMessage(res dnsverify.CNAMEResult) string {
	return notPointedPrefix + res.Message
}

// delegatedMessage is the message of a record going issuing on the proof
// of its DCV delegation.
func delegatedMessage(r store.Record, res dnsverify.CNAMEResult) string {
	dcv := r.DCVDelegation()
	if res.Outcome == dnsverify.CloudflareProxied {
		return fmt.Sprintf("DCV delegation verified (%s is a CNAME to %s) and the ownership TXT record %s holds this record's token, "+
			"with %s behind Cloudflare's proxy; requesting a certificate validated through this server's zone (DNS-01).",
			dcv.Name, dcv.Value, r.Ownership().Name, r.Domain)
	}
	return fmt.Sprintf("DCV delegation verified (%s is a CNAME to %s); requesting a certificate validated through this server's "+
		"zone (DNS-01), before traffic points here.", dcv.Name, dcv.Value)
}

// waitingMessage is the message of a record still waiting: what its
// traffic check found, and what its delegation could add.
func waitingMessage(res dnsverify.CNAMEResult, dcv dcvProof) string {
	if dcv.advice == "" {
		return res.Message
	}
	return res.Message + " " + dcv.advice
}
