package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// TestAdminSocketRefusesOtherUsers opens the admin socket's file mode to
// everyone and checks that a process of another user is still refused by
// the peer-credential check, while root is served.
func TestAdminSocketRefusesOtherUsers(t *testing.T) {
	// Running a client as another user takes root. `make test` runs as
	// root (it installs its tools with apt-get) and sets
	// EDGEPROXY_REQUIRE_TOOLS=1, so there the test cannot quietly stop
	// checking anything; a plain `go test ./...` as a user skips it.
	if os.Getuid() != 0 {
		if os.Getenv(testbin.RequireToolsEnv) == "1" {
			t.Fatalf("not root and %s=1: this test runs a client as another user, which needs root", testbin.RequireToolsEnv)
		}
		t.Skipf("not root: this test runs a client as another user, which needs root (with %s=1 this is a failure, not a skip)", testbin.RequireToolsEnv)
	}
	// curl speaks HTTP over a unix socket as another user.
	curl := testbin.Tool(t, "curl", "tools")
	dir, err := os.MkdirTemp("", "edgeproxy-peer")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "admin.sock")
	ln, err := listenAdmin(sock)
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(sock, 0o777) // as if loosened by hand
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("admin")) })}
	go srv.Serve(ln)
	defer srv.Close()

	asRoot, err := exec.Command(curl, "-s", "--unix-socket", sock, "http://admin/orgs").Output()
	if err != nil || string(asRoot) != "admin" {
		t.Fatalf("root was not served: %q, %v", asRoot, err)
	}
	other := exec.Command(curl, "-s", "-S", "--unix-socket", sock, "http://admin/orgs")
	other.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := other.Output()
	if err == nil || string(out) == "admin" {
		t.Errorf("a process of uid 65534 was served: %q, %v", out, err)
	}
	// The refusal must come from the credential check, not from the file
	// system keeping the client from connecting at all.
	if got := ln.(*peerCheckListener).refused.Load(); got != 1 {
		t.Errorf("the listener refused %d connections, want 1 (client said %v)", got, err)
	}
}
