package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// TestRun runs the tool as `make e2e` does, against a freshly built
// binary, and checks that it shows the whole path.
func TestRun(t *testing.T) {
	bin := testbin.Build(t, false)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	if err := run(ctx, &out, bin, "e.shop.example.com"); err != nil {
		t.Fatalf("run: %v\noutput:\n%s", err, out.String())
	}
	t.Logf("\n%s", out.String())
	text := out.String()
	for _, want := range []string{"waiting  ", "issuing  DNS verified", "valid", "TLS handshake with SNI e.shop.example.com", "chain verified"} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	iWait, iIssue, iValid := strings.Index(text, "  waiting"), strings.Index(text, "  issuing"), strings.Index(text, "  valid")
	if iWait < 0 || iIssue < 0 || iValid < 0 || !(iWait < iIssue && iIssue < iValid) {
		t.Errorf("statuses not shown in lifecycle order (waiting %d, issuing %d, valid %d)", iWait, iIssue, iValid)
	}
}
