package deploy_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// promServer is a real Prometheus on loopback.
type promServer struct {
	*process
	url string
}

// startPrometheus runs Prometheus with the shipped prometheus.yml and
// alerts.yml, changed only to scrape target (instead of 127.0.0.1:8080)
// every second.
func startPrometheus(t *testing.T, bin, target string) *promServer {
	t.Helper()
	dir := t.TempDir()
	cfg := readFile(t, promConfig)
	for _, r := range []struct{ old, new string }{
		{`"127.0.0.1:8080"`, `"` + target + `"`},
		{"scrape_interval: 15s", "scrape_interval: 1s"},
		{"evaluation_interval: 15s", "evaluation_interval: 1s"},
		{"scrape_timeout: 10s", "scrape_timeout: 1s"},
	} {
		if !strings.Contains(cfg, r.old) {
			t.Fatalf("%s: no %q to replace", promConfig, r.old)
		}
		cfg = strings.ReplaceAll(cfg, r.old, r.new)
	}
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "alerts.yml"), []byte(readFile(t, alertsFile)), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := testbin.FreeAddr(t)
	p := &promServer{url: "http://" + addr}
	p.process = startProcess(t, []string{"PATH=" + os.Getenv("PATH")}, bin,
		"--config.file", filepath.Join(dir, "prometheus.yml"),
		"--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", addr)
	p.waitHTTP(t, p.url+"/-/ready", 60*time.Second)
	return p
}

type sample struct {
	Metric map[string]string
	Value  string
}

// api calls Prometheus's HTTP API and decodes data into out.
func (p *promServer) api(t *testing.T, path string, params url.Values, out any) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get(p.url + path + "?" + params.Encode())
	if err != nil {
		t.Fatalf("Prometheus %s: %v", path, err)
	}
	defer resp.Body.Close()
	var body struct {
		Status string          `json:"status"`
		Error  string          `json:"error"`
		Data   json.RawMessage `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("Prometheus %s: %d: %v", path, resp.StatusCode, err)
	}
	if body.Status != "success" {
		t.Fatalf("Prometheus %s %v: %s: %s", path, params, body.Status, body.Error)
	}
	if err := json.Unmarshal(body.Data, out); err != nil {
		t.Fatalf("Prometheus %s: %v", path, err)
	}
}

// query runs an instant query; a query Prometheus refuses fails the test.
func (p *promServer) query(t *testing.T, q string) []sample {
	t.Helper()
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"`
		} `json:"result"`
	}
	p.api(t, "/api/v1/query", url.Values{"query": {q}}, &data)
	var out []sample
	for _, r := range data.Result {
		v, _ := r.Value[1].(string)
		out = append(out, sample{Metric: r.Metric, Value: v})
	}
	return out
}

// rules maps each loaded alerting rule to its health.
func (p *promServer) rules(t *testing.T) map[string]string {
	t.Helper()
	var data struct {
		Groups []struct {
			Rules []struct {
				Name   string `json:"name"`
				Health string `json:"health"`
				Type   string `json:"type"`
			} `json:"rules"`
		} `json:"groups"`
	}
	p.api(t, "/api/v1/rules", url.Values{"type": {"alert"}}, &data)
	out := map[string]string{}
	for _, g := range data.Groups {
		for _, r := range g.Rules {
			out[r.Name] = r.Health
		}
	}
	return out
}

func (p *promServer) labelValues(t *testing.T, label, match string) []string {
	t.Helper()
	var vals []string
	p.api(t, "/api/v1/label/"+label+"/values", url.Values{"match[]": {match}}, &vals)
	return vals
}
