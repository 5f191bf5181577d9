package dnsverify

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
)

func TestCheckOwnership(t *testing.T) {
	const name = "_edgeproxy.e.example.com"
	long := "edgeproxy-verification=" + strings.Repeat("a", 300)
	for _, tt := range []struct {
		name   string
		setup  func(s *dnstest.Server)
		token  string // default token
		proven bool
		found  []string
	}{
		{name: "no TXT record"},
		{
			name:   "the token among other values",
			setup:  func(s *dnstest.Server) { s.SetTXT(name, "google-site-verification=x", token) },
			proven: true, found: []string{"google-site-verification=x", token},
		},
		{
			name:  "another record's token",
			setup: func(s *dnstest.Server) { s.SetTXT(name, "edgeproxy-verification=other") },
			found: []string{"edgeproxy-verification=other"},
		},
		{
			name:  "the token in another case",
			setup: func(s *dnstest.Server) { s.SetTXT(name, strings.ToUpper(token)) },
		},
		{
			name:   "the token with quotes and spaces around it",
			setup:  func(s *dnstest.Server) { s.SetTXT(name, ` " `+token+` " `) },
			proven: true,
		},
		{
			name:   "a value longer than one string, split over several",
			setup:  func(s *dnstest.Server) { s.SetTXT(name, long) },
			token:  long,
			proven: true, found: []string{long},
		},
		{
			name:  "a byte escaped in presentation form is compared as the byte",
			setup: func(s *dnstest.Server) { s.SetTXT(name, "tok\x01en", `back\slash`) },
			token: "tok\x01en", proven: true, found: []string{"tok\x01en", `back\slash`},
		},
		{
			name:  "the token at the domain instead of _edgeproxy",
			setup: func(s *dnstest.Server) { s.SetTXT("e.example.com", token) },
		},
		{
			name:  "an empty token matches nothing",
			setup: func(s *dnstest.Server) { s.SetTXT(name, "") },
			token: "-", found: []string{""},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.Start(t)
			if tt.setup != nil {
				tt.setup(s)
			}
			tok := token
			switch tt.token {
			case "":
			case "-":
				tok = ""
			default:
				tok = tt.token
			}
			got := newVerifier(t, time.Second, s.Addr()).CheckOwnership(context.Background(), Ownership{Name: name, Token: tok})
			if got.Err != nil {
				t.Fatalf("Err = %v", got.Err)
			}
			if got.Proven != tt.proven {
				t.Errorf("Proven = %t, want %t (found %q)", got.Proven, tt.proven, got.Found)
			}
			if tt.found != nil && !slices.Equal(got.Found, tt.found) {
				t.Errorf("Found = %q, want %q", got.Found, tt.found)
			}
		})
	}

	t.Run("resolver failure", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetTXT(name, token)
		s.SetRcode(name, dns.RcodeServerFailure)
		got := newVerifier(t, time.Second, s.Addr()).CheckOwnership(context.Background(), Ownership{Name: name, Token: token})
		if got.Proven || !errors.Is(got.Err, ErrNoAnswer) {
			t.Errorf("Proven = %t, Err = %v; want false and an error wrapping ErrNoAnswer", got.Proven, got.Err)
		}
	})
}

func TestCheckDelegation(t *testing.T) {
	const (
		name = "_acme-challenge.e.example.com"
		want = "_acme-challenge." + target
	)
	for _, tt := range []struct {
		name      string
		setup     func(s *dnstest.Server)
		delegated bool
		chain     []string
	}{
		{name: "nothing there"},
		{
			name:      "CNAME to the delegation target, which has no TXT now",
			setup:     func(s *dnstest.Server) { s.SetCNAME(name, want) },
			delegated: true, chain: []string{want + "."},
		},
		{
			name: "through the customer's own alias",
			setup: func(s *dnstest.Server) {
				s.SetCNAME(name, "acme.dns-host.example.org")
				s.SetCNAME("acme.dns-host.example.org", strings.ToUpper(want))
				s.SetTXT(want, "challenge")
			},
			delegated: true,
		},
		{
			name:  "CNAME to another target",
			setup: func(s *dnstest.Server) { s.SetCNAME(name, "_acme-challenge.ffffffffffffffffffff.proxy.example.net") },
			chain: []string{"_acme-challenge.ffffffffffffffffffff.proxy.example.net."},
		},
		{
			name:  "a TXT record instead of a CNAME",
			setup: func(s *dnstest.Server) { s.SetTXT(name, "challenge") },
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.Start(t)
			if tt.setup != nil {
				tt.setup(s)
			}
			got := newVerifier(t, time.Second, s.Addr()).CheckDelegation(context.Background(), name, want)
			if got.Err != nil {
				t.Fatalf("Err = %v", got.Err)
			}
			if got.Delegated != tt.delegated {
				t.Errorf("Delegated = %t, want %t (chain %q)", got.Delegated, tt.delegated, got.Chain)
			}
			if tt.chain != nil && !slices.Equal(got.Chain, tt.chain) {
				t.Errorf("Chain = %q, want %q", got.Chain, tt.chain)
			}
		})
	}

	t.Run("resolver failure", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetRcode(name, dns.RcodeRefused)
		got := newVerifier(t, time.Second, s.Addr()).CheckDelegation(context.Background(), name, want)
		if got.Delegated || !errors.Is(got.Err, ErrNoAnswer) {
			t.Errorf("Delegated = %t, Err = %v; want false and an error wrapping ErrNoAnswer", got.Delegated, got.Err)
		}
	})
}

func TestIsApex(t *testing.T) {
	for d, want := range map[string]bool{
		"example.com": true, "Example.COM.": true, "example.co.uk": true, "foo.github.io": true,
		"e.example.com": false, "e.example.co.uk": false, "com": false, "co.uk": false, "": false,
	} {
		if got := IsApex(d); got != want {
			t.Errorf("IsApex(%q) = %t, want %t", d, got, want)
		}
	}
}

func TestDescribeTXTIsBounded(t *testing.T) {
	got := describeTXT([]string{strings.Repeat("x", 500), "a\"b", "c", "d", "e"})
	if want := `"` + strings.Repeat("x", 100) + `...", "a\"b", "c", and 2 more`; got != want {
		t.Errorf("describeTXT = %s, want %s", got, want)
	}
}
