package dnszone_test

import (
	"fmt"
	"net"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/miekg/dns"
	"golang.org/x/time/rate"

	"github.com/edgeproxy/edgeproxy/dnszone"
	"github.com/edgeproxy/edgeproxy/store"
)

// BenchmarkZoneUDP: A queries for 1,000 record names over UDP on
// loopback, the clients in the same process; with -cpu 1 the server and
// its clients share one core, so queries/s is a lower bound of what the
// zone answers on one core. The rate limit is lifted: it is per client
// address, and every client here is 127.0.0.1.
func BenchmarkZoneUDP(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	org, err := st.CreateOrg("acme", nil)
	if err != nil {
		b.Fatal(err)
	}
	var names []string
	for i := range 1000 {
		domain := fmt.Sprintf("e%d.example.com", i)
		r, err := st.CreateRecord(store.Record{OrgID: org.ID, Domain: domain, TargetCNAME: target(org.ID, domain), Status: store.StatusValid}, 10000)
		if err != nil {
			b.Fatal(err)
		}
		names = append(names, dns.Fqdn(r.TargetCNAME))
	}
	_, addr, _ := serveZone(b, st, func(c *dnszone.Config) { c.RateLimit, c.RateBurst = rate.Inf, 1<<30 })
	var seq atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		conn, err := net.Dial("udp", addr)
		if err != nil {
			b.Error(err)
			return
		}
		defer conn.Close()
		c := &dns.Conn{Conn: conn}
		for pb.Next() {
			m := new(dns.Msg)
			m.SetQuestion(names[int(seq.Add(1))%len(names)], dns.TypeA)
			if err := c.WriteMsg(m); err != nil {
				b.Error(err)
				return
			}
			resp, err := c.ReadMsg()
			if err != nil {
				b.Error(err)
				return
			}
			if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) == 0 {
				b.Errorf("answer %s with %d records", dns.RcodeToString[resp.Rcode], len(resp.Answer))
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "queries/s")
}
