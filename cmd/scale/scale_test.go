package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

func TestMain(m *testing.M) { testbin.Main(m) }

// smallConfig is the tool at the size `go test` can afford: 200 records,
// 50 of them valid, on the binary built without -race as `make scale`
// builds it.
func smallConfig(t *testing.T, stores ...string) config {
	c := defaultConfig()
	c.Bin = testbin.Build(t, false)
	c.Stores = stores
	c.Records, c.Valid, c.Waiting, c.Orgs = 200, 50, 50, 5
	c.Names, c.Runs, c.Sweepers = 20, 1, 2
	c.ServeTimeout = 2 * time.Minute
	c.WorkDir = t.TempDir()
	return c
}

// TestScaleSmall runs the whole tool on each store at a small size and
// checks that it measured what it says: the seeded mix is in the store,
// every node (one on bbolt; on etcd the first node, a new node beside
// it, and the first restarted) became ready and served, its memory was
// read, the timed handshakes are one per name and the sweep reached every
// valid name, nothing went to the ACME CA, and nothing was logged above
// INFO.
func TestScaleSmall(t *testing.T) {
	for _, tc := range []struct {
		store     string
		scenarios []string
	}{
		{storeBbolt, []string{scenarioStart}},
		{storeEtcd, []string{scenarioFirst, scenarioCatchUp, scenarioRestart}},
	} {
		t.Run(tc.store, func(t *testing.T) {
			c := smallConfig(t, tc.store)
			if tc.store == storeEtcd {
				c.EtcdBin = testbin.EtcdBinary(t)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
			defer cancel()
			res, err := run(ctx, c, testLog{t})
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			report := res.markdown()
			t.Logf("report:\n%s", report)
			for _, p := range res.problems() {
				t.Errorf("problem: %s", p)
			}
			want := map[store.Status]int{store.StatusValid: 50, store.StatusWaiting: 50, store.StatusErroring: 50, store.StatusTimedOut: 50}
			for _, s := range store.Statuses {
				if got := res.seed.counts[s]; got != want[s] {
					t.Errorf("seeded %d %s records, want %d", got, s, want[s])
				}
			}
			if res.seed.size == 0 {
				t.Error("the seeded file's size was not read")
			}
			if res.acmeReqs != 0 {
				t.Errorf("%d requests to the ACME CA", res.acmeReqs)
			}
			if len(res.nodes) != len(tc.scenarios) {
				t.Fatalf("%d nodes measured, want %d", len(res.nodes), len(tc.scenarios))
			}
			for i, n := range res.nodes {
				if n.store != tc.store || n.scenario != tc.scenarios[i] || n.run != 1 {
					t.Errorf("node %d is %s/%s/run %d, want %s/%s/run 1", i, n.store, n.scenario, n.run, tc.store, tc.scenarios[i])
				}
				if n.ready <= 0 || n.serving < n.ready || n.allServed < n.serving {
					t.Errorf("%s: ready %v, serving %v, all served %v: want 0 < ready ≤ serving ≤ all served", n.scenario, n.ready, n.serving, n.allServed)
				}
				if n.mem.VmRSS == 0 || n.mem.VmHWM < n.mem.VmRSS || n.memAfter.VmRSS == 0 {
					t.Errorf("%s: memory not read: %+v, after %+v", n.scenario, n.mem, n.memAfter)
				}
				// CPU time is sampled in clock ticks (10 ms): a small start,
				// whatever its wall time, may count none.
				if n.cpu < 0 {
					t.Errorf("%s: CPU time %v", n.scenario, n.cpu)
				}
				if len(n.latency) != c.Names || n.latFailed != 0 {
					t.Errorf("%s: %d handshakes timed and %d failed, want %d and 0", n.scenario, len(n.latency), n.latFailed, c.Names)
				}
				if n.sweep.names != c.Valid || n.sweep.failed != 0 {
					t.Errorf("%s: sweep of %d names with %d failures, want %d and 0", n.scenario, n.sweep.names, n.sweep.failed, c.Valid)
				}
				// The sweep's handshakes, the timed ones and the probe's,
				// all served from the cache.
				if got := n.handshakes["served"]; got < float64(c.Valid+c.Names+1) {
					t.Errorf("%s: edge counted %v served handshakes, want at least %d", n.scenario, got, c.Valid+c.Names+1)
				}
			}
			if tc.store == storeEtcd {
				m := res.migrate
				if m == nil || m.keys == 0 || m.before.keys == 0 || m.before.dbSize == 0 {
					t.Fatalf("migration not measured: %+v", m)
				}
			}
			for _, s := range []string{"| " + tc.store + " | ", "Requests the nodes sent to the ACME CA: 0.", "exited 0 on SIGTERM"} {
				if !strings.Contains(report, s) {
					t.Errorf("the report lacks %q", s)
				}
			}
		})
	}
}

// TestConfigValidate: each bad flag is refused with a message naming it.
func TestConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		flag string
		set  func(*config)
	}{
		{"-bin", func(c *config) { c.Bin = "" }},
		{"-stores", func(c *config) { c.Stores = nil }},
		{"-stores", func(c *config) { c.Stores = []string{"postgres"} }},
		{"-records", func(c *config) { c.Records = 0 }},
		{"-valid", func(c *config) { c.Valid = 1 }},
		{"-waiting", func(c *config) { c.Waiting = -1 }},
		{"-valid", func(c *config) { c.Valid, c.Waiting = c.Records, 1 }},
		{"-orgs", func(c *config) { c.Orgs = c.Records + 1 }},
		{"-names", func(c *config) { c.Names = c.Valid }},
		{"-runs", func(c *config) { c.Runs = 0 }},
		{"-sweepers", func(c *config) { c.Sweepers = 0 }},
		{"-serve-timeout", func(c *config) { c.ServeTimeout = 0 }},
		{"-etcd-bin", func(c *config) { c.EtcdBin = "" }},
	} {
		c := defaultConfig()
		tc.set(&c)
		err := c.validate()
		if err == nil || !strings.HasPrefix(err.Error(), tc.flag) {
			t.Errorf("%s: validate() = %v, want an error naming %s", tc.flag, err, tc.flag)
		}
	}
	if err := defaultConfig().validate(); err != nil {
		t.Errorf("the defaults: %v", err)
	}
}

// testLog sends the tool's progress lines to the test log.
type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

var _ io.Writer = testLog{}
