package dnszone_test

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/internal/etcdtest"
	"github.com/edgeproxy/edgeproxy/store"
)

// TestTwoNodesAnswerTheSame: the zones of two nodes on one etcd cluster
// answer the same: a record created through one node resolves on both,
// with the same serial, and so do its challenge TXT values; after its
// deletion through the other node, both answer NXDOMAIN.
func TestTwoNodesAnswerTheSame(t *testing.T) {
	c := etcdtest.NewCluster(t, 3)
	open := func() *store.Store {
		st, err := store.OpenEtcd(store.EtcdOptions{Client: c.Client(t), Prefix: "/zone/", CopyPath: filepath.Join(t.TempDir(), "copy.db"), Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	a, b := open(), open()
	_, addrA, _ := serveZone(t, a, nil)
	_, addrB, _ := serveZone(t, b, nil)
	org, err := a.CreateOrg("acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := a.CreateRecord(store.Record{OrgID: org.ID, Domain: "e.shop.example.com", TargetCNAME: target(org.ID, "e.shop.example.com"), Status: store.StatusWaiting}, 10)
	if err != nil {
		t.Fatal(err)
	}
	challenge := "_acme-challenge." + r.TargetCNAME
	if err := b.PutChallengeTXT(challenge, "token-1"); err != nil {
		t.Fatal(err)
	}
	answers := func(addr string) []string {
		var out []string
		for _, q := range []struct {
			name  string
			qtype uint16
		}{{r.TargetCNAME + ".", dns.TypeA}, {challenge + ".", dns.TypeTXT}, {base + ".", dns.TypeSOA}} {
			resp := query(t, "tcp", addr, q.name, q.qtype) // TCP: the UDP rate limit would drop a polling test
			out = append(out, dns.RcodeToString[resp.Rcode])
			out = append(out, rrStrings(resp.Answer)...)
		}
		return out
	}
	waitFor(t, "node A to answer the record and its TXT", func() bool {
		got := answers(addrA)
		return got[0] == "NOERROR" && slices.ContainsFunc(got, func(s string) bool { return s == "token-1" })
	})
	waitFor(t, "node B to answer exactly as node A", func() bool { return slices.Equal(answers(addrA), answers(addrB)) })

	if _, _, err := b.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{addrA, addrB} {
		waitFor(t, "NXDOMAIN after the delete on "+addr, func() bool {
			return query(t, "tcp", addr, r.TargetCNAME+".", dns.TypeA).Rcode == dns.RcodeNameError
		})
	}
}
