package control_test

import (
	"net/http"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

// curlExample runs one of the curl examples of the seed
// (/work/shared/seed/proxy-records-api.txt) through /bin/sh, as a user
// would paste it, with the key in $POSTHOG_PERSONAL_API_KEY and
// <ph_app_host>, :organization_id and :id filled in. The real curl binary
// (at the path curl, from testbin.Tool) sends the request; a few flags
// are added after "curl" to read the status (-w), keep quiet (-sS),
// ignore ~/.curlrc (-q) and any proxy of the environment (--noproxy). It
// returns the status and the body.
func curlExample(t *testing.T, f *apiFixture, curl, key, example string, vars map[string]string) (int, string) {
	t.Helper()
	cmdline := strings.ReplaceAll(example, "<ph_app_host>", f.srv.URL)
	cmdline = strings.ReplaceAll(cmdline, ":organization_id", vars["organization_id"])
	cmdline = strings.ReplaceAll(cmdline, ":id", vars["id"])
	rest, ok := strings.CutPrefix(cmdline, "curl ")
	if !ok {
		t.Fatalf("example %q does not start with curl", example)
	}
	cmdline = `curl -q -sS --noproxy '*' -w '\n%{http_code}' ` + rest
	cmd := exec.Command("/bin/sh", "-c", cmdline)
	// The curl testbin.Tool found comes first on the shell's PATH.
	cmd.Env = []string{"PATH=" + filepath.Dir(curl) + ":/usr/local/bin:/usr/bin:/bin", "POSTHOG_PERSONAL_API_KEY=" + key}
	out, err := cmd.Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("%s: %v %s", cmdline, err, msg)
	}
	i := strings.LastIndexByte(string(out), '\n')
	if i < 0 {
		t.Fatalf("%s: no status in output %q", cmdline, out)
	}
	status, err := strconv.Atoi(string(out[i+1:]))
	if err != nil {
		t.Fatalf("%s: status %q: %v", cmdline, out[i+1:], err)
	}
	return status, string(out[:i])
}

// TestSeedCurlExamples runs the documented curl examples, one line each,
// against a real server, in the order a user would: create, retrieve,
// list, retry (after the record failed), delete.
func TestSeedCurlExamples(t *testing.T) {
	curl := testbin.Tool(t, "curl", "tools")
	f := newOwnerFixture(t, nil)
	vars := map[string]string{"organization_id": f.org.ID}

	const (
		list     = `curl -H "Authorization: Bearer $POSTHOG_PERSONAL_API_KEY" <ph_app_host>/api/organizations/:organization_id/proxy_records/`
		create   = `curl -H 'Content-Type: application/json' -H "Authorization: Bearer $POSTHOG_PERSONAL_API_KEY" <ph_app_host>/api/organizations/:organization_id/proxy_records/ -d domain="e.example.com"`
		retrieve = `curl -H "Authorization: Bearer $POSTHOG_PERSONAL_API_KEY" <ph_app_host>/api/organizations/:organization_id/proxy_records/:id/`
		// The seed prints retry without -X POST or -d, so curl would send
		// a GET; the endpoint is a POST, so the method is given here.
		retry       = `curl -X POST -H 'Content-Type: application/json' -H "Authorization: Bearer $POSTHOG_PERSONAL_API_KEY" <ph_app_host>/api/organizations/:organization_id/proxy_records/:id/retry/`
		retryAsSeed = `curl -H 'Content-Type: application/json' -H "Authorization: Bearer $POSTHOG_PERSONAL_API_KEY" <ph_app_host>/api/organizations/:organization_id/proxy_records/:id/retry/`
		del         = `curl -X DELETE -H "Authorization: Bearer $POSTHOG_PERSONAL_API_KEY" <ph_app_host>/api/organizations/:organization_id/proxy_records/:id/`
	)

	status, body := curlExample(t, f.apiFixture, curl, f.key, create, vars)
	if got, want := status, http.StatusCreated; got != want {
		t.Fatalf("create: status %d, want %d (%s)", got, want, body)
	}
	rec := decodeRecord(t, []byte(body))
	if got, want := rec.Domain, "e.example.com"; got != want {
		t.Errorf("create: domain %q, want %q", got, want)
	}
	if got, want := rec.TargetCNAME, wantTarget(f.org.ID, "e.example.com"); got != want {
		t.Errorf("create: target_cname %q, want %q", got, want)
	}
	if got, want := rec.Status, "waiting"; got != want {
		t.Errorf("create: status %q, want %q", got, want)
	}
	vars["id"] = rec.ID

	status, body = curlExample(t, f.apiFixture, curl, f.key, retrieve, vars)
	if got, want := status, http.StatusOK; got != want {
		t.Fatalf("retrieve: status %d, want %d (%s)", got, want, body)
	}
	if got, want := decodeRecord(t, []byte(body)).ID, rec.ID; got != want {
		t.Errorf("retrieve: id %s, want %s", got, want)
	}

	status, body = curlExample(t, f.apiFixture, curl, f.key, list, vars)
	if got, want := status, http.StatusOK; got != want {
		t.Fatalf("list: status %d, want %d (%s)", got, want, body)
	}
	if !strings.Contains(body, `"id":"`+rec.ID+`"`) || !strings.Contains(body, `"max_proxy_records":2`) {
		t.Errorf("list %s: want the record and max_proxy_records 2", body)
	}

	f.setStatus(t, rec.ID, store.StatusErroring)
	status, body = curlExample(t, f.apiFixture, curl, f.key, retryAsSeed, vars)
	if got, want := status, http.StatusMethodNotAllowed; got != want {
		t.Errorf("retry as the seed prints it (a GET): status %d, want %d (%s)", got, want, body)
	}
	status, body = curlExample(t, f.apiFixture, curl, f.key, retry, vars)
	if got, want := status, http.StatusOK; got != want {
		t.Fatalf("retry: status %d, want %d (%s)", got, want, body)
	}
	retried := decodeRecord(t, []byte(body))
	if got, want := retried.Status, "waiting"; got != want {
		t.Errorf("retry: status %q, want %q", got, want)
	}
	if retried.Message != nil {
		t.Errorf("retry: message %q, want null", *retried.Message)
	}

	status, body = curlExample(t, f.apiFixture, curl, f.key, del, vars)
	if got, want := status, http.StatusNoContent; got != want {
		t.Fatalf("delete: status %d, want %d (%s)", got, want, body)
	}
	if body != "" {
		t.Errorf("delete: body %q, want none", body)
	}
	if _, err := f.st.Record(rec.ID); err == nil {
		t.Errorf("record still stored after delete")
	}
}
