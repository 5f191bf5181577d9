package certs

import (
	"context"
	"fmt"
	"strings"

	"github.com/caddyserver/certmagic"
	"github.com/libdns/libdns"
)

// ChallengeStore keeps the TXT values of ACME DNS-01 challenges, where
// edgeproxy's own zone (dnszone) answers them (*store.Store). Names are
// fully qualified, compared without regard to case or a trailing dot.
// Putting a value a name has, or deleting one it has not, is no error.
// Safe for concurrent use.
type ChallengeStore interface {
	PutChallengeTXT(fqdn, value string) error
	DeleteChallengeTXT(fqdn, value string) error
	ChallengeTXT(fqdn string) ([]string, error)
}

// ZoneDNSProvider is the libdns provider (certmagic.DNSProvider) of the
// zone edgeproxy serves itself: AppendRecords and DeleteRecords add and
// remove TXT values in the store, which every node's DNS server answers
// at once. It takes only TXT records, only for names inside Zone; the
// TTL of an answer is the zone's own, so a record's TTL is ignored, also
// when matching records to delete.
type ZoneDNSProvider struct {
	// Store keeps the values. Required.
	Store ChallengeStore
	// Zone is the zone served (the target CNAME base). Required.
	Zone string
}

var _ certmagic.DNSProvider = (*ZoneDNSProvider)(nil)

// AppendRecords adds the TXT records to the store and returns them. A
// record of another type, or a name outside the provider's zone, fails
// the call before anything is written.
func (p *ZoneDNSProvider) AppendRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	txts, err := p.txtRecords(zone, recs, true)
	if err != nil {
		return nil, fmt.Errorf("zone DNS provider: appending records: %w", err)
	}
	var added []libdns.Record
	for _, t := range txts {
		if err := ctx.Err(); err != nil {
			return added, fmt.Errorf("zone DNS provider: appending records: %w", err)
		}
		if err := p.Store.PutChallengeTXT(t.fqdn, t.Text); err != nil {
			return added, fmt.Errorf("zone DNS provider: appending TXT %s: %w", t.fqdn, err)
		}
		added = append(added, t.TXT)
	}
	return added, nil
}

// DeleteRecords removes the TXT records from the store and returns those
// that were there. A record with an empty value removes every value of its
// name.
func (p *ZoneDNSProvider) DeleteRecords(ctx context.Context, zone string, recs []libdns.Record) ([]libdns.Record, error) {
	txts, err := p.txtRecords(zone, recs, false)
	if err != nil {
		return nil, fmt.Errorf("zone DNS provider: deleting records: %w", err)
	}
	var deleted []libdns.Record
	for _, t := range txts {
		if err := ctx.Err(); err != nil {
			return deleted, fmt.Errorf("zone DNS provider: deleting records: %w", err)
		}
		held, err := p.Store.ChallengeTXT(t.fqdn)
		if err != nil {
			return deleted, fmt.Errorf("zone DNS provider: reading TXT %s: %w", t.fqdn, err)
		}
		for _, v := range held {
			if t.Text != "" && v != t.Text {
				continue
			}
			if err := p.Store.DeleteChallengeTXT(t.fqdn, v); err != nil {
				return deleted, fmt.Errorf("zone DNS provider: deleting TXT %s: %w", t.fqdn, err)
			}
			deleted = append(deleted, libdns.TXT{Name: t.Name, TTL: t.TTL, Text: v})
		}
	}
	return deleted, nil
}

// zoneTXT is a TXT record with its fully qualified name.
type zoneTXT struct {
	libdns.TXT
	fqdn string
}

// txtRecords checks that every record is a TXT record (with a value, when
// needValue) of a name inside the provider's zone, and returns them.
func (p *ZoneDNSProvider) txtRecords(zone string, recs []libdns.Record, needValue bool) ([]zoneTXT, error) {
	own := strings.ToLower(strings.TrimSuffix(p.Zone, "."))
	if own == "" {
		return nil, fmt.Errorf("the provider has no zone")
	}
	out := make([]zoneTXT, 0, len(recs))
	for _, rec := range recs {
		rr := rec.RR()
		if rr.Type != "TXT" {
			return nil, fmt.Errorf("%s record %q: only TXT records are kept", rr.Type, rr.Name)
		}
		if needValue && rr.Data == "" {
			return nil, fmt.Errorf("TXT record %q has no value", rr.Name)
		}
		if rr.Name == "" {
			return nil, fmt.Errorf("a TXT record has no name")
		}
		fqdn := strings.ToLower(strings.TrimSuffix(libdns.AbsoluteName(rr.Name, zone), "."))
		if fqdn == own || !strings.HasSuffix(fqdn, "."+own) {
			return nil, fmt.Errorf("TXT record %q in zone %q: %s is not a name under %s", rr.Name, zone, fqdn, own)
		}
		out = append(out, zoneTXT{TXT: libdns.TXT{Name: rr.Name, TTL: rr.TTL, Text: rr.Data}, fqdn: fqdn})
	}
	return out, nil
}
