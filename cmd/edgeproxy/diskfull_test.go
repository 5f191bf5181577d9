package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

// apiAnswer is one API answer: its status, headers and body.
type apiAnswer struct {
	status int
	header http.Header
	body   []byte
}

func (s *server) call(t *testing.T, key, method, path, body string) apiAnswer {
	t.Helper()
	req, err := http.NewRequest(method, s.api+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", method, path, err, s.stderr)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return apiAnswer{resp.StatusCode, resp.Header, data}
}

// wantStorageUnavailable fails the test unless a is the 503 of a refused
// write: the contract's error shape, a detail naming the cause, and a
// Retry-After.
func wantStorageUnavailable(t *testing.T, what string, a apiAnswer) {
	t.Helper()
	want503(t, what, a, "The data store cannot write (the file size limit is reached); nothing was changed. Retry later.", "30")
}

// want503 fails the test unless a is a 503 storage_unavailable with the
// detail and the Retry-After.
func want503(t *testing.T, what string, a apiAnswer, detail, retryAfter string) {
	t.Helper()
	if a.status != http.StatusServiceUnavailable {
		t.Fatalf("%s: %d %s, want 503", what, a.status, a.body)
	}
	var got map[string]any
	if err := json.Unmarshal(a.body, &got); err != nil {
		t.Fatalf("%s: body %q: %v", what, a.body, err)
	}
	want := map[string]any{"type": "server_error", "code": "storage_unavailable", "attr": nil, "detail": detail}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: body %s, want %v", what, a.body, want)
	}
	if ra := a.header.Get("Retry-After"); ra != retryAfter {
		t.Errorf("%s: Retry-After %q, want %s", what, ra, retryAfter)
	}
}

// setFileSizeLimit sets the soft RLIMIT_FSIZE of the process pid and
// returns the limit it had.
func setFileSizeLimit(t *testing.T, pid int, cur uint64) unix.Rlimit {
	t.Helper()
	var old unix.Rlimit
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, nil, &old); err != nil {
		t.Fatalf("reading RLIMIT_FSIZE of %d: %v", pid, err)
	}
	if err := unix.Prlimit(pid, unix.RLIMIT_FSIZE, &unix.Rlimit{Cur: cur, Max: old.Max}, nil); err != nil {
		t.Fatalf("setting RLIMIT_FSIZE of %d to %d: %v", pid, cur, err)
	}
	return old
}

// waitReady polls /readyz until it answers want, for up to 20 s, and
// returns the last body.
func (s *server) waitReady(t *testing.T, want int) string {
	t.Helper()
	var last string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get(s.api + "/readyz")
		if err != nil {
			t.Fatalf("/readyz: %v\n%s", err, s.stderr)
		}
		data, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		last = string(data)
		if resp.StatusCode == want {
			return last
		}
	}
	t.Fatalf("/readyz did not answer %d in 20 s; last answer %q", want, last)
	return ""
}

// adminCommand runs an admin command against the server and returns its
// stderr and exit error.
func (s *server) adminCommand(t *testing.T, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(testbin.Build(t, true), append(args, "--data-dir", s.dataDir)...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = io.Discard, &stderr
	err := cmd.Run()
	return stderr.String(), err
}

// TestDiskRefusingWrites runs the real binary and makes the kernel refuse
// its writes with a file size limit (RLIMIT_FSIZE, set from outside with
// prlimit, which needs no root): first at the database file's size, so
// writes fail once the file must grow, then below it, so every write
// fails. The API and the admin socket answer 503 and change nothing,
// /readyz turns 503, the process and its engine keep running (the Go
// runtime ignores SIGXFSZ, so the writes see EFBIG), and when the limit
// is lifted everything works again without a restart, with counts and
// limits right and bbolt's consistency check clean.
func TestDiskRefusingWrites(t *testing.T) {
	dns := dnstest.Start(t)
	dir := t.TempDir()
	s := startServer(t, dir, "--dns-resolvers", dns.Addr(), "--max-proxy-records", "100000")
	key := s.key(t)
	pid := s.cmd.Process.Pid
	dbPath := filepath.Join(dir, "edgeproxy.db")
	const base = "/api/organizations/@current/proxy_records/"
	create := func(domain string) apiAnswer {
		return s.call(t, key, "POST", base, `{"domain":"`+domain+`"}`)
	}
	idOf := func(a apiAnswer) string {
		var rec struct{ ID string }
		if err := json.Unmarshal(a.body, &rec); err != nil || rec.ID == "" {
			t.Fatalf("created record %q: %v", a.body, err)
		}
		return rec.ID
	}
	domains := func() map[string]bool {
		var list struct {
			Results []struct{ Domain string }
		}
		if code := s.request(t, key, "GET", base, "", &list); code != 200 {
			t.Fatalf("listing records: %d", code)
		}
		out := map[string]bool{}
		for _, r := range list.Results {
			out[r.Domain] = true
		}
		return out
	}
	var kept []string // ids of records deleted during and after the fault
	for i := range 2 {
		a := create(fmt.Sprintf("kept%d.disk.example.com", i))
		if a.status != 201 {
			t.Fatalf("create: %d %s", a.status, a.body)
		}
		kept = append(kept, idOf(a))
	}
	stored := len(kept)

	// Growth refused: writes go on in the room the file has, until one
	// needs it to grow.
	fi, err := os.Stat(dbPath)
	if err != nil {
		t.Fatal(err)
	}
	// SIGXFSZ, sent with every EFBIG, would end the process by default;
	// the Go runtime installs a handler that ignores it.
	if status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		var caught uint64
		for _, line := range strings.Split(string(status), "\n") {
			if v, ok := strings.CutPrefix(line, "SigCgt:"); ok {
				fmt.Sscanf(strings.TrimSpace(v), "%x", &caught)
			}
		}
		if caught&(1<<(syscall.SIGXFSZ-1)) == 0 {
			t.Fatalf("the server does not catch SIGXFSZ (SigCgt %x): EFBIG would kill it", caught)
		}
	}
	old := setFileSizeLimit(t, pid, uint64(fi.Size()))
	t.Cleanup(func() { unix.Prlimit(pid, unix.RLIMIT_FSIZE, &old, nil) })
	refused := ""
	for i := 0; i < 3000 && refused == ""; i++ {
		domain := fmt.Sprintf("r%04d.disk.example.com", i)
		switch a := create(domain); a.status {
		case 201:
			stored++
		case 503:
			wantStorageUnavailable(t, "a create beyond the file size limit", a)
			refused = domain
		default:
			t.Fatalf("create %s: %d %s", domain, a.status, a.body)
		}
	}
	if refused == "" {
		t.Fatalf("3000 creates within a file size limit of %d bytes all succeeded", fi.Size())
	}
	t.Logf("%d records stored before a create was refused at %d bytes", stored, fi.Size())
	listed := domains()
	if listed[refused] || len(listed) != stored {
		t.Errorf("after the refused create of %s: %d records listed (refused one listed: %v), want %d without it",
			refused, len(listed), listed[refused], stored)
	}
	if body := s.waitReady(t, 503); !strings.Contains(body, "file too large") {
		t.Errorf("/readyz while the file cannot grow: %q, want the cause", body)
	}

	// Every write refused: no page past the two meta pages may be written.
	setFileSizeLimit(t, pid, 2*uint64(os.Getpagesize()))
	wantStorageUnavailable(t, "a delete while every write is refused", s.call(t, key, "DELETE", base+kept[0]+"/", ""))
	if a := s.call(t, key, "GET", base+kept[0]+"/", ""); a.status != 200 {
		t.Errorf("the record whose delete got 503: %d %s, want it still there", a.status, a.body)
	}
	wantStorageUnavailable(t, "a create while every write is refused", create("another.disk.example.com"))
	if stderr, err := s.adminCommand(t, "org", "create", "--name", "refused"); err == nil ||
		!strings.Contains(stderr, "the data store cannot write (the file size limit is reached); nothing was changed, retry later") {
		t.Errorf("org create while every write is refused: %v, stderr %q", err, stderr)
	}
	s.waitReady(t, 503)
	wantMetric(t, s.api, "edgeproxy_store_refusing_writes 1")
	// The engine cannot record the outcome of its steps, so it holds them
	// until the disk takes writes again rather than redo them in a loop
	// (before the hold: about 900 DNS queries and 450 failed saves in 2 s
	// with these two records). The process must live through it. The
	// window is counted from the hold, however long the engine took to
	// find the disk full: a slow machine only makes fewer steps in it.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(s.stderr.String(), "holding every step until it can"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the engine did not log its hold within 30 s of every write being refused\n%s", s.stderr)
		}
	}
	queries, saveErrors := dns.Queries(), strings.Count(s.stderr.String(), "engine: saving record")
	time.Sleep(2 * time.Second)
	q, e := dns.Queries()-queries, strings.Count(s.stderr.String(), "engine: saving record")-saveErrors
	t.Logf("in 2 s of the hold, the engine sent %d DNS queries and logged %d failed saves", q, e)
	if q > 10 || e > 10 {
		t.Errorf("in 2 s of the hold while every write is refused: %d DNS queries and %d failed saves; the engine should hold its steps", q, e)
	}
	if resp, err := http.Get(s.api + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/healthz while every write is refused: %v %v\n%s", resp, err, s.stderr)
	}

	// Space returns: no restart.
	setFileSizeLimit(t, pid, old.Cur)
	s.waitReady(t, 200)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(s.stderr.String(), "the data store can write again; resuming"); {
		if time.Now().After(deadline) {
			t.Fatalf("the engine did not resume within 30 s of the disk taking writes again\n%s", s.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
	wantMetric(t, s.api, "edgeproxy_store_refusing_writes 0")
	if a := create(refused); a.status != 201 {
		t.Fatalf("creating %s again once the limit is lifted: %d %s", refused, a.status, a.body)
	}
	stored++
	if a := s.call(t, key, "DELETE", base+kept[0]+"/", ""); a.status != 204 {
		t.Fatalf("deleting once the limit is lifted: %d %s", a.status, a.body)
	}
	stored--
	if stderr, err := s.adminCommand(t, "org", "create", "--name", "after"); err != nil {
		t.Errorf("org create once the limit is lifted: %v %s", err, stderr)
	}
	listed = domains()
	if len(listed) != stored || !listed[refused] || listed["another.disk.example.com"] {
		t.Errorf("after recovery %d records listed, want %d, with %s and without another.disk.example.com", len(listed), stored, refused)
	}
	// The organization's stored count is its records: at a limit of
	// exactly that, a create is refused; one more allows one.
	var org struct{ ID string }
	if code := s.request(t, key, "GET", "/api/organizations/@current/", "", &org); code != 200 {
		t.Fatalf("organization: %d", code)
	}
	s.admin(t, nil, "org", "update", "--id", org.ID, "--max-proxy-records", fmt.Sprint(stored))
	if a := create("over.disk.example.com"); a.status != 400 || !strings.Contains(string(a.body), `"max_proxy_records"`) {
		t.Errorf("a create at the limit of %d: %d %s, want 400 max_proxy_records", stored, a.status, a.body)
	}
	s.admin(t, nil, "org", "update", "--id", org.ID, "--max-proxy-records", fmt.Sprint(stored+1))
	if a := create("over.disk.example.com"); a.status != 201 {
		t.Errorf("a create under the limit of %d: %d %s", stored+1, a.status, a.body)
	}

	// The file bbolt left is consistent.
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		s.done <- err // for the cleanup, which waits too
		if err != nil {
			t.Fatalf("the server exited with %v after SIGTERM\n%s", err, s.stderr)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("the server did not exit 40 s after SIGTERM\n%s", s.stderr)
	}
	st, err := store.Open(dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Check(); err != nil {
		t.Errorf("Check after the fault: %v", err)
	}
	if strings.Contains(s.stderr.String(), "panic") {
		t.Errorf("the server's log holds a panic:\n%s", s.stderr)
	}
}

// wantMetric checks that a scrape of /metrics has the sample line.
func wantMetric(t *testing.T, api, line string) {
	t.Helper()
	resp, err := http.Get(api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Split(string(data), "\n"), line) {
		t.Errorf("/metrics lacks the line %q", line)
	}
}
