package store_test

import (
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/edgeproxy/edgeproxy/internal/etcdtest"
	"github.com/edgeproxy/edgeproxy/store"
)

// Throughput of the store through one node and through three, on a real
// 3-member etcd cluster on loopback with fsync on (docs/PERFORMANCE.md has
// the figures and the command). The etcd members run in the benchmark's
// process and share its CPUs.

func benchNodes(b *testing.B, n int) []*store.Store {
	b.Helper()
	c := etcdtest.NewCluster(b, 3)
	var nodes []*store.Store
	for range n {
		s, err := store.OpenEtcd(store.EtcdOptions{Client: c.Client(b), Prefix: "/bench/", CopyPath: filepath.Join(b.TempDir(), "copy.db")})
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { s.Close() })
		nodes = append(nodes, s)
	}
	return nodes
}

// benchCreates spreads the creates over 64 organizations: creates in one
// organization serialize on its record count (its limit), by design.
func benchCreates(b *testing.B, nodes []*store.Store) {
	var orgs []store.Org
	for i := range 64 {
		org, err := nodes[0].CreateOrg(fmt.Sprintf("bench-%d", i), nil)
		if err != nil {
			b.Fatal(err)
		}
		orgs = append(orgs, org)
	}
	var seq atomic.Int64
	b.SetParallelism(32) // 32 × GOMAXPROCS concurrent callers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			s := nodes[int(i)%len(nodes)]
			if _, err := s.CreateRecord(store.Record{OrgID: orgs[int(i)%len(orgs)].ID, Domain: fmt.Sprintf("e%d.example.com", i), Status: store.StatusWaiting}, noLimit); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creates/s")
}

func benchReads(b *testing.B, nodes []*store.Store) {
	org, err := nodes[0].CreateOrg("bench", nil)
	if err != nil {
		b.Fatal(err)
	}
	var ids []string
	for i := range 200 {
		r, err := nodes[0].CreateRecord(store.Record{OrgID: org.ID, Domain: fmt.Sprintf("r%d.example.com", i), Status: store.StatusWaiting}, noLimit)
		if err != nil {
			b.Fatal(err)
		}
		ids = append(ids, r.ID)
	}
	var seq atomic.Int64
	b.SetParallelism(32)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			s := nodes[int(i)%len(nodes)]
			if _, err := s.Record(ids[int(i)%len(ids)]); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "reads/s")
}

func BenchmarkEtcdCreateOneNode(b *testing.B)    { benchCreates(b, benchNodes(b, 1)) }
func BenchmarkEtcdCreateThreeNodes(b *testing.B) { benchCreates(b, benchNodes(b, 3)) }
func BenchmarkEtcdReadOneNode(b *testing.B)      { benchReads(b, benchNodes(b, 1)) }
func BenchmarkEtcdReadThreeNodes(b *testing.B)   { benchReads(b, benchNodes(b, 3)) }

func BenchmarkBoltCreate(b *testing.B) {
	s, err := store.Open(filepath.Join(b.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchCreates(b, []*store.Store{s})
}
