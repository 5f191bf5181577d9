package deploy_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// world is a served domain on a running edgeproxy: Pebble as the CA, a
// DNS server and an upstream, all on loopback.
type world struct {
	dns       *dnstest.Server
	pebble    *certstest.Pebble
	upstream  *httptest.Server
	api       string // host:port
	httpsAddr string
	dataDir   string
	server    *process
	key       string
}

func startWorld(t *testing.T) *world {
	t.Helper()
	w := &world{dns: dnstest.Start(t), api: testbin.FreeAddr(t), httpsAddr: testbin.FreeAddr(t), dataDir: t.TempDir()}
	httpAddr := testbin.FreeAddr(t)
	w.pebble = certstest.StartPebble(t, w.dns.Addr(), portOf(t, httpAddr), portOf(t, w.httpsAddr))
	root := filepath.Join(t.TempDir(), "pebble.pem")
	if err := os.WriteFile(root, w.pebble.ServerCertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	w.upstream = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		rw.Header().Set("Content-Type", "application/json")
		io.WriteString(rw, `{"status":1}`)
	}))
	t.Cleanup(w.upstream.Close)
	w.server = startProcess(t, []string{"PATH=" + os.Getenv("PATH")}, testbin.Build(t, true), "serve", "--dev",
		"--data-dir", w.dataDir, "--api-addr", w.api, "--http-addr", httpAddr, "--https-addr", w.httpsAddr,
		"--acme-ca", w.pebble.DirectoryURL(), "--acme-ca-root", root,
		"--acme-caa-identities", certstest.CAAIdentity, "--dns-resolvers", w.dns.Addr(),
		"--upstream", w.upstream.URL, "--assets-upstream", w.upstream.URL,
		"--recheck-max", "300ms")
	w.server.waitHTTP(t, "http://"+w.api+"/readyz", 30*time.Second)
	w.key = strings.TrimSpace(readFile(t, filepath.Join(w.dataDir, "bootstrap-key")))
	return w
}

type record struct {
	ID          string  `json:"id"`
	Domain      string  `json:"domain"`
	TargetCNAME string  `json:"target_cname"`
	Status      string  `json:"status"`
	Message     *string `json:"message"`
}

func (w *world) call(t *testing.T, method, path, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+w.api+"/api/organizations/@current/proxy_records/"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+w.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			t.Fatalf("%s %s: %d %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode
}

// serve registers domain, adds its CNAME the way a customer would, and
// waits until it is valid.
func (w *world) serve(t *testing.T, domain string) record {
	t.Helper()
	var rec record
	if code := w.call(t, "POST", "", `{"domain":"`+domain+`"}`, &rec); code != http.StatusCreated {
		t.Fatalf("create %s: %d %+v", domain, code, rec)
	}
	// The operator's wildcard *.<target-cname-base> points at the edge.
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	deadline := time.Now().Add(90 * time.Second)
	for time.Now().Before(deadline) {
		if code := w.call(t, "GET", rec.ID+"/", "", &rec); code == http.StatusOK && rec.Status == "valid" {
			return rec
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never became valid (last %+v)\n%s", domain, rec, w.server.output)
	return rec
}

// edgeClient sends every request to the edge's TLS address, trusting
// Pebble's issuer.
func (w *world) edgeClient(t *testing.T) *http.Client {
	t.Helper()
	tr := &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: w.pebble.IssuerRoots(t)},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, w.httpsAddr)
		},
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// scrape reads /metrics: the raw text and its parsed families.
func (w *world) scrape(t *testing.T) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	resp, err := http.Get("http://" + w.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %d %s", resp.StatusCode, data)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, data)
	}
	return string(data), fams
}

// value is the value of the series of family name with exactly labels,
// and whether there is one.
func value(fams map[string]*dto.MetricFamily, name string, labels map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if !maps.Equal(got, labels) {
			continue
		}
		switch {
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		}
	}
	return 0, false
}

// TestOperatorChain runs edgeproxy with a served domain, sends it traffic
// and a handshake it must refuse, and checks everything an operator reads
// about it: the /metrics families and their labels, promtool's lint of a
// real scrape, that the dashboard and the alerts name only metrics that
// exist, and a real Prometheus scraping it with the shipped configuration
// and rules.
func TestOperatorChain(t *testing.T) {
	w := startWorld(t)
	rec := w.serve(t, "e.metrics.example.com")
	_, before := w.scrape(t)

	// Exactly K proxied ingest requests and one static one, over TLS with
	// the certificate Pebble issued.
	const K = 7
	client := w.edgeClient(t)
	send := func(method, path, body string) {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+rec.Domain+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("%s %s: %d", method, path, resp.StatusCode)
		}
	}
	for i := range K {
		send("POST", "/i/v0/e/", fmt.Sprintf(`{"event":"e%d"}`, i))
	}
	send("GET", "/static/array.js", "")
	client.Transport.(*http.Transport).CloseIdleConnections()

	// One handshake for a name the edge does not serve.
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", w.httpsAddr,
		&tls.Config{ServerName: "unknown.example.org", RootCAs: w.pebble.IssuerRoots(t)})
	if err == nil {
		conn.Close()
		t.Fatal("handshake for a name not served succeeded")
	}

	raw, fams := w.scrape(t)

	t.Run("promtool check metrics", func(t *testing.T) {
		cmd := exec.Command(tool(t, "promtool"), "check", "metrics")
		cmd.Stdin = strings.NewReader(raw)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	t.Run("contract families", func(t *testing.T) {
		for _, f := range []struct {
			name   string
			typ    dto.MetricType
			labels []string            // exactly these label names on every series
			values map[string][]string // label values that must appear
		}{
			{"edgeproxy_proxy_requests_total", dto.MetricType_COUNTER, []string{"code", "route"},
				map[string][]string{"route": {"ingest", "static"}, "code": {"2xx", "3xx", "4xx", "5xx"}}},
			{"edgeproxy_proxy_request_duration_seconds", dto.MetricType_HISTOGRAM, []string{"route"},
				map[string][]string{"route": {"ingest", "static"}}},
			{"edgeproxy_records", dto.MetricType_GAUGE, []string{"status"},
				map[string][]string{"status": statuses}},
			{"edgeproxy_api_requests_total", dto.MetricType_COUNTER, []string{"code", "method"},
				map[string][]string{"method": {"GET", "POST"}, "code": {"200", "201"}}},
			{"edgeproxy_dns_checks_total", dto.MetricType_COUNTER, []string{"result"},
				map[string][]string{"result": {"pointing"}}},
			{"edgeproxy_certificates_obtained_total", dto.MetricType_COUNTER, []string{"kind"},
				map[string][]string{"kind": {"obtain"}}},
			{"edgeproxy_certificate_failures_total", dto.MetricType_COUNTER, []string{"kind"},
				map[string][]string{"kind": {"obtain"}}},
			{"edgeproxy_tls_handshakes_total", dto.MetricType_COUNTER, []string{"result"},
				map[string][]string{"result": {"served", "refused"}}},
			{"go_goroutines", dto.MetricType_GAUGE, nil, nil},
			{"process_resident_memory_bytes", dto.MetricType_GAUGE, nil, nil},
			{"process_cpu_seconds_total", dto.MetricType_COUNTER, nil, nil},
		} {
			fam, ok := fams[f.name]
			if !ok {
				t.Errorf("%s: missing", f.name)
				continue
			}
			if fam.GetType() != f.typ {
				t.Errorf("%s: type %v, want %v", f.name, fam.GetType(), f.typ)
			}
			seen := map[string]map[string]bool{}
			for _, m := range fam.GetMetric() {
				var names []string
				for _, l := range m.GetLabel() {
					names = append(names, l.GetName())
					if seen[l.GetName()] == nil {
						seen[l.GetName()] = map[string]bool{}
					}
					seen[l.GetName()][l.GetValue()] = true
				}
				sort.Strings(names)
				if !slices.Equal(names, f.labels) {
					t.Errorf("%s: a series with labels %v, want %v", f.name, names, f.labels)
					break
				}
			}
			for label, vals := range f.values {
				for _, v := range vals {
					if !seen[label][v] {
						t.Errorf("%s: no series with %s=%q (have %v)", f.name, label, v, slices.Sorted(maps.Keys(seen[label])))
					}
				}
			}
		}
		if got := len(fams["edgeproxy_records"].GetMetric()); got != len(statuses) {
			t.Errorf("edgeproxy_records has %d series, want one per status (%d)", got, len(statuses))
		}
		// Bounded labels: nothing per request or per client.
		for name, fam := range fams {
			for _, m := range fam.GetMetric() {
				for _, l := range m.GetLabel() {
					switch l.GetName() {
					case "domain", "host", "path", "ip", "client_ip", "url", "record_id", "org_id":
						t.Errorf("%s has an unbounded label %s=%q", name, l.GetName(), l.GetValue())
					}
				}
			}
		}
	})

	t.Run("values", func(t *testing.T) {
		counterMoved := func(name string, labels map[string]string, want float64) {
			t.Helper()
			b, _ := value(before, name, labels)
			a, ok := value(fams, name, labels)
			if !ok {
				t.Errorf("%s%v: missing", name, labels)
				return
			}
			if a-b != want {
				t.Errorf("%s%v moved by %v (from %v to %v), want %v", name, labels, a-b, b, a, want)
			}
		}
		counterMoved("edgeproxy_proxy_requests_total", map[string]string{"route": "ingest", "code": "2xx"}, K)
		counterMoved("edgeproxy_proxy_requests_total", map[string]string{"route": "static", "code": "2xx"}, 1)
		counterMoved("edgeproxy_proxy_request_duration_seconds", map[string]string{"route": "ingest"}, K)
		for _, code := range []string{"3xx", "4xx", "5xx"} {
			counterMoved("edgeproxy_proxy_requests_total", map[string]string{"route": "ingest", "code": code}, 0)
		}
		if v, _ := value(fams, "edgeproxy_tls_handshakes_total", map[string]string{"result": "refused"}); v < 1 {
			t.Errorf("edgeproxy_tls_handshakes_total{result=refused} = %v, want ≥ 1", v)
		}
		if v, _ := value(fams, "edgeproxy_tls_handshakes_total", map[string]string{"result": "served"}); v < 1 {
			t.Errorf("edgeproxy_tls_handshakes_total{result=served} = %v, want ≥ 1", v)
		}
		if v, _ := value(fams, "edgeproxy_certificates_obtained_total", map[string]string{"kind": "obtain"}); v != 1 {
			t.Errorf("edgeproxy_certificates_obtained_total{kind=obtain} = %v, want 1", v)
		}
		for _, st := range statuses {
			want := 0.0
			if st == "valid" {
				want = 1
			}
			if v, ok := value(fams, "edgeproxy_records", map[string]string{"status": st}); !ok || v != want {
				t.Errorf("edgeproxy_records{status=%q} = %v (present %v), want %v", st, v, ok, want)
			}
		}
		exp, ok := value(fams, "edgeproxy_certificate_soonest_expiry_timestamp_seconds", map[string]string{})
		if now := float64(time.Now().Unix()); !ok || exp < now+86400 {
			t.Errorf("edgeproxy_certificate_soonest_expiry_timestamp_seconds = %v (present %v), want a day or more after now (%v)", exp, ok, now)
		}
	})

	exprs, variables := dashboardQueries(t)
	t.Run("dashboard metrics exist", func(t *testing.T) {
		if missing := missingMetrics(fams, append(exprs, variables...)); len(missing) > 0 {
			t.Errorf("%s names metrics the server does not expose: %v", dashboardFile, missing)
		}
		// The dashboard has a panel for each family the README promises
		// under Monitoring, and for the engine's backlog, the upstream
		// errors and the refusals.
		all := strings.Join(exprs, "\n")
		for _, name := range []string{"edgeproxy_proxy_requests_total", "edgeproxy_proxy_request_duration_seconds_bucket",
			"edgeproxy_records", "edgeproxy_api_requests_total", "edgeproxy_dns_checks_total",
			"edgeproxy_certificates_obtained_total", "edgeproxy_certificate_failures_total", "edgeproxy_tls_handshakes_total",
			"edgeproxy_certificate_soonest_expiry_timestamp_seconds", "edgeproxy_engine_queue_depth",
			"edgeproxy_engine_oldest_overdue_seconds", "edgeproxy_proxy_upstream_errors_total", "edgeproxy_proxy_refused_total"} {
			if !regexp.MustCompile(`\b` + name + `\b`).MatchString(all) {
				t.Errorf("%s has no panel using %s", dashboardFile, name)
			}
		}
	})

	t.Run("alert metrics exist", func(t *testing.T) {
		var lines []string
		for _, line := range strings.Split(readFile(t, alertsFile), "\n") {
			if !strings.HasPrefix(strings.TrimSpace(line), "#") {
				lines = append(lines, line)
			}
		}
		if missing := missingMetrics(fams, lines); len(missing) > 0 {
			t.Errorf("%s names metrics the server does not expose: %v", alertsFile, missing)
		}
	})

	t.Run("prometheus scrapes", func(t *testing.T) {
		p := startPrometheus(t, tool(t, "prometheus"), w.api)
		// The records gauge, every status, as an operator queries it.
		var result []sample
		deadline := time.Now().Add(30 * time.Second)
		for {
			result = p.query(t, "edgeproxy_records")
			if len(result) == len(statuses) || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		got := map[string]string{}
		for _, s := range result {
			if s.Metric["job"] != "edgeproxy" || s.Metric["instance"] != w.api {
				t.Errorf("series %v: want job edgeproxy, instance %s", s.Metric, w.api)
			}
			got[s.Metric["status"]] = s.Value
		}
		for _, st := range statuses {
			want := "0"
			if st == "valid" {
				want = "1"
			}
			if got[st] != want {
				t.Errorf("Prometheus: edgeproxy_records{status=%q} = %q, want %q (all: %v)\n%s", st, got[st], want, got, p.output)
			}
		}
		if up := p.query(t, `up{job="edgeproxy"}`); len(up) != 1 || up[0].Value != "1" {
			t.Errorf(`Prometheus: up{job="edgeproxy"} = %+v, want one series, 1`, up)
		}

		// The shipped rules load and evaluate without error.
		alerts := alertNames(t)
		deadline = time.Now().Add(30 * time.Second)
		var rules map[string]string
		for {
			rules = p.rules(t)
			ok := len(rules) == len(alerts)
			for _, h := range rules {
				ok = ok && h == "ok"
			}
			if ok || time.Now().After(deadline) {
				break
			}
			time.Sleep(200 * time.Millisecond)
		}
		for _, a := range alerts {
			if rules[a] != "ok" {
				t.Errorf("Prometheus: rule %s health %q, want ok (all: %v)", a, rules[a], rules)
			}
		}

		// Every dashboard query is valid PromQL to a real Prometheus, with
		// Grafana's variables filled in; the instance variable finds the
		// server.
		for _, e := range exprs {
			q := strings.NewReplacer("$instance", ".*", "$__rate_interval", "1m").Replace(e)
			p.query(t, q)
		}
		for _, v := range variables {
			m := regexp.MustCompile(`^label_values\((.+),\s*(\w+)\)$`).FindStringSubmatch(v)
			if m == nil {
				t.Errorf("dashboard variable query %q: not label_values(selector, label)", v)
				continue
			}
			vals := p.labelValues(t, m[2], m[1])
			if !slices.Contains(vals, w.api) {
				t.Errorf("dashboard variable %q finds %v, want %s among them", v, vals, w.api)
			}
		}
	})

	t.Run("no key in logs", func(t *testing.T) {
		if strings.Contains(w.server.output.String(), w.key) || strings.Contains(w.server.output.String(), "phx_") {
			t.Errorf("the server's log contains an API key:\n%s", w.server.output)
		}
	})
}
