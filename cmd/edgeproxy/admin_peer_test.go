package main

import (
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// TestAdminSocketRefusesOtherUsers opens the admin socket's file mode to
// everyone and checks that a process of another user is still refused by
// the peer-credential check, while root is served.
func TestAdminSocketRefusesOtherUsers(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs a client as another user, which needs root (CI and make test run as root)")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Fatalf("curl is needed to speak HTTP over a unix socket as another user: %v", err)
	}
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
