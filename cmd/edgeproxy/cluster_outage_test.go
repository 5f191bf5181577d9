package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// The tests of this file run the three-node world of cluster_e2e_test.go
// through the failures of its store: every etcd member down at once, and
// a single bbolt node's data moved into etcd under running certificates.

// outageEnv names the variable that sets how long TestClusterEtcdAllDown
// keeps etcd down while it checks the edge (a Go duration, e.g. 3m; make
// outage sets it). make test keeps the default, outageDefault.
const (
	outageEnv     = "EDGEPROXY_OUTAGE_DURATION"
	outageDefault = 12 * time.Second
)

func outageDuration(t *testing.T) time.Duration {
	t.Helper()
	v := os.Getenv(outageEnv)
	if v == "" {
		return outageDefault
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a positive Go duration such as 3m", outageEnv, v)
	}
	return d
}

// startServerRetry is startServer, started again on a new API address
// when the one it was given was taken meanwhile: testbin.FreeAddr's port
// is free when chosen, but any connection the machine opens may take it
// as its source port before the binary listens.
func startServerRetry(t *testing.T, dataDir string, args ...string) *server {
	t.Helper()
	for attempt := 1; ; attempt++ {
		api := testbin.FreeAddr(t)
		s := launch(t, testbin.Build(t, true), append([]string{"serve", "--dev", "--data-dir", dataDir,
			"--api-addr", api, "--http-addr", testbin.FreeAddr(t), "--https-addr", testbin.FreeAddr(t)}, args...))
		s.api, s.dataDir = "http://"+api, dataDir
		exited := false
		client := &http.Client{Timeout: 5 * time.Second}
		for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline) && !exited; {
			if resp, err := client.Get(s.api + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					return s
				}
			}
			select {
			case err := <-s.done:
				s.done <- err // for the cleanup, which waits for the exit
				if attempt >= 3 || !strings.Contains(s.stderr.String(), "--api-addr: listen tcp "+api+": bind: address already in use") {
					t.Fatalf("server exited during start: %v\n%s", err, s.stderr)
				}
				t.Logf("the API address %s was taken before the server listened; starting it again on another", api)
				exited = true
			case <-time.After(50 * time.Millisecond):
			}
		}
		if !exited {
			t.Fatalf("server not ready in 20s\n%s", s.stderr)
		}
	}
}

// startNodeRetry is clusterWorld.startNode through startServerRetry.
func (cw *clusterWorld) startNodeRetry(i int) *server {
	cw.t.Helper()
	n := cw.nodes[i]
	if n.s != nil {
		cw.t.Fatalf("%s is already running", n.name)
	}
	n.s = startServerRetry(cw.t, n.dataDir, append([]string{"--node-name", n.name,
		"--http-addr", net.JoinHostPort(n.ip, strconv.Itoa(cw.httpPort)),
		"--https-addr", net.JoinHostPort(n.ip, strconv.Itoa(cw.httpsPort))}, cw.args...)...)
	return n.s
}

// createRecords creates one record per domain, through the nodes in
// turn, points each at a node (so the CA validates through each of them)
// and waits until all are valid and every running node serves them.
func (cw *clusterWorld) createRecords(domains []string) []recordJSON {
	cw.t.Helper()
	var recs []recordJSON
	for k, d := range domains {
		rec := cw.create(k%len(cw.nodes), d)
		cw.point(rec.Domain, rec.TargetCNAME, k%len(cw.nodes))
		recs = append(recs, rec)
	}
	cw.waitValid(cw.running()[0], recs, 90*time.Second)
	for _, rec := range recs {
		cw.waitServed(rec.Domain, true, time.Now(), 10*time.Second)
	}
	return recs
}

// waitValid waits, up to bound, until node i's API shows every one of
// recs valid.
func (cw *clusterWorld) waitValid(i int, recs []recordJSON, bound time.Duration) {
	cw.t.Helper()
	deadline := time.Now().Add(bound)
	for _, rec := range recs {
		for {
			var got recordJSON
			if code := cw.nodes[i].s.request(cw.t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code == 200 && got.Status == "valid" {
				break
			}
			if time.Now().After(deadline) {
				cw.t.Fatalf("%s not valid in %v: %+v\n%s", rec.Domain, bound, got, cw.nodes[i].s.stderr)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// serves checks that node i serves domain: a TLS handshake chained to
// Pebble's root presenting the leaf want (when not nil), then a request on
// a new connection that reaches the upstream.
func (cw *clusterWorld) serves(i int, domain string, want []byte) error {
	return cw.servesWith(cw.edgeClient(i), i, domain, want)
}

// servesWith is serves with the client, one of node i's edgeClient.
func (cw *clusterWorld) servesWith(client *http.Client, i int, domain string, want []byte) error {
	leaf, err := cw.handshake(i, domain)
	if err != nil {
		return fmt.Errorf("%s: handshake for %s: %w", cw.nodes[i].name, domain, err)
	}
	if want != nil && !bytes.Equal(leaf.Raw, want) {
		return fmt.Errorf("%s: %s presents the certificate with serial %x, not the one it held (another certificate was obtained)", cw.nodes[i].name, domain, leaf.SerialNumber)
	}
	if err := cw.proxied(client, domain); err != nil {
		return fmt.Errorf("through %s: %w", cw.nodes[i].name, err)
	}
	return nil
}

// leaves returns the leaf certificate node i presents for each domain.
func (cw *clusterWorld) leaves(i int, recs []recordJSON) map[string][]byte {
	cw.t.Helper()
	leaves := map[string][]byte{}
	for _, rec := range recs {
		leaf, err := cw.handshake(i, rec.Domain)
		if err != nil {
			cw.t.Fatalf("%s: handshake for %s: %v", cw.nodes[i].name, rec.Domain, err)
		}
		leaves[rec.Domain] = leaf.Raw
	}
	return leaves
}

// edgeSweeper checks, in a loop until stopped, that every node it is told
// is up serves every domain with the certificate it served before. A node
// is taken out (down) before it is killed and put back once it runs
// again; a sweep of a node holds the lock, so no sweep sees a node that
// is being killed.
type edgeSweeper struct {
	cw      *clusterWorld
	leaves  map[string][]byte
	clients []*http.Client // one per node

	mu       sync.Mutex
	up       []bool
	sweeps   int // node sweeps done, each over every domain
	failures []string

	stop chan struct{}
	done chan struct{}
}

func (cw *clusterWorld) startSweeper(leaves map[string][]byte) *edgeSweeper {
	sw := &edgeSweeper{cw: cw, leaves: leaves, up: make([]bool, len(cw.nodes)),
		stop: make(chan struct{}), done: make(chan struct{})}
	for i := range cw.nodes {
		sw.clients = append(sw.clients, cw.edgeClient(i))
	}
	for _, i := range cw.running() {
		sw.up[i] = true
	}
	go sw.run()
	return sw
}

func (sw *edgeSweeper) run() {
	defer close(sw.done)
	for {
		for i := range sw.up {
			select {
			case <-sw.stop:
				return
			default:
			}
			sw.sweep(i)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// sweep checks every domain on node i, if it is up.
func (sw *edgeSweeper) sweep(i int) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if !sw.up[i] {
		return
	}
	for domain, leaf := range sw.leaves {
		if err := sw.cw.servesWith(sw.clients[i], i, domain, leaf); err != nil {
			// Bounded: the first few say enough.
			if len(sw.failures) < 20 {
				sw.failures = append(sw.failures, time.Now().Format("15:04:05.000")+" "+err.Error())
			}
		}
	}
	sw.sweeps++
}

func (sw *edgeSweeper) set(i int, up bool) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	sw.up[i] = up
}

// finish stops the loop and returns the node sweeps done and the
// failures seen.
func (sw *edgeSweeper) finish() (int, []string) {
	close(sw.stop)
	<-sw.done
	return sw.sweeps, sw.failures
}

// tryCall sends an API request to node i and returns the answer; unlike
// server.call it does not fail the test, so goroutines may use it.
func (cw *clusterWorld) tryCall(i int, method, path, body string) (apiAnswer, error) {
	req, err := http.NewRequest(method, cw.nodes[i].s.api+path, strings.NewReader(body))
	if err != nil {
		return apiAnswer{}, err
	}
	req.Header.Set("Authorization", "Bearer "+cw.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return apiAnswer{}, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return apiAnswer{resp.StatusCode, resp.Header, data}, err
}

// metricSum is the sum of every series of the metric name on s (0 when
// it has none).
func (s *server) metricSum(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		f, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		sum += f
	}
	return sum
}

// TestClusterEtcdAllDown kills every etcd member (kill -9) under three
// nodes serving valid records. For the whole outage (outageDefault, or
// EDGEPROXY_OUTAGE_DURATION) every node keeps serving every domain, each
// with the certificate it served before, TLS chained to Pebble's root and
// proxied to the upstream, with not one failure. Meanwhile API writes
// answer 503 storage_unavailable with Retry-After and change nothing,
// reads answer from the nodes' local copies, /readyz stays 200 naming the
// degradation, and a node killed with kill -9 starts again from its local
// copy alone and serves every domain from its first handshake. Once etcd
// returns, writes go through every node again, a record created through
// one is read at once through the others and, pointed, becomes valid and
// served on every node, and the store's metric and /readyz recover.
func TestClusterEtcdAllDown(t *testing.T) {
	outage := outageDuration(t)
	cw := newClusterWorld(t)
	for i := range cw.nodes {
		cw.startNodeRetry(i)
	}
	cw.key = cw.nodes[0].s.key(t)
	began := time.Now()
	var domains []string
	for k := range 4 {
		domains = append(domains, fmt.Sprintf("r%d.outage.example.com", k))
	}
	recs := cw.createRecords(domains)
	leaves := cw.leaves(0, recs)
	for i := range cw.nodes {
		for _, rec := range recs {
			if err := cw.serves(i, rec.Domain, leaves[rec.Domain]); err != nil {
				t.Fatalf("before the outage: %v", err)
			}
		}
	}
	t.Logf("%d records valid and served on the 3 nodes %v after the start", len(recs), time.Since(began).Round(time.Millisecond))

	sw := cw.startSweeper(leaves)
	cw.etcd.KillAll()
	down := time.Now()

	// Writes: a create through each node and a delete of a served record
	// through one, all at once (each waits for etcd up to the store's
	// timeout).
	type write struct {
		what string
		a    apiAnswer
		err  error
	}
	writes := make([]write, len(cw.nodes)+1)
	var wg sync.WaitGroup
	for i := range cw.nodes {
		wg.Go(func() {
			a, err := cw.tryCall(i, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"during.outage.example.com"}`)
			writes[i] = write{"create through " + cw.nodes[i].name + " during the outage", a, err}
		})
	}
	wg.Go(func() {
		a, err := cw.tryCall(2, "DELETE", "/api/organizations/@current/proxy_records/"+recs[0].ID+"/", "")
		writes[len(cw.nodes)] = write{"delete through " + cw.nodes[2].name + " during the outage", a, err}
	})
	wg.Wait()
	for _, w := range writes {
		if w.err != nil {
			t.Fatalf("%s: %v", w.what, w.err)
		}
		wantClusterUnavailable(t, w.what, w.a)
	}
	t.Logf("the writes during the outage answered 503 within %v of etcd's kill", time.Since(down).Round(time.Millisecond))

	// Reads, /readyz and the metric, on every node.
	for i, n := range cw.nodes {
		n.s.waitMetric(t, "edgeproxy_store_up", 0, 20*time.Second)
		if code, body := n.s.readyz(t); code != 200 || body != "ready; degraded: store unreachable (writes answer 503)\n" {
			t.Errorf("%s: /readyz during the outage: %d %q, want 200 naming the degradation", n.name, code, body)
		}
		cw.wantRecords(i, recs, "during the outage")
	}

	// A node dies and starts again while etcd is still down: from its
	// local copy alone, serving every domain from its first handshake.
	const victim = 1
	sw.set(victim, false)
	cw.kill(victim)
	restart := time.Now()
	cw.startNodeRetry(victim)
	t.Logf("%s killed and ready again %v later, etcd down", cw.nodes[victim].name, time.Since(restart).Round(time.Millisecond))
	for _, rec := range recs {
		if err := cw.serves(victim, rec.Domain, leaves[rec.Domain]); err != nil {
			t.Errorf("right after its restart during the outage: %v", err)
		}
	}
	sw.set(victim, true)
	if code, body := cw.nodes[victim].s.readyz(t); code != 200 || !strings.Contains(body, "degraded") {
		t.Errorf("%s: /readyz after its restart during the outage: %d %q", cw.nodes[victim].name, code, body)
	}
	cw.wantRecords(victim, recs, "after a restart during the outage")

	if left := outage - time.Since(down); left > 0 {
		time.Sleep(left)
	}
	sweeps, failures := sw.finish()
	t.Logf("etcd down %v: %d node sweeps of %d domains (handshake + proxied request each), %d failures",
		time.Since(down).Round(time.Millisecond), sweeps, len(recs), len(failures))
	if len(failures) > 0 {
		t.Fatalf("the edge failed during the outage:\n%s", strings.Join(failures, "\n"))
	}
	if sweeps < 3*len(cw.nodes) {
		t.Fatalf("only %d node sweeps during the outage: the edge was hardly checked", sweeps)
	}

	// etcd returns. Each node notices within about a second (its heal
	// probe, or any request to etcd); until then its reads serve the
	// local copy without waiting for other nodes' writes, so the reads
	// across nodes below start once every node reports the store up.
	back := time.Now()
	cw.etcd.RestartAll()
	healthy := time.Now()
	t.Logf("etcd healthy again %v after its restart began", healthy.Sub(back).Round(time.Millisecond))
	for _, n := range cw.nodes {
		took := n.s.waitMetric(t, "edgeproxy_store_up", 1, 20*time.Second)
		t.Logf("%s reports edgeproxy_store_up 1 %v after etcd was healthy (%v of it waiting on this node)", n.name, time.Since(healthy).Round(time.Millisecond), took.Round(time.Millisecond))
	}
	// Writes go through every node, and are read at once through the
	// others.
	var after []recordJSON
	for i := range cw.nodes {
		domain := fmt.Sprintf("after%d.outage.example.com", i)
		var rec recordJSON
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			a := cw.nodes[i].s.call(t, cw.key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`)
			if a.status == 201 {
				if err := json.Unmarshal(a.body, &rec); err != nil {
					t.Fatal(err)
				}
				break
			}
			if a.status != 503 || time.Now().After(deadline) {
				t.Fatalf("create through %s after etcd returned: %d %s\n%s", cw.nodes[i].name, a.status, a.body, cw.nodes[i].s.stderr)
			}
		}
		t.Logf("%s took a create %v after etcd was healthy", cw.nodes[i].name, time.Since(healthy).Round(time.Millisecond))
		for _, j := range []int{(i + 1) % 3, (i + 2) % 3} {
			var got recordJSON
			if code := cw.nodes[j].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code != 200 || got.ID != rec.ID || got.Domain != domain {
				t.Fatalf("%s right after %s's 201: %d %+v, want the record", cw.nodes[j].name, cw.nodes[i].name, code, got)
			}
		}
		after = append(after, rec)
	}
	// The delete refused during the outage left the record as it was, and
	// the creates refused then stored nothing.
	cw.wantRecords(0, recs, "after the outage")
	for i, n := range cw.nodes {
		var list struct{ Results []recordJSON }
		if code := n.s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
			t.Fatalf("%s: list after the outage: %d", n.name, code)
		}
		for _, r := range list.Results {
			if r.Domain == "during.outage.example.com" {
				t.Errorf("node %d lists %s, whose create answered 503 during the outage", i, r.Domain)
			}
		}
	}

	rec := after[0]
	cw.point(rec.Domain, rec.TargetCNAME, 2)
	pointed := time.Now()
	cw.waitValid(1, []recordJSON{rec}, 60*time.Second)
	took := cw.waitServed(rec.Domain, true, time.Now(), 10*time.Second)
	t.Logf("a record created after the outage: valid %v after it was pointed, then served on each node after %v", time.Since(pointed).Round(time.Millisecond), took)
	for i := range cw.nodes {
		if err := cw.serves(i, rec.Domain, nil); err != nil {
			t.Error(err)
		}
	}

	for _, n := range cw.nodes {
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
			code, body := n.s.readyz(t)
			if code == 200 && body == "ready\n" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: /readyz once etcd is back: %d %q", n.name, code, body)
			}
		}
	}
	cw.waitLeader(30 * time.Second)
}

// wantRecords fails the test unless node i's API lists exactly recs
// (valid) and returns each of them.
func (cw *clusterWorld) wantRecords(i int, recs []recordJSON, when string) {
	cw.t.Helper()
	n := cw.nodes[i]
	var list struct{ Results []recordJSON }
	if code := n.s.request(cw.t, cw.key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
		cw.t.Fatalf("%s: list %s: %d", n.name, when, code)
	}
	ids := map[string]bool{}
	for _, r := range list.Results {
		ids[r.ID] = r.Status == "valid"
	}
	for _, rec := range recs {
		if !ids[rec.ID] {
			cw.t.Errorf("%s: list %s: %s missing or not valid in %+v", n.name, when, rec.Domain, list.Results)
		}
		var got recordJSON
		if code := n.s.request(cw.t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code != 200 || got.Status != "valid" {
			cw.t.Errorf("%s: read %s %s: %d %+v, want it valid", n.name, rec.Domain, when, code, got)
		}
	}
}

// TestClusterMigrateNoNewOrder takes a single node on the bbolt file to
// valid on several records with Pebble, stops it, migrates its file into
// a three-member etcd with `edgeproxy migrate --to-etcd` and starts three
// nodes there. Each node serves every migrated domain from its first
// handshake with the very certificate the single node held (same bytes),
// and the cluster places no ACME order: once the leader's engine has
// re-checked every record (it runs every second here), Pebble has
// received no newOrder beyond the single node's, and no node counts a
// certificate obtained or an order placed or failed.
func TestClusterMigrateNoNewOrder(t *testing.T) {
	cw := newClusterWorld(t)
	// Every valid record is looked at every second, so the leader checks
	// each migrated certificate within the test.
	cw.args = append(cw.args, "--monitor-interval", "1s")
	single := cw.nodes[0]
	args := append(slicesWithout(cw.args, "--etcd-endpoints"),
		"--http-addr", single.ip+":"+strconv.Itoa(cw.httpPort), "--https-addr", single.ip+":"+strconv.Itoa(cw.httpsPort))
	dir := t.TempDir()
	began := time.Now()
	single.s = startServerRetry(t, dir, args...)
	cw.key = single.s.key(t)
	var domains []string
	for k := range 4 {
		domains = append(domains, fmt.Sprintf("m%d.migrate.example.com", k))
	}
	var recs []recordJSON
	for _, d := range domains {
		rec := cw.create(0, d)
		cw.point(rec.Domain, rec.TargetCNAME, 0)
		recs = append(recs, rec)
	}
	cw.waitValid(0, recs, 90*time.Second)
	for _, rec := range recs {
		cw.waitServed(rec.Domain, true, time.Now(), 10*time.Second)
	}
	leaves := cw.leaves(0, recs)
	orders := cw.pebble.Orders()
	if orders < len(recs) {
		t.Fatalf("Pebble received %d orders for %d certificates", orders, len(recs))
	}
	t.Logf("%d records valid on the single node %v after its start (%d orders)", len(recs), time.Since(began).Round(time.Millisecond), orders)

	if err := single.s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-single.s.done:
		single.s.done <- nil // for the cleanup
		if err != nil {
			t.Fatalf("the single node after SIGTERM: %v\n%s", err, single.s.stderr)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("the single node did not exit 40 s after SIGTERM\n%s", single.s.stderr)
	}
	single.s = nil

	out, stderr, err := runBin(testbin.Build(t, true), "migrate", "--to-etcd", "--from", filepath.Join(dir, "edgeproxy.db"),
		"--etcd-endpoints", strings.Join(cw.etcd.Endpoints(), ","))
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, stderr)
	}
	var sum migrateSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("migrate printed %q: %v", out, err)
	}
	if sum.Records != len(recs) {
		t.Fatalf("migrate copied %d records, want %d: %+v", sum.Records, len(recs), sum)
	}

	start := time.Now()
	for i := range cw.nodes {
		cw.startNodeRetry(i)
	}
	t.Logf("3 nodes ready on the migrated prefix %v after the first one started", time.Since(start).Round(time.Millisecond))
	for _, n := range cw.nodes {
		if _, err := os.Stat(filepath.Join(n.dataDir, "bootstrap-key")); !os.IsNotExist(err) {
			t.Errorf("%s bootstrapped the migrated prefix again (%v)", n.name, err)
		}
	}
	// Ready means the certificates of served records are loaded: every
	// handshake succeeds from the first one, with the migrated leaf.
	for i := range cw.nodes {
		for _, rec := range recs {
			if err := cw.serves(i, rec.Domain, leaves[rec.Domain]); err != nil {
				t.Errorf("right after the nodes started: %v", err)
			}
		}
	}

	// The leader's engine re-checks every record (each was due a second
	// after the single node's last check). A monitor step ends by saving
	// the record's next check, which bumps its updated_at, after it has
	// ordered a certificate if it found none: once every record's
	// updated_at has moved, each certificate was looked at by a step that
	// is over.
	leader, _ := cw.waitLeader(30 * time.Second)
	updated := func() map[string]string {
		var list struct {
			Results []struct {
				ID        string `json:"id"`
				UpdatedAt string `json:"updated_at"`
			}
		}
		if code := cw.nodes[leader].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
			t.Fatalf("list: %d", code)
		}
		m := map[string]string{}
		for _, r := range list.Results {
			m[r.ID] = r.UpdatedAt
		}
		return m
	}
	before := updated()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		now, moved := updated(), 0
		for _, rec := range recs {
			if now[rec.ID] != before[rec.ID] {
				moved++
			}
		}
		if moved == len(recs) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leader %s re-checked %d of the %d records in 30 s\n%s", cw.nodes[leader].name, moved, len(recs), cw.nodes[leader].s.stderr)
		}
	}
	t.Logf("the leader %s re-checked the records %v after the nodes were ready", cw.nodes[leader].name, time.Since(start).Round(time.Millisecond))
	if now := cw.pebble.Orders(); now != orders {
		t.Errorf("Pebble received %d newOrder requests after the migration, want none", now-orders)
	}
	for _, n := range cw.nodes {
		for _, m := range []string{"edgeproxy_certificates_obtained_total", "edgeproxy_certificate_failures_total", "edgeproxy_acme_budget_orders_total"} {
			if v := n.s.metricSum(t, m); v != 0 {
				t.Errorf("%s: %s = %v, want 0 (no order after the migration)", n.name, m, v)
			}
		}
	}
	for i := range cw.nodes {
		for _, rec := range recs {
			if err := cw.serves(i, rec.Domain, leaves[rec.Domain]); err != nil {
				t.Error(err)
			}
		}
		cw.wantRecords(i, recs, "after the migration")
	}
}
