package webhooks_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/webhooks"
)

func TestCheckURL(t *testing.T) {
	t.Parallel()
	dnsSrv := dnstest.Start(t)
	dnsSrv.SetA("public.example.com", "93.184.215.14")
	dnsSrv.SetA("loop.example.com", "127.0.0.1")
	dnsSrv.SetA("mixed.example.com", "93.184.215.14", "10.0.0.1")
	dnsSrv.SetA("meta.example.com", "169.254.169.254")
	resolver := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, dnsSrv.Addr())
	}}
	for _, tt := range []struct {
		url          string
		allowPrivate bool
		want         string // the stored URL, or "" for a refusal
		reason       string // a part of the refusal
	}{
		{"https://public.example.com/hooks?x=1", false, "https://public.example.com/hooks?x=1", ""},
		{"  HTTPS://public.example.com:8443/h  ", false, "https://public.example.com:8443/h", ""},
		{"https://93.184.215.14/h", false, "https://93.184.215.14/h", ""},
		{"http://public.example.com/h", false, "", "https://"},
		{"ftp://public.example.com/h", false, "", "https://"},
		{"https://127.0.0.1/h", false, "", "127.0.0.1"},
		{"https://[::1]/h", false, "", "::1"},
		{"https://loop.example.com/h", false, "", "127.0.0.1"},
		{"https://mixed.example.com/h", false, "", "10.0.0.1"},
		{"https://meta.example.com/latest", false, "", "169.254.169.254"},
		{"https://nowhere.example.com/h", false, "", "does not resolve"},
		{"https://user:pw@public.example.com/h", false, "", "user name"},
		{"https://public.example.com/h#frag", false, "", "fragment"},
		{"public.example.com/h", false, "", "valid URL"},
		{"https:///h", false, "", "valid URL"},
		{"https://public.example.com:99999/h", false, "", "port"},
		{"https://" + strings.Repeat("a", 2100) + ".example.com/", false, "", "at most"},
		// --webhook-allow-private lifts the https and address rules.
		{"http://127.0.0.1:8080/h", true, "http://127.0.0.1:8080/h", ""},
		{"https://loop.example.com/h", true, "https://loop.example.com/h", ""},
		{"https://user:pw@127.0.0.1/h", true, "", "user name"},
	} {
		got, err := webhooks.CheckURL(context.Background(), tt.url, tt.allowPrivate, resolver)
		var uerr *webhooks.URLError
		switch {
		case tt.want != "" && (err != nil || got != tt.want):
			t.Errorf("CheckURL(%q, %t) = %q, %v; want %q", tt.url, tt.allowPrivate, got, err, tt.want)
		case tt.want == "" && (err == nil || !errors.As(err, &uerr) || !strings.Contains(err.Error(), tt.reason)):
			t.Errorf("CheckURL(%q, %t) = %q, %v; want a refusal naming %q", tt.url, tt.allowPrivate, got, err, tt.reason)
		}
	}
}
