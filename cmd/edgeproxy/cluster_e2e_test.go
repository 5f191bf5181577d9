package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// The tests of this file run three edgeproxy processes on a real etcd of
// three member processes, with Pebble and the loopback DNS server, the way
// a cluster runs in production: each node listens on its own loopback
// address (127.0.0.11 to .13) with the same HTTP and HTTPS ports, so the
// DNS answer for a record's target_cname decides which node the CA
// validates through, as the A records of a real edge would.

// clusterIPs are the nodes' addresses, one per node.
var clusterIPs = []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}

// clusterWorld is what the nodes of a cluster test run on and talk to.
type clusterWorld struct {
	t        *testing.T
	etcd     *testbin.EtcdCluster
	dns      *dnstest.Server
	pebble   *certstest.Pebble
	upstream *edgeUpstream
	roots    *x509.CertPool
	// httpPort and httpsPort are every node's edge ports, each node on its
	// own address.
	httpPort, httpsPort int
	// args are the flags every node gets; each node adds its name and
	// addresses.
	args  []string
	nodes []*clusterNode
	// key is the bootstrap key, from the node that started first.
	key string
}

// clusterNode is one edgeproxy node, running or killed, with the data
// directory it keeps across restarts.
type clusterNode struct {
	name, ip, dataDir string
	// s is the running process, nil while the node is killed.
	s *server
}

// newClusterWorld starts etcd (three processes), the DNS server, Pebble
// and an upstream; the nodes are started by startNodes or startNode.
func newClusterWorld(t *testing.T) *clusterWorld {
	t.Helper()
	ports := sharedPorts(t, clusterIPs, 2)
	cw := &clusterWorld{t: t, httpPort: ports[0], httpsPort: ports[1]}
	cw.etcd = testbin.StartEtcd(t, 3)
	cw.dns = dnstest.Start(t)
	cw.pebble = certstest.StartPebble(t, cw.dns.Addr(), cw.httpPort, cw.httpsPort)
	cw.roots = cw.pebble.IssuerRoots(t)
	cw.upstream = newEdgeUpstream(t, "ingest")
	root := filepath.Join(t.TempDir(), "pebble.pem")
	if err := os.WriteFile(root, cw.pebble.ServerCertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	cw.args = []string{"--etcd-endpoints", strings.Join(cw.etcd.Endpoints(), ","),
		"--acme-ca", cw.pebble.DirectoryURL(), "--acme-ca-root", root,
		"--acme-caa-identities", certstest.CAAIdentity, "--dns-resolvers", cw.dns.Addr(),
		"--recheck-max", "300ms", "--org-orders-per-hour", "100000", "--max-proxy-records", "100000",
		"--upstream", cw.upstream.URL, "--assets-upstream", cw.upstream.URL}
	for i, ip := range clusterIPs {
		cw.nodes = append(cw.nodes, &clusterNode{name: "node-" + strconv.Itoa(i), ip: ip, dataDir: t.TempDir()})
	}
	return cw
}

// sharedPorts returns n TCP ports that are free on every one of ips right
// now. It skips the test where those loopback addresses cannot be bound
// (only Linux routes all of 127.0.0.0/8 to the loopback interface).
func sharedPorts(t *testing.T, ips []string, n int) []int {
	t.Helper()
	probe, err := net.Listen("tcp", net.JoinHostPort(ips[0], "0"))
	if err != nil {
		t.Skipf("cannot listen on %s (the cluster tests put each node on its own loopback address): %v", ips[0], err)
	}
	probe.Close()
	for range 100 {
		var lns []net.Listener
		var ports []int
		ok := true
		for len(ports) < n && ok {
			// A candidate from testbin, not the kernel's port 0: see
			// FreePorts for why.
			candidate, err := testbin.FreePorts(1)
			if err != nil {
				t.Fatal(err)
			}
			port := candidate[0]
			for _, ip := range ips {
				ln, err := net.Listen("tcp", net.JoinHostPort(ip, strconv.Itoa(port)))
				if err != nil {
					ok = false
					break
				}
				lns = append(lns, ln)
			}
			ports = append(ports, port)
		}
		for _, ln := range lns {
			ln.Close()
		}
		if ok {
			return ports
		}
	}
	t.Fatalf("no %d ports free on all of %v in 100 tries", n, ips)
	return nil
}

// startNodes starts every node, one after the other (the first one
// bootstraps the cluster), and reads the bootstrap key when there is one.
func (cw *clusterWorld) startNodes() {
	cw.t.Helper()
	for i := range cw.nodes {
		cw.startNode(i)
	}
	if data, err := os.ReadFile(filepath.Join(cw.nodes[0].dataDir, "bootstrap-key")); err == nil {
		cw.key = strings.TrimSpace(string(data))
	}
}

// startNode starts node i on its data directory and waits until it is
// ready.
func (cw *clusterWorld) startNode(i int) *server {
	cw.t.Helper()
	n := cw.nodes[i]
	if n.s != nil {
		cw.t.Fatalf("%s is already running", n.name)
	}
	n.s = startServer(cw.t, n.dataDir, append([]string{"--node-name", n.name,
		"--http-addr", net.JoinHostPort(n.ip, strconv.Itoa(cw.httpPort)),
		"--https-addr", net.JoinHostPort(n.ip, strconv.Itoa(cw.httpsPort))}, cw.args...)...)
	return n.s
}

// kill kills node i with SIGKILL.
func (cw *clusterWorld) kill(i int) {
	cw.t.Helper()
	cw.nodes[i].s.kill9(cw.t)
	cw.nodes[i].s = nil
}

// running returns the indexes of the nodes that run.
func (cw *clusterWorld) running() []int {
	var idx []int
	for i, n := range cw.nodes {
		if n.s != nil {
			idx = append(idx, i)
		}
	}
	return idx
}

// waitLeader waits, up to bound, until exactly one running node reports
// edgeproxy_leader 1, and returns it and how long that took.
func (cw *clusterWorld) waitLeader(bound time.Duration) (int, time.Duration) {
	cw.t.Helper()
	start := time.Now()
	for {
		leaders := []int{}
		for _, i := range cw.running() {
			if cw.nodes[i].s.metric(cw.t, "edgeproxy_leader") == 1 {
				leaders = append(leaders, i)
			}
		}
		if len(leaders) == 1 {
			return leaders[0], time.Since(start)
		}
		if time.Since(start) > bound {
			cw.t.Fatalf("nodes leading after %v: %v, want exactly one of the running %v", bound, leaders, cw.running())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// other returns a running node that is none of not.
func (cw *clusterWorld) other(not ...int) int {
	cw.t.Helper()
	for _, i := range cw.running() {
		skip := false
		for _, n := range not {
			skip = skip || i == n
		}
		if !skip {
			return i
		}
	}
	cw.t.Fatalf("no running node besides %v", not)
	return -1
}

// point makes domain a CNAME to target, whose address is node i's: the
// CA validates through node i.
func (cw *clusterWorld) point(domain, target string, i int) {
	cw.dns.SetA(target, cw.nodes[i].ip)
	cw.dns.SetCNAME(domain, target)
}

// handshake makes a TLS handshake with node i for domain, verifying the
// certificate against Pebble's issuer, and returns the leaf.
func (cw *clusterWorld) handshake(i int, domain string) (*x509.Certificate, error) {
	return handshakeAt(net.JoinHostPort(cw.nodes[i].ip, strconv.Itoa(cw.httpsPort)), domain, cw.roots)
}

func handshakeAt(addr, domain string, roots *x509.CertPool) (*x509.Certificate, error) {
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr,
		&tls.Config{ServerName: domain, RootCAs: roots})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// edgeClient returns a client whose every request opens a new TLS
// connection to node i, whatever the URL's host.
func (cw *clusterWorld) edgeClient(i int) *http.Client {
	addr := net.JoinHostPort(cw.nodes[i].ip, strconv.Itoa(cw.httpsPort))
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "tcp", addr)
		},
		TLSClientConfig:   &tls.Config{RootCAs: cw.roots},
		DisableKeepAlives: true,
	}
	cw.t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// proxied sends a request for domain through node i (a new connection,
// so a new handshake) and checks it reached the upstream.
func (cw *clusterWorld) proxied(client *http.Client, domain string) error {
	resp, err := client.Post("https://"+domain+"/i/v0/e/", "application/json", strings.NewReader(`{"event":"cluster"}`))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != 200 || string(body) != "ingest" {
		return fmt.Errorf("%s: %d %q, want 200 from the upstream", domain, resp.StatusCode, body)
	}
	return nil
}

// create creates a record for domain through node i and fails the test
// unless it is answered 201.
func (cw *clusterWorld) create(i int, domain string) recordJSON {
	cw.t.Helper()
	var rec recordJSON
	if code := cw.nodes[i].s.request(cw.t, cw.key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`, &rec); code != 201 {
		cw.t.Fatalf("create %s through %s: %d", domain, cw.nodes[i].name, code)
	}
	return rec
}

// waitServed waits until every running node serves domain (served) or
// none does (!served), handshaking with each in turn, and returns how
// long each node took from start. It fails the test past bound.
func (cw *clusterWorld) waitServed(domain string, served bool, start time.Time, bound time.Duration) map[string]time.Duration {
	cw.t.Helper()
	took := map[string]time.Duration{}
	nodes := cw.running()
	for len(took) < len(nodes) {
		for _, i := range nodes {
			if _, done := took[cw.nodes[i].name]; done {
				continue
			}
			_, err := cw.handshake(i, domain)
			if (err == nil) == served {
				took[cw.nodes[i].name] = time.Since(start).Round(time.Millisecond)
			}
		}
		if time.Since(start) > bound {
			cw.t.Fatalf("%s: served %t on %v only, %v after the change", domain, served, took, bound)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return took
}

// TestClusterNodesServe runs three nodes: a record created through one
// node's API is returned by each other node right after the 201. The CA
// is steered (the target's address) to a node that does not lead, so the
// leader's order is validated through another node, which answers from
// the challenge tokens in the shared storage (the leader does not even
// listen on that address). Every node then serves the domain, chained to
// Pebble's root and proxied to the upstream; how long after the API showed
// it valid, and after its DELETE how long until no node serves it, is
// logged for each node.
func TestClusterNodesServe(t *testing.T) {
	cw := newClusterWorld(t)
	cw.startNodes()
	leader, _ := cw.waitLeader(30 * time.Second)
	steer := cw.other(leader)

	// Read-your-writes: created through each node, read at once through
	// the other two, singly and in the list.
	var recs []recordJSON
	for i := range 6 {
		a := i % 3
		rec := cw.create(a, fmt.Sprintf("r%d.nodes.example.com", i))
		recs = append(recs, rec)
		for _, b := range []int{(a + 1) % 3, (a + 2) % 3} {
			var got recordJSON
			if code := cw.nodes[b].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got); code != 200 || got.ID != rec.ID || got.Domain != rec.Domain {
				t.Fatalf("%s right after %s's 201: %d %+v, want the record", cw.nodes[b].name, cw.nodes[a].name, code, got)
			}
			var list struct{ Results []recordJSON }
			cw.nodes[b].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/", "", &list)
			if len(list.Results) != len(recs) || list.Results[0].ID != rec.ID {
				t.Fatalf("%s's list right after %s's 201: %d records, first %+v; want %d, the newest first", cw.nodes[b].name, cw.nodes[a].name, len(list.Results), list.Results, len(recs))
			}
		}
	}

	rec := recs[0]
	cw.point(rec.Domain, rec.TargetCNAME, steer)
	var validAt time.Time
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var got recordJSON
		cw.nodes[steer].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", &got)
		if got.Status == "valid" {
			validAt = time.Now()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not valid in 60 s: %+v\n%s", rec.Domain, got, cw.nodes[leader].s.stderr)
		}
	}
	took := cw.waitServed(rec.Domain, true, validAt, 10*time.Second)
	t.Logf("valid (as the API showed it) to served on each node: %v (the contract: within 2 s)", took)
	if now, _ := cw.waitLeader(time.Second); now != leader {
		t.Fatalf("the leader changed from %s to %s during the order: the validation through a node that does not lead is not shown", cw.nodes[leader].name, cw.nodes[now].name)
	}
	for i := range cw.nodes {
		leaf, err := cw.handshake(i, rec.Domain)
		if err != nil {
			t.Fatalf("%s: handshake for %s: %v", cw.nodes[i].name, rec.Domain, err)
		}
		if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != rec.Domain {
			t.Errorf("%s serves a certificate for %v, want %s", cw.nodes[i].name, leaf.DNSNames, rec.Domain)
		}
		if err := cw.proxied(cw.edgeClient(i), rec.Domain); err != nil {
			t.Errorf("through %s: %v", cw.nodes[i].name, err)
		}
	}
	if orders := cw.pebble.Orders(); orders != 1 {
		t.Errorf("Pebble received %d orders, want 1: one node orders for the cluster", orders)
	}

	if code := cw.nodes[steer].s.request(t, cw.key, "DELETE", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	took = cw.waitServed(rec.Domain, false, time.Now(), 10*time.Second)
	t.Logf("DELETE answered to no longer served on each node: %v (the contract: within 2 s)", took)
}

// TestClusterNodesCreateRaces sends creates that race on the three nodes
// through the HTTP API: for one domain exactly one is answered 201 and
// the others 400 unique; for an organization whose limit is K, exactly K
// creates succeed across the nodes, and again after two of them are
// deleted.
func TestClusterNodesCreateRaces(t *testing.T) {
	cw := newClusterWorld(t)
	cw.startNodes()

	type answer struct {
		node   int
		status int
		code   string
		id     string
	}
	// race sends the creates at once, each through its node, and returns
	// the answers.
	race := func(org string, nodes []int, domains []string) []answer {
		t.Helper()
		answers := make([]answer, len(nodes))
		start := make(chan struct{})
		var wg sync.WaitGroup
		client := &http.Client{Timeout: 30 * time.Second}
		for k, i := range nodes {
			wg.Go(func() {
				var body struct{ ID, Code string }
				<-start
				status, err := chaosCall(client, cw.nodes[i].s.api, cw.key, "POST", "/api/organizations/"+org+"/proxy_records/", `{"domain":"`+domains[k]+`"}`, &body)
				if err != nil {
					t.Errorf("create through %s: %v", cw.nodes[i].name, err)
				}
				answers[k] = answer{i, status, body.Code, body.ID}
			})
		}
		close(start)
		wg.Wait()
		return answers
	}

	for round := range 5 {
		domain := fmt.Sprintf("same%d.race.example.com", round)
		answers := race("@current", []int{0, 1, 2}, []string{domain, domain, domain})
		var id string
		var won, unique int
		for _, a := range answers {
			switch {
			case a.status == 201:
				won++
				id = a.id
			case a.status == 400 && a.code == "unique":
				unique++
			default:
				t.Errorf("%s: create through %s: %d %s", domain, cw.nodes[a.node].name, a.status, a.code)
			}
		}
		if won != 1 || unique != 2 {
			t.Fatalf("%s created at once through the three nodes: %d answered 201, %d 400 unique; want 1 and 2 (%+v)", domain, won, unique, answers)
		}
		for i := range cw.nodes {
			var got recordJSON
			if code := cw.nodes[i].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+id+"/", "", &got); code != 200 || got.Domain != domain {
				t.Errorf("%s: the winner %s: %d %+v", cw.nodes[i].name, id, code, got)
			}
		}
	}

	const limit = 5
	var org struct{ ID string }
	cw.nodes[1].s.admin(t, &org, "org", "create", "--name", "Limited", "--max-proxy-records", strconv.Itoa(limit))
	cw.nodes[2].s.admin(t, nil, "member", "add", "--org", org.ID, "--user", "1", "--level", "owner")
	count := func(want int, answers []answer) []string {
		t.Helper()
		var ids []string
		refused := 0
		for _, a := range answers {
			switch {
			case a.status == 201:
				ids = append(ids, a.id)
			case a.status == 400 && a.code == "max_proxy_records":
				refused++
			default:
				t.Errorf("create through %s: %d %s", cw.nodes[a.node].name, a.status, a.code)
			}
		}
		if len(ids) != want || refused != len(answers)-want {
			t.Fatalf("%d creates at once across the nodes: %d answered 201, %d refused at the limit; want %d and %d", len(answers), len(ids), refused, want, len(answers)-want)
		}
		for i := range cw.nodes {
			var list struct{ Results []recordJSON }
			if code := cw.nodes[i].s.request(t, cw.key, "GET", "/api/organizations/"+org.ID+"/proxy_records/", "", &list); code != 200 || len(list.Results) != limit {
				t.Errorf("%s lists %d records of the organization (%d), want its limit %d", cw.nodes[i].name, len(list.Results), code, limit)
			}
		}
		return ids
	}
	var nodes []int
	var domains []string
	for k := range 4 * limit {
		nodes = append(nodes, k%3)
		domains = append(domains, fmt.Sprintf("l%d.race.example.com", k))
	}
	ids := count(limit, race(org.ID, nodes, domains))
	for k, id := range ids[:2] {
		if code := cw.nodes[k].s.request(t, cw.key, "DELETE", "/api/organizations/"+org.ID+"/proxy_records/"+id+"/", "", nil); code != 204 {
			t.Fatalf("delete %s: %d", id, code)
		}
	}
	// A deleted record counts until the engine has finished deleting it.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var list struct{ Results []recordJSON }
		cw.nodes[0].s.request(t, cw.key, "GET", "/api/organizations/"+org.ID+"/proxy_records/", "", &list)
		if len(list.Results) == limit-2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the two deleted records still listed 20 s after their DELETE: %+v", list.Results)
		}
	}
	for k := range domains {
		domains[k] = "again-" + domains[k]
	}
	count(2, race(org.ID, nodes, domains))
}
