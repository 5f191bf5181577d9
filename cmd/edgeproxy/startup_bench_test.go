package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/internal/testcert"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// TestStartupWithValidRecords measures how long the real binary takes to
// become ready on a data dir holding N valid records, each with its
// certificate in certmagic storage, and how much memory it then holds. It
// runs only when EDGEPROXY_BENCH_RECORDS is set; docs/PERFORMANCE.md holds
// the numbers.
//
//	EDGEPROXY_BENCH_RECORDS=10000 go test -run '^TestStartupWithValidRecords$' -count 1 -timeout 20m -v ./cmd/edgeproxy/
//
// The binary is built without the race detector. It is started
// EDGEPROXY_BENCH_RUNS times (default 3) on the same data dir, each time
// timed from exec to the first 200 from /readyz, and its VmRSS read then.
// Each run checks a handshake for three of the domains against the test
// CA, and that Pebble, the CA the binary is pointed at, got no order.
//
// Afterwards the same startup work (store.Open, certs.New, Engine.Start)
// runs in this process, timed by phase; with EDGEPROXY_BENCH_CPUPROFILE
// set to a file name, Engine.Start is CPU-profiled into it; with
// EDGEPROXY_BENCH_MEMPROFILE, the heap after it is written there.
func TestStartupWithValidRecords(t *testing.T) {
	n, err := strconv.Atoi(os.Getenv("EDGEPROXY_BENCH_RECORDS"))
	if err != nil || n <= 0 {
		t.Skip("set EDGEPROXY_BENCH_RECORDS to the number of valid records to start with")
	}
	runs := 3
	if v := os.Getenv("EDGEPROXY_BENCH_RUNS"); v != "" {
		if runs, err = strconv.Atoi(v); err != nil || runs <= 0 {
			t.Fatalf("EDGEPROXY_BENCH_RUNS=%q: want a whole number of runs above 0", v)
		}
	}
	w := newACMEWorld(t)
	dir := t.TempDir()
	began := time.Now()
	ca := newStartupCA(t)
	domains := buildStartupDataDir(t, dir, w.pebble.DirectoryURL(), n, ca)
	fi, err := os.Stat(filepath.Join(dir, dbFile))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("data dir: %d valid records with certificates, edgeproxy.db %.1f MiB, built in %s",
		n, float64(fi.Size())/(1<<20), time.Since(began).Round(time.Millisecond))

	bin := testbin.Build(t, false)
	check := []string{domains[0], domains[n/2], domains[n-1]}
	for i := range runs {
		ready, rss := startupRun(t, bin, dir, w, ca, check)
		t.Logf("run %d: ready after %s; %s; Pebble orders so far: %d",
			i+1, ready.Round(time.Millisecond), rss, w.pebble.Orders())
	}
	if got := w.pebble.Orders(); got != 0 {
		t.Errorf("starting on valid records made %d ACME orders", got)
	}
	startupInProcess(t, dir, w.pebble.DirectoryURL(), n)
}

// newStartupCA returns an intermediate CA under a root of its own, as
// the leaf certificates' chain; each leaf gets its own P-256 key, as an
// ACME order does.
func newStartupCA(t *testing.T) *testcert.CA {
	t.Helper()
	root, err := testcert.NewCA("startup bench root")
	if err != nil {
		t.Fatal(err)
	}
	inter, err := root.Intermediate("startup bench intermediate")
	if err != nil {
		t.Fatal(err)
	}
	return inter
}

// buildStartupDataDir fills dir's store with one organization holding n
// valid records, and certmagic storage with their certificates under the
// issuer key of the ACME issuer for caURL (what `serve --acme-ca caURL`
// configures), laid out as certmagic's saveCertResource writes them: key,
// chain and JSON metadata. It returns the domains.
func buildStartupDataDir(t *testing.T, dir, caURL string, n int, ca *testcert.CA) []string {
	t.Helper()
	st, err := store.Open(filepath.Join(dir, dbFile), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	org, err := st.CreateOrg("startup", &n)
	if err != nil {
		t.Fatal(err)
	}
	user, err := st.CreateUser("startup@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetMembership(org.ID, user.ID, store.LevelOwner); err != nil {
		t.Fatal(err)
	}
	storage := certs.NewStorage(st, certs.StorageOptions{})
	issuerKey := (&certmagic.ACMEIssuer{CA: caURL}).IssuerKey()

	domains := make([]string, n)
	for i := range domains {
		domains[i] = fmt.Sprintf("s%06d.startup.example.com", i)
	}
	ctx := context.Background()
	var (
		next     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
	)
	fail := func(err error) { errOnce.Do(func() { firstErr = err }) }
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n || firstErr != nil {
					return
				}
				d := domains[i]
				// 90 days, issued 10 days ago.
				cert, err := ca.Issue(time.Now().Add(-10*24*time.Hour), time.Now().Add(80*24*time.Hour), d)
				if err != nil {
					fail(err)
					return
				}
				meta, err := json.MarshalIndent(certmagic.CertificateResource{
					SANs:       []string{d},
					IssuerData: mustJSON(acme.Certificate{URL: caURL + "/certZ/" + strconv.Itoa(i), CA: caURL}),
				}, "", "\t")
				if err != nil {
					fail(err)
					return
				}
				for _, kv := range []struct {
					key   string
					value []byte
				}{
					{certmagic.StorageKeys.SitePrivateKey(issuerKey, d), cert.KeyPEM},
					{certmagic.StorageKeys.SiteCert(issuerKey, d), cert.ChainPEM},
					{certmagic.StorageKeys.SiteMeta(issuerKey, d), meta},
				} {
					if err := storage.Store(ctx, kv.key, kv.value); err != nil {
						fail(err)
						return
					}
				}
				now := st.Now()
				// Checked when it became valid; the monitor's next visit is
				// within a day, spread as the records' ages are.
				if _, err := st.CreateRecord(store.Record{
					OrgID:        org.ID,
					Domain:       d,
					TargetCNAME:  control.TargetCNAME(org.ID, d, startupBase),
					Status:       store.StatusValid,
					CreatedBy:    &user.ID,
					WaitingSince: now,
					IssuingSince: now,
					CertNotAfter: cert.Leaf.NotAfter,
					NextCheckAt:  now.Add(time.Hour + mathrand.N(23*time.Hour)),
				}, n); err != nil {
					fail(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if firstErr != nil {
		t.Fatal(firstErr)
	}

	// The layout is what the manager reads: load one through it.
	cm, err := certs.New(st, certs.Config{CA: caURL})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	if _, err := cm.Load(ctx, domains[n-1]); err != nil {
		t.Fatalf("the certificate written is not what certs.Manager loads: %v", err)
	}
	return domains
}

func mustJSON(v any) json.RawMessage {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return data
}

// startupBase is the --target-cname-base of the runs.
const startupBase = "proxy.example.net"

// startupRun starts the binary on dir, times it until /readyz answers 200,
// reads its memory, checks a handshake for each of the check domains, and
// stops it with SIGTERM.
func startupRun(t *testing.T, bin, dir string, w *acmeWorld, ca *testcert.CA, check []string) (ready time.Duration, rss string) {
	t.Helper()
	api := testbin.FreeAddr(t)
	args := append([]string{"serve", "--data-dir", dir, "--api-addr", api, "--target-cname-base", startupBase}, w.args...)
	cmd := exec.Command(bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()

	client := &http.Client{Timeout: 30 * time.Second}
	deadline := start.Add(2 * time.Minute)
	for {
		resp, err := client.Get("http://" + api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				ready = time.Since(start)
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not ready after 2m\n%s", stderr.String())
		}
		select {
		case err := <-done:
			t.Fatalf("server exited during start: %v\n%s", err, stderr.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	rss = fmt.Sprintf("VmRSS %s (RssAnon %s, RssFile %s), VmHWM %s", startupProcStatus(t, cmd.Process.Pid, "VmRSS"),
		startupProcStatus(t, cmd.Process.Pid, "RssAnon"), startupProcStatus(t, cmd.Process.Pid, "RssFile"),
		startupProcStatus(t, cmd.Process.Pid, "VmHWM"))

	for _, d := range check {
		conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", w.httpsAddr,
			&tls.Config{ServerName: d, RootCAs: ca.Pool})
		if err != nil {
			t.Errorf("handshake for %s: %v", d, err)
			continue
		}
		if leaf := conn.ConnectionState().PeerCertificates[0]; !slices.Contains(leaf.DNSNames, d) {
			t.Errorf("certificate for %s names %v", d, leaf.DNSNames)
		}
		conn.Close()
	}

	cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("exit after SIGTERM: %v", err)
		}
		done <- err
	case <-time.After(35 * time.Second):
		t.Errorf("no exit 35s after SIGTERM")
	}
	if strings.Contains(stderr.String(), "level=WARN") || strings.Contains(stderr.String(), "level=ERROR") {
		t.Errorf("the server logged problems:\n%s", stderr.String())
	}
	return ready, rss
}

// startupInProcess does what serve does before it reports ready, in this
// process, and times each part: open the store, create the certificate
// manager, and Engine.Start (list the records, load each certificate from
// storage, list stored certificates).
func startupInProcess(t *testing.T, dir, caURL string, n int) {
	t.Helper()
	t0 := time.Now()
	st, err := store.Open(filepath.Join(dir, dbFile), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	t1 := time.Now()
	records, err := st.Records(nil)
	if err != nil || len(records) != n {
		t.Fatalf("%d records, %v", len(records), err)
	}
	t2 := time.Now()
	cm, err := certs.New(st, certs.Config{CA: caURL})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	verifier, err := dnsverify.New([]string{"127.0.0.1:1"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	engine := lifecycle.NewEngine(st, verifier, cm, lifecycle.Config{})
	t3 := time.Now()
	stopProfile := func() {}
	if path := os.Getenv("EDGEPROXY_BENCH_CPUPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			t.Fatal(err)
		}
		stopProfile = pprof.StopCPUProfile
		defer func() { stopProfile() }()
	}
	if err := engine.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t4 := time.Now()
	stopProfile()
	stopProfile = func() {}
	// What the loaded certificates hold: the live heap, with records
	// (loaded above, and again by Start) dropped.
	again := make([]string, min(n, 1000))
	for i := range again {
		again[i] = records[i].Domain
	}
	records = []store.Record{records[0]}
	var ms runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if path := os.Getenv("EDGEPROXY_BENCH_MEMPROFILE"); path != "" {
		f, err := os.Create(path)
		if err != nil {
			t.Fatal(err)
		}
		if err := pprof.WriteHeapProfile(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	if !cm.Serving(records[0].Domain) {
		t.Errorf("%s not served after Start", records[0].Domain)
	}
	t.Logf("in process: store.Open %s; Records (decode all %d, once more after this) %s; certs.New+NewEngine %s; Engine.Start %s (%.0f µs per record); live heap after Start %.1f MiB (%.1f KiB per certificate)",
		t1.Sub(t0).Round(time.Microsecond), n, t2.Sub(t1).Round(time.Microsecond), t3.Sub(t2).Round(time.Microsecond),
		t4.Sub(t3).Round(time.Millisecond), float64(t4.Sub(t3).Microseconds())/float64(n),
		float64(ms.HeapAlloc)/(1<<20), float64(ms.HeapAlloc)/1024/float64(n))

	// Engine.Start's parts, separately.
	ctx := context.Background()
	t5 := time.Now()
	stored, err := cm.StoredDomains(ctx)
	if err != nil || len(stored) != n {
		t.Fatalf("%d stored domains, %v", len(stored), err)
	}
	t6 := time.Now()
	for _, d := range again {
		if _, err := cm.Load(ctx, d); err != nil {
			t.Fatal(err)
		}
	}
	t7 := time.Now()
	t.Logf("in process, again: StoredDomains %s; Load of %d certificates %s (%.0f µs each)",
		t6.Sub(t5).Round(time.Millisecond), len(again), t7.Sub(t6).Round(time.Millisecond),
		float64(t7.Sub(t6).Microseconds())/float64(len(again)))
}

// startupProcStatus returns a field of /proc/<pid>/status ("VmRSS"), as
// written there ("123456 kB").
func startupProcStatus(t *testing.T, pid int, field string) string {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
