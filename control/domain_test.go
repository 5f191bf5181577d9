package control

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/net/publicsuffix"
)

// domainTestBase is the --target-cname-base of the domain tests.
const domainTestBase = "proxy.example.net"

func TestNormalizeDomain(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"e.example.com", "e.example.com"},
		{"  e.example.com\t\n", "e.example.com"},
		{"E.Example.COM", "e.example.com"},
		{"e.example.com.", "e.example.com"},
		{" E.EXAMPLE.COM. ", "e.example.com"},
		{"bücher.example.de", "xn--bcher-kva.example.de"},
		{"BÜCHER.example.de", "xn--bcher-kva.example.de"},
		{"xn--bcher-kva.example.de", "xn--bcher-kva.example.de"},
		{"XN--BCHER-KVA.EXAMPLE.DE", "xn--bcher-kva.example.de"},
		{"e.bücher.de", "e.xn--bcher-kva.de"},
		{"ｅ.example.com", "e.example.com"},                // full-width letter
		{"e。example。com", "e.example.com"},                // ideographic full stops
		{"straße.example.de", "xn--strae-oqa.example.de"}, // non-transitional: ß kept
		{"a-b.example.com", "a-b.example.com"},
		{"r3---sn-apo3qvuoxuxbt-j5pe.example.com", "r3---sn-apo3qvuoxuxbt-j5pe.example.com"},
		{"ab--cd.example.com", "ab--cd.example.com"},
		{"123.example.com", "123.example.com"},
		{"a.b.c.example.co.uk", "a.b.c.example.co.uk"},
		{"e.example.co.uk", "e.example.co.uk"},
		{strings.Repeat("a", 63) + ".example.com", strings.Repeat("a", 63) + ".example.com"},
		{"proxy.example.net.example.com", "proxy.example.net.example.com"},
		{"xproxy.example.net", "xproxy.example.net"}, // a sibling of the base, not under it
		// Top-level domains the public suffix list knows, including the
		// shapes publicsuffix answers icann=false for: a private suffix
		// under a known TLD, and countries listed only by a wildcard.
		{"e.foo.github.io", "e.foo.github.io"},
		{"e.shop.example.com", "e.shop.example.com"},
		{"e.shop.co.ck", "e.shop.co.ck"},
		{"e.shop.com.jm", "e.shop.com.jm"},
		{"e.shop.com.np", "e.shop.com.np"},
		{"e.shop.zone", "e.shop.zone"},
		{"e.shop.xn--p1ai", "e.shop.xn--p1ai"}, // .рф
		{"e.shop.рф", "e.shop.xn--p1ai"},
		// Registrable domains (zone apexes): accepted, to go live through
		// address or ALIAS records and the ownership TXT record.
		{"example.com", "example.com"},
		{"EXAMPLE.COM.", "example.com"},
		{"example.co.uk", "example.co.uk"},
		{"foo.github.io", "foo.github.io"}, // under a private suffix
		{"bücher.de", "xn--bcher-kva.de"},
	}
	// A name of exactly 253 bytes is allowed.
	long := strings.Repeat(strings.Repeat("a", 62)+".", 3) + strings.Repeat("b", 52) + ".example.com"
	tests = append(tests, struct{ in, want string }{long, long})
	if len(long) != 253 {
		t.Fatalf("long name is %d bytes, want 253", len(long))
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := NormalizeDomain(tt.in, domainTestBase)
			if err != nil {
				t.Fatalf("NormalizeDomain(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Errorf("NormalizeDomain(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestNormalizeDomainRefuses(t *testing.T) {
	tests := []struct {
		name string
		in   string
		code string
		// detail is a part of the detail that names the rule.
		detail string
	}{
		{"empty", "", "required", "required"},
		{"blank", " \t\r\n", "required", "required"},
		{"scheme", "https://e.example.com", "invalid_input", "scheme"},
		{"scheme without host", "http://", "invalid_input", "scheme"},
		{"path", "e.example.com/path", "invalid_input", "path"},
		{"trailing slash", "e.example.com/", "invalid_input", "path"},
		{"port", "e.example.com:443", "invalid_input", "port"},
		{"empty port", "e.example.com:", "invalid_input", "port"},
		{"user info", "user:pass@e.example.com", "invalid_input", "user info"},
		{"space", "e example.com", "invalid_input", "space"},
		{"tab", "e\texample.com", "invalid_input", "space"},
		{"no-break space", "e\u00a0x.example.com", "invalid_input", "only letters, digits and '-'"},
		{"wildcard", "*.example.com", "invalid_input", "'*'"},
		{"inner wildcard", "e*.example.com", "invalid_input", "'*'"},
		{"IPv4", "192.0.2.1", "invalid_input", "IP address"},
		{"IPv4 with trailing dot", "192.0.2.1.", "invalid_input", "IP address"},
		{"IPv4 in full-width digits", "１９２.０.２.１", "invalid_input", "IP address"},
		{"IPv6", "2001:db8::1", "invalid_input", "IP address"},
		{"IPv6 loopback", "::1", "invalid_input", "IP address"},
		{"bracketed IPv6", "[2001:db8::1]", "invalid_input", "IP address"},
		{"single label", "localhost", "invalid_input", "single label"},
		{"single label with dot", "intranet.", "invalid_input", "single label"},
		{"public suffix", "co.uk", "invalid_input", "public suffix"},
		{"public suffix, upper case", "CO.UK.", "invalid_input", "public suffix"},
		{"private public suffix", "github.io", "invalid_input", "public suffix"},
		{"public suffix listed by a wildcard", "co.ck", "invalid_input", "public suffix"},
		{"numeric top-level label", "e.example.123", "invalid_input", "public suffix list"},
		{"cluster-local name", "a.svc.cluster.local", "invalid_input", "public suffix list"},
		{".internal", "x.internal", "invalid_input", "public suffix list"},
		{".test", "x.test", "invalid_input", "public suffix list"},
		{".invalid", "x.invalid", "invalid_input", "public suffix list"},
		{".localhost", "x.localhost", "invalid_input", "public suffix list"},
		{".example", "e.shop.example", "invalid_input", "public suffix list"},
		{".local, upper case", "PRINTER.LOCAL.", "invalid_input", "public suffix list"},
		{".lan", "nas.home.lan", "invalid_input", "public suffix list"},
		{"made-up top-level label", "e.example.unknowntld", "invalid_input", "public suffix list"},
		{"unknown top-level label in Unicode", "e.example.тест", "invalid_input", "public suffix list"},
		{"64-byte label", strings.Repeat("a", 64) + ".example.com", "invalid_input", "at most 63"},
		{"254-byte name", strings.Repeat(strings.Repeat("a", 62)+".", 3) + strings.Repeat("b", 53) + ".example.com", "invalid_input", "at most 253"},
		{"long Unicode label", strings.Repeat("ü", 60) + ".example.com", "invalid_input", "at most 63"},
		{"underscore", "_dmarc.example.com", "invalid_input", "only letters, digits and '-'"},
		{"underscore inside", "a_b.example.com", "invalid_input", "only letters, digits and '-'"},
		{"exclamation mark", "e!.example.com", "invalid_input", "only letters, digits and '-'"},
		{"percent", "e%41.example.com", "invalid_input", "only letters, digits and '-'"},
		{"full-width solidus", "e／x.example.com", "invalid_input", "only letters, digits and '-'"},
		{"leading hyphen", "-e.example.com", "invalid_input", "starts or ends with '-'"},
		{"trailing hyphen", "e-.example.com", "invalid_input", "starts or ends with '-'"},
		{"hyphen before the suffix", "e.example-.com", "invalid_input", "starts or ends with '-'"},
		{"empty label", "e..example.com", "invalid_input", "empty label"},
		{"leading dot", ".e.example.com", "invalid_input", "empty label"},
		{"two trailing dots", "e.example.com..", "invalid_input", "empty label"},
		{"bad punycode", "xn--a.example.com", "invalid_input", "internationalized"},
		{"the base", domainTestBase, "invalid_input", domainTestBase},
		{"the base with a dot", domainTestBase + ".", "invalid_input", domainTestBase},
		{"under the base", "e." + domainTestBase, "invalid_input", domainTestBase},
		{"deep under the base", "a.b.c." + domainTestBase, "invalid_input", domainTestBase},
		{"under the base, upper case", "E.PROXY.EXAMPLE.NET", "invalid_input", domainTestBase},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := NormalizeDomain(tt.in, domainTestBase)
			if err == nil {
				t.Fatalf("NormalizeDomain(%q) = %q, want an error", tt.in, got)
			}
			var de *domainError
			if !errors.As(err, &de) {
				t.Fatalf("NormalizeDomain(%q): error %T %v, want *domainError", tt.in, err, err)
			}
			if got, want := de.code, tt.code; got != want {
				t.Errorf("code %q, want %q (%s)", got, want, de.detail)
			}
			if !strings.Contains(de.detail, tt.detail) {
				t.Errorf("detail %q does not name the rule (%q)", de.detail, tt.detail)
			}
			ae := de.apiError()
			if ae.Status != 400 || ae.Type != "validation_error" || ae.Code != tt.code || ae.Attr == nil || *ae.Attr != "domain" {
				t.Errorf("apiError %+v, want 400 validation_error %s attr domain", ae, tt.code)
			}
		})
	}
}

// TestNormalizeDomainHyphensAndUnderscores pins a bug: the IDNA profile
// (MapForLookup) had STD3 rules and hyphen checks on, so "ab--cd" (hyphens
// in the third and fourth places, which the contract allows and hostnames
// such as r3---sn-x use) was refused, and '_' or a leading '-' were refused
// with an opaque "idna: ..." detail instead of one naming the rule.
func TestNormalizeDomainHyphensAndUnderscores(t *testing.T) {
	if got, err := NormalizeDomain("ab--cd.example.com", domainTestBase); err != nil || got != "ab--cd.example.com" {
		t.Errorf("NormalizeDomain(ab--cd.example.com) = %q, %v; want it accepted", got, err)
	}
	for _, in := range []string{"_x.example.com", "-x.example.com", "x-.example.com"} {
		_, err := NormalizeDomain(in, domainTestBase)
		if err == nil || strings.Contains(err.Error(), "idna") {
			t.Errorf("NormalizeDomain(%q): %v; want a refusal naming the rule", in, err)
		}
	}
}

// TestNormalizeDomainInvalidUTF8 pins a bug found by FuzzNormalizeDomain:
// idna turned a byte that is not UTF-8 into U+FFFD and encoded that as
// punycode, so "0.0.\x90" was accepted as "0.0.xn--zn7c", a name that
// NormalizeDomain itself refuses. A form body (domain=a%FFb.example.com)
// carries such bytes to it.
func TestNormalizeDomainInvalidUTF8(t *testing.T) {
	for _, in := range []string{"0.0.\x90", "a\xffb.example.com", "e.example.com\xc3"} {
		got, err := NormalizeDomain(in, domainTestBase)
		if err == nil {
			t.Errorf("NormalizeDomain(%q) = %q, want a refusal", in, got)
			continue
		}
		if !strings.Contains(err.Error(), "UTF-8") {
			t.Errorf("NormalizeDomain(%q): %v; want the detail to say UTF-8", in, err)
		}
	}
}

// TestNormalizeDomainWithoutBase checks that an empty base refuses
// nothing by itself.
func TestNormalizeDomainWithoutBase(t *testing.T) {
	if got, err := NormalizeDomain("e."+domainTestBase, ""); err != nil || got != "e."+domainTestBase {
		t.Errorf("NormalizeDomain without base = %q, %v", got, err)
	}
}

func TestTargetCNAME(t *testing.T) {
	tests := []struct {
		org, domain, want string
	}{
		// sha256("497f6eca-6276-4993-bfeb-53cbbbba6f08e.example.com"), computed outside Go.
		{"497f6eca-6276-4993-bfeb-53cbbbba6f08", "e.example.com", "ede2a54cc647a2590800.proxy.example.net"},
		{"497f6eca-6276-4993-bfeb-53cbbbba6f08", "xn--bcher-kva.example.de", "ae99cbe702a59bf0741e.proxy.example.net"},
	}
	for _, tt := range tests {
		if got := TargetCNAME(tt.org, tt.domain, domainTestBase); got != tt.want {
			t.Errorf("TargetCNAME(%s, %s) = %s, want %s", tt.org, tt.domain, got, tt.want)
		}
	}
}

// FuzzNormalizeDomain checks NormalizeDomain's invariants on any input: it
// never panics; a refusal is a *domainError with a contract code and a
// detail; an accepted name holds only [a-z0-9.-], is at most 253 bytes, has
// at least two labels of 1 to 63 bytes that neither start nor end with '-',
// is not at or under the base, ends in a top-level domain of the public
// suffix list, is not itself a public suffix, and normalizes to itself
// again, also when sent upper case with a trailing dot.
func FuzzNormalizeDomain(f *testing.F) {
	f.Add("e.example.com")
	f.Add("e.shop.co.ck")
	f.Add("a.svc.cluster.local")
	f.Fuzz(func(t *testing.T, raw string) {
		out, err := NormalizeDomain(raw, domainTestBase)
		if err != nil {
			var de *domainError
			if !errors.As(err, &de) {
				t.Fatalf("NormalizeDomain(%q): error %T %v, want *domainError", raw, err, err)
			}
			if de.code != "required" && de.code != "invalid_input" {
				t.Fatalf("NormalizeDomain(%q): code %q", raw, de.code)
			}
			if de.detail == "" {
				t.Fatalf("NormalizeDomain(%q): empty detail", raw)
			}
			if out != "" {
				t.Fatalf("NormalizeDomain(%q) = %q with error %v", raw, out, err)
			}
			return
		}
		if len(out) > 253 {
			t.Fatalf("NormalizeDomain(%q) = %q: %d bytes", raw, out, len(out))
		}
		for i := 0; i < len(out); i++ {
			c := out[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '.') {
				t.Fatalf("NormalizeDomain(%q) = %q: byte %q", raw, out, c)
			}
		}
		labels := strings.Split(out, ".")
		if len(labels) < 2 {
			t.Fatalf("NormalizeDomain(%q) = %q: a single label", raw, out)
		}
		for _, l := range labels {
			if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
				t.Fatalf("NormalizeDomain(%q) = %q: bad label %q", raw, out, l)
			}
		}
		if out == domainTestBase || strings.HasSuffix(out, "."+domainTestBase) {
			t.Fatalf("NormalizeDomain(%q) = %q: at or under the base", raw, out)
		}
		// Only the list's default rule "*" answers a one-label suffix that
		// is not ICANN's: the top-level label is unknown.
		if suffix, icann := publicsuffix.PublicSuffix(out); !icann && !strings.Contains(suffix, ".") {
			t.Fatalf("NormalizeDomain(%q) = %q: top-level label %q is not in the public suffix list", raw, out, suffix)
		}
		if _, err := publicsuffix.EffectiveTLDPlusOne(out); err != nil {
			t.Fatalf("NormalizeDomain(%q) = %q: a public suffix (%v)", raw, out, err)
		}
		for _, again := range []string{out, strings.ToUpper(out) + "."} {
			if got, err := NormalizeDomain(again, domainTestBase); err != nil || got != out {
				t.Fatalf("NormalizeDomain(%q) = %q; NormalizeDomain(%q) = %q, %v; want %q", raw, out, again, got, err, out)
			}
		}
	})
}
