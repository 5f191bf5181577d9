package dnsverify

import (
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		servers []string
		want    []string
		wantErr bool
	}{
		{name: "host:port", servers: []string{"127.0.0.1:5353", "[::1]:53"}, want: []string{"127.0.0.1:5353", "[::1]:53"}},
		{name: "bare IPs get port 53", servers: []string{"192.0.2.53", "2001:db8::53"}, want: []string{"192.0.2.53:53", "[2001:db8::53]:53"}},
		{name: "hostname with port", servers: []string{"resolver.example:53"}, want: []string{"resolver.example:53"}},
		{name: "hostname without port", servers: []string{"resolver.example"}, wantErr: true},
		{name: "empty port", servers: []string{"127.0.0.1:"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, err := New(tt.servers, 0)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("New(%q) = %q, want an error", tt.servers, v.Servers())
				}
				return
			}
			if err != nil {
				t.Fatalf("New(%q): %v", tt.servers, err)
			}
			if got := v.Servers(); !slices.Equal(got, tt.want) {
				t.Errorf("Servers() = %q, want %q", got, tt.want)
			}
			if got, want := v.timeout, DefaultTimeout; got != want {
				t.Errorf("timeout = %v, want %v", got, want)
			}
		})
	}
}

func TestNewFromResolvConf(t *testing.T) {
	dir := t.TempDir()
	setResolvConf := func(content string) {
		t.Helper()
		path := filepath.Join(dir, "resolv.conf")
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		old := resolvConf
		resolvConf = path
		t.Cleanup(func() { resolvConf = old })
	}

	setResolvConf("# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n")
	v, err := New(nil, 500*time.Millisecond)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if got, want := v.Servers(), []string{"192.0.2.53:53", "[2001:db8::53]:53"}; !slices.Equal(got, want) {
		t.Errorf("Servers() = %q, want %q", got, want)
	}
	if got, want := v.timeout, 500*time.Millisecond; got != want {
		t.Errorf("timeout = %v, want %v", got, want)
	}

	setResolvConf("search example.com\n")
	if _, err := New(nil, 0); err == nil {
		t.Error("New with no nameserver in resolv.conf succeeded")
	}

	resolvConf = filepath.Join(dir, "missing")
	if _, err := New(nil, 0); err == nil {
		t.Error("New with no resolv.conf succeeded")
	}
}
