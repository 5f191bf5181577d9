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

func TestCheckCAA(t *testing.T) {
	le := []string{"letsencrypt.org"}
	const addAtApex = `Add this record: example.com CAA 0 issue "letsencrypt.org"`
	tests := []struct {
		name       string
		setup      func(s *dnstest.Server)
		identities []string // default le
		methods    []string // Verifier.ValidationMethods
		allowed    bool
		at         string
		addAt      string // where the message asks for the record; default at
		found      []string
		inMsg      []string
	}{
		{
			name:    "no CAA anywhere",
			allowed: true, inMsg: []string{"No CAA records"},
		},
		{
			name: "at the parent, found by climbing",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
			},
			allowed: true, at: "example.com",
			found: []string{`example.com CAA 0 issue "letsencrypt.org"`},
		},
		{
			name: "at the TLD",
			setup: func(s *dnstest.Server) {
				s.SetCAA("com", 0, "issue", "digicert.com")
			},
			at: "com", inMsg: []string{`Add this record: com CAA 0 issue "letsencrypt.org"`},
		},
		{
			name: "the closest set wins: allowed at the domain, forbidden above",
			setup: func(s *dnstest.Server) {
				s.SetCAA("e.example.com", 0, "issue", "letsencrypt.org")
				s.SetCAA("example.com", 0, "issue", "digicert.com")
			},
			allowed: true, at: "e.example.com",
		},
		{
			name: "the closest set wins: forbidden at the domain, allowed above",
			setup: func(s *dnstest.Server) {
				s.SetCAA("e.example.com", 0, "issue", "digicert.com")
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
			},
			at: "e.example.com", inMsg: []string{`Add this record: e.example.com CAA 0 issue "letsencrypt.org"`},
		},
		{
			name: "forbidding",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "digicert.com")
				s.SetCAA("example.com", 0, "iodef", "mailto:security@example.com")
			},
			at: "example.com",
			found: []string{
				`example.com CAA 0 issue "digicert.com"`,
				`example.com CAA 0 iodef "mailto:security@example.com"`,
			},
			inMsg: []string{`example.com CAA 0 issue "digicert.com"`, "do not allow letsencrypt.org", addAtApex},
		},
		{
			name: "one of several issue properties allows",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "digicert.com")
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "issue with parameters",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org; accounturi=https://acme-v02.api.letsencrypt.org/acme/acct/1")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "issue with validationmethods including ours",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org; validationmethods=dns-01,http-01")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "issue with validationmethods=dns-01: not a method edgeproxy uses",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org; validationmethods=dns-01")
			},
			at: "example.com",
			inMsg: []string{
				`example.com CAA 0 issue "letsencrypt.org; validationmethods=dns-01"`,
				"only with validation method dns-01", "http-01 or tls-alpn-01", addAtApex,
			},
		},
		{
			name: "issue with validationmethods=dns-01, for an issuer using dns-01",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org; validationmethods=dns-01")
			},
			methods: []string{"dns-01"},
			allowed: true, at: "example.com",
		},
		{
			name: "issuer domain compared without case, spaces or trailing dot",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", " LetsEncrypt.ORG. ;")
			},
			allowed: true, at: "example.com",
		},
		{
			name: `issue ";" forbids every CA`,
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", ";")
			},
			at: "example.com", inMsg: []string{addAtApex},
		},
		{
			name: "issuewild only: no restriction for a non-wildcard name",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issuewild", "digicert.com")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "iodef only",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "iodef", "mailto:security@example.com")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "unknown tag, not critical",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "futuretag", "x")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "unknown tag, critical",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
				s.SetCAA("example.com", 128, "futuretag", "x")
			},
			at:    "example.com",
			inMsg: []string{`example.com CAA 128 futuretag "x"`, "critical", addAtApex},
		},
		{
			name: "unknown tag with flag 1, the common mistake for critical",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
				s.SetCAA("example.com", 1, "futuretag", "x")
			},
			at: "example.com", inMsg: []string{"critical"},
		},
		{
			name: "known tag, critical",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 128, "issue", "letsencrypt.org")
			},
			allowed: true, at: "example.com",
		},
		{
			name: "tag compared without case",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "ISSUE", "digicert.com")
			},
			at: "example.com", inMsg: []string{addAtApex},
		},
		{
			name: "second identity",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "pebble.letsencrypt.org")
			},
			identities: []string{"letsencrypt.org", "pebble.letsencrypt.org"},
			allowed:    true, at: "example.com",
		},
		{
			name: "no identities: any issue property forbids",
			setup: func(s *dnstest.Server) {
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
			},
			identities: []string{},
			at:         "example.com",
		},
		{
			name: "CNAME at the domain: the target's set is the relevant one",
			setup: func(s *dnstest.Server) {
				s.SetCNAME("e.example.com", "e.hosting.example.org")
				s.SetCAA("e.hosting.example.org", 0, "issue", "digicert.com")
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
			},
			at: "e.example.com", addAt: "e.hosting.example.org",
			found: []string{`e.hosting.example.org CAA 0 issue "digicert.com"`},
			inMsg: []string{"e.hosting.example.org (the target of the CNAME at e.example.com)"},
		},
		{
			name: "CNAME at the domain, target without CAA: climb from the domain",
			setup: func(s *dnstest.Server) {
				s.SetCNAME("e.example.com", "e.hosting.example.org")
				s.SetCAA("example.com", 0, "issue", "letsencrypt.org")
			},
			allowed: true, at: "example.com",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := dnstest.Start(t)
			s.SetSOA("example.com", 300, 300)
			if tt.setup != nil {
				tt.setup(s)
			}
			identities := le
			if tt.identities != nil {
				identities = tt.identities
			}
			v := newVerifier(t, time.Second, s.Addr())
			v.ValidationMethods = tt.methods
			got := v.CheckCAA(context.Background(), "e.example.com", identities)
			t.Logf("message: %s", got.Message)

			if got.Err != nil {
				t.Fatalf("Err = %v", got.Err)
			}
			if got.Allowed != tt.allowed {
				t.Errorf("Allowed = %v, want %v", got.Allowed, tt.allowed)
			}
			if got.At != tt.at {
				t.Errorf("At = %q, want %q", got.At, tt.at)
			}
			if tt.found != nil && !slices.Equal(got.Found, tt.found) {
				t.Errorf("Found = %q, want %q", got.Found, tt.found)
			}
			if got.Message == "" {
				t.Error("Message is empty")
			}
			for _, s := range tt.inMsg {
				if !strings.Contains(got.Message, s) {
					t.Errorf("Message lacks %q", s)
				}
			}
			if !got.Allowed && len(identities) > 0 {
				addAt := tt.at
				if tt.addAt != "" {
					addAt = tt.addAt
				}
				want := `Add this record: ` + addAt + ` CAA 0 issue "` + identities[0] + `"`
				if !strings.HasSuffix(got.Message, want) {
					t.Errorf("Message does not end with %q", want)
				}
				for _, f := range got.Found {
					if !strings.Contains(got.Message, f) && !strings.Contains(f, "iodef") {
						t.Errorf("Message does not name the record %q", f)
					}
				}
			}
			if got.Allowed && strings.Contains(got.Message, "Add this record") {
				t.Error("Message asks to add a record though issuance is allowed")
			}
		})
	}
}

// TestCheckCAAClimbsToTheTLD checks the names queried: the domain, each ancestor, the TLD,
// and not the root.
func TestCheckCAAClimbsToTheTLD(t *testing.T) {
	s := dnstest.Start(t)
	v := newVerifier(t, time.Second, s.Addr())
	got := v.CheckCAA(context.Background(), "a.b.example.com.", []string{"letsencrypt.org"})
	if !got.Allowed || got.At != "" || got.Err != nil {
		t.Errorf("got %+v, want allowed with no set", got)
	}
	if got, want := s.Queries(), 4; got != want {
		t.Errorf("Queries() = %d, want %d (a.b.example.com, b.example.com, example.com, com)", got, want)
	}
}

func TestCheckCAAResolverFailure(t *testing.T) {
	t.Run("SERVFAIL while climbing", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCAA("com", 0, "issue", "letsencrypt.org")
		s.SetRcode("example.com", dns.RcodeServerFailure)
		v := newVerifier(t, time.Second, s.Addr())
		got := v.CheckCAA(context.Background(), "e.example.com", []string{"letsencrypt.org"})
		if !errors.Is(got.Err, ErrNoAnswer) {
			t.Errorf("Err = %v, want it to wrap ErrNoAnswer", got.Err)
		}
		if got.Allowed {
			t.Error("Allowed with an unknown answer")
		}
		if !strings.Contains(got.Message, "retried") || strings.Contains(got.Message, "Add this record") {
			t.Errorf("Message = %q", got.Message)
		}
	})
	t.Run("resolver down", func(t *testing.T) {
		s := dnstest.Start(t)
		s.Stop()
		v := newVerifier(t, 300*time.Millisecond, s.Addr())
		start := time.Now()
		got := v.CheckCAA(context.Background(), "e.example.com", []string{"letsencrypt.org"})
		if elapsed := time.Since(start); elapsed > 2*time.Second {
			t.Errorf("took %v with a 300ms timeout", elapsed)
		}
		if !errors.Is(got.Err, ErrNoAnswer) {
			t.Errorf("Err = %v, want it to wrap ErrNoAnswer", got.Err)
		}
	})
	t.Run("truncated answer retried over TCP", func(t *testing.T) {
		s := dnstest.Start(t)
		s.SetCAA("example.com", 0, "issue", "digicert.com")
		s.SetTruncateUDP(true)
		v := newVerifier(t, time.Second, s.Addr())
		got := v.CheckCAA(context.Background(), "e.example.com", []string{"letsencrypt.org"})
		if got.Err != nil || got.Allowed || got.At != "example.com" {
			t.Errorf("got %+v, want forbidden at example.com", got)
		}
	})
}

func TestParseIssueValue(t *testing.T) {
	tests := []struct {
		value  string
		issuer string
		params map[string]string
	}{
		{"letsencrypt.org", "letsencrypt.org", map[string]string{}},
		{"letsencrypt.org; validationmethods=dns-01", "letsencrypt.org", map[string]string{"validationmethods": "dns-01"}},
		{" LetsEncrypt.org ;accounturi=https://x/acct/1; ValidationMethods = http-01 ", "letsencrypt.org",
			map[string]string{"accounturi": "https://x/acct/1", "validationmethods": "http-01"}},
		{";", "", map[string]string{}},
		{"", "", map[string]string{}},
		{"ca.example; junk; =x", "ca.example", map[string]string{}},
	}
	for _, tt := range tests {
		issuer, params := parseIssueValue(tt.value)
		if issuer != tt.issuer {
			t.Errorf("parseIssueValue(%q) issuer = %q, want %q", tt.value, issuer, tt.issuer)
		}
		if len(params) != len(tt.params) {
			t.Errorf("parseIssueValue(%q) params = %q, want %q", tt.value, params, tt.params)
		}
		for k, v := range tt.params {
			if params[k] != v {
				t.Errorf("parseIssueValue(%q) params[%q] = %q, want %q", tt.value, k, params[k], v)
			}
		}
	}
}

// FuzzParseIssueValue feeds CAA issue values, which come from untrusted DNS data.
func FuzzParseIssueValue(f *testing.F) {
	for _, seed := range []string{"letsencrypt.org", "letsencrypt.org; validationmethods=dns-01", ";", "a;b=c;d", ""} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, value string) {
		issuer, params := parseIssueValue(value)
		if strings.Contains(issuer, ";") {
			t.Errorf("issuer %q contains ';'", issuer)
		}
		if issuer != strings.ToLower(issuer) {
			t.Errorf("issuer %q is not lower-case", issuer)
		}
		for k := range params {
			if k == "" || strings.Contains(k, ";") {
				t.Errorf("bad parameter key %q", k)
			}
		}
	})
}
