// Package dnstest runs a real DNS server on loopback for tests: a miekg/dns server on
// 127.0.0.1 (UDP and TCP on the same port) that answers like a recursive resolver over an
// in-memory zone the test edits while it runs.
//
// The model is deliberately small. Every name holds a set of records; a query for (name, type)
// follows CNAMEs inside the server's own data (up to 8 hops), putting each CNAME in the answer
// section as a recursive resolver does, and then answers the records of that type at the final
// name. When there are none the answer is negative: NXDOMAIN if the name holds no records and
// has no names below it, NODATA (NOERROR, empty answer) otherwise, with the SOA of the closest
// enclosing zone declared by [Server.SetSOA] in the authority section. A chase that ends at a
// name with no records of the type answers NOERROR with just the CNAMEs. Unknown query types get
// the same clean negative answers, so the server can stand in as Pebble's DNS server.
//
// A script ([Server.SetScript]) overrides the model for one name and query type, for the
// answers a hostile DNS host gives: different records for A than for AAAA (split answers), or
// records that change from one query to the next (rebinding).
//
// A zone can be delegated to another DNS server ([Server.Delegate]), such as edgeproxy's own
// authoritative zone (--dns-addr): a query that reaches a name at or under that zone, directly
// or by chasing a CNAME out of the server's own data, is sent there (over TCP) and its answer
// joined to the CNAMEs already found, as a recursive resolver following the zone's NS records
// would. Names outside every delegated zone, the parents of a delegated zone included, are
// still answered from the server's own data, so a CAA climb from a customer's name never
// reaches the other server with a name it would refuse.
//
// Names are case-insensitive and may be given with or without the trailing dot. All methods
// are safe for concurrent use, including while queries are being answered.
package dnstest

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
)

// ttl is the TTL of every record the server answers except SOAs, which carry their own.
const ttl = 60

// maxHops bounds CNAME chasing, so a loop in the test's data ends.
const maxHops = 8

// Server is a loopback DNS server acting as a recursive resolver over in-memory data.
type Server struct {
	tb   testing.TB
	addr string
	udp  *dns.Server
	tcp  *dns.Server

	queries  atomic.Int64
	stopOnce sync.Once
	stopped  chan struct{} // closed by Stop: delayed answers give up

	// mu guards records, below, rcodes, scripts, delegations, delay and truncateUDP.
	mu sync.RWMutex
	// records holds every name's records, keyed by lower-case fully-qualified name.
	records map[string][]dns.RR
	// below counts, for each name, how many names with records lie strictly under it, so an
	// empty non-terminal answers NODATA rather than NXDOMAIN.
	below   map[string]int
	rcodes  map[string]int
	scripts map[scriptKey]*script
	// delegations maps a delegated zone (lower-case, fully qualified) to the address of the
	// server that answers it.
	delegations map[string]string
	delay       time.Duration
	truncateUDP bool
}

// Start starts a server on 127.0.0.1 with a random port, serving UDP and TCP on that same
// port. It stops when the test ends.
func Start(tb testing.TB) *Server {
	tb.Helper()
	s, err := New()
	if err != nil {
		tb.Fatalf("dnstest: %v", err)
	}
	s.tb = tb
	tb.Cleanup(s.Stop)
	return s
}

// New starts a server outside a test (the e2e tool uses it). The caller
// stops it with Stop. SetA panics on an address that does not parse.
func New() (*Server, error) {
	s := &Server{
		stopped: make(chan struct{}),
		records: make(map[string][]dns.RR),
		below:   make(map[string]int),
		rcodes:  make(map[string]int),
		scripts: make(map[scriptKey]*script),

		delegations: make(map[string]string),
	}
	pc, l, err := listenPair()
	if err != nil {
		return nil, fmt.Errorf("listening: %w", err)
	}
	s.addr = pc.LocalAddr().String()
	handler := dns.HandlerFunc(s.serveDNS)
	s.udp = &dns.Server{PacketConn: pc, Handler: handler}
	s.tcp = &dns.Server{Listener: l, Handler: handler}
	for _, srv := range []*dns.Server{s.udp, s.tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() {
			// The error after Shutdown is expected and carries nothing useful.
			_ = srv.ActivateAndServe()
		}()
		<-started
	}
	return s, nil
}

// listenPair binds UDP on a random loopback port and TCP on the same port, retrying when
// that TCP port happens to be taken.
func listenPair() (net.PacketConn, net.Listener, error) {
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return nil, nil, err
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l, nil
		}
		lastErr = err
		pc.Close()
	}
	return nil, nil, fmt.Errorf("binding TCP beside UDP: %w", lastErr)
}

// Addr returns the server's address, "127.0.0.1:port", the same for UDP and TCP.
func (s *Server) Addr() string { return s.addr }

// Queries returns how many queries the server has received, over UDP and TCP together.
func (s *Server) Queries() int { return int(s.queries.Load()) }

// stopShutdownTimeout bounds how long Stop waits for each socket's
// handlers to return.
const stopShutdownTimeout = 5 * time.Second

// Stop stops answering: both sockets are closed, so queries fail as against a resolver that
// is down. Stop may be called more than once.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		close(s.stopped)
		ctx, cancel := context.WithTimeout(context.Background(), stopShutdownTimeout)
		defer cancel()
		_ = s.udp.ShutdownContext(ctx)
		_ = s.tcp.ShutdownContext(ctx)
	})
}

// SetCNAME makes name a CNAME to target, replacing every other record of name.
func (s *Server) SetCNAME(name, target string) {
	name = canonical(name)
	rr := &dns.CNAME{Hdr: header(name, dns.TypeCNAME, ttl), Target: canonical(target)}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(name, []dns.RR{rr})
}

// SetA replaces the address records of name with ips: A records for IPv4 addresses, AAAA for
// IPv6 ones. It also removes a CNAME of name, which cannot coexist with them. With no ips,
// name is left without address records. An unparsable address fails the test.
func (s *Server) SetA(name string, ips ...string) {
	if s.tb != nil {
		s.tb.Helper()
	}
	name = canonical(name)
	var rrs []dns.RR
	for _, ip := range ips {
		addr, err := netip.ParseAddr(ip)
		if err != nil {
			if s.tb == nil {
				panic(fmt.Sprintf("dnstest: SetA %s: %v", name, err))
			}
			s.tb.Errorf("dnstest: SetA %s: %v", name, err)
			continue
		}
		addr = addr.Unmap()
		if addr.Is4() {
			rrs = append(rrs, &dns.A{Hdr: header(name, dns.TypeA, ttl), A: addr.AsSlice()})
		} else {
			rrs = append(rrs, &dns.AAAA{Hdr: header(name, dns.TypeAAAA, ttl), AAAA: addr.AsSlice()})
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rr := range s.records[name] {
		switch rr.Header().Rrtype {
		case dns.TypeA, dns.TypeAAAA, dns.TypeCNAME:
		default:
			rrs = append(rrs, rr)
		}
	}
	s.setLocked(name, rrs)
}

// SetCAA appends a CAA record to name, removing a CNAME of name.
func (s *Server) SetCAA(name string, flag uint8, tag, value string) {
	name = canonical(name)
	rr := &dns.CAA{Hdr: header(name, dns.TypeCAA, ttl), Flag: flag, Tag: tag, Value: value}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(name, append(withoutType(s.records[name], dns.TypeCNAME), rr))
}

// SetTXT replaces the TXT records of name with one record per value (none removes them),
// removing a CNAME of name. Each value is sent byte for byte; one longer than 255 bytes is
// split into several strings of one record, as zone files do.
func (s *Server) SetTXT(name string, values ...string) {
	name = canonical(name)
	// miekg/dns packs TXT strings from their presentation form, where a backslash escapes.
	escape := strings.NewReplacer(`\`, `\\`).Replace
	var rrs []dns.RR
	for _, v := range values {
		var parts []string
		for len(v) > 255 {
			parts, v = append(parts, escape(v[:255])), v[255:]
		}
		rrs = append(rrs, &dns.TXT{Hdr: header(name, dns.TypeTXT, ttl), Txt: append(parts, escape(v))})
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	kept := withoutType(withoutType(s.records[name], dns.TypeCNAME), dns.TypeTXT)
	s.setLocked(name, append(kept, rrs...))
}

// SetSOA declares zone (replacing an earlier SOA of it): negative answers for names at or
// under zone, when no closer zone is declared, carry this SOA in their authority section.
// ttl is the SOA record's own TTL and minttl its MINIMUM field; a resolver caches a negative
// answer for the smaller of the two (RFC 2308).
func (s *Server) SetSOA(zone string, ttl, minttl uint32) {
	zone = canonical(zone)
	rr := &dns.SOA{
		Hdr:     header(zone, dns.TypeSOA, ttl),
		Ns:      "ns1." + zone,
		Mbox:    "hostmaster." + zone,
		Serial:  1,
		Refresh: 3600,
		Retry:   600,
		Expire:  604800,
		Minttl:  minttl,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	rrs := withoutType(s.records[zone], dns.TypeSOA)
	s.setLocked(zone, append(withoutType(rrs, dns.TypeCNAME), rr))
}

// Remove deletes every record of name, its SOA included. Names below it are untouched.
func (s *Server) Remove(name string) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setLocked(name, nil)
}

// SetRcode makes every query that reaches name, directly or through a CNAME, answer rcode
// with no records (dns.RcodeServerFailure, dns.RcodeRefused, ...). dns.RcodeSuccess clears it.
func (s *Server) SetRcode(name string, rcode int) {
	name = canonical(name)
	s.mu.Lock()
	defer s.mu.Unlock()
	if rcode == dns.RcodeSuccess {
		delete(s.rcodes, name)
		return
	}
	s.rcodes[name] = rcode
}

// Delegate hands zone to the DNS server at addr (host:port, answering over TCP): every query
// that reaches a name at or under zone is forwarded there from then on (see the package doc).
// An empty addr removes the delegation. A delegation of a zone inside another delegated zone
// takes precedence for the names under it.
func (s *Server) Delegate(zone, addr string) {
	zone = canonical(zone)
	s.mu.Lock()
	defer s.mu.Unlock()
	if addr == "" {
		delete(s.delegations, zone)
		return
	}
	s.delegations[zone] = addr
}

// delegationLocked returns the address of the server a name at or under a delegated zone is
// forwarded to (the closest zone's), or "". s.mu must be held.
func (s *Server) delegationLocked(name string) string {
	if len(s.delegations) == 0 {
		return ""
	}
	for _, n := range append([]string{name}, ancestors(name)...) {
		if addr, ok := s.delegations[n]; ok {
			return addr
		}
	}
	return ""
}

// forwardTimeout bounds one forwarded query.
const forwardTimeout = 2 * time.Second

// forward asks the server at addr for (name, qtype) and adds its answer to resp: its answer
// records after those resp has already, its rcode, and its authority section when it answered
// none. A server that does not answer makes resp SERVFAIL.
func forward(resp *dns.Msg, addr, name string, qtype uint16) {
	q := new(dns.Msg)
	q.SetQuestion(name, qtype)
	q.RecursionDesired = false
	c := &dns.Client{Net: "tcp", Timeout: forwardTimeout}
	in, _, err := c.Exchange(q, addr)
	if err != nil {
		resp.Rcode = dns.RcodeServerFailure
		resp.Answer = nil
		return
	}
	resp.Rcode = in.Rcode
	resp.Answer = append(resp.Answer, in.Answer...)
	if len(in.Answer) == 0 {
		resp.Ns = append(resp.Ns, in.Ns...)
	}
}

// scriptKey is the name and query type a script answers.
type scriptKey struct {
	name  string
	qtype uint16
}

// script is a sequence of answers for one name and query type.
type script struct {
	answers [][]dns.RR
	asked   int // queries answered so far
}

// SetScript makes queries of type qtype that reach name (directly or through a CNAME) answer
// from answers instead of name's records: the first such query gets answers[0], the second
// answers[1], and every query after the last answer gets the last one again. Each answer is
// a list of records in zone-file form with their owner ("e.example.com. CNAME
// t.example.net.", "e.example.com. A 127.0.0.2"), sent with TTL 0 as a rebinding server's
// are; an empty list answers NOERROR with no records. When an answer ends with a CNAME, the
// server goes on resolving its target from its own data, as a recursive resolver would.
// Calling SetScript again starts the sequence over; with no answers it removes the script. A
// record that does not parse fails the test.
func (s *Server) SetScript(name string, qtype uint16, answers ...[]string) {
	if s.tb != nil {
		s.tb.Helper()
	}
	key := scriptKey{canonical(name), qtype}
	sc := &script{}
	for _, answer := range answers {
		rrs := []dns.RR{}
		for _, text := range answer {
			rr, err := dns.NewRR(text)
			if err != nil || rr == nil {
				if s.tb == nil {
					panic(fmt.Sprintf("dnstest: SetScript %s: %q: %v", key.name, text, err))
				}
				s.tb.Errorf("dnstest: SetScript %s: %q: %v", key.name, text, err)
				continue
			}
			rr.Header().Ttl = 0
			rrs = append(rrs, rr)
		}
		sc.answers = append(sc.answers, rrs)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(sc.answers) == 0 {
		delete(s.scripts, key)
		return
	}
	s.scripts[key] = sc
}

// ScriptAsked returns how many queries the script of (name, qtype) has answered since it was
// set; 0 when there is none.
func (s *Server) ScriptAsked(name string, qtype uint16) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if sc, ok := s.scripts[scriptKey{canonical(name), qtype}]; ok {
		return sc.asked
	}
	return 0
}

// SetDelay delays every answer by d, as a slow resolver would; 0 answers at once.
func (s *Server) SetDelay(d time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.delay = d
}

// SetTruncateUDP, when on, answers every UDP query with the TC bit set and no records, so a
// client must retry over TCP to get the answer.
func (s *Server) SetTruncateUDP(on bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.truncateUDP = on
}

// setLocked replaces the records of name with rrs (none deletes the name), keeping the counts
// of names below each ancestor current. s.mu must be held for writing.
func (s *Server) setLocked(name string, rrs []dns.RR) {
	_, had := s.records[name]
	has := len(rrs) > 0
	if has {
		s.records[name] = rrs
	} else {
		delete(s.records, name)
	}
	if had == has {
		return
	}
	for _, anc := range ancestors(name) {
		if has {
			s.below[anc]++
		} else if s.below[anc]--; s.below[anc] <= 0 {
			delete(s.below, anc)
		}
	}
}

func (s *Server) serveDNS(w dns.ResponseWriter, req *dns.Msg) {
	s.queries.Add(1)
	s.mu.RLock()
	delay, truncate := s.delay, s.truncateUDP
	s.mu.RUnlock()
	if delay > 0 {
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-s.stopped:
			t.Stop()
			return
		}
	}

	resp := new(dns.Msg)
	resp.SetReply(req)
	resp.RecursionAvailable = true
	_, isUDP := w.RemoteAddr().(*net.UDPAddr)
	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = max(int(opt.UDPSize()), dns.MinMsgSize)
		resp.SetEdns0(uint16(size), false)
	}

	switch {
	case len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery:
		resp.Rcode = dns.RcodeNotImplemented
	case isUDP && truncate:
		resp.Truncated = true
	default:
		q := req.Question[0]
		// A write lock: answering a script advances it.
		s.mu.Lock()
		fwdName, fwdAddr := s.resolveLocked(resp, canonical(q.Name), q.Qtype)
		s.mu.Unlock()
		if fwdAddr != "" {
			// Outside the lock: the other server may be slow, or be down.
			forward(resp, fwdAddr, fwdName, q.Qtype)
		}
	}
	if isUDP {
		resp.Truncate(size)
	}
	// A write error means the client went away; there is no one to tell.
	_ = w.WriteMsg(resp)
}

// resolveLocked fills resp with the answer for (name, qtype). When the chase reaches a name
// in a delegated zone it stops there and returns that name and the address of the server to
// ask; the caller forwards the query, without the lock. s.mu must be held for writing.
func (s *Server) resolveLocked(resp *dns.Msg, name string, qtype uint16) (fwdName, fwdAddr string) {
	for hop := 0; ; hop++ {
		if addr := s.delegationLocked(name); addr != "" {
			return name, addr
		}
		if rcode, ok := s.rcodes[name]; ok {
			resp.Rcode = rcode
			resp.Answer = nil
			return
		}
		if sc, ok := s.scripts[scriptKey{name, qtype}]; ok {
			answer := sc.answers[min(sc.asked, len(sc.answers)-1)]
			sc.asked++
			for _, rr := range answer {
				resp.Answer = append(resp.Answer, dns.Copy(rr))
			}
			last, isCNAME := dns.RR(nil), false
			if len(answer) > 0 {
				last = answer[len(answer)-1]
				_, isCNAME = last.(*dns.CNAME)
			}
			if !isCNAME || qtype == dns.TypeCNAME || hop+1 >= maxHops {
				return
			}
			name = canonical(last.(*dns.CNAME).Target)
			continue
		}
		rrs := s.records[name]
		if cname := firstOfType(rrs, dns.TypeCNAME); cname != nil && qtype != dns.TypeCNAME {
			resp.Answer = append(resp.Answer, dns.Copy(cname))
			if hop+1 >= maxHops {
				return
			}
			name = cname.(*dns.CNAME).Target
			continue
		}
		for _, rr := range rrs {
			if qtype == dns.TypeANY || rr.Header().Rrtype == qtype {
				resp.Answer = append(resp.Answer, dns.Copy(rr))
			}
		}
		if len(resp.Answer) > 0 {
			return
		}
		// A negative answer: NXDOMAIN when the name does not exist at all.
		if len(rrs) == 0 && s.below[name] == 0 {
			resp.Rcode = dns.RcodeNameError
		}
		if soa := s.zoneSOALocked(name); soa != nil {
			resp.Ns = append(resp.Ns, dns.Copy(soa))
		}
		return
	}
}

// zoneSOALocked returns the SOA of the closest zone at or above name, or nil.
func (s *Server) zoneSOALocked(name string) dns.RR {
	for _, n := range append([]string{name}, ancestors(name)...) {
		if soa := firstOfType(s.records[n], dns.TypeSOA); soa != nil {
			return soa
		}
	}
	return nil
}

// ancestors returns the names strictly above name, closest first, ending with the root ".".
func ancestors(name string) []string {
	var out []string
	for off, end := dns.NextLabel(name, 0); !end; off, end = dns.NextLabel(name, off) {
		out = append(out, name[off:])
	}
	if name != "." {
		out = append(out, ".")
	}
	return out
}

func canonical(name string) string { return strings.ToLower(dns.Fqdn(name)) }

func header(name string, rrtype uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: ttl}
}

func firstOfType(rrs []dns.RR, rrtype uint16) dns.RR {
	for _, rr := range rrs {
		if rr.Header().Rrtype == rrtype {
			return rr
		}
	}
	return nil
}

func withoutType(rrs []dns.RR, rrtype uint16) []dns.RR {
	var out []dns.RR
	for _, rr := range rrs {
		if rr.Header().Rrtype != rrtype {
			out = append(out, rr)
		}
	}
	return out
}
