package dnsverify

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
)

func TestLookupAddrs(t *testing.T) {
	s := dnstest.Start(t)
	v := newVerifier(t, 300*time.Millisecond, s.Addr())
	ctx := context.Background()
	s.SetA(target, "2001:db8::1", "192.0.2.1", "192.0.2.1")
	s.SetCNAME("alias.example.com", target)
	s.SetCNAME(domain, "alias.example.com")

	want := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")}
	for _, name := range []string{target, domain, "E.Example.COM."} {
		got, err := v.LookupAddrs(ctx, name)
		if err != nil || !slices.Equal(got, want) {
			t.Errorf("LookupAddrs(%q) = %v, %v; want %v (through the chain, IPv4 first, no duplicates)", name, got, err, want)
		}
	}

	if got, err := v.LookupAddrs(ctx, "nothing.example.com"); err != nil || len(got) != 0 {
		t.Errorf("LookupAddrs of a missing name = %v, %v; want none and no error", got, err)
	}

	s.SetRcode(domain, dns.RcodeServerFailure)
	if got, err := v.LookupAddrs(ctx, domain); !errors.Is(err, ErrNoAnswer) || len(got) != 0 {
		t.Errorf("LookupAddrs on SERVFAIL = %v, %v; want none and an error wrapping ErrNoAnswer", got, err)
	}

	if _, err := v.LookupAddrs(ctx, "bad..name"); err == nil || errors.Is(err, ErrNoAnswer) {
		t.Errorf("LookupAddrs of an invalid name: err = %v, want a plain error", err)
	}
}
