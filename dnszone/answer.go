package dnszone

import (
	"strings"

	"github.com/miekg/dns"
)

// MaxUDPSize is the largest answer sent over UDP, whatever size a query
// advertises: the size that avoids IP fragmentation (DNS Flag Day 2020).
const MaxUDPSize = 1232

// challengeLabel starts the names of DNS-01 challenges.
const challengeLabel = "_acme-challenge"

// answer builds the response to req. udp says whether it travels over
// UDP, which bounds its size.
func (z *Zone) answer(req *dns.Msg, udp bool) *dns.Msg {
	resp := new(dns.Msg)
	resp.Id = req.Id
	resp.Response = true
	resp.Opcode = req.Opcode
	resp.Compress = true
	if len(req.Question) == 1 {
		resp.Question = []dns.Question{req.Question[0]}
	}
	if req.Opcode != dns.OpcodeQuery {
		resp.Rcode = dns.RcodeNotImplemented
		return resp
	}
	resp.RecursionDesired = req.RecursionDesired
	resp.CheckingDisabled = req.CheckingDisabled
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		return resp
	}

	size := dns.MinMsgSize
	if opt := req.IsEdns0(); opt != nil {
		size = max(min(int(opt.UDPSize()), MaxUDPSize), dns.MinMsgSize)
		out := &dns.OPT{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeOPT}}
		out.SetUDPSize(MaxUDPSize)
		out.SetDo(opt.Do())
		resp.Extra = append(resp.Extra, out)
		if opt.Version() != 0 {
			// RFC 6891 6.1.3: the version this server knows, in an OPT
			// of that version.
			resp.Rcode = dns.RcodeBadVers
			return resp
		}
	}
	if !udp {
		size = dns.MaxMsgSize
	}
	z.resolve(req.Question[0], resp)
	if resp.Len() > size {
		// The client asks again over TCP; no part of the answer is sent,
		// so nothing larger than the question goes back.
		resp.Answer, resp.Ns = nil, nil
		resp.Truncated = true
	}
	return resp
}

// resolve fills resp's rcode and sections for the question q.
func (z *Zone) resolve(q dns.Question, resp *dns.Msg) {
	if q.Qclass != dns.ClassINET {
		resp.Rcode = dns.RcodeRefused
		return
	}
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(z.origin, name) {
		resp.Rcode = dns.RcodeRefused
		return
	}
	resp.Authoritative = true
	if q.Qtype == dns.TypeAXFR || q.Qtype == dns.TypeIXFR {
		// No transfers: the zone is the store, and every node serves it.
		resp.Rcode = dns.RcodeRefused
		resp.Authoritative = false
		return
	}

	if name == z.origin {
		serial := z.serial()
		switch q.Qtype {
		case dns.TypeSOA:
			resp.Answer = append(resp.Answer, z.soa(serial))
		case dns.TypeNS:
			for _, ns := range z.ns {
				resp.Answer = append(resp.Answer, &dns.NS{Hdr: hdr(q.Name, dns.TypeNS, NSTTL), Ns: ns})
			}
		case dns.TypeANY:
			resp.Answer = append(resp.Answer, rfc8482(q.Name))
		default:
			resp.Ns = append(resp.Ns, z.soa(serial))
		}
		return
	}

	// Below the apex: <label>.<zone> or _acme-challenge.<label>.<zone>.
	rel := strings.TrimSuffix(name, "."+z.origin)
	label, challenge := rel, false
	if rest, ok := strings.CutPrefix(rel, challengeLabel+"."); ok {
		label, challenge = rest, true
	}
	exists, serial := false, uint32(0)
	if isLabel(label) {
		exists, serial = z.has(label)
	} else {
		serial = z.serial()
	}
	if !exists {
		resp.Rcode = dns.RcodeNameError
		resp.Ns = append(resp.Ns, z.soa(serial))
		return
	}
	switch {
	case q.Qtype == dns.TypeANY:
		resp.Answer = append(resp.Answer, rfc8482(q.Name))
	case !challenge && q.Qtype == dns.TypeA:
		for _, ip := range z.v4 {
			resp.Answer = append(resp.Answer, &dns.A{Hdr: hdr(q.Name, dns.TypeA, AddressTTL), A: ip.AsSlice()})
		}
	case !challenge && q.Qtype == dns.TypeAAAA:
		for _, ip := range z.v6 {
			resp.Answer = append(resp.Answer, &dns.AAAA{Hdr: hdr(q.Name, dns.TypeAAAA, AddressTTL), AAAA: ip.AsSlice()})
		}
	case challenge && q.Qtype == dns.TypeTXT:
		values, err := z.st.ChallengeTXT(strings.TrimSuffix(name, "."))
		if err != nil {
			z.log.Warn("dnszone: reading challenge TXT", "name", name, "err", err)
			resp.Rcode = dns.RcodeServerFailure
			resp.Authoritative = false
			return
		}
		for _, v := range values {
			resp.Answer = append(resp.Answer, &dns.TXT{Hdr: hdr(q.Name, dns.TypeTXT, ChallengeTTL), Txt: []string{v}})
		}
	}
	if len(resp.Answer) == 0 {
		resp.Ns = append(resp.Ns, z.soa(serial))
	}
}

// soa is the zone's SOA record.
func (z *Zone) soa(serial uint32) *dns.SOA {
	return &dns.SOA{
		Hdr:     hdr(z.origin, dns.TypeSOA, NegativeTTL),
		Ns:      z.ns[0],
		Mbox:    "hostmaster." + z.origin,
		Serial:  serial,
		Refresh: 3600,
		Retry:   600,
		Expire:  604800,
		Minttl:  NegativeTTL,
	}
}

// rfc8482 is the answer to ANY at a name that exists (RFC 8482 4.2).
func rfc8482(name string) dns.RR {
	return &dns.HINFO{Hdr: hdr(name, dns.TypeHINFO, AddressTTL), Cpu: "RFC8482", Os: ""}
}

func hdr(name string, rrtype uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: rrtype, Class: dns.ClassINET, Ttl: ttl}
}
