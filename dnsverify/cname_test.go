package dnsverify

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
)

const (
	domain    = "e.example.com"
	target    = "0123456789abcdef0123.proxy.example.net"
	addRecord = "Add this record: e.example.com CNAME 0123456789abcdef0123.proxy.example.net"
	token     = "edgeproxy-verification=thisrecordstoken"
	addTXT    = `add this record: _edgeproxy.e.example.com TXT "edgeproxy-verification=thisrecordstoken"`
)

// own is the ownership TXT record of the record under test.
var own = Ownership{Name: "_edgeproxy." + domain, Token: token}

// newVerifier returns a Verifier for servers with a short timeout, failing the test on error.
func newVerifier(t *testing.T, timeout time.Duration, servers ...string) *Verifier {
	t.Helper()
	v, err := New(servers, timeout)
	if err != nil {
		t.Fatalf("New(%q): %v", servers, err)
	}
	return v
}

func TestCheckCNAME(t *testing.T) {
	tests := []struct {
		name   string
		setup  func(s *dnstest.Server)
		domain string // default domain
		target string // default target
		want   Outcome
		via    string
		found  []string
		negTTL time.Duration
		// message must contain each of these, and none of notInMsg.
		inMsg    []string
		notInMsg []string
		// end is how the message of an outcome that asks for a change ends: the record to
		// add. Default addRecord.
		end string
	}{
		{
			name: "CNAME to the target",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, target)
				s.SetA(target, "192.0.2.10")
			},
			want: Pointing, via: ViaCNAME,
			found: []string{"CNAME " + target + ".", target + ". A 192.0.2.10"},
		},
		{
			name: "case and trailing dots ignored",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, strings.ToUpper(target)+".")
			},
			domain: "E.Example.Com.", target: strings.ToUpper(target[:5]) + target[5:] + ".",
			want: Pointing, via: ViaCNAME,
		},
		{
			name: "CNAME to the target, which has no address yet",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, target)
			},
			want: Pointing, via: ViaCNAME, found: []string{"CNAME " + target + "."},
		},
		{
			name: "chain reaching the target",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, "edge.customer-cdn.net")
				s.SetCNAME("edge.customer-cdn.net", target)
				s.SetA(target, "192.0.2.10", "2001:db8::10")
			},
			want: Pointing, via: ViaChain,
			found: []string{
				"CNAME edge.customer-cdn.net.",
				"edge.customer-cdn.net. CNAME " + target + ".",
				target + ". A 192.0.2.10",
				target + ". AAAA 2001:db8::10",
			},
			inMsg: []string{"edge.customer-cdn.net"},
		},
		{
			name: "chain reaching the target and going on",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, "a.example.org")
				s.SetCNAME("a.example.org", target)
				s.SetCNAME(target, "lb.proxy.example.net")
				s.SetA("lb.proxy.example.net", "192.0.2.10")
			},
			want: Pointing, via: ViaChain,
		},
		{
			// The squatting case: anyone can make a name resolve to the edge's addresses.
			name: "flattened, A, without the ownership TXT",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.11", "192.0.2.10")
				s.SetA(target, "192.0.2.10", "192.0.2.11")
			},
			want:  OwnershipMissing,
			found: []string{"A 192.0.2.11", "A 192.0.2.10"},
			inMsg: []string{"same addresses as " + target, "do not prove", "_edgeproxy.e.example.com has no TXT record",
				"replace the address records of e.example.com with a CNAME to " + target},
			end: addTXT,
		},
		{
			name: "flattened, A, with the ownership TXT",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.11", "192.0.2.10")
				s.SetA(target, "192.0.2.10", "192.0.2.11")
				s.SetTXT("_edgeproxy."+domain, "v=spf1 -all", token)
			},
			want: Pointing, via: ViaFlattened,
			found: []string{"A 192.0.2.11", "A 192.0.2.10"},
			inMsg: []string{"_edgeproxy.e.example.com holds this record's token"},
		},
		{
			name: "flattened, AAAA, with the ownership TXT",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "2001:db8::10")
				s.SetA(target, "2001:db8::10")
				s.SetTXT("_edgeproxy."+domain, token)
			},
			want: Pointing, via: ViaFlattened, found: []string{"AAAA 2001:db8::10"},
		},
		{
			name: "flattened, A and AAAA, target behind its own CNAME, TXT behind a CNAME",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10", "2001:db8::10")
				s.SetCNAME(target, "lb.proxy.example.net")
				s.SetA("lb.proxy.example.net", "2001:db8::10", "192.0.2.10")
				s.SetCNAME("_edgeproxy."+domain, "verify.dns-host.example.org")
				s.SetTXT("verify.dns-host.example.org", token)
			},
			want: Pointing, via: ViaFlattened,
		},
		{
			name: "flattened, TXT value in quotes, as some DNS hosts store it",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10")
				s.SetA(target, "192.0.2.10")
				s.SetTXT("_edgeproxy."+domain, ` "`+token+`" `)
			},
			want: Pointing, via: ViaFlattened,
		},
		{
			name: "flattened, TXT holding another record's token",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10")
				s.SetA(target, "192.0.2.10")
				s.SetTXT("_edgeproxy."+domain, "edgeproxy-verification=anotherrecordstoken")
			},
			want:  OwnershipMissing,
			inMsg: []string{`the TXT records of _edgeproxy.e.example.com ("edgeproxy-verification=anotherrecordstoken") do not hold this record's token`},
			end:   addTXT,
		},
		{
			name: "flattened, TXT with the token only as a prefix",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10")
				s.SetA(target, "192.0.2.10")
				s.SetTXT("_edgeproxy."+domain, token+"x", "x"+token)
			},
			want: OwnershipMissing, end: addTXT,
		},
		{
			name: "flattened, the TXT lookup fails",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10")
				s.SetA(target, "192.0.2.10")
				s.SetRcode("_edgeproxy."+domain, dns.RcodeServerFailure)
			},
			want: ResolverFailure, inMsg: []string{"retried"}, notInMsg: []string{"Add this record", "add this record"},
		},
		{
			name: "the ownership TXT alone, addresses elsewhere",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "203.0.113.5")
				s.SetA(target, "192.0.2.10")
				s.SetTXT("_edgeproxy."+domain, token)
			},
			want: OtherAddresses, inMsg: []string{"no CNAME to " + target},
		},
		{
			name:   "apex without records",
			domain: "example.com",
			setup: func(s *dnstest.Server) {
				s.SetA(target, "192.0.2.10", "2001:db8::10")
			},
			want: Missing,
			inMsg: []string{"example.com is a zone apex, where a CNAME cannot be added",
				"ALIAS", "example.com A 192.0.2.10, example.com AAAA 2001:db8::10"},
			notInMsg: []string{"CNAME " + target},
			end:      `add this record: _edgeproxy.example.com TXT "` + token + `"`,
		},
		{
			name:   "apex with other addresses",
			domain: "example.com",
			setup: func(s *dnstest.Server) {
				s.SetA("example.com", "203.0.113.5")
				s.SetA(target, "192.0.2.10")
			},
			want:     OtherAddresses,
			inMsg:    []string{"zone apex", "example.com A 192.0.2.10"},
			notInMsg: []string{"Replace those address records with a CNAME"},
			end:      `add this record: _edgeproxy.example.com TXT "` + token + `"`,
		},
		{
			name:   "apex with the target's addresses, without the TXT",
			domain: "example.com",
			setup: func(s *dnstest.Server) {
				s.SetA("example.com", "192.0.2.10")
				s.SetA(target, "192.0.2.10")
			},
			want:     OwnershipMissing,
			notInMsg: []string{"replace the address records"},
			end:      `Add this record: _edgeproxy.example.com TXT "` + token + `"`,
		},
		{
			name:   "apex with the target's addresses and the TXT",
			domain: "example.co.uk",
			setup: func(s *dnstest.Server) {
				s.SetA("example.co.uk", "192.0.2.10")
				s.SetA(target, "192.0.2.10")
				s.SetTXT("_edgeproxy.example.co.uk", token)
			},
			want: Pointing, via: ViaFlattened,
		},
		{
			name: "flattened only in part: other addresses",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10")
				s.SetA(target, "192.0.2.10", "2001:db8::10")
			},
			want: OtherAddresses, found: []string{"A 192.0.2.10"},
			inMsg: []string{"only part of the addresses of " + target + " (A 192.0.2.10, AAAA 2001:db8::10)", addRecord},
		},
		{
			name: "NXDOMAIN with the SOA negative TTL (MINIMUM smaller)",
			setup: func(s *dnstest.Server) {
				s.SetSOA("example.com", 3600, 300)
			},
			want: Missing, negTTL: 300 * time.Second,
			inMsg: []string{"does not exist", "up to 300 seconds (the zone's SOA negative TTL)", addRecord},
		},
		{
			name: "NXDOMAIN with the SOA negative TTL (TTL smaller)",
			setup: func(s *dnstest.Server) {
				s.SetSOA("example.com", 60, 900)
			},
			want: Missing, negTTL: 60 * time.Second,
			inMsg: []string{"up to 60 seconds", addRecord},
		},
		{
			name: "NODATA: the name has other records only",
			setup: func(s *dnstest.Server) {
				s.SetSOA("example.com", 3600, 120)
				s.SetCAA(domain, 0, "issue", "letsencrypt.org")
			},
			want: Missing, negTTL: 120 * time.Second,
			inMsg:    []string{"no CNAME, A or AAAA record for e.example.com", "up to 120 seconds", addRecord},
			notInMsg: []string{"does not exist"},
		},
		{
			name: "NXDOMAIN without SOA",
			want: Missing, inMsg: []string{"does not exist", addRecord}, notInMsg: []string{"cache"},
		},
		{
			name: "CNAME to another name",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, "other.example.net")
				s.SetA("other.example.net", "198.51.100.7")
			},
			want:  WrongTarget,
			found: []string{"CNAME other.example.net.", "other.example.net. A 198.51.100.7"},
			inMsg: []string{"CNAME to other.example.net, not to " + target, addRecord},
		},
		{
			name: "CNAME to another of our targets (same addresses) is still wrong",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, "ffffffffffffffffffff.proxy.example.net")
				s.SetA("ffffffffffffffffffff.proxy.example.net", "192.0.2.10")
				s.SetA(target, "192.0.2.10")
			},
			want: WrongTarget, inMsg: []string{"ffffffffffffffffffff.proxy.example.net", addRecord},
		},
		{
			name: "chain that never reaches the target",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(domain, "a.example.org")
				s.SetCNAME("a.example.org", "b.example.org")
			},
			want:  WrongTarget,
			found: []string{"CNAME a.example.org.", "a.example.org. CNAME b.example.org."},
			inMsg: []string{"CNAME to a.example.org", addRecord},
		},
		{
			name: "Cloudflare proxied, IPv4",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "104.16.132.229", "104.16.133.229")
				s.SetA(target, "192.0.2.10")
			},
			want:  CloudflareProxied,
			found: []string{"A 104.16.132.229", "A 104.16.133.229"},
			inMsg: []string{"104.16.132.229", "Cloudflare", `"DNS only" (grey cloud)`, addRecord},
		},
		{
			name: "Cloudflare proxied, IPv6",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "2606:4700::6810:84e5")
				s.SetA(target, "192.0.2.10")
			},
			want:  CloudflareProxied,
			found: []string{"AAAA 2606:4700::6810:84e5"},
			inMsg: []string{"2606:4700::6810:84e5", `"DNS only" (grey cloud)`, addRecord},
		},
		{
			name: "Cloudflare proxied, target unresolvable",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "172.67.1.1")
				s.SetRcode(target, dns.RcodeServerFailure)
			},
			want: CloudflareProxied, inMsg: []string{addRecord},
		},
		{
			name: "other addresses",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "203.0.113.5", "2001:db8::5")
				s.SetA(target, "192.0.2.10")
			},
			want:  OtherAddresses,
			found: []string{"A 203.0.113.5", "AAAA 2001:db8::5"},
			inMsg: []string{"A 203.0.113.5, AAAA 2001:db8::5", "no CNAME to " + target, addRecord},
		},
		{
			name: "SERVFAIL",
			setup: func(s *dnstest.Server) {
				s.SetRcode(domain, dns.RcodeServerFailure)
			},
			want:     ResolverFailure,
			inMsg:    []string{"answered SERVFAIL", "does not mean your records are wrong", "retried"},
			notInMsg: []string{"Add this record"},
		},
		{
			name: "REFUSED",
			setup: func(s *dnstest.Server) {
				s.SetRcode(domain, dns.RcodeRefused)
			},
			want: ResolverFailure, inMsg: []string{"answered REFUSED", "retried"},
		},
		{
			name: "addresses, but the target fails to resolve",
			setup: func(s *dnstest.Server) {
				s.SetA(domain, "192.0.2.10")
				s.SetRcode(target, dns.RcodeServerFailure)
			},
			want: ResolverFailure, inMsg: []string{"retried"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.Start(t)
			if tt.setup != nil {
				tt.setup(s)
			}
			d, tg := domain, target
			if tt.domain != "" {
				d = tt.domain
			}
			if tt.target != "" {
				tg = tt.target
			}
			v := newVerifier(t, time.Second, s.Addr())
			o := Ownership{Name: "_edgeproxy." + strings.ToLower(strings.TrimSuffix(d, ".")), Token: token}
			got := v.CheckCNAME(context.Background(), d, tg, o)
			t.Logf("message: %s", got.Message)

			if got.Outcome != tt.want {
				t.Errorf("Outcome = %v, want %v (found %q, err %v)", got.Outcome, tt.want, got.Found, got.Err)
			}
			if got.Via != tt.via {
				t.Errorf("Via = %q, want %q", got.Via, tt.via)
			}
			if tt.found != nil && !slices.Equal(got.Found, tt.found) {
				t.Errorf("Found = %q, want %q", got.Found, tt.found)
			}
			if got.NegativeTTL != tt.negTTL {
				t.Errorf("NegativeTTL = %v, want %v", got.NegativeTTL, tt.negTTL)
			}
			if got.Message == "" {
				t.Error("Message is empty")
			}
			for _, s := range tt.inMsg {
				if !strings.Contains(got.Message, s) {
					t.Errorf("Message lacks %q", s)
				}
			}
			for _, s := range tt.notInMsg {
				if strings.Contains(got.Message, s) {
					t.Errorf("Message has %q", s)
				}
			}
			switch got.Outcome {
			case Pointing:
				if strings.Contains(strings.ToLower(got.Message), "add this record") {
					t.Error("Pointing message asks to add a record")
				}
			case ResolverFailure:
				if !errors.Is(got.Err, ErrNoAnswer) {
					t.Errorf("Err = %v, want it to wrap ErrNoAnswer", got.Err)
				}
			default:
				end := cmp.Or(tt.end, addRecord)
				if !strings.HasSuffix(got.Message, end) {
					t.Errorf("Message does not end with %q", end)
				}
			}
			if got.Outcome != ResolverFailure && got.Err != nil {
				t.Errorf("Err = %v, want nil", got.Err)
			}
		})
	}
}

// TestCheckCNAMEFollowsChanges checks a domain through a customer's edits: missing, wrong,
// fixed, removed.
func TestCheckCNAMEFollowsChanges(t *testing.T) {
	s := dnstest.Start(t)
	v := newVerifier(t, time.Second, s.Addr())
	check := func(want Outcome) {
		t.Helper()
		if got := v.CheckCNAME(context.Background(), domain, target, own); got.Outcome != want {
			t.Errorf("Outcome = %v, want %v: %s", got.Outcome, want, got.Message)
		}
	}
	check(Missing)
	s.SetCNAME(domain, "typo.proxy.example.net")
	check(WrongTarget)
	s.SetCNAME(domain, target)
	check(Pointing)
	s.Remove(domain)
	check(Missing)
}

func TestResolverFailures(t *testing.T) {
	t.Run("resolver down", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCNAME(domain, target)
		s.Stop()
		v := newVerifier(t, 300*time.Millisecond, s.Addr())
		start := time.Now()
		got := v.CheckCNAME(context.Background(), domain, target, own)
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("took %v with a 300ms timeout", elapsed)
		}
		if got.Outcome != ResolverFailure || !errors.Is(got.Err, ErrNoAnswer) {
			t.Errorf("Outcome = %v, Err = %v; want ResolverFailure wrapping ErrNoAnswer", got.Outcome, got.Err)
		}
		if !strings.Contains(got.Message, "retried") || strings.Contains(got.Message, "Add this record") {
			t.Errorf("Message = %q", got.Message)
		}
	})

	t.Run("slow resolver beyond the timeout", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCNAME(domain, target)
		s.SetDelay(3 * time.Second)
		v := newVerifier(t, 150*time.Millisecond, s.Addr())
		start := time.Now()
		got := v.CheckCNAME(context.Background(), domain, target, own)
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("took %v with a 150ms timeout", elapsed)
		}
		if got.Outcome != ResolverFailure {
			t.Errorf("Outcome = %v, want ResolverFailure", got.Outcome)
		}
		if want := "did not answer in time"; !strings.Contains(got.Message, want) {
			t.Errorf("Message = %q, want it to contain %q", got.Message, want)
		}
	})

	t.Run("slow resolver within the timeout", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCNAME(domain, target)
		s.SetDelay(50 * time.Millisecond)
		v := newVerifier(t, time.Second, s.Addr())
		if got := v.CheckCNAME(context.Background(), domain, target, own); got.Outcome != Pointing {
			t.Errorf("Outcome = %v, want Pointing: %s", got.Outcome, got.Message)
		}
	})

	t.Run("context cancelled", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCNAME(domain, target)
		v := newVerifier(t, time.Second, s.Addr())
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if got := v.CheckCNAME(ctx, domain, target, own); got.Outcome != ResolverFailure {
			t.Errorf("Outcome = %v, want ResolverFailure", got.Outcome)
		}
		if got := s.Queries(); got != 0 {
			t.Errorf("%d queries sent after cancellation", got)
		}
	})
}

func TestFallbacks(t *testing.T) {
	t.Run("truncated UDP answer retried over TCP", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCNAME(domain, target)
		s.SetTruncateUDP(true)
		v := newVerifier(t, time.Second, s.Addr())
		if got := v.CheckCNAME(context.Background(), domain, target, own); got.Outcome != Pointing {
			t.Errorf("Outcome = %v, want Pointing: %s (%v)", got.Outcome, got.Message, got.Err)
		}
		// A and AAAA, each over UDP then TCP.
		if got, want := s.Queries(), 4; got != want {
			t.Errorf("Queries() = %d, want %d", got, want)
		}
	})

	t.Run("answer larger than the EDNS0 buffer", func(t *testing.T) {
		s := dnstest.Start(t)
		var ips []string
		for i := range 100 {
			ips = append(ips, fmt.Sprintf("192.0.2.%d", i+1))
		}
		s.SetA(domain, ips...)
		s.SetA(target, ips...)
		s.SetTXT("_edgeproxy."+domain, token)
		v := newVerifier(t, time.Second, s.Addr())
		got := v.CheckCNAME(context.Background(), domain, target, own)
		if got.Outcome != Pointing || got.Via != ViaFlattened || len(got.Found) != 100 {
			t.Errorf("Outcome = %v via %q with %d records, want Pointing via flattened with 100",
				got.Outcome, got.Via, len(got.Found))
		}
	})

	t.Run("second resolver when the first is down", func(t *testing.T) {
		down, up := dnstest.Start(t), dnstest.Start(t)
		down.Stop()
		up.SetCNAME(domain, target)
		v := newVerifier(t, 300*time.Millisecond, down.Addr(), up.Addr())
		if got := v.CheckCNAME(context.Background(), domain, target, own); got.Outcome != Pointing {
			t.Errorf("Outcome = %v, want Pointing: %s (%v)", got.Outcome, got.Message, got.Err)
		}
	})

	t.Run("second resolver when the first answers SERVFAIL", func(t *testing.T) {
		failing, good := dnstest.Start(t), dnstest.Start(t)
		failing.SetRcode(domain, dns.RcodeServerFailure)
		good.SetCNAME(domain, target)
		v := newVerifier(t, time.Second, failing.Addr(), good.Addr())
		if got := v.CheckCNAME(context.Background(), domain, target, own); got.Outcome != Pointing {
			t.Errorf("Outcome = %v, want Pointing: %s (%v)", got.Outcome, got.Message, got.Err)
		}
		if failing.Queries() == 0 {
			t.Error("the first resolver was not asked")
		}
	})

	t.Run("first resolver's NXDOMAIN is an answer", func(t *testing.T) {
		first, second := dnstest.Start(t), dnstest.Start(t)
		second.SetCNAME(domain, target)
		v := newVerifier(t, time.Second, first.Addr(), second.Addr())
		if got := v.CheckCNAME(context.Background(), domain, target, own); got.Outcome != Missing {
			t.Errorf("Outcome = %v, want Missing", got.Outcome)
		}
		if got := second.Queries(); got != 0 {
			t.Errorf("second resolver asked %d times, want 0", got)
		}
	})

	t.Run("all resolvers fail", func(t *testing.T) {
		a, b := dnstest.Start(t), dnstest.Start(t)
		a.SetRcode(domain, dns.RcodeServerFailure)
		b.Stop()
		v := newVerifier(t, 300*time.Millisecond, a.Addr(), b.Addr())
		got := v.CheckCNAME(context.Background(), domain, target, own)
		if got.Outcome != ResolverFailure {
			t.Fatalf("Outcome = %v, want ResolverFailure", got.Outcome)
		}
		for _, want := range []string{a.Addr(), b.Addr(), "SERVFAIL"} {
			if !strings.Contains(got.Err.Error(), want) {
				t.Errorf("Err = %q, want it to mention %q", got.Err, want)
			}
		}
	})
}

func TestCheckCNAMEInvalidDomain(t *testing.T) {
	v := newVerifier(t, time.Second, "127.0.0.1:1")
	if got := v.CheckCNAME(context.Background(), "", target, own); got.Outcome != ResolverFailure || got.Err == nil {
		t.Errorf("empty domain: Outcome = %v, Err = %v", got.Outcome, got.Err)
	}
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[Outcome]string{
		Pointing: "pointing", Missing: "missing", WrongTarget: "wrong_target",
		CloudflareProxied: "cloudflare_proxied", OtherAddresses: "other_addresses",
		ResolverFailure: "resolver_failure", OwnershipMissing: "ownership_missing", 0: "outcome(0)",
	} {
		if got := o.String(); got != want {
			t.Errorf("Outcome(%d).String() = %q, want %q", int(o), got, want)
		}
	}
}

func TestIsCloudflare(t *testing.T) {
	for _, tt := range []struct {
		addr string
		want bool
	}{
		{"173.245.48.1", true},
		{"104.16.0.1", true},
		{"104.27.255.254", true},
		{"172.71.255.255", true},
		{"131.0.75.255", true},
		{"::ffff:104.16.0.1", true},
		{"2606:4700::1", true},
		{"2a06:98c7:ffff::1", true},
		{"2c0f:f248::1", true},
		{"104.28.0.1", false},
		{"192.0.2.1", false},
		{"2001:db8::1", false},
		{"2a06:98c8::1", false},
	} {
		if got := isCloudflare(mustAddr(t, tt.addr)); got != tt.want {
			t.Errorf("isCloudflare(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}
