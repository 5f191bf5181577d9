package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestChaosCluster is TestChaos on a cluster: three nodes of the real
// binary on an etcd of three member processes (clusterWorld), with Pebble
// and the loopback DNS server. The same workers create, delete and retry
// records through the API of a node picked at random among those running
// for each call (a record's target points at a node picked at random, so
// the CA validates through any of them). Each round kill -9s one target at
// a random moment while the workers run:
//
//   - a node, the leader in the first of those rounds and in half of the
//     others (else any node), restarted on its data directory after a
//     random 0.1–1.5 s, the workers going on through the other two
//     meanwhile;
//   - or one etcd member, restarted from its data directory after a random
//     0.1–1.5 s. Never more than one member is down at once, so etcd keeps
//     its quorum: the test is about what a node does when a member under it
//     dies, not about an etcd outage (TestClusterEtcdDown covers that).
//
// A call cut because its node was killed, or answered 503 because the
// store could not tell whether its commit landed, is unanswered: it either
// happened or did not, and the harness learns which. After each round the
// workers stop and, read through a random node, every record acknowledged
// with 201 and not deleted with 204 exists, every record deleted with 204
// is gone or deleting, no record exists that no worker created, no domain
// is held twice and no organization is over its limit (also checked while
// the writes run). Then every node must list the same records: each
// node's read waits for a linearizable barrier, but the leader's engine
// goes on moving records (issuing to valid, deleting to gone), so the
// three lists are read again until they are equal, within a bound.
//
// At the end, with every node and member running, every record must reach
// the status its DNS dictates, a pointed record valid and served with its
// certificate by every node, a record with no CNAME waiting; every deleted
// record must disappear and be served by no node; exactly one node must
// lead; and every created and deleted event must have been delivered to
// the organization's webhook at least once, across the leader changes.
//
// `make test` runs a short form (EDGEPROXY_CHAOS_CLUSTER_KILLS unset: 4
// rounds); `make chaos-cluster` runs 30. Targets alternate between a node
// and an etcd member from a random start, so the short form kills the
// leader, another node or the leader again, and two etcd members;
// EDGEPROXY_CHAOS_SEED fixes the choices (not the timings).
func TestChaosCluster(t *testing.T) {
	kills := envInt(t, "EDGEPROXY_CHAOS_CLUSTER_KILLS", 4)
	seed := uint64(envInt(t, "EDGEPROXY_CHAOS_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("chaos on a cluster: %d kills, seed %d", kills, seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	began := time.Now()

	cw := newClusterWorld(t)
	cw.startNodes()
	cw.waitLeader(30 * time.Second)

	// apis holds each running node's API address ("" while it is down);
	// the workers pick from it for every call.
	var (
		mu   sync.Mutex
		apis = make([]string, len(cw.nodes))
	)
	setAPI := func(i int, addr string) {
		mu.Lock()
		apis[i] = addr
		mu.Unlock()
	}
	for i, n := range cw.nodes {
		setAPI(i, n.s.api)
	}
	api := func() string {
		mu.Lock()
		defer mu.Unlock()
		var up []string
		for _, a := range apis {
			if a != "" {
				up = append(up, a)
			}
		}
		return up[rand.IntN(len(up))]
	}
	// anyNode is a running node, for the reads between rounds (every node
	// runs then).
	anyNode := func() *server { return cw.nodes[rng.IntN(len(cw.nodes))].s }

	c := &chaos{t: t, key: cw.key, seed: seed, unavailable503: true,
		point: func(wrng *rand.Rand, domain, target string) {
			cw.point(domain, target, wrng.IntN(len(cw.nodes)))
		}}
	s := cw.nodes[0].s
	for i, limit := range []int{4, 7} {
		var org struct{ ID string }
		s.admin(t, &org, "org", "create", "--name", fmt.Sprintf("chaos-%d", i), "--max-proxy-records", strconv.Itoa(limit))
		s.admin(t, nil, "member", "add", "--org", org.ID, "--user", "1", "--level", "owner")
		c.orgs = append(c.orgs, chaosOrg{id: org.ID, limit: limit})
	}
	c.hooks = newChaosHooks(t)
	for _, org := range c.orgs {
		body := `{"url": "` + c.hooks.srv.URL + `/hooks", "events": ["proxy_record.created", "proxy_record.deleted"]}`
		if code := anyNode().request(t, cw.key, "POST", "/api/organizations/"+org.id+"/webhooks/", body, nil); code != 201 {
			t.Fatalf("create webhook: %d", code)
		}
	}
	const workers = 4
	for i := range workers {
		c.workers = append(c.workers, &chaosWorker{c: c, n: i, org: i % len(c.orgs), patient: i >= workers/2,
			rng: rand.New(rand.NewPCG(seed, uint64(i+1)))})
	}

	nodeKills, leaderKills, etcdKills := 0, 0, 0
	etcdFirst := rng.IntN(2)
	for round := range kills {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, w := range c.workers {
			wg.Go(func() { w.run(api, stop) })
		}
		time.Sleep(time.Duration(200+rng.IntN(1800)) * time.Millisecond)
		c.held(anyNode())
		down := time.Duration(100+rng.IntN(1400)) * time.Millisecond
		var what string
		if (round+etcdFirst)%2 == 0 {
			i := rng.IntN(len(cw.nodes))
			if nodeKills == 0 || rng.IntN(2) == 0 {
				i, _ = cw.waitLeader(30 * time.Second)
				leaderKills++
			}
			what = fmt.Sprintf("kill %d (%s for %v)", round+1, cw.nodes[i].name, down)
			setAPI(i, "")
			cw.kill(i)
			time.Sleep(down)
			cw.startNode(i)
			setAPI(i, cw.nodes[i].s.api)
			nodeKills++
		} else {
			m := rng.IntN(cw.etcd.Size())
			what = fmt.Sprintf("kill %d (etcd member %d for %v)", round+1, m, down)
			cw.etcd.Kill(m)
			time.Sleep(down)
			cw.etcd.Restart(m)
			etcdKills++
		}
		// Writes go on a moment with every target back, through the
		// restarted node too.
		time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
		close(stop)
		wg.Wait()
		c.kills++

		c.reconcile(anyNode(), "after "+what)
		c.agree(cw, "after "+what)
		cw.waitLeader(30 * time.Second)
		t.Logf("%s: invariants hold, %v into the test", what, time.Since(began).Round(100*time.Millisecond))
		if t.Failed() {
			t.Fatalf("invariants broken after %s (seed %d)\n%s\n%s", what, seed, c.truth(cw), cw.logs())
		}
	}

	settling := time.Now()
	c.settle(anyNode(), func(domain string, want bool) error {
		return cw.servedByEach(domain, want, 10*time.Second)
	})
	if t.Failed() {
		t.Fatalf("did not settle (seed %d)\n%s", seed, cw.logs())
	}
	t.Logf("settled in %v", time.Since(settling).Round(100*time.Millisecond))
	cw.waitLeader(30 * time.Second)
	c.eventsDelivered()
	c.report()
	// A 503 counts as unanswered, so a cluster refusing every write would
	// pass the checks above with nothing to check.
	if c.created.Load() == 0 || c.deletedOK.Load() == 0 {
		t.Errorf("%d creates and %d deletes acknowledged: the workers got nothing done", c.created.Load(), c.deletedOK.Load())
	}
	t.Logf("chaos on a cluster: %d nodes killed (%d of them leading), %d etcd members killed; %d writes answered 503; %v in all",
		nodeKills, leaderKills, etcdKills, c.unavailable.Load(), time.Since(began).Round(time.Second))
}

// agree checks that every node lists the same records (id, domain,
// status) of each organization, through the API. The leader's engine may
// change a record between two nodes' reads, so the lists are read again
// until they match, for up to 30 s.
func (c *chaos) agree(cw *clusterWorld, when string) {
	t := c.t
	var last []string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		last = last[:0]
		var first []heldRecord
		same := true
		for i, n := range cw.nodes {
			var list []heldRecord
			for _, o := range c.orgs {
				var page struct{ Results []heldRecord }
				if code := n.s.request(t, c.key, "GET", "/api/organizations/"+o.id+"/proxy_records/", "", &page); code != 200 {
					t.Fatalf("%s: %s lists the records of %s: %d", when, n.name, o.id, code)
				}
				list = append(list, page.Results...)
			}
			slices.SortFunc(list, func(a, b heldRecord) int {
				if a.Domain < b.Domain {
					return -1
				}
				if a.Domain > b.Domain {
					return 1
				}
				return 0
			})
			last = append(last, fmt.Sprintf("%s: %v", n.name, list))
			if i == 0 {
				first = list
			} else if !slices.Equal(first, list) {
				same = false
			}
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("%s: the nodes list different records for 30 s:\n%v", when, last)
			return
		}
	}
}

// servedByEach waits, up to bound, until every node serves domain with a
// certificate chained to Pebble's root (want) or none does (!want).
func (cw *clusterWorld) servedByEach(domain string, want bool, bound time.Duration) error {
	var errs []error
	for i, n := range cw.nodes {
		for deadline := time.Now().Add(bound); ; time.Sleep(50 * time.Millisecond) {
			_, err := cw.handshake(i, domain)
			if (err == nil) == want {
				break
			}
			if time.Now().After(deadline) {
				if want {
					errs = append(errs, fmt.Errorf("%s: %w", n.name, err))
				} else {
					errs = append(errs, fmt.Errorf("%s still serves it %v after", n.name, bound))
				}
				break
			}
		}
	}
	return errors.Join(errs...)
}

// truth is what etcd itself holds (read with a client of its own) and
// what each node's copy holds, for a failure's message: it tells a node's
// stale or wrong copy from a wrong commit.
func (c *chaos) truth(cw *clusterWorld) string {
	cli, err := clientv3.New(clientv3.Config{Endpoints: cw.etcd.Endpoints(), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err.Error()
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, "/edgeproxy/d/records/", clientv3.WithPrefix())
	if err != nil {
		return err.Error()
	}
	var out []string
	for _, kv := range resp.Kvs {
		var r heldRecord
		json.Unmarshal(kv.Value, &r)
		out = append(out, fmt.Sprintf("%s %s %s mod %d", r.Domain, r.ID, r.Status, kv.ModRevision))
	}
	slices.Sort(out)
	text := fmt.Sprintf("etcd at revision %d holds %d records:\n  %s\n", resp.Header.Revision, len(out), strings.Join(out, "\n  "))
	for _, n := range cw.nodes {
		if n.s == nil {
			continue
		}
		var all []heldRecord
		n.s.admin(c.t, &all, "records", "list")
		var mine []string
		for _, h := range all {
			mine = append(mine, fmt.Sprintf("%s %s %s", h.Domain, h.ID, h.Status))
		}
		slices.Sort(mine)
		text += fmt.Sprintf("%s holds %d:\n  %s\n", n.name, len(mine), strings.Join(mine, "\n  "))
	}
	return text
}

// logs returns the end of each running node's log, for a failure's
// message.
func (cw *clusterWorld) logs() string {
	var out string
	for _, n := range cw.nodes {
		if n.s != nil {
			l := n.s.stderr.String()
			out += "--- " + n.name + "\n" + l[max(0, len(l)-8000):]
		}
	}
	return out
}
