// Package layering holds the test of which of edgeproxy's packages may
// import which: each stage depends only on the stages below it, so that
// the management API knows nothing of certificates, DNS or the engine,
// and the data and serving layers know nothing of the control plane.
package layering

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/edgeproxy/edgeproxy/"

// forbidden maps a package to the packages it must not depend on,
// directly or through another.
var forbidden = map[string][]string{
	"control":   {"certs", "dnsverify", "lifecycle", "diagnose"},
	"lifecycle": {"control", "diagnose"},
	"diagnose":  {"control", "lifecycle"},
	"dnsverify": {"control", "lifecycle", "diagnose", "certs"},
	"certs":     {"control", "lifecycle", "diagnose", "dnsverify"},
	"store":     {"control", "lifecycle", "diagnose", "certs", "dnsverify", "proxy", "webhooks", "dnszone"},
	"dnszone":   {"control", "lifecycle", "diagnose", "proxy", "webhooks"},
	"proxy":     {"control", "lifecycle", "diagnose", "dnsverify"},
	// The delivery worker reads the store and sends; the API renders
	// records for it (passed in), so it needs none of the control plane.
	"webhooks":          {"control", "lifecycle", "diagnose", "certs", "dnsverify", "proxy"},
	"internal/netguard": {"control", "lifecycle", "diagnose", "certs", "dnsverify", "proxy", "store", "webhooks"},
}

func TestLayering(t *testing.T) {
	for pkg, bad := range forbidden {
		out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+pkg).Output()
		if err != nil {
			t.Fatalf("go list -deps %s: %v", pkg, err)
		}
		deps := strings.Fields(string(out))
		if !slices.Contains(deps, module+pkg) {
			t.Fatalf("go list -deps %s does not list the package itself: %q", pkg, deps)
		}
		for _, b := range bad {
			if slices.Contains(deps, module+b) {
				t.Errorf("%s depends on %s", pkg, b)
			}
		}
	}
}

// TestBinaryDoesNotLinkEtcdServer keeps the etcd server out of the
// edgeproxy binary: it talks to etcd as a client only, and the embedded
// members of internal/etcdtest are for tests.
func TestBinaryDoesNotLinkEtcdServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", module+"cmd/edgeproxy").Output()
	if err != nil {
		t.Fatalf("go list -deps cmd/edgeproxy: %v", err)
	}
	deps := strings.Fields(string(out))
	if !slices.Contains(deps, module+"cmd/edgeproxy") {
		t.Fatalf("go list -deps cmd/edgeproxy does not list the package itself: %q", deps)
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "go.etcd.io/etcd/server/") || d == module+"internal/etcdtest" {
			t.Errorf("cmd/edgeproxy depends on %s", d)
		}
	}
}
