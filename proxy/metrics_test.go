package proxy

import (
	"fmt"
	"testing"
)

// TestDomainLabelCap checks that --metrics-per-domain gives at most
// maxDomainLabels domains their own label and counts the rest together.
func TestDomainLabelCap(t *testing.T) {
	m := &edgeMetrics{domains: map[string]bool{}}
	for i := 0; i < maxDomainLabels; i++ {
		d := fmt.Sprintf("d%d.example.com", i)
		if got := m.domainLabel(d); got != d {
			t.Fatalf("domain %d labelled %q, want its own name", i, got)
		}
	}
	if got := m.domainLabel("one-too-many.example.com"); got != overflowDomain {
		t.Errorf("domain past the cap labelled %q, want %q", got, overflowDomain)
	}
	if got := m.domainLabel("d7.example.com"); got != "d7.example.com" {
		t.Errorf("a domain labelled before the cap is reached lost its label: %q", got)
	}
}
