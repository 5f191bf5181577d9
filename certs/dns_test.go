package certs

import (
	"net"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// testDNS is a loopback DNS server (UDP and TCP on one port) that answers
// A 127.0.0.1 for every name, NXDOMAIN for the names marked so, the CAA
// records it is given, and NODATA for everything else.
type testDNS struct {
	addr string

	// mu guards caa and nxdomain.
	mu       sync.Mutex
	caa      map[string][]dns.RR
	nxdomain map[string]bool
}

func startDNS(t *testing.T) *testDNS {
	t.Helper()
	d := &testDNS{caa: map[string][]dns.RR{}, nxdomain: map[string]bool{}}
	var tcp net.Listener
	var udp net.PacketConn
	for range 20 {
		var err error
		tcp, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		udp, err = net.ListenPacket("udp", tcp.Addr().String())
		if err == nil {
			break
		}
		tcp.Close()
		tcp = nil
	}
	if tcp == nil {
		t.Fatal("no port free for both TCP and UDP")
	}
	d.addr = tcp.Addr().String()
	for _, srv := range []*dns.Server{
		{Listener: tcp, Handler: d},
		{PacketConn: udp, Handler: d},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go srv.ActivateAndServe()
		<-started
		t.Cleanup(func() { srv.Shutdown() })
	}
	return d
}

// SetCAA sets the CAA set of name to one record.
func (d *testDNS) SetCAA(name string, flag uint8, tag, value string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	fqdn := dns.Fqdn(strings.ToLower(name))
	d.caa[fqdn] = []dns.RR{&dns.CAA{
		Hdr:  dns.RR_Header{Name: fqdn, Rrtype: dns.TypeCAA, Class: dns.ClassINET},
		Flag: flag, Tag: tag, Value: value,
	}}
}

// SetNXDOMAIN makes name not exist.
func (d *testDNS) SetNXDOMAIN(name string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.nxdomain[dns.Fqdn(strings.ToLower(name))] = true
}

func (d *testDNS) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	if len(req.Question) == 1 {
		q := req.Question[0]
		name := strings.ToLower(q.Name)
		d.mu.Lock()
		switch {
		case d.nxdomain[name]:
			m.Rcode = dns.RcodeNameError
		case q.Qtype == dns.TypeA:
			m.Answer = append(m.Answer, &dns.A{
				Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET},
				A:   net.IPv4(127, 0, 0, 1),
			})
		case q.Qtype == dns.TypeCAA:
			m.Answer = append(m.Answer, d.caa[name]...)
		}
		d.mu.Unlock()
	}
	_ = w.WriteMsg(m)
}
