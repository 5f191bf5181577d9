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
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// server is a running edgeproxy binary.
type server struct {
	cmd     *exec.Cmd
	api     string
	dataDir string
	stderr  *testbin.LockedBuffer
	done    chan error
}

// launch starts the binary with args and returns at once. When the test
// ends the process is killed, and its log must not hold a key value. The
// process's environment is PATH and env.
func launch(t *testing.T, bin string, args []string, env ...string) *server {
	t.Helper()
	s := &server{stderr: &testbin.LockedBuffer{}, done: make(chan error, 1)}
	s.cmd = exec.Command(bin, args...)
	s.cmd.Stderr = s.stderr
	s.cmd.Stdout = io.Discard
	s.cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.done <- s.cmd.Wait() }()
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		<-s.done
		// No log line may carry a key value, whatever the test did.
		if strings.Contains(s.stderr.String(), "phx_") {
			t.Errorf("the server's log contains an API key value (phx_):\n%s", s.stderr)
		}
	})
	return s
}

// startServer runs `serve --dev` on dataDir with fresh loopback addresses
// (args come last, so they may override them) and waits for /readyz.
func startServer(t *testing.T, dataDir string, args ...string) *server {
	t.Helper()
	return startServerEnv(t, dataDir, nil, args...)
}

// startServerEnv is startServer with env added to the process's
// environment.
func startServerEnv(t *testing.T, dataDir string, env []string, args ...string) *server {
	t.Helper()
	api := testbin.FreeAddr(t)
	s := launch(t, testbin.Build(t, true), append([]string{"serve", "--dev", "--data-dir", dataDir,
		"--api-addr", api, "--http-addr", testbin.FreeAddr(t), "--https-addr", testbin.FreeAddr(t)}, args...), env...)
	s.api, s.dataDir = "http://"+api, dataDir
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(s.api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return s
			}
		}
		select {
		case err := <-s.done:
			s.done <- err // for the cleanup, which waits for the exit
			t.Fatalf("server exited during start: %v\n%s", err, s.stderr)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("server not ready in 20s\n%s", s.stderr)
	return nil
}

func (s *server) key(t *testing.T) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(s.dataDir, "bootstrap-key"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

// request sends an API request with the key and decodes a JSON answer into
// out (when not nil), returning the status.
func (s *server) request(t *testing.T, key, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, s.api+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

// admin runs an admin command against the server and decodes its JSON.
func (s *server) admin(t *testing.T, out any, args ...string) {
	t.Helper()
	cmd := exec.Command(testbin.Build(t, true), append(args, "--data-dir", s.dataDir)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	data, err := cmd.Output()
	if err != nil {
		t.Fatalf("edgeproxy %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("edgeproxy %s printed %q: %v", strings.Join(args, " "), data, err)
		}
	}
}

func TestServeAndAdminCommands(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir)

	for name, want := range map[string]os.FileMode{"bootstrap-key": 0o600, "admin.sock": 0o600, "edgeproxy.db": 0o600} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != want {
			t.Errorf("%s mode = %o, want %o", name, got, want)
		}
	}
	bootKey := s.key(t)
	var list struct {
		Results         []map[string]any `json:"results"`
		MaxProxyRecords int              `json:"max_proxy_records"`
	}
	if code := s.request(t, bootKey, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
		t.Fatalf("bootstrap key lists: %d", code)
	}

	var org struct {
		ID              string `json:"id"`
		MaxProxyRecords int    `json:"max_proxy_records"`
	}
	s.admin(t, &org, "org", "create", "--name", "Acme", "--max-proxy-records", "5")
	if !store.IsID(org.ID) || org.MaxProxyRecords != 5 {
		t.Fatalf("org create printed %+v", org)
	}
	var user struct {
		ID int64 `json:"id"`
	}
	s.admin(t, &user, "user", "create", "--email", "ops@acme.example")
	uid := fmt.Sprint(user.ID)
	s.admin(t, nil, "member", "add", "--org", org.ID, "--user", uid, "--level", "admin")
	var key struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	}
	s.admin(t, &key, "key", "create", "--user", uid, "--scopes", "organization:write", "--orgs", org.ID, "--label", "ci")
	if !strings.HasPrefix(key.Value, "phx_") {
		t.Fatalf("key create printed value %q", key.Value)
	}

	var rec struct {
		ID          string `json:"id"`
		Status      string `json:"status"`
		TargetCNAME string `json:"target_cname"`
	}
	if code := s.request(t, key.Value, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.acme.example.com"}`, &rec); code != 201 {
		t.Fatalf("create with the new key: %d", code)
	}
	if rec.Status != "waiting" || !strings.HasSuffix(rec.TargetCNAME, ".proxy.localhost") {
		t.Errorf("created record %+v", rec)
	}

	var orgs []struct {
		ID   string `json:"id"`
		Name string `json:"name"`
	}
	s.admin(t, nil, "org", "update", "--id", org.ID, "--name", "Acme Inc")
	s.admin(t, &orgs, "org", "list")
	if len(orgs) != 2 || orgs[1].Name != "Acme Inc" {
		t.Errorf("org list = %+v", orgs)
	}
	var records []struct {
		OrgID  string `json:"org_id"`
		Domain string `json:"domain"`
	}
	s.admin(t, &records, "records", "list", "--org", org.ID, "--status", "waiting")
	if len(records) != 1 || records[0].Domain != "e.acme.example.com" || records[0].OrgID != org.ID {
		t.Errorf("records list = %+v", records)
	}
	var keys []struct {
		ID string `json:"id"`
	}
	s.admin(t, &keys, "key", "list", "--user", uid)
	if len(keys) != 1 || keys[0].ID != key.ID {
		t.Errorf("key list = %+v", keys)
	}

	// A backup taken while serving opens as a store holding the record.
	backup := filepath.Join(t.TempDir(), "copy.db")
	s.admin(t, nil, "backup", "--out", backup)
	copyStore, err := store.Open(backup, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := copyStore.RecordByDomain("e.acme.example.com"); err != nil || r.ID != rec.ID {
		t.Errorf("backup holds %+v, %v", r, err)
	}
	copyStore.Close()

	s.admin(t, nil, "key", "revoke", "--id", key.ID)
	if code := s.request(t, key.Value, "GET", "/api/organizations/@current/proxy_records/", "", nil); code != 401 {
		t.Errorf("revoked key answered %d, want 401", code)
	}

	// SIGTERM drains and exits 0.
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-s.done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v\n%s", err, s.stderr)
		}
		s.done <- err // for the cleanup
	case <-time.After(35 * time.Second):
		t.Fatal("no exit 35s after SIGTERM")
	}
}

// TestKill9Durability creates and deletes records while the server is
// killed with SIGKILL, restarts it on the same data dir and checks that
// every record acknowledged with 201 exists unless a 204 deleted it, and
// that none acknowledged deleted came back.
func TestKill9Durability(t *testing.T) {
	dir := t.TempDir()
	s := startServer(t, dir, "--max-proxy-records", "100000")
	key := s.key(t)
	client := &http.Client{Timeout: 10 * time.Second}

	var (
		mu        sync.Mutex
		created   = map[string]string{} // domain → id
		deleted   = map[string]bool{}   // id: DELETE answered 204
		attempted = map[string]bool{}   // id: DELETE sent, answer maybe lost in the kill
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < 10000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				domain := fmt.Sprintf("d%d-%d.kill.example.com", w, i)
				req, _ := http.NewRequest("POST", s.api+"/api/organizations/@current/proxy_records/", strings.NewReader(`{"domain":"`+domain+`"}`))
				req.Header.Set("Authorization", "Bearer "+key)
				resp, err := client.Do(req)
				if err != nil {
					return // the server is gone
				}
				var rec struct {
					ID string `json:"id"`
				}
				json.NewDecoder(resp.Body).Decode(&rec)
				resp.Body.Close()
				if resp.StatusCode != 201 {
					continue
				}
				mu.Lock()
				created[domain] = rec.ID
				mu.Unlock()
				if i%3 == 0 {
					mu.Lock()
					attempted[rec.ID] = true
					mu.Unlock()
					req, _ := http.NewRequest("DELETE", s.api+"/api/organizations/@current/proxy_records/"+rec.ID+"/", nil)
					req.Header.Set("Authorization", "Bearer "+key)
					resp, err := client.Do(req)
					if err != nil {
						return
					}
					resp.Body.Close()
					if resp.StatusCode == 204 {
						mu.Lock()
						deleted[rec.ID] = true
						mu.Unlock()
					}
				}
			}
		}(w)
	}
	// Let the writers get going, then kill without warning.
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		n := len(created)
		mu.Unlock()
		if n >= 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the writers created %d records in 60s, want 200 before the kill\n%s", n, s.stderr)
		}
	}
	s.cmd.Process.Kill()
	close(stop)
	wg.Wait()
	<-s.done
	s.done <- nil

	s2 := startServer(t, dir, "--max-proxy-records", "100000")
	var list struct {
		Results []struct {
			ID     string `json:"id"`
			Domain string `json:"domain"`
		} `json:"results"`
	}
	if code := s2.request(t, key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
		t.Fatalf("list after restart: %d", code)
	}
	have := map[string]string{}
	for _, r := range list.Results {
		have[r.ID] = r.Domain
	}
	lost, resurrected := 0, 0
	for domain, id := range created {
		switch {
		case deleted[id] && have[id] != "":
			resurrected++
		case !attempted[id] && have[id] != domain:
			// A record whose DELETE was sent but not answered may be
			// either there or gone: the kill may have come between the
			// commit and the 204.
			lost++
		}
	}
	t.Logf("%d creates acknowledged, %d deletes acknowledged, %d records after restart", len(created), len(deleted), len(have))
	if lost != 0 || resurrected != 0 {
		t.Errorf("after kill -9: %d acknowledged records lost, %d acknowledged deletes undone", lost, resurrected)
	}
}

// TestNoKeyInLogs sends keys in every place the API reads them, good, bad
// and revoked, with JSON logs and the access log on, and checks (in the
// server helper's cleanup) that no log line carries a key value.
func TestNoKeyInLogs(t *testing.T) {
	s := startServer(t, t.TempDir(), "--log-format", "json", "--access-log", "on")
	key := s.key(t)
	var created struct {
		ID    string `json:"id"`
		Value string `json:"value"`
	}
	s.admin(t, &created, "key", "create", "--user", "1", "--label", "logs")
	s.admin(t, nil, "key", "revoke", "--id", created.ID)
	for _, k := range []string{key, "phx_not_a_real_key_0123456789", created.Value} {
		base := s.api + "/api/organizations/@current/proxy_records/"
		for _, req := range []*http.Request{
			mustRequest(t, "GET", base, "", map[string]string{"Authorization": "Bearer " + k}),
			mustRequest(t, "POST", base, `{"domain":"bad domain","personal_api_key":"`+k+`"}`, nil),
			mustRequest(t, "GET", base+"?personal_api_key="+k, "", nil),
			mustRequest(t, "PUT", base+"?personal_api_key="+k, "", nil),
		} {
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
		}
	}
}

func mustRequest(t *testing.T, method, url, body string, headers map[string]string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return req
}

// TestBackupWhileWriting takes `edgeproxy backup` while API creates go on,
// then restores from the copy: a server started on it serves every record
// the copy holds, and the copy passes bbolt's consistency check with its
// indexes agreeing with its records.
func TestBackupWhileWriting(t *testing.T) {
	s := startServer(t, t.TempDir(), "--max-proxy-records", "100000")
	key := s.key(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var created atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				if s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", fmt.Sprintf(`{"domain":"b%d-%d.backup.example.com"}`, w, i), nil) == 201 {
					created.Add(1)
				}
			}
		}(w)
	}
	// The backup is taken once the writers are going, and while they go on.
	const before = 20
	for deadline := time.Now().Add(30 * time.Second); created.Load() < before; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			close(stop)
			wg.Wait()
			t.Fatalf("the writers created %d records in 30s, want %d before the backup", created.Load(), before)
		}
	}
	backup := filepath.Join(t.TempDir(), "copy.db")
	s.admin(t, nil, "backup", "--out", backup)
	close(stop)
	wg.Wait()

	st, err := store.Open(backup, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := st.Check(); err != nil {
		t.Errorf("backup fails the consistency check: %v", err)
	}
	records, err := st.Records(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) < before {
		t.Fatalf("backup holds %d records, fewer than the %d created before it began", len(records), before)
	}
	for _, r := range records {
		if got, err := st.RecordByDomain(r.Domain); err != nil || got.ID != r.ID {
			t.Errorf("domain index disagrees for %s: %v", r.Domain, err)
		}
	}
	st.Close()

	// Restore: a server on a data dir holding only the copy.
	dir := t.TempDir()
	data, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "edgeproxy.db"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	restored := startServer(t, dir)
	var list struct {
		Results []json.RawMessage `json:"results"`
	}
	if code := restored.request(t, key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
		t.Fatalf("list on the restored server: %d", code)
	}
	if got, want := len(list.Results), len(records); got != want {
		t.Errorf("restored server lists %d records, the backup holds %d", got, want)
	}
	t.Logf("backup taken under load holds %d records", len(records))
}
