package main

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// The tests of this file kill a process of a running three-node cluster
// with SIGKILL in the middle of its work (the node that leads while it
// issues or deletes, an etcd member under load) and check what the
// contract promises (§4 and §8): another node leads within 15 s, every
// record ends where its DNS and its DELETE say, nothing an API call was
// told succeeded is lost, and losing one etcd member of three interrupts
// neither the API nor the edge.

// failRecord is a record a test created, and what the API told it.
type failRecord struct {
	recordJSON
	// pointed records have their domain CNAMEd to their target_cname.
	pointed bool
	// deleted records had their DELETE answered 204.
	deleted bool
}

// failClient is the HTTP client of API calls made off the test's
// goroutine, whose failures are counted rather than fatal.
var failClient = &http.Client{Timeout: 30 * time.Second}

// call sends one API call through node i; err is set when no answer came.
func (cw *clusterWorld) call(i int, method, path, body string, out any) (int, error) {
	return chaosCall(failClient, cw.nodes[i].s.api, cw.key, method, path, body, out)
}

// steer points r's domain at its target, whose address is one of the
// running nodes that are none of not: the CA validates through it.
func (cw *clusterWorld) steer(r *failRecord, k int, not ...int) {
	var to []int
	for _, i := range cw.running() {
		skip := false
		for _, n := range not {
			skip = skip || i == n
		}
		if !skip {
			to = append(to, i)
		}
	}
	cw.point(r.Domain, r.TargetCNAME, to[k%len(to)])
	r.pointed = true
}

// statuses returns how many of recs node i's API shows in each status.
func (cw *clusterWorld) statuses(i int) map[string]int {
	cw.t.Helper()
	var list struct{ Results []recordJSON }
	if code := cw.nodes[i].s.request(cw.t, cw.key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
		cw.t.Fatalf("list through %s: %d", cw.nodes[i].name, code)
	}
	count := map[string]int{}
	for _, r := range list.Results {
		count[r.Status]++
	}
	return count
}

// misplaced lists, for every running node, the records of recs its API
// does not show where they belong: a pointed record valid, one with no
// CNAME waiting (§4: it stays there until its DNS changes), a deleted
// one gone. A record no test created, or one changed domain, is an error.
func (cw *clusterWorld) misplaced(recs []*failRecord) []string {
	cw.t.Helper()
	var wrong []string
	for _, i := range cw.running() {
		var list struct{ Results []recordJSON }
		if code := cw.nodes[i].s.request(cw.t, cw.key, "GET", "/api/organizations/@current/proxy_records/", "", &list); code != 200 {
			cw.t.Fatalf("list through %s: %d", cw.nodes[i].name, code)
		}
		held := map[string]recordJSON{}
		for _, r := range list.Results {
			held[r.ID] = r
		}
		for _, r := range recs {
			h, ok := held[r.ID]
			delete(held, r.ID)
			switch {
			case r.deleted && ok:
				wrong = append(wrong, fmt.Sprintf("%s: %s still %s after its 204", cw.nodes[i].name, r.Domain, h.Status))
			case r.deleted:
			case !ok:
				cw.t.Errorf("%s: %s was created (201) and never deleted, but is not listed", cw.nodes[i].name, r.Domain)
			case h.Domain != r.Domain:
				cw.t.Errorf("%s: record %s has the domain %s, created as %s", cw.nodes[i].name, r.ID, h.Domain, r.Domain)
			case r.pointed && h.Status != "valid":
				wrong = append(wrong, fmt.Sprintf("%s: %s points at its target but is %s", cw.nodes[i].name, r.Domain, h.Status))
			case !r.pointed && h.Status != "waiting":
				wrong = append(wrong, fmt.Sprintf("%s: %s has no CNAME but is %s", cw.nodes[i].name, r.Domain, h.Status))
			}
		}
		for _, h := range held {
			cw.t.Errorf("%s lists %s (%s), which the test did not create", cw.nodes[i].name, h.Domain, h.Status)
		}
	}
	return wrong
}

// settle waits, up to bound, until every running node's API shows each of
// recs where it belongs (see misplaced), then checks every running node's
// edge: each valid domain is served with a certificate for it and proxied
// to the upstream; each deleted one is refused. It returns how long the
// API took to show it.
func (cw *clusterWorld) settle(recs []*failRecord, bound time.Duration) time.Duration {
	cw.t.Helper()
	start := time.Now()
	for {
		wrong := cw.misplaced(recs)
		if cw.t.Failed() {
			cw.t.FailNow()
		}
		if len(wrong) == 0 {
			break
		}
		if time.Since(start) > bound {
			var logs strings.Builder
			for _, i := range cw.running() {
				fmt.Fprintf(&logs, "--- %s\n%s\n", cw.nodes[i].name, tailString(cw.nodes[i].s.stderr.String(), 6<<10))
			}
			cw.t.Fatalf("%v after the change, records not where they belong:\n%s\n%s", bound, strings.Join(wrong, "\n"), logs.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	took := time.Since(start)
	// The API shows a record's status as the store holds it; every node's
	// edge follows within 2 s (§8).
	for _, r := range recs {
		if r.deleted || r.pointed {
			cw.waitServed(r.Domain, !r.deleted, time.Now(), 10*time.Second)
		}
	}
	for _, i := range cw.running() {
		client := cw.edgeClient(i)
		for _, r := range recs {
			if r.deleted || !r.pointed {
				continue
			}
			leaf, err := cw.handshake(i, r.Domain)
			if err != nil {
				cw.t.Errorf("%s: handshake for valid %s: %v", cw.nodes[i].name, r.Domain, err)
				continue
			}
			if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != r.Domain {
				cw.t.Errorf("%s serves a certificate for %v for %s", cw.nodes[i].name, leaf.DNSNames, r.Domain)
			}
			if err := cw.proxied(client, r.Domain); err != nil {
				cw.t.Errorf("through %s: %v", cw.nodes[i].name, err)
			}
		}
	}
	return took
}

func tailString(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// TestClusterLeaderKilledWhileIssuing creates records through every node,
// most of them CNAMEd to their targets (the CA steered to the nodes that
// do not lead), and kills the leader with SIGKILL while it issues their
// certificates: some are issuing, not all valid. More records are created
// through the others before a new leader is there. Another node must lead
// within 15 s (§8), and take every record where its DNS says: pointed
// ones valid and served with TLS and proxied by every running node, the
// others waiting; every record answered 201 is there. The killed node,
// started again, serves the valid ones too.
func TestClusterLeaderKilledWhileIssuing(t *testing.T) {
	cw := newClusterWorld(t)
	cw.startNodes()
	leader, _ := cw.waitLeader(30 * time.Second)

	// Nine records in all are pointed: certmagic's own throttle lets a
	// process place at most 10 orders per CA and account in any 10 s, and
	// the successor orders them all again (an eleventh would wait for the
	// window, and the test with it).
	const pointed = 8
	var recs []*failRecord
	for k := range 12 {
		recs = append(recs, &failRecord{recordJSON: cw.create(k%3, fmt.Sprintf("r%d.issuing.example.com", k))})
	}
	for k, r := range recs {
		if k%3 != 2 {
			cw.steer(r, k, leader)
		}
	}
	// Kill the leader once the CA has an order of it, while some pointed
	// record is not valid yet: orders are under way, their locks held on
	// the leader's lease.
	watch := cw.other(leader)
	var atKill map[string]int
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		atKill = cw.statuses(watch)
		if atKill["issuing"] > 0 && atKill["valid"] < pointed && cw.pebble.Orders() > 0 {
			break
		}
		if time.Now().After(deadline) || atKill["valid"] == pointed {
			t.Fatalf("no record seen issuing before the pointed ones were valid (%v)\n%s", atKill, cw.nodes[leader].s.stderr)
		}
	}
	cw.kill(leader)
	killed := time.Now()
	t.Logf("killed the leader %s while the records were %v, %d orders sent to the CA", cw.nodes[leader].name, atKill, cw.pebble.Orders())

	// Creates need no leader: they are answered while none leads.
	survivors := cw.running()
	for k := range 2 {
		r := &failRecord{recordJSON: cw.create(survivors[k%len(survivors)], fmt.Sprintf("after%d.issuing.example.com", k))}
		if k == 0 {
			cw.steer(r, k, leader)
		}
		recs = append(recs, r)
	}
	next, _ := cw.waitLeader(15*time.Second - time.Since(killed))
	took := time.Since(killed)
	t.Logf("%s leads %v after the leader was killed (the contract: within 15 s)", cw.nodes[next].name, took.Round(time.Millisecond))

	cw.settle(recs, 90*time.Second)
	t.Logf("every record where its DNS says, and served on every running node, %v after the kill", time.Since(killed).Round(time.Millisecond))

	cw.startNode(leader)
	restarted := time.Now()
	cw.settle(recs, 30*time.Second)
	t.Logf("the killed node, started again, serves every valid record %v after its start", time.Since(restarted).Round(time.Millisecond))
	t.Logf("Pebble received %d orders for the %d pointed records", cw.pebble.Orders(), pointed+1)
}

// TestClusterLeaderKilledWhileDeleting takes records to valid on every
// node, then deletes a batch (each DELETE answered 204) and kills the
// leader with SIGKILL while the deletions run; more DELETEs are answered
// while no node leads, leaving those records deleting. The node that
// takes over finishes every deletion: the deleted records leave the API
// of every node and stop being served by every node, the others stay
// valid and served; a DELETE of a record already deleting answers 204.
// The killed node, started again from its copy (which held the deleted
// records valid), serves none of them.
func TestClusterLeaderKilledWhileDeleting(t *testing.T) {
	cw := newClusterWorld(t)
	cw.startNodes()
	leader, _ := cw.waitLeader(30 * time.Second)

	// Ten pointed: as many orders as certmagic's throttle lets a process
	// place in 10 s.
	var recs []*failRecord
	for k := range 12 {
		r := &failRecord{recordJSON: cw.create(k%3, fmt.Sprintf("r%d.deleting.example.com", k))}
		if k%6 != 5 {
			cw.steer(r, k, leader)
		}
		recs = append(recs, r)
	}
	took := cw.settle(recs, 90*time.Second)
	t.Logf("%d records valid on every node %v after being pointed", len(recs)-2, took.Round(time.Millisecond))

	del := func(i int, r *failRecord) {
		t.Helper()
		if code := cw.nodes[i].s.request(t, cw.key, "DELETE", "/api/organizations/@current/proxy_records/"+r.ID+"/", "", nil); code != 204 {
			t.Fatalf("DELETE %s through %s: %d, want 204", r.Domain, cw.nodes[i].name, code)
		}
		r.deleted = true
	}
	// The first batch through every node, the leader too, at once; the
	// leader is killed right after the last 204.
	var wg sync.WaitGroup
	codes := make([]int, 6)
	errs := make([]error, 6)
	for k, r := range recs[:6] {
		wg.Go(func() {
			codes[k], errs[k] = cw.call(k%3, "DELETE", "/api/organizations/@current/proxy_records/"+r.ID+"/", "", nil)
		})
	}
	wg.Wait()
	for k, r := range recs[:6] {
		if errs[k] != nil || codes[k] != 204 {
			t.Fatalf("DELETE %s through %s: %d %v, want 204", r.Domain, cw.nodes[k%3].name, codes[k], errs[k])
		}
		r.deleted = true
	}
	cw.kill(leader)
	killed := time.Now()
	watch := cw.other(leader)
	t.Logf("killed the leader %s right after 6 DELETEs; the records were %v", cw.nodes[leader].name, cw.statuses(watch))

	// The second batch while no node may lead yet: those records wait,
	// deleting, for the next leader.
	survivors := cw.running()
	for k, r := range recs[6:9] {
		del(survivors[k%len(survivors)], r)
	}
	for _, r := range recs[:9] {
		var got recordJSON
		code := cw.nodes[watch].s.request(t, cw.key, "GET", "/api/organizations/@current/proxy_records/"+r.ID+"/", "", &got)
		if code == 200 && got.Status == "deleting" {
			// Already deleting: answered 204 again (§4).
			del(watch, r)
		}
		if code != 404 && (code != 200 || got.Status != "deleting") {
			t.Errorf("%s after its 204: %d %s, want deleting or gone", r.Domain, code, got.Status)
		}
	}

	next, _ := cw.waitLeader(15*time.Second - time.Since(killed))
	t.Logf("%s leads %v after the leader was killed (the contract: within 15 s)", cw.nodes[next].name, time.Since(killed).Round(time.Millisecond))
	cw.settle(recs, 60*time.Second)
	t.Logf("every deletion finished and unserved on every node %v after the kill", time.Since(killed).Round(time.Millisecond))

	cw.startNode(leader)
	cw.settle(recs, 30*time.Second)
}

// etcdLeader returns the index of the etcd member that leads its raft
// group.
func (cw *clusterWorld) etcdLeader() int {
	cw.t.Helper()
	eps := cw.etcd.Endpoints()
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		cw.t.Fatal(err)
	}
	defer cli.Close()
	for i, ep := range eps {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st, err := cli.Status(ctx, ep)
		cancel()
		if err == nil && st.Leader == st.Header.MemberId {
			return i
		}
	}
	cw.t.Fatal("no etcd member reports itself the leader")
	return -1
}

// TestClusterEtcdMemberKilled runs a bounded load on a three-node cluster
// (creates, reads right after them through another node, lists, and
// deletes, through every node; TLS handshakes and proxied requests on
// every node for the valid domains) while the etcd member that leads is
// killed with SIGKILL and, later, started again. Not one API call and not
// one edge request may fail (§8: losing one member of three interrupts
// neither), and writes must keep landing while the member is down and
// after it is back.
func TestClusterEtcdMemberKilled(t *testing.T) {
	cw := newClusterWorld(t)
	cw.startNodes()
	leader, _ := cw.waitLeader(30 * time.Second)

	var valid []*failRecord
	for k := range 3 {
		r := &failRecord{recordJSON: cw.create(k, fmt.Sprintf("v%d.member.example.com", k))}
		cw.steer(r, k)
		valid = append(valid, r)
	}
	cw.settle(valid, 90*time.Second)

	const (
		before, down, after = 0, 1, 2
	)
	var (
		phase     atomic.Int32
		creates   [3]atomic.Int64
		apiCalls  atomic.Int64
		edgeCalls atomic.Int64
		failed    atomic.Int64
		mu        sync.Mutex
		failures  []string
	)
	fail := func(format string, args ...any) {
		failed.Add(1)
		mu.Lock()
		defer mu.Unlock()
		if len(failures) < 20 {
			failures = append(failures, fmt.Sprintf("%s (phase %d) ", time.Now().Format("15:04:05.000"), phase.Load())+fmt.Sprintf(format, args...))
		}
	}
	stop := make(chan struct{})
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	const path = "/api/organizations/@current/proxy_records/"
	// check counts one API call: it fails unless it was answered want.
	check := func(what string, code int, err error, want int) bool {
		apiCalls.Add(1)
		if err != nil || code != want {
			fail("%s: %d %v, want %d", what, code, err, want)
			return false
		}
		return true
	}
	var wg sync.WaitGroup
	for i := range cw.nodes {
		a, b, c := i, (i+1)%3, (i+2)%3
		// A record with no CNAME stays waiting, and its DELETE removes it
		// at once (§4): the load needs no leader and no CA.
		wg.Go(func() {
			for n := 0; n < 2000 && !stopped(); n++ {
				domain := fmt.Sprintf("l%d-%d.load.example.com", a, n)
				var rec recordJSON
				code, err := cw.call(a, "POST", path, `{"domain":"`+domain+`"}`, &rec)
				if !check("create "+domain+" through "+cw.nodes[a].name, code, err, 201) {
					continue
				}
				creates[phase.Load()].Add(1)
				var got recordJSON
				code, err = cw.call(b, "GET", path+rec.ID+"/", "", &got)
				if check("read "+domain+" through "+cw.nodes[b].name+" after its 201", code, err, 200) && got.Domain != domain {
					fail("read %s through %s after its 201: %+v", domain, cw.nodes[b].name, got)
				}
				var list struct{ Results []recordJSON }
				code, err = cw.call(c, "GET", path, "", &list)
				check("list through "+cw.nodes[c].name, code, err, 200)
				code, err = cw.call(c, "DELETE", path+rec.ID+"/", "", nil)
				check("delete "+domain+" through "+cw.nodes[c].name, code, err, 204)
				got = recordJSON{}
				code, err = cw.call(a, "GET", path+rec.ID+"/", "", &got)
				check("read "+domain+" through "+cw.nodes[a].name+" after its DELETE (status "+got.Status+")", code, err, 404)
			}
		})
		wg.Go(func() {
			client := cw.edgeClient(a)
			for n := 0; n < 2000 && !stopped(); n++ {
				for _, r := range valid {
					edgeCalls.Add(1)
					if err := cw.proxied(client, r.Domain); err != nil {
						fail("edge %s: %v", cw.nodes[a].name, err)
					}
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}

	time.Sleep(3 * time.Second)
	member := cw.etcdLeader()
	cw.etcd.Kill(member)
	phase.Store(down)
	killedAt := time.Now()
	t.Logf("killed etcd member %d, the raft leader", member)
	time.Sleep(6 * time.Second)
	cw.etcd.Restart(member)
	phase.Store(after)
	t.Logf("etcd member %d back %v after its kill", member, time.Since(killedAt).Round(time.Millisecond))
	time.Sleep(4 * time.Second)
	close(stop)
	wg.Wait()

	t.Logf("%d API calls and %d edge requests, %d failed; creates before the kill, while the member was down, after its return: %d, %d, %d",
		apiCalls.Load(), edgeCalls.Load(), failed.Load(), creates[before].Load(), creates[down].Load(), creates[after].Load())
	for _, f := range failures {
		t.Error(f)
	}
	for p, name := range []string{"before the kill", "while the member was down", "after its return"} {
		if creates[p].Load() == 0 {
			t.Errorf("no create landed %s", name)
		}
	}
	if now, _ := cw.waitLeader(15 * time.Second); now != leader {
		t.Logf("the edgeproxy leader moved from %s to %s", cw.nodes[leader].name, cw.nodes[now].name)
	}
	if t.Failed() {
		for _, i := range cw.running() {
			t.Logf("--- %s\n%s", cw.nodes[i].name, tailString(cw.nodes[i].s.stderr.String(), 6<<10))
		}
	}
	// What the load left: the valid records, still served everywhere.
	cw.settle(valid, 30*time.Second)
}
