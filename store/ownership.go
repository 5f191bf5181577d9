package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"strings"
)

// A record names two DNS records its customer may add besides the CNAME
// (or address records) that bring its traffic here:
//
//   - the ownership TXT record, _edgeproxy.<domain>, holding the record's
//     own token. A CNAME to the record's target_cname proves by itself that
//     the domain's owner chose this record: the target is made from the
//     organization and the domain. Address records prove nothing, since
//     every target resolves to the same edge addresses; a domain that
//     reaches the edge through them (CNAME flattening, ALIAS, a zone apex)
//     must also publish the record's token. The token belongs to one
//     record: another record of the same domain, in this organization or
//     another, has its own, so a TXT record published for one never
//     proves another.
//   - the DCV delegation CNAME, _acme-challenge.<domain>, pointing at
//     _acme-challenge.<target_cname>, which lets the certificate
//     authority's DNS-01 validation be answered by edgeproxy's own zone.
const (
	ownershipLabel     = "_edgeproxy."
	acmeChallengeLabel = "_acme-challenge."
	// OwnershipTokenPrefix starts every ownership token, so that a TXT
	// record says what it is for to whoever reads the zone.
	OwnershipTokenPrefix = "edgeproxy-verification="
)

// DNSRecord is a DNS record for a customer to add, in presentation form:
// the owner name without the trailing dot, the type, and the value as
// written in a zone file (for TXT, without quotes).
type DNSRecord struct {
	Name  string `json:"name"`
	Type  string `json:"type"`
	Value string `json:"value"`
}

// NewOwnershipToken returns a new random ownership token:
// OwnershipTokenPrefix and 26 lower-case base32 characters (130 bits from
// crypto/rand).
func NewOwnershipToken() string {
	return OwnershipTokenPrefix + strings.ToLower(rand.Text())
}

// legacyOwnershipToken is the token of a record stored before tokens
// existed: derived from its id, a random UUID that only its organization
// (and the operator) is shown, so that every reader, on every node, shows
// the same token without having to write it first. The engine stores it
// in the record at its next write.
func legacyOwnershipToken(id string) string {
	sum := sha256.Sum256([]byte("edgeproxy ownership token\x00" + id))
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:])
	return OwnershipTokenPrefix + strings.ToLower(enc[:26])
}

// Token returns the record's ownership token: the one stored, else the
// one derived for a record written before tokens existed.
func (r *Record) Token() string {
	if r.OwnershipToken != "" {
		return r.OwnershipToken
	}
	return legacyOwnershipToken(r.ID)
}

// Ownership is the record's ownership TXT record:
// _edgeproxy.<domain> TXT <token>.
func (r *Record) Ownership() DNSRecord {
	return DNSRecord{Name: ownershipLabel + r.Domain, Type: "TXT", Value: r.Token()}
}

// DCVDelegation is the record's DCV delegation record:
// _acme-challenge.<domain> CNAME _acme-challenge.<target_cname>.
func (r *Record) DCVDelegation() DNSRecord {
	return DNSRecord{Name: acmeChallengeLabel + r.Domain, Type: "CNAME", Value: acmeChallengeLabel + r.TargetCNAME}
}
