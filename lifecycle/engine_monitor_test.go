package lifecycle_test

import (
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/store"
)

// TestMonitorKeepsDNSWarningWhenResolverFails checks that a monitor run
// that cannot resolve (SERVFAIL) neither clears a warning about DNS nor
// blames the customer anew: it learned nothing about their DNS.
func TestMonitorKeepsDNSWarningWhenResolverFails(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	const domain = "keepwarn.shop.example.com"
	rec := env.Create(t, domain)
	env.DNS.SetCNAME(domain, rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)

	env.DNS.Remove(domain)
	env.Clock.Advance(2 * time.Hour) // past the one-hour monitor interval
	warned := env.WaitStatus(t, rec.ID, store.StatusWarning)

	env.DNS.SetRcode(domain, dns.RcodeServerFailure)
	env.Clock.Advance(2 * time.Hour)
	r := env.WaitFor(t, rec.ID, "monitored again", func(r store.Record, err error) bool {
		return err == nil && r.UpdatedAt.After(warned.UpdatedAt)
	})
	if r.Status != store.StatusWarning || msg(r) != msg(warned) {
		t.Errorf("after a monitor run that could not resolve: %s %q, want the warning kept: %q", r.Status, msg(r), msg(warned))
	}
	if !strings.Contains(msg(r), "DNS no longer points here") {
		t.Errorf("warning message %q lacks the finding", msg(r))
	}
}
