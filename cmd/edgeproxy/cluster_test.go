package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

// testEtcd is a one-member etcd cluster running in the test process, on
// loopback, that a test can stop and start again with its data kept.
type testEtcd struct {
	t         *testing.T
	dir       string
	peer, cli url.URL
	// tls, if set, is served to clients, who must present a certificate.
	tls  *etcdTLS
	etcd *embed.Etcd
	// closed is closed once the last stop has finished.
	closed chan struct{}
}

func startEtcd(t *testing.T) *testEtcd {
	t.Helper()
	return startEtcdTLS(t, nil)
}

// startEtcdTLS starts a member whose clients must speak TLS with a
// client certificate, if tls is set.
func startEtcdTLS(t *testing.T, tls *etcdTLS) *testEtcd {
	t.Helper()
	ports, err := testbin.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	te := &testEtcd{t: t, dir: t.TempDir(), closed: make(chan struct{}), tls: tls,
		peer: url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[0])},
		cli:  url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[1])}}
	if tls != nil {
		te.cli.Scheme = "https"
	}
	close(te.closed)
	te.start()
	t.Cleanup(func() {
		te.stop()
		<-te.closed
	})
	return te
}

// endpoint is the member's client address, as --etcd-endpoints takes it.
func (te *testEtcd) endpoint() string { return te.cli.Host }

// start starts the member, once the last stop has finished.
func (te *testEtcd) start() {
	te.t.Helper()
	<-te.closed
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = "m0", te.dir
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{te.peer}, []url.URL{te.peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{te.cli}, []url.URL{te.cli}
	cfg.InitialCluster = cfg.Name + "=" + te.peer.String()
	// Short raft timings: the member elects itself in a fraction of a
	// second.
	cfg.TickMs, cfg.ElectionMs = 50, 500
	// etcd logs its own shutdown as errors; StartEtcd returns what stops it
	// from starting.
	cfg.LogLevel = "fatal"
	if te.tls != nil {
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = te.tls.serverCert, te.tls.serverKey
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = te.tls.ca, true
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		te.t.Fatalf("starting etcd: %v", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		e.Close()
		te.t.Fatal("etcd not ready in 30 s")
	}
	te.etcd = e
}

// stop stops the member at once, as a crash would: no request is served
// from then on. etcd's Close then waits up to its request timeout (over
// 5 s) for the connections of the nodes, in the background.
func (te *testEtcd) stop() {
	if te.etcd == nil {
		return
	}
	e, closed := te.etcd, make(chan struct{})
	te.etcd, te.closed = nil, closed
	e.Server.HardStop()
	go func() {
		defer close(closed)
		e.Close()
	}()
}

// startNode runs `serve --dev` on a fresh data directory in cluster mode
// on te's default prefix, named name.
func startNode(t *testing.T, te *testEtcd, name string, args ...string) *server {
	t.Helper()
	return startServer(t, t.TempDir(), append([]string{"--etcd-endpoints", te.endpoint(), "--node-name", name}, args...)...)
}

// waitMetric waits, up to bound, until s reports want for the metric.
func (s *server) waitMetric(t *testing.T, name string, want float64, bound time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		v := s.metric(t, name)
		if v == want {
			return time.Since(start)
		}
		if time.Since(start) > bound {
			t.Fatalf("%s: %s = %v, want %v within %v\n%s", s.api, name, v, want, bound, s.stderr)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *server) readyz(t *testing.T) (int, string) {
	t.Helper()
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Get(s.api + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// TestClusterFlags checks the flags of the cluster mode: their defaults,
// and one line naming the flag for each bad value.
func TestClusterFlags(t *testing.T) {
	cfg, err := parseServe(t, []string{"--target-cname-base", "p.example.net"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if cfg.clustered() || cfg.Etcd.Prefix != "/edgeproxy/" || cfg.NodeName != host {
		t.Errorf("defaults: clustered %t, prefix %q, node %q; want the bbolt file, /edgeproxy/, the host name %q", cfg.clustered(), cfg.Etcd.Prefix, cfg.NodeName, host)
	}
	cfg, err = parseServe(t, []string{"--target-cname-base", "p.example.net", "--etcd-endpoints", "10.0.0.1:2379, https://etcd-2.example.net:2379"},
		map[string]string{"EDGEPROXY_ETCD_PREFIX": "/prod/edge/", "EDGEPROXY_NODE_NAME": "edge-1.fra"})
	if err != nil {
		t.Fatal(err)
	}
	if got := joinList(cfg.Etcd.Endpoints); got != "10.0.0.1:2379,https://etcd-2.example.net:2379" || cfg.Etcd.Prefix != "/prod/edge/" || cfg.NodeName != "edge-1.fra" {
		t.Errorf("endpoints %q, prefix %q, node %q", got, cfg.Etcd.Prefix, cfg.NodeName)
	}

	dir := t.TempDir()
	files := newEtcdTLS(t)
	certFile, keyFile, caFile := files.clientCert, files.clientKey, files.ca
	cfg, err = parseServe(t, []string{"--target-cname-base", "p.example.net", "--etcd-endpoints", "127.0.0.1:2379",
		"--etcd-ca", caFile, "--etcd-cert", certFile, "--etcd-key", keyFile}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Etcd.CA == nil || cfg.Etcd.Cert == nil {
		t.Errorf("TLS to etcd: roots %v, client certificate %v; want both loaded", cfg.Etcd.CA, cfg.Etcd.Cert)
	}

	base := []string{"--target-cname-base", "p.example.net"}
	ep := []string{"--etcd-endpoints", "127.0.0.1:2379"}
	cases := []struct {
		args []string
		env  map[string]string
		want string
	}{
		{append(base, "--etcd-endpoints", "etcd.example.net"), nil, "--etcd-endpoints:"},
		{append(base, "--etcd-endpoints", "127.0.0.1:2379,:2379"), nil, "--etcd-endpoints:"},
		{append(base, "--etcd-endpoints", "unix://etcd.sock:1"), nil, "--etcd-endpoints:"},
		{base, map[string]string{"EDGEPROXY_ETCD_ENDPOINTS": "10.0.0.1:99999"}, "--etcd-endpoints: from EDGEPROXY_ETCD_ENDPOINTS"},
		{append(base, "--etcd-prefix", "edgeproxy/"), nil, "--etcd-prefix: \"edgeproxy/\" must start and end with /"},
		{append(base, "--etcd-prefix", "/edgeproxy"), nil, "--etcd-prefix:"},
		{append(append(base, ep...), "--etcd-ca", filepath.Join(dir, "missing.pem")), nil, "--etcd-ca:"},
		{append(append(base, ep...), "--etcd-ca", keyFile), nil, "--etcd-ca: " + keyFile + " holds no PEM certificate"},
		{append(append(base, ep...), "--etcd-cert", filepath.Join(dir, "missing.pem")), nil, "--etcd-cert:"},
		{append(append(base, ep...), "--etcd-cert", certFile), nil, "--etcd-cert: needs --etcd-key"},
		{append(append(base, ep...), "--etcd-key", keyFile), nil, "--etcd-key: needs --etcd-cert"},
		{append(append(base, ep...), "--etcd-cert", caFile, "--etcd-key", keyFile), nil, "--etcd-cert:"},
		{append(base, "--etcd-ca", caFile), nil, "--etcd-ca: needs --etcd-endpoints"},
		{append(append(base, ep...), "--node-name", "edge 1"), nil, "--node-name:"},
		{append(append(base, ep...), "--node-name", ""), nil, "--node-name:"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args[2:], " "), func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			code := run(append([]string{"serve"}, tc.args...), &stdout, &stderr, func(k string) string { return tc.env[k] })
			if code != 2 {
				t.Errorf("exit code = %d, want 2", code)
			}
			if out := stderr.String(); strings.Count(out, "\n") != 1 || !strings.Contains(out, tc.want) {
				t.Errorf("stderr = %q, want one line containing %q", out, tc.want)
			}
		})
	}
}

// TestClusterTwoNodes runs two nodes of the real binary on one etcd
// prefix. Bootstrap happens once (one Default organization, one key,
// which works on both); a record created through one node is returned by
// the other right after the 201; exactly one node leads. The leader's
// order is validated by the CA through the other node (HTTP-01, the token
// read from the shared storage), and the other node serves the domain
// within 2 s of it becoming valid, and stops when it is deleted. After the
// leader is killed (kill -9, so its lease must expire) the other node
// leads within 15 s and takes a new record to valid; when that one stops
// (SIGTERM) it resigns, and a third node leads.
func TestClusterTwoNodes(t *testing.T) {
	// Each runs its own etcd, servers and ports; together they take the
	// time of the longest.
	t.Parallel()
	te := startEtcd(t)
	w := newACMEWorld(t)
	// Node a leads (it starts first); node b listens where the CA
	// (Pebble) connects to validate, and where the test's handshakes go.
	a := startNode(t, te, "node-a", slicesWithout(w.args, "--http-addr", "--https-addr")...)
	a.waitMetric(t, "edgeproxy_leader", 1, 30*time.Second)
	b := startNode(t, te, "node-b", w.args...)

	key := a.key(t)
	if _, err := os.Stat(filepath.Join(b.dataDir, "bootstrap-key")); !os.IsNotExist(err) {
		t.Errorf("node b has a bootstrap-key file (%v): the cluster was bootstrapped by node a, and b's key was never stored", err)
	}
	var orgs []map[string]any
	b.admin(t, &orgs, "org", "list")
	if len(orgs) != 1 || orgs[0]["name"] != "Default" {
		t.Errorf("organizations seen through node b: %v, want one, Default", orgs)
	}
	if v := b.metric(t, "edgeproxy_leader"); v != 0 {
		t.Errorf("node b reports edgeproxy_leader %v while node a leads, want 0", v)
	}
	for _, s := range []*server{a, b} {
		if v := s.metric(t, "edgeproxy_store_up"); v != 1 {
			t.Errorf("%s: edgeproxy_store_up %v, want 1", s.api, v)
		}
		if !strings.Contains(s.stderr.String(), "node=node-") {
			t.Errorf("%s: the log lines do not name the node", s.api)
		}
		wantMetric(t, s.api, `edgeproxy_node_info{node="`+flagValue(t, s.cmd.Args, "--node-name")+`"} 1`)
	}

	// Read-your-writes across nodes.
	var rec recordJSON
	if code := b.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.cluster.example.com"}`, &rec); code != 201 {
		t.Fatalf("create through node b: %d", code)
	}
	var got recordJSON
	if code := a.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code != 200 || got.ID != rec.ID || got.Domain != rec.Domain {
		t.Fatalf("node a right after node b's 201: %d %+v, want 200 with the record", code, got)
	}

	// Ordered by node a, validated through node b, served by both.
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	a.waitStatus(t, key, rec.ID, "valid")
	validAt := time.Now()
	for w.handshake(t, rec.Domain) != nil {
		if time.Since(validAt) > 2*time.Second {
			t.Fatalf("node b does not serve %s 2 s after it became valid: %v\n%s", rec.Domain, w.handshake(t, rec.Domain), b.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("node b served the domain %v after node a's API showed it valid", time.Since(validAt).Round(time.Millisecond))
	if code := b.request(t, key, "DELETE", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil); code != 204 {
		t.Fatalf("delete through node b: %d", code)
	}
	for deadline := time.Now().Add(10 * time.Second); w.handshake(t, rec.Domain) == nil; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("node b still serves %s 10 s after its DELETE", rec.Domain)
		}
	}

	// The leader dies; the other node takes over and runs the engine.
	a.kill9(t)
	took := b.waitMetric(t, "edgeproxy_leader", 1, 15*time.Second)
	t.Logf("node b leads %v after node a was killed", took.Round(time.Millisecond))
	if code := b.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e2.cluster.example.com"}`, &rec); code != 201 {
		t.Fatalf("create through node b: %d", code)
	}
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	b.waitStatus(t, key, rec.ID, "valid")
	if err := w.handshake(t, rec.Domain); err != nil {
		t.Errorf("node b, now leading, does not serve the record it made valid: %v", err)
	}

	// A leader that stops (SIGTERM) resigns: a third node need not wait
	// for its lease.
	c := startNode(t, te, "node-c")
	if err := b.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	select {
	case err := <-b.done:
		b.done <- nil // for the cleanup
		if err != nil {
			t.Errorf("node b after SIGTERM: %v\n%s", err, b.stderr)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("node b did not exit 40 s after SIGTERM\n%s", b.stderr)
	}
	if !strings.Contains(b.stderr.String(), "resigned the leadership") {
		t.Errorf("node b did not resign on its way out:\n%s", b.stderr)
	}
	c.waitMetric(t, "edgeproxy_leader", 1, 15*time.Second)
	t.Logf("node c leads %v after node b was sent SIGTERM", time.Since(stopped).Round(time.Millisecond))
}

// TestClusterBootstrapOnce starts two nodes at the same moment on an
// empty prefix: both find it empty, both may try to bootstrap it, and
// exactly one bootstrap is stored. Exactly one node keeps a
// bootstrap-key file, and its key works on both.
func TestClusterBootstrapOnce(t *testing.T) {
	t.Parallel()
	te := startEtcd(t)
	bin := testbin.Build(t, true)
	var nodes []*server
	for _, name := range []string{"one", "two"} {
		api, dir := testbin.FreeAddr(t), t.TempDir()
		s := launch(t, bin, []string{"serve", "--dev", "--data-dir", dir, "--api-addr", api,
			"--http-addr", testbin.FreeAddr(t), "--https-addr", testbin.FreeAddr(t),
			"--etcd-endpoints", te.endpoint(), "--node-name", name})
		s.api, s.dataDir = "http://"+api, dir
		nodes = append(nodes, s)
	}
	var keys []string
	for _, s := range nodes {
		for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
			if resp, err := http.Get(s.api + "/readyz"); err == nil {
				resp.Body.Close()
				if resp.StatusCode == 200 {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s not ready in 30 s\n%s", s.api, s.stderr)
			}
		}
		if data, err := os.ReadFile(filepath.Join(s.dataDir, "bootstrap-key")); err == nil {
			keys = append(keys, strings.TrimSpace(string(data)))
		} else if !os.IsNotExist(err) {
			t.Fatal(err)
		}
		if strings.Contains(s.stderr.String(), "bootstrapped by another node") {
			t.Logf("%s tried to bootstrap too, and removed its key file", s.api)
		}
	}
	if len(keys) != 1 {
		t.Fatalf("%d nodes keep a bootstrap-key file, want exactly one", len(keys))
	}
	for _, s := range nodes {
		var orgs struct {
			Count int `json:"count"`
		}
		if code := s.request(t, keys[0], "GET", "/api/organizations/", "", &orgs); code != 200 || orgs.Count != 1 {
			t.Errorf("%s: organizations with the bootstrap key: %d, count %d; want 200, one", s.api, code, orgs.Count)
		}
	}
}

// TestClusterEtcdDown stops etcd under a node: writes answer 503
// storage_unavailable with Retry-After, reads and /readyz go on (the
// latter naming the degradation), the node stops on SIGTERM and starts
// again from its local copy while etcd is still down, and when etcd
// returns it catches up by itself.
func TestClusterEtcdDown(t *testing.T) {
	t.Parallel()
	te := startEtcd(t)
	dir := t.TempDir()
	s := startServer(t, dir, "--etcd-endpoints", te.endpoint(), "--node-name", "lonely")
	key := s.key(t)
	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.outage.example.com"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}

	te.stop()
	// The node notices at its next request to etcd (the probe behind
	// this metric pings at most once a second, each ping waiting up to
	// the store's timeout, 5 s); from then on reads do not wait for etcd.
	s.waitMetric(t, "edgeproxy_store_up", 0, 20*time.Second)
	if code, body := s.readyz(t); code != 200 || body != "ready; degraded: store unreachable (writes answer 503)\n" {
		t.Errorf("/readyz during the outage: %d %q, want 200 naming the degradation", code, body)
	}
	var list struct {
		Results []recordJSON `json:"results"`
	}
	if code := s.request(t, key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 || len(list.Results) != 1 || list.Results[0].ID != rec.ID {
		t.Errorf("list during the outage: %d %+v, want 200 with the one record", code, list.Results)
	}
	// Each write waits for etcd up to the store's timeout: the admin
	// socket's write and a backup (which needs one etcd revision) are
	// sent meanwhile.
	var (
		adminDone, backupDone = make(chan struct{}), make(chan struct{})
		adminOut, backupOut   string
		adminErr, backupErr   error
		backup                = filepath.Join(t.TempDir(), "backup.db")
	)
	go func() {
		defer close(adminDone)
		adminOut, adminErr = s.adminCommand(t, "org", "create", "--name", "Outage")
	}()
	go func() {
		defer close(backupDone)
		backupOut, backupErr = s.adminCommand(t, "backup", "--out", backup)
	}()
	a := s.call(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e2.outage.example.com"}`)
	wantClusterUnavailable(t, "create during the outage", a)
	<-adminDone
	if adminErr == nil || !strings.Contains(adminOut, "edgeproxy: the cluster store (etcd) cannot be reached, so the change could not be confirmed") {
		t.Errorf("admin org create during the outage: %v, %q; want the admin socket's 503 naming the cluster store", adminErr, adminOut)
	}
	// Regression: the backup's error came after a 200 with an empty body,
	// which bbolt opens as a new, empty database: an empty backup passed
	// every check.
	<-backupDone
	if backupErr == nil || !strings.Contains(backupOut, "edgeproxy: the cluster store (etcd) cannot be reached, so no consistent copy can be taken now") {
		t.Errorf("backup during the outage: %v, %q; want a failure naming the cluster store", backupErr, backupOut)
	}
	if _, err := os.Stat(backup); !os.IsNotExist(err) {
		t.Errorf("backup during the outage left %s (%v)", backup, err)
	}

	// A restart while etcd is down: the node stops within the unit's 40 s
	// though etcd cannot take its resignation, and starts again serving
	// from its local copy.
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	stopped := time.Now()
	select {
	case err := <-s.done:
		s.done <- nil // for the cleanup
		if err != nil {
			t.Errorf("the node after SIGTERM during the outage: %v\n%s", err, s.stderr)
		}
	case <-time.After(40 * time.Second):
		t.Fatalf("the node did not exit 40 s after SIGTERM during the outage\n%s", s.stderr)
	}
	t.Logf("the node stopped %v after SIGTERM during the outage", time.Since(stopped).Round(time.Millisecond))
	s = startServer(t, dir, "--etcd-endpoints", te.endpoint(), "--node-name", "lonely")
	if code, body := s.readyz(t); code != 200 || !strings.Contains(body, "degraded") {
		t.Errorf("/readyz after a restart during the outage: %d %q", code, body)
	}
	var one recordJSON
	if code := s.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &one); code != 200 || one.ID != rec.ID {
		t.Errorf("read after a restart during the outage: %d %+v", code, one)
	}

	te.start()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		a := s.call(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e2.outage.example.com"}`)
		if a.status == 201 {
			break
		}
		if a.status != 503 || time.Now().After(deadline) {
			t.Fatalf("create after etcd returned: %d %s\n%s", a.status, a.body, s.stderr)
		}
	}
	// A ping that was waiting for etcd when it returned may still report
	// the outage once; the next one clears it.
	s.waitMetric(t, "edgeproxy_store_up", 1, 20*time.Second)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		code, body := s.readyz(t)
		if code == 200 && body == "ready\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz once etcd is back: %d %q", code, body)
		}
	}
}

// wantClusterUnavailable fails the test unless a is the 503 of a write
// the cluster store could not be reached for.
func wantClusterUnavailable(t *testing.T, what string, a apiAnswer) {
	t.Helper()
	want503(t, what, a, "The cluster store (etcd) cannot be reached, so the change could not be confirmed; nothing was half-written. Retry later.", "10")
}

// TestMigrateToEtcd migrates the bbolt database of a single-node server
// into etcd: refused while the server holds the file, done once it is
// stopped (everything: the organization, the key, the record), refused
// again into the prefix it filled; a node on that prefix then answers
// with the record, and its backup is a bbolt file holding it.
func TestMigrateToEtcd(t *testing.T) {
	t.Parallel()
	te := startEtcd(t)
	bin := testbin.Build(t, true)
	old := startServer(t, t.TempDir())
	key := old.key(t)
	var rec recordJSON
	if code := old.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.migrated.example.com"}`, &rec); code != 201 {
		t.Fatalf("create: %d", code)
	}
	dbPath := filepath.Join(old.dataDir, "edgeproxy.db")
	migrateArgs := []string{"migrate", "--to-etcd", "--from", dbPath, "--etcd-endpoints", te.endpoint(), "--etcd-prefix", "/migrated/"}

	out, stderr, err := runBin(bin, migrateArgs...)
	if err == nil || !strings.Contains(stderr, "locked by another process") {
		t.Fatalf("migrate of a file a server holds: %v, %q, %q; want a refusal saying it is locked", err, out, stderr)
	}
	old.kill9(t)
	out, stderr, err = runBin(bin, migrateArgs...)
	if err != nil {
		t.Fatalf("migrate: %v\n%s", err, stderr)
	}
	var sum migrateSummary
	if err := json.Unmarshal([]byte(out), &sum); err != nil {
		t.Fatalf("migrate printed %q: %v", out, err)
	}
	if sum.Organizations != 1 || sum.Records != 1 || sum.Keys == 0 || sum.EtcdPrefix != "/migrated/" {
		t.Errorf("summary %+v, want one organization, one record, some keys, prefix /migrated/", sum)
	}
	// Not a terminal: a line per tenth at most, the last at 100%.
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) == 0 || len(lines) > 11 || !strings.HasSuffix(lines[len(lines)-1], "(100%)") {
		t.Errorf("progress on a pipe:\n%s\nwant up to 11 lines, the last at 100%%", stderr)
	}
	if _, stderr, err = runBin(bin, migrateArgs...); err == nil || !strings.Contains(stderr, "not empty") {
		t.Errorf("migrate into the prefix it filled: %v, %q; want a refusal", err, stderr)
	}

	n := startServer(t, t.TempDir(), "--etcd-endpoints", te.endpoint(), "--etcd-prefix", "/migrated/", "--node-name", "n1")
	if _, err := os.Stat(filepath.Join(n.dataDir, "bootstrap-key")); !os.IsNotExist(err) {
		t.Errorf("the node on the migrated prefix bootstrapped again (%v)", err)
	}
	var got recordJSON
	if code := n.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code != 200 || got.Domain != rec.Domain || got.TargetCNAME != rec.TargetCNAME {
		t.Errorf("the migrated record through the node: %d %+v, want %+v", code, got, rec)
	}

	backup := filepath.Join(t.TempDir(), "backup.db")
	var res struct {
		Bytes int64 `json:"bytes"`
	}
	n.admin(t, &res, "backup", "--out", backup)
	st, err := store.Open(backup, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if r, err := st.Record(rec.ID); err != nil || r.Domain != rec.Domain {
		t.Errorf("the backup of the node: record %+v, %v", r, err)
	}
	if err := st.Check(); err != nil {
		t.Errorf("the backup fails bbolt's check: %v", err)
	}
}

// runBin runs the binary with args and returns its stdout, its stderr and
// its exit error.
func runBin(bin string, args ...string) (string, string, error) {
	cmd := exec.Command(bin, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// etcdTLS is the PEM files of TLS to etcd: a CA, the server's certificate
// for 127.0.0.1 and a client certificate, each with its key.
type etcdTLS struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

func newEtcdTLS(t *testing.T) *etcdTLS {
	t.Helper()
	dir := t.TempDir()
	f := &etcdTLS{ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client-key.pem")}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcd test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, f.ca, "CERTIFICATE", caDER)
	leaf := func(serial int64, certFile, keyFile string, usage x509.ExtKeyUsage, ips ...net.IP) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: filepath.Base(certFile)},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour), IPAddresses: ips,
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, certFile, "CERTIFICATE", der)
		writePEM(t, keyFile, "EC PRIVATE KEY", keyDER)
	}
	leaf(2, f.serverCert, f.serverKey, x509.ExtKeyUsageServerAuth, net.ParseIP("127.0.0.1"))
	leaf(3, f.clientCert, f.clientKey, x509.ExtKeyUsageClientAuth)
	return f
}

func writePEM(t *testing.T, file, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(file, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestClusterTLS runs a node whose etcd requires TLS and a client
// certificate, with --etcd-ca, --etcd-cert and --etcd-key: the node
// starts, bootstraps the cluster and takes a write.
func TestClusterTLS(t *testing.T) {
	t.Parallel()
	files := newEtcdTLS(t)
	te := startEtcdTLS(t, files)
	s := startServer(t, t.TempDir(), "--etcd-endpoints", te.endpoint(), "--node-name", "tls",
		"--etcd-ca", files.ca, "--etcd-cert", files.clientCert, "--etcd-key", files.clientKey)
	var rec recordJSON
	if code := s.request(t, s.key(t), "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.tls.example.com"}`, &rec); code != 201 {
		t.Fatalf("create through a node on etcd over TLS: %d", code)
	}
	if v := s.metric(t, "edgeproxy_store_up"); v != 1 {
		t.Errorf("edgeproxy_store_up %v, want 1", v)
	}
}

// slicesWithout returns args without the named flags and their values.
func slicesWithout(args []string, flags ...string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		drop := false
		for _, f := range flags {
			if args[i] == f {
				drop = true
			}
		}
		if drop {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}

// flagValue returns the last value given to flag in args.
func flagValue(t *testing.T, args []string, flag string) string {
	t.Helper()
	v := ""
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			v = args[i+1]
		}
	}
	if v == "" {
		t.Fatalf("no %s in %q", flag, args)
	}
	return v
}
