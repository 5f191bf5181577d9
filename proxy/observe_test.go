package proxy_test

import (
	"log/slog"
	"strings"
	"testing"

	"github.com/edgeproxy/edgeproxy/proxy"
	"github.com/prometheus/client_golang/prometheus"
)

// TestAccessLogSampleAndMetrics sends six requests with --access-log
// sample:3 and checks that two access lines carry the request's facts, and
// that the request counter moved by exactly six.
func TestAccessLogSampleAndMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarness(t, func(c *proxy.Config) {
		c.AccessLogEvery = 3
		c.Registerer = reg
		c.PerDomainMetrics = false
	})
	c := h.client("h1", served)
	for i := 0; i < 6; i++ {
		resp, _ := do(t, c, newRequest(t, "POST", "https://"+served+"/i/v0/e/", strings.NewReader(`{"event":"x"}`)))
		if resp.StatusCode != 200 {
			t.Fatalf("request %d: %d", i, resp.StatusCode)
		}
	}
	var access []slog.Record
	h.logs.mu.Lock()
	for _, r := range h.logs.records {
		if r.Message == "access" {
			access = append(access, r)
		}
	}
	h.logs.mu.Unlock()
	if got, want := len(access), 2; got != want {
		t.Fatalf("%d access lines for 6 requests sampled 1 in 3, want %d", got, want)
	}
	attrs := map[string]string{}
	access[0].Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	for key, want := range map[string]string{"domain": served, "route": "ingest", "status": "200", "request_bytes": "13", "client_ip": "127.0.0.1"} {
		if attrs[key] != want {
			t.Errorf("access line %s = %q, want %q (line: %v)", key, attrs[key], want, attrs)
		}
	}
	for _, key := range []string{"duration", "upstream_duration", "response_bytes"} {
		if _, ok := attrs[key]; !ok {
			t.Errorf("access line lacks %s", key)
		}
	}
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	total := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "edgeproxy_proxy_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			key := ""
			for _, l := range m.GetLabel() {
				key += l.GetName() + "=" + l.GetValue() + " "
			}
			total[key] = m.GetCounter().GetValue()
		}
	}
	for key, v := range total {
		want := 0.0
		if key == "code=2xx route=ingest " {
			want = 6
		}
		if v != want {
			t.Errorf("edgeproxy_proxy_requests_total{%s} = %v, want %v", key, v, want)
		}
	}
	if len(total) != 10 {
		t.Errorf("%d request counter series, want 10 (2 routes × 5 classes, zeros included)", len(total))
	}
}
