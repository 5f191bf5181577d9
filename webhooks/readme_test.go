package webhooks_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/webhooks"
)

// TestREADMEReceiverExample builds the receiver example of the README as
// a program of its own and runs it on deliveries the worker sends: one
// signed with the webhook's secret must verify, one signed with another
// secret must not.
func TestREADMEReceiverExample(t *testing.T) {
	t.Parallel()
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(readme), "<!-- receiver example -->\n```go\n")
	example, _, ok2 := strings.Cut(rest, "```")
	if !ok || !ok2 {
		t.Fatal("README.md has no receiver example block")
	}
	// The program reads deliveries (secret, headers, body) as JSON lines
	// and prints one verdict per line.
	program := `package main

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

` + example + `
func main() {
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var in struct {
			Secret string
			Header http.Header
			Body   []byte
		}
		if err := json.Unmarshal(sc.Bytes(), &in); err != nil {
			panic(err)
		}
		fmt.Println(verified(in.Secret, in.Header, in.Body))
	}
}
`
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(program), 0o644); err != nil {
		t.Fatal(err)
	}

	// Real deliveries, captured by a receiver; their timestamps are the
	// wall clock's, which the example checks.
	e := newEnv(t)
	type captured struct {
		Header http.Header
		Body   []byte
	}
	got := make(chan captured, 4)
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var b bytes.Buffer
		b.ReadFrom(r.Body)
		got <- captured{r.Header.Clone(), b.Bytes()}
	}))
	t.Cleanup(srv.Close)
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	e.start(webhooks.Config{AllowPrivate: true, RootCAs: pool, Now: time.Now})
	org := e.org("acme")
	h := e.hook(org.ID, srv.URL+"/hooks")
	if _, err := e.store.EnqueuePing(org.ID, h.ID); err != nil {
		t.Fatal(err)
	}
	e.create(org.ID, "e.example.com")
	var input bytes.Buffer
	want := []string{}
	for range 2 {
		var c captured
		select {
		case c = <-got:
		case <-time.After(30 * time.Second):
			t.Fatal("no delivery arrived")
		}
		for _, secret := range []string{h.Secret, webhooks.NewSecret()} {
			line, _ := json.Marshal(map[string]any{"Secret": secret, "Header": c.Header, "Body": c.Body})
			input.Write(append(line, '\n'))
		}
		want = append(want, "true", "false")
	}

	cmd := exec.Command("go", "run", "main.go")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GO111MODULE=off", "GOFLAGS=")
	cmd.Stdin = &input
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("running the README's example: %v\n%s\n%s", err, out, program)
	}
	if got := strings.Fields(string(out)); strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("the README's example answered %v, want %v", got, want)
	}
}
