// Package deploy_test checks what an operator installs from deploy/: the
// systemd unit, the example environment file, the Prometheus scrape
// configuration, the alerting rules and the Grafana dashboard. The checks
// use the real tools (systemd-analyze, promtool, prometheus) and the real
// edgeproxy binary on loopback: a served domain with a certificate from
// Pebble, proxied traffic, a refused handshake, a real Prometheus scraping
// it with the shipped configuration and rules.
//
// promtool and prometheus come from Debian's prometheus package; `make
// tools` (and so `make test`) installs it with scripts/ensure-prometheus.sh.
// Without them the checks that run them are skipped, naming the missing
// program, unless EDGEPROXY_REQUIRE_TOOLS=1, as `make test` sets it: then
// they fail.
package deploy_test

import (
	"bufio"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// The shipped files, relative to this package's directory.
const (
	unitFile      = "edgeproxy.service"
	envFile       = "edgeproxy.env.example"
	promConfig    = "prometheus/prometheus.yml"
	alertsFile    = "prometheus/alerts.yml"
	alertsTest    = "prometheus/alerts_test.yml"
	dashboardFile = "grafana/edgeproxy.json"
)

// statuses are the statuses a proxy record can have (docs/API.md,
// "Statuses and lifecycle"); edgeproxy_records has one series for each,
// zeros included.
var statuses = []string{"waiting", "issuing", "valid", "warning", "erroring", "deleting", "timed_out"}

func TestMain(m *testing.M) { testbin.Main(m) }

// tool finds a Prometheus tool (promtool, prometheus) on PATH: `make
// tools` installs both, with scripts/ensure-prometheus.sh. A test that
// needs a missing one is skipped, unless EDGEPROXY_REQUIRE_TOOLS=1 (as
// `make test` sets it), when it fails.
func tool(t *testing.T, name string) string {
	t.Helper()
	return testbin.Tool(t, name, "tools")
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// process is a child process that is stopped when the test ends: SIGTERM,
// then SIGKILL after a bound.
type process struct {
	cmd    *exec.Cmd
	output *testbin.LockedBuffer
	done   chan struct{}
	err    error
}

func startProcess(t *testing.T, env []string, name string, args ...string) *process {
	t.Helper()
	p := &process{cmd: exec.Command(name, args...), output: &testbin.LockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = env
	p.cmd.Stdout = io.Discard
	p.cmd.Stderr = p.output
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(15 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// waitHTTP polls url until it answers 200, the process exits or the bound
// passes.
func (p *process) waitHTTP(t *testing.T, url string, bound time.Duration) {
	t.Helper()
	deadline := time.Now().Add(bound)
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-p.done:
			t.Fatalf("%s exited while starting: %v\n%s", p.cmd.Path, p.err, p.output)
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Fatalf("%s not ready at %s within %s\n%s", p.cmd.Path, url, bound, p.output)
}

// TestUnitDirectives pins the hardening and the paths the README and the
// environment file rely on.
func TestUnitDirectives(t *testing.T) {
	unit := readFile(t, unitFile)
	have := map[string][]string{}
	sc := bufio.NewScanner(strings.NewReader(unit))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("line without '=': %q", line)
			continue
		}
		have[k] = append(have[k], v)
	}
	for _, d := range []struct{ key, value string }{
		{"User", "edgeproxy"},
		{"Group", "edgeproxy"},
		{"DynamicUser", "no"},
		{"AmbientCapabilities", "CAP_NET_BIND_SERVICE"},
		{"CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"},
		{"NoNewPrivileges", "yes"},
		{"ProtectSystem", "strict"},
		{"ProtectHome", "yes"},
		{"PrivateTmp", "yes"},
		{"PrivateDevices", "yes"},
		{"ProtectKernelTunables", "yes"},
		{"ProtectKernelModules", "yes"},
		{"ProtectKernelLogs", "yes"},
		{"ProtectControlGroups", "yes"},
		{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"StateDirectory", "edgeproxy"},
		{"StateDirectoryMode", "0700"},
		{"ReadWritePaths", "/var/lib/edgeproxy"},
		{"Environment", "EDGEPROXY_DATA_DIR=/var/lib/edgeproxy"},
		{"EnvironmentFile", "/etc/edgeproxy/edgeproxy.env"},
		{"ExecStart", "/usr/local/bin/edgeproxy serve"},
		{"KillSignal", "SIGTERM"},
		{"TimeoutStopSec", "40"},
		{"Restart", "on-failure"},
		{"RestartPreventExitStatus", "2"},
		{"LimitNOFILE", "1048576"},
		{"WantedBy", "multi-user.target"},
	} {
		if !slices.Contains(have[d.key], d.value) {
			t.Errorf("%s: want %s=%s, have %q", unitFile, d.key, d.value, have[d.key])
		}
	}
}

// TestUnitVerifies runs systemd-analyze verify on the unit, with ExecStart
// pointing at a freshly built binary (verify checks that it exists).
func TestUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		// Not required even by `make test`: no target installs systemd,
		// and containers often lack it.
		t.Skip("systemd-analyze is not on PATH (systemd not installed here); the unit's syntax is not verified by systemd")
	}
	unit := readFile(t, unitFile)
	bin := testbin.Build(t, true)
	if !strings.Contains(unit, "ExecStart=/usr/local/bin/edgeproxy ") {
		t.Fatal("ExecStart does not run /usr/local/bin/edgeproxy")
	}
	path := filepath.Join(t.TempDir(), "edgeproxy.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(unit, "/usr/local/bin/edgeproxy", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(analyze, "verify", "--man=no", path)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
	}
	// verify exits 0 on unknown keys and bad values, but says so, naming
	// the file.
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "edgeproxy.service") {
			t.Errorf("systemd-analyze verify: %s", line)
		}
	}
}

var envLine = regexp.MustCompile(`^#?(EDGEPROXY_[A-Z_]+)=(.*)$`)

// TestEnvExample checks that the example environment file names exactly
// the flags of `edgeproxy serve`, and that the server starts with every
// value it shows (set and commented defaults alike).
func TestEnvExample(t *testing.T) {
	bin := testbin.Build(t, true)
	help, _ := exec.Command(bin, "serve", "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(string(help), -1) {
		flags["EDGEPROXY_"+strings.ToUpper(strings.ReplaceAll(m[1], "-", "_"))] = true
	}
	if len(flags) < 20 {
		t.Fatalf("found only %d flags in `serve --help`:\n%s", len(flags), help)
	}

	vars := map[string]string{}
	set := map[string]string{}
	for _, line := range strings.Split(readFile(t, envFile), "\n") {
		m := envLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		if _, dup := vars[m[1]]; dup {
			t.Errorf("%s appears twice", m[1])
		}
		vars[m[1]] = m[2]
		if !strings.HasPrefix(line, "#") {
			set[m[1]] = m[2]
		}
	}
	for name := range flags {
		if _, ok := vars[name]; !ok {
			t.Errorf("%s: no %s (flag of `edgeproxy serve`)", envFile, name)
		}
	}
	for name := range vars {
		if !flags[name] {
			t.Errorf("%s: %s is not a flag of `edgeproxy serve`", envFile, name)
		}
	}
	if got, want := set["EDGEPROXY_DATA_DIR"], "/var/lib/edgeproxy"; got != want {
		t.Errorf("EDGEPROXY_DATA_DIR = %q, want %q", got, want)
	}
	if set["EDGEPROXY_TARGET_CNAME_BASE"] == "" {
		t.Error("EDGEPROXY_TARGET_CNAME_BASE is not set: it is required outside --dev")
	}

	// Every value shown, with the addresses and the data directory moved
	// to loopback and a temporary directory by flags (a flag beats the
	// environment).
	env := []string{"PATH=" + os.Getenv("PATH")}
	for _, k := range slices.Sorted(maps.Keys(vars)) {
		if vars[k] != "" {
			env = append(env, k+"="+vars[k])
		}
	}
	api := testbin.FreeAddr(t)
	p := startProcess(t, env, bin, "serve", "--data-dir", t.TempDir(),
		"--api-addr", api, "--http-addr", testbin.FreeAddr(t), "--https-addr", testbin.FreeAddr(t))
	p.waitHTTP(t, "http://"+api+"/readyz", 30*time.Second)
	if !strings.Contains(p.output.String(), `"target_cname_base":"`+set["EDGEPROXY_TARGET_CNAME_BASE"]+`"`) {
		t.Errorf("the server did not take its settings from the environment (json log, target base):\n%s", p.output)
	}
}

// TestRules runs promtool on the shipped configuration and rules, and
// checks that alerts_test.yml covers every alert both firing and quiet.
func TestRules(t *testing.T) {
	t.Run("promtool", func(t *testing.T) {
		promtool := tool(t, "promtool")
		for _, args := range [][]string{
			{"check", "config", filepath.Base(promConfig)},
			{"check", "rules", filepath.Base(alertsFile)},
			{"test", "rules", filepath.Base(alertsTest)},
		} {
			cmd := exec.Command(promtool, args...)
			cmd.Dir = filepath.Dir(alertsFile)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
	})

	alerts := alertNames(t)
	want := []string{"EdgeproxyDown", "EdgeproxyUpstream5xxRatioHigh", "EdgeproxyRecordsErroring",
		"EdgeproxyCertificateExpiringSoon", "EdgeproxyCertificateFailures", "EdgeproxyEngineBacklog"}
	for _, a := range want {
		if !slices.Contains(alerts, a) {
			t.Errorf("%s has no alert %s", alertsFile, a)
		}
	}
	// Each eval of the unit tests: which alert, and whether it expects it
	// to fire.
	fires, quiet := map[string]bool{}, map[string]bool{}
	evals := strings.Split(readFile(t, alertsTest), "- eval_time:")
	for _, e := range evals[1:] {
		m := regexp.MustCompile(`alertname:\s*(\w+)`).FindStringSubmatch(e)
		if m == nil {
			t.Fatalf("an eval without alertname: %q", e)
		}
		if strings.Contains(e, "exp_alerts: []") {
			quiet[m[1]] = true
		} else {
			fires[m[1]] = true
		}
	}
	for _, a := range alerts {
		if !fires[a] {
			t.Errorf("%s: no test where %s fires", alertsTest, a)
		}
		if !quiet[a] {
			t.Errorf("%s: no test where %s stays quiet", alertsTest, a)
		}
	}
}

func alertNames(t *testing.T) []string {
	t.Helper()
	var names []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert:\s*(\w+)`).FindAllStringSubmatch(readFile(t, alertsFile), -1) {
		names = append(names, m[1])
	}
	if len(names) == 0 {
		t.Fatalf("no alerts in %s", alertsFile)
	}
	return names
}

// metricName finds the metric names a query uses: ours, and the Go
// runtime's and process collector's.
var metricName = regexp.MustCompile(`\b(?:edgeproxy|go|process)_[a-z_]+`)

// dashboardQueries are the PromQL expressions of the dashboard's panels
// (rows included) and the label_values queries of its variables.
func dashboardQueries(t *testing.T) (exprs, variables []string) {
	t.Helper()
	var dash map[string]any
	if err := json.Unmarshal([]byte(readFile(t, dashboardFile)), &dash); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if dash["title"] == "" || dash["uid"] == "" {
		t.Errorf("%s: no title or uid", dashboardFile)
	}
	ids := map[float64]bool{}
	var walkPanels func(ps []any)
	walkPanels = func(ps []any) {
		for _, p := range ps {
			panel := p.(map[string]any)
			id, _ := panel["id"].(float64)
			if ids[id] {
				t.Errorf("%s: panel id %v used twice", dashboardFile, id)
			}
			ids[id] = true
			if sub, ok := panel["panels"].([]any); ok {
				walkPanels(sub)
			}
			targets, _ := panel["targets"].([]any)
			if panel["type"] != "row" && len(targets) == 0 {
				t.Errorf("%s: panel %q has no query", dashboardFile, panel["title"])
			}
			for _, tg := range targets {
				expr, _ := tg.(map[string]any)["expr"].(string)
				if expr == "" {
					t.Errorf("%s: panel %q has a target without expr", dashboardFile, panel["title"])
					continue
				}
				exprs = append(exprs, expr)
			}
		}
	}
	panels, _ := dash["panels"].([]any)
	walkPanels(panels)
	templating, _ := dash["templating"].(map[string]any)
	list, _ := templating["list"].([]any)
	for _, v := range list {
		if def, ok := v.(map[string]any)["definition"].(string); ok {
			variables = append(variables, def)
		}
	}
	if len(exprs) < 20 {
		t.Fatalf("%s: only %d queries", dashboardFile, len(exprs))
	}
	return exprs, variables
}

// missingMetrics lists the names in texts that no exposed family has. A
// histogram's series (_bucket, _sum, _count) count as its family.
func missingMetrics(fams map[string]*dto.MetricFamily, texts []string) []string {
	var missing []string
	seen := map[string]bool{}
	for _, text := range texts {
		for _, name := range metricName.FindAllString(text, -1) {
			if seen[name] {
				continue
			}
			seen[name] = true
			if _, ok := fams[name]; ok {
				continue
			}
			found := false
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				base, ok := strings.CutSuffix(name, suffix)
				if !ok {
					continue
				}
				if f, ok := fams[base]; ok {
					typ := f.GetType()
					found = typ == dto.MetricType_HISTOGRAM || (suffix != "_bucket" && typ == dto.MetricType_SUMMARY)
				}
			}
			if !found {
				missing = append(missing, name)
			}
		}
	}
	sort.Strings(missing)
	return missing
}
