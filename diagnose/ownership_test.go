package diagnose_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/store"
)

// ownershipRecord is the record's ownership TXT record as a remediation
// lists it.
func ownershipRecord(rec apiRecord) diagnose.DNSRecord {
	return diagnose.DNSRecord{Name: rec.Ownership.Name, Type: "TXT", Value: rec.Ownership.Value}
}

func delegationRecord(rec apiRecord) diagnose.DNSRecord {
	return diagnose.DNSRecord{Name: rec.DCVDelegation.Name, Type: "CNAME", Value: rec.DCVDelegation.Value}
}

// wantRemedy checks that check id has a dns remediation listing exactly
// records.
func wantRemedy(t *testing.T, rep diagnose.Report, id string, records ...diagnose.DNSRecord) {
	t.Helper()
	c := byID(t, rep, id)
	if c.Remediation == nil || c.Remediation.Type != "dns" || !slices.Equal(c.Remediation.Records, records) {
		t.Errorf("%s remediation %+v, want type dns with %+v", id, c.Remediation, records)
	}
}

// TestDiagnoseFlattenedNeedsOwnership: a domain with the target's
// addresses and no CNAME reaches this server (cname and http_challenge
// pass) but is not proven to be the record's: the ownership check fails
// with the TXT record to add, and is the report's primary issue. With the
// TXT record the report is healthy once the record is valid.
func TestDiagnoseFlattenedNeedsOwnership(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	const domain = "flat.diag.example.com"
	rec := env.Create(t, domain)
	env.DNS.SetA(domain, "127.0.0.1")

	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "pass", "fail", "skip", "pass", "pass", "skip", "skip")
	wantSummary(t, rep, "fail", "ownership")
	wantRemedy(t, rep, "ownership", ownershipRecord(rec))
	if d := byID(t, rep, "ownership").Detail; !strings.Contains(d, "do not prove") || !strings.Contains(d, rec.Ownership.Name+" has no TXT record") {
		t.Errorf("ownership detail %q does not say what is missing", d)
	}

	env.PublishOwnership(rec)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	rep = diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "pass", "pass", "skip", "pass", "pass", "pass", "pass")
	if rep.Summary.Status != "healthy" {
		t.Errorf("summary %+v, want healthy", rep.Summary)
	}
	if d := byID(t, rep, "ownership").Detail; !strings.Contains(d, "holds this record's token") {
		t.Errorf("ownership detail %q", d)
	}
}

// TestDiagnoseAnotherRecordsToken: the ownership TXT record holding a
// token that is not the record's fails the check.
func TestDiagnoseAnotherRecordsToken(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	first := env.Create(t, "first.diag.example.com")
	rec := env.Create(t, "second.diag.example.com")
	env.DNS.SetA(rec.Domain, "127.0.0.1")
	env.DNS.SetTXT(rec.Ownership.Name, first.Ownership.Value)
	rep := diagnoseRecord(t, env, rec.ID)
	if c := byID(t, rep, "ownership"); c.Status != "fail" || !strings.Contains(c.Detail, "do not hold this record's token") {
		t.Errorf("ownership %s %q, want fail: the TXT records do not hold this record's token", c.Status, c.Detail)
	}
	wantRemedy(t, rep, "ownership", ownershipRecord(rec))
}

// TestDiagnoseApex: a zone apex cannot hold a CNAME, so the cname check
// asks for an ALIAS (or the addresses) and the ownership check, which
// applies whatever the domain's records, asks for the TXT record.
func TestDiagnoseApex(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "apex-diag.com")
	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "fail", "fail", "skip", "pass", "skip", "skip", "skip")
	wantSummary(t, rep, "fail", "cname")
	cname := byID(t, rep, "cname")
	if !strings.Contains(cname.Remediation.Summary, "zone apex") || strings.Contains(cname.Detail, "CNAME "+rec.TargetCNAME) {
		t.Errorf("cname of an apex: %q / %q, want the apex advice and no CNAME to add", cname.Detail, cname.Remediation.Summary)
	}
	wantRemedy(t, rep, "cname", diagnose.DNSRecord{Name: rec.Domain, Type: "ALIAS", Value: rec.TargetCNAME})
	wantRemedy(t, rep, "ownership", ownershipRecord(rec))
	if d := byID(t, rep, "ownership").Detail; !strings.Contains(d, "zone apex") {
		t.Errorf("ownership detail %q does not say why the TXT record is needed", d)
	}
}

// TestDiagnoseDelegation: with the zone served, the dcv_delegation check
// passes for a CNAME (here through the customer's own alias) to the
// record's delegation target, warns with the record to add for a CNAME
// elsewhere, and is an optional skip, naming the record, when there is
// none.
func TestDiagnoseDelegation(t *testing.T) {
	env := newZoneEnv(t, nil)
	rec := env.Create(t, "dcv.diag.example.com")
	env.DNS.SetCNAME(rec.Domain, rec.TargetCNAME)

	rep := diagnoseRecord(t, env, rec.ID)
	if c := byID(t, rep, "dcv_delegation"); c.Status != "skip" || c.Remediation != nil ||
		!strings.Contains(c.Detail, "Optional") || !strings.Contains(c.Detail, rec.DCVDelegation.Value) {
		t.Errorf("no delegation: %s %q (remediation %+v), want an optional skip naming %s", c.Status, c.Detail, c.Remediation, rec.DCVDelegation.Value)
	}

	env.DNS.SetCNAME(rec.DCVDelegation.Name, "_acme-challenge.elsewhere.example.org")
	rep = diagnoseRecord(t, env, rec.ID)
	if c := byID(t, rep, "dcv_delegation"); c.Status != "warn" || !strings.Contains(c.Detail, "elsewhere.example.org") {
		t.Errorf("a delegation elsewhere: %s %q, want warn naming it", c.Status, c.Detail)
	}
	wantRemedy(t, rep, "dcv_delegation", delegationRecord(rec))

	env.DNS.SetCNAME(rec.DCVDelegation.Name, "acme.dns-host.example.org")
	env.DNS.SetCNAME("acme.dns-host.example.org", rec.DCVDelegation.Value)
	rep = diagnoseRecord(t, env, rec.ID)
	if c := byID(t, rep, "dcv_delegation"); c.Status != "pass" || c.Remediation != nil {
		t.Errorf("delegated through an alias: %s %q, want pass", c.Status, c.Detail)
	}
}

// TestDiagnoseCloudflareProxied: a domain behind Cloudflare's proxy hides
// any CNAME. With the zone served, besides the cname check's "DNS only"
// advice, the report says that delegation plus the ownership TXT record is
// the way to keep the proxy: dcv_delegation warns listing both records,
// ownership fails with the TXT record. With both records in place, those
// two checks pass.
func TestDiagnoseCloudflareProxied(t *testing.T) {
	env := newZoneEnv(t, nil)
	rec := env.Create(t, "cf.diag.example.com")
	env.DNS.SetA(rec.Domain, "104.16.1.1")

	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "fail", "fail", "warn", "pass", "skip", "skip", "skip")
	wantSummary(t, rep, "fail", "cname")
	if s := byID(t, rep, "cname").Remediation.Summary; !strings.Contains(s, "DNS only") || !strings.Contains(s, "dcv_delegation") {
		t.Errorf("cname remediation %q, want both ways out", s)
	}
	dcv := byID(t, rep, "dcv_delegation")
	if !strings.Contains(dcv.Detail, "orange cloud") || !strings.Contains(dcv.Remediation.Summary, "keep Cloudflare's proxy") {
		t.Errorf("dcv_delegation %q / %q, want it to explain the way out for a proxied domain", dcv.Detail, dcv.Remediation.Summary)
	}
	wantRemedy(t, rep, "dcv_delegation", delegationRecord(rec), ownershipRecord(rec))
	wantRemedy(t, rep, "ownership", ownershipRecord(rec))

	env.DNS.SetCNAME(rec.DCVDelegation.Name, rec.DCVDelegation.Value)
	env.PublishOwnership(rec)
	rep = diagnoseRecord(t, env, rec.ID)
	// The engine now gets the record its certificate through the zone, so
	// the certificate and live checks depend on how far it got.
	for id, want := range map[string]string{"cname": "fail", "ownership": "pass", "dcv_delegation": "pass", "caa": "pass"} {
		if got := byID(t, rep, id).Status; got != want {
			t.Errorf("with both records, %s is %s, want %s", id, got, want)
		}
	}
}

// TestDiagnoseWithoutZone: on a deployment that does not serve the target
// zone (no --dns-addr), a DCV delegation cannot be used, and the report
// says so instead of proposing it: the dcv_delegation check is a skip
// naming --dns-addr, set up or not; for a domain behind Cloudflare's proxy
// the only way out is "DNS only" and a CNAME, and the ownership TXT record
// is not asked for.
func TestDiagnoseWithoutZone(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "cf.nozone.example.com")
	env.DNS.SetA(rec.Domain, "104.16.1.1")

	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "fail", "skip", "skip", "pass", "skip", "skip", "skip")
	if s := byID(t, rep, "cname").Remediation.Summary; !strings.Contains(s, "DNS only") || strings.Contains(s, "dcv_delegation") {
		t.Errorf("cname remediation %q, want only the \"DNS only\" way", s)
	}
	for _, id := range []string{"ownership", "dcv_delegation"} {
		if c := byID(t, rep, id); c.Remediation != nil {
			t.Errorf("%s proposes %+v on a deployment that cannot use it", id, c.Remediation)
		}
	}
	if d := byID(t, rep, "dcv_delegation").Detail; !strings.Contains(d, "--dns-addr") || !strings.Contains(d, "no such record") {
		t.Errorf("dcv_delegation detail %q, want it to say the delegation is not used here (--dns-addr)", d)
	}

	env.DNS.SetCNAME(rec.DCVDelegation.Name, rec.DCVDelegation.Value)
	env.PublishOwnership(rec)
	rep = diagnoseRecord(t, env, rec.ID)
	if c := byID(t, rep, "dcv_delegation"); c.Status != "skip" || !strings.Contains(c.Detail, "has no effect") {
		t.Errorf("a delegation set up without the zone: %s %q, want a skip saying it has no effect", c.Status, c.Detail)
	}
}
