package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"text/template"
	"time"

	"github.com/caddyserver/certmagic"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/store"
)

// The tests run on every peer (handshakes only on proxies).
const (
	testPost      = "post"      // 1 KB JSON POST /i/v0/e/, HTTP/1.1 (wrk)
	testPostH2    = "post-h2"   // the same POST over HTTP/2, several streams per connection (h2load)
	testBatch     = "batch"     // a gzip-compressed /e/ batch of ~3 KB, as posthog-js sends it (wrk)
	testFlags     = "flags"     // POST /flags/ with a small JSON body and a JSON answer (wrk)
	testStatic    = "static"    // GET /static/array.js, ~60 KB (wrk)
	testHandshake = "handshake" // full TLS 1.3 handshakes (benchproxy's own clients)
)

// allTests are the tests in the order they run on each peer.
var allTests = []string{testPost, testPostH2, testBatch, testFlags, testStatic, testHandshake}

// testLabel is how the report names a test.
var testLabel = map[string]string{
	testPost:      "POST 1 KB, HTTP/1.1",
	testPostH2:    "POST 1 KB, HTTP/2",
	testBatch:     "gzip /e/ batch, HTTP/1.1",
	testFlags:     "/flags/ POST, HTTP/1.1",
	testStatic:    "static 60 KB, HTTP/1.1",
	testHandshake: "full handshake",
}

// wrkLoad is what wrk sends in one of the HTTP/1.1 tests.
type wrkLoad struct {
	method, path, contentType string
	// bodyFile is read by the wrk script, so that a binary body (gzip)
	// reaches the wire byte for byte.
	bodyFile string
	script   string // the generated Lua script
	answer   string // the upstream's answer, checked before measuring
}

// unreachableACME is the edge's ACME directory: nothing listens there, and
// nothing should try, since the certificate is in storage.
const unreachableACME = "https://127.0.0.1:1/directory"

// bench holds the state of one run.
type bench struct {
	o   *options
	ctx context.Context

	certs                     *certSet
	caFile, certFile, keyFile string
	sslConf                   string
	wwwDir                    string
	postBody, batchBody       []byte
	postFile                  string
	loads                     map[string]*wrkLoad
	upstream                  *proc
	// etcd holds the store of the edgeproxy-etcd peers (nil without
	// them); etcdEndpoint is its client host:port.
	etcd                      *proc
	etcdEndpoint              string
	upstreamPort, upstreamTLS int
	// statusPort serves the upstream's stub_status, whose accepts counter
	// tells how many connections the proxies opened to the upstream.
	statusPort int
	// h2Rate is the HTTP/2 requests per second each peer last reached,
	// which sizes its next h2load run.
	h2Rate                     map[string]float64
	peers                      []*peer
	procs                      []*proc
	edgeSeq                    int
	postAnswer, staticFilePath string
}

// peer is one thing measured: a proxy in front of the upstream, or the
// upstream itself (the floor).
type peer struct {
	spec       string // as given in -peers
	name, kind string
	port       int
	tls        bool
	etcd       bool  // edgeproxy with its store on benchproxy's etcd
	proc       *proc // the proxy (nil for the upstream direct)
	start      func() error
}

// tests are the tests of tests that apply to p: no handshakes for the
// upstream direct (it runs on the load CPU).
func (p *peer) tests(tests []string) []string {
	var out []string
	for _, t := range tests {
		if t != testHandshake || p.proc != nil {
			out = append(out, t)
		}
	}
	return out
}

func (p *peer) baseURL() string {
	if p.tls {
		return fmt.Sprintf("https://%s:%d", benchDomain, p.port)
	}
	return fmt.Sprintf("http://%s:%d", benchDomain, p.port)
}

func (p *peer) addr() string { return fmt.Sprintf("127.0.0.1:%d", p.port) }

func (b *bench) peer(name string) *peer {
	for _, p := range b.peers {
		if p.name == name || p.spec == name {
			return p
		}
	}
	return nil
}

func (b *bench) path(name string) string { return filepath.Join(b.o.workDir, name) }

// prepare writes the certificate, the static file, the POST body and the
// wrk scripts.
func (b *bench) prepare() error {
	cs, err := newCertSet(benchDomain)
	if err != nil {
		return fmt.Errorf("making certificates: %w", err)
	}
	b.certs = cs
	b.caFile, b.certFile, b.keyFile = b.path("ca.pem"), b.path("cert.pem"), b.path("key.pem")
	for path, data := range map[string][]byte{b.caFile: cs.caPEM, b.certFile: cs.leafPEM, b.keyFile: cs.keyPEM} {
		if err := os.WriteFile(path, data, 0o600); err != nil {
			return err
		}
	}

	b.wwwDir = b.path("www")
	if err := os.MkdirAll(filepath.Join(b.wwwDir, "static"), 0o755); err != nil {
		return err
	}
	b.staticFilePath = filepath.Join(b.wwwDir, "static", "array.js")
	if err := os.WriteFile(b.staticFilePath, staticJS(b.o.staticSize), 0o644); err != nil {
		return err
	}
	b.postAnswer = `{"status":1}`
	b.postBody = postJSON(b.o.postSize)
	if b.batchBody, err = gzipBatch(b.o.batchSize); err != nil {
		return err
	}
	b.postFile = b.path("post.json")
	b.loads = map[string]*wrkLoad{
		testPost: {method: "POST", path: "/i/v0/e/", contentType: "application/json", bodyFile: b.postFile,
			answer: b.postAnswer},
		testBatch: {method: "POST", path: batchPath, contentType: "text/plain", bodyFile: b.path("batch.gz"),
			answer: b.postAnswer},
		testFlags: {method: "POST", path: flagsPath, contentType: "application/json", bodyFile: b.path("flags.json"),
			answer: flagsAnswer},
		testStatic: {method: "GET", path: "/static/array.js"},
	}
	for path, data := range map[string][]byte{b.postFile: b.postBody, b.path("batch.gz"): b.batchBody, b.path("flags.json"): flagsJSON()} {
		if err := os.WriteFile(path, data, 0o644); err != nil {
			return err
		}
	}
	for test, l := range b.loads {
		l.script = b.path(test + ".lua")
		if err := os.WriteFile(l.script, []byte(wrkScript(l.method, l.path, l.contentType, l.bodyFile)), 0o644); err != nil {
			return err
		}
	}
	b.sslConf = b.path("openssl.cnf")
	return os.WriteFile(b.sslConf, []byte(opensslConf), 0o644)
}

// The paths posthog-js posts to: a gzip-compressed event batch, and the
// feature flags of a person.
const (
	batchPath = "/e/?compression=gzip-js&ip=1&_=1764000000000&ver=1.200.0"
	flagsPath = "/flags/?v=2&config=true"
)

// flagsAnswer is the upstream's answer to /flags/: a few flags, the size
// of a small project's.
const flagsAnswer = `{"flags":{"new-onboarding":{"key":"new-onboarding","enabled":true,"variant":null,"reason":{"code":"condition_match","condition_index":0},"metadata":{"id":101,"version":3,"payload":null}},"pricing-test":{"key":"pricing-test","enabled":true,"variant":"control","reason":{"code":"condition_match","condition_index":1},"metadata":{"id":102,"version":7,"payload":null}}},"errorsWhileComputingFlags":false,"requestId":"0190f1c2-7d5e-7a3b-9c1d-2e3f4a5b6c7d"}`

// flagsJSON is the body posthog-js sends to /flags/.
func flagsJSON() []byte {
	return []byte(`{"token":"phc_benchproxybenchproxybenchproxy","distinct_id":"0190f1c2-7d5e-7a3b-9c1d-2e3f4a5b6c7d","groups":{},"person_properties":{"$initial_referring_domain":"$direct","$initial_current_url":"https://bench.example.com/"},"group_properties":{},"timezone":"Europe/Berlin"}`)
}

// gzipBatch is a posthog-js event batch (a JSON array of events with the
// usual properties, each event different) compressed with gzip, grown
// until the compressed body is at least n bytes.
func gzipBatch(n int) ([]byte, error) {
	rnd := rand.New(rand.NewPCG(1, 2))
	var events []map[string]any
	for i := 0; ; i++ {
		events = append(events, map[string]any{
			"uuid":      fmt.Sprintf("0190f1c2-%04x-7%03x-%04x-%012x", rnd.IntN(1<<16), rnd.IntN(1<<12), rnd.IntN(1<<16), rnd.Int64N(1<<48)),
			"event":     []string{"$pageview", "$autocapture", "$pageleave", "signup_clicked"}[i%4],
			"timestamp": time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC).Add(time.Duration(rnd.IntN(1e6)) * time.Millisecond).Format(time.RFC3339Nano),
			"properties": map[string]any{
				"token": "phc_benchproxybenchproxybenchproxy", "distinct_id": "0190f1c2-7d5e-7a3b-9c1d-2e3f4a5b6c7d",
				"$session_id": fmt.Sprintf("0190f1c3-%012x", rnd.Int64N(1<<48)), "$window_id": fmt.Sprintf("0190f1c4-%012x", rnd.Int64N(1<<48)),
				"$current_url": fmt.Sprintf("https://bench.example.com/docs/page-%d?ref=%x", rnd.IntN(500), rnd.Int32()),
				"$host":        benchDomain, "$pathname": fmt.Sprintf("/docs/page-%d", rnd.IntN(500)),
				"$browser": "Firefox", "$browser_version": 145, "$os": "Linux", "$device_type": "Desktop",
				"$screen_height": 1080, "$screen_width": 1920, "$viewport_height": 960 + rnd.IntN(100), "$viewport_width": 1900 + rnd.IntN(20),
				"$lib": "web", "$lib_version": "1.200.0", "$insert_id": fmt.Sprintf("%016x", rnd.Uint64()), "$time": 1764151200.0 + rnd.Float64()*1000,
				"$referrer": "$direct", "$referring_domain": "$direct", "$el_text": fmt.Sprintf("Button %d", rnd.IntN(40)),
			},
		})
		raw, err := json.Marshal(events)
		if err != nil {
			return nil, err
		}
		var buf bytes.Buffer
		zw := gzip.NewWriter(&buf)
		zw.Write(raw)
		if err := zw.Close(); err != nil {
			return nil, err
		}
		if buf.Len() >= n || i >= 1000 {
			return buf.Bytes(), nil
		}
	}
}

// staticJS is n bytes of JavaScript-looking text.
func staticJS(n int) []byte {
	const line = "!function(t){var e=t.posthog||[];e.push({event:\"$pageview\",properties:{}});t.posthog=e}(window);\n"
	var sb strings.Builder
	for sb.Len() < n {
		sb.WriteString(line)
	}
	return []byte(sb.String()[:n])
}

// postJSON is a PostHog-like event padded to exactly n bytes (n ≥ 128).
func postJSON(n int) []byte {
	head := `{"api_key":"phc_benchproxybenchproxybenchproxy","event":"$pageview","distinct_id":"0190f1c2-7d5e-7a3b-9c1d-2e3f4a5b6c7d","properties":{"$current_url":"https://bench.example.com/","pad":"`
	tail := `"}}`
	pad := max(n-len(head)-len(tail), 0)
	return []byte(head + strings.Repeat("x", pad) + tail)
}

// wrkScript sends method path (with the body read from bodyFile) to
// 127.0.0.1 whatever the URL's host, so that the URL's host can be the
// served domain (wrk's SNI and Host) without a DNS entry, and prints a
// JSON summary.
func wrkScript(method, path, contentType, bodyFile string) string {
	var sb strings.Builder
	sb.WriteString("-- generated by cmd/benchproxy\n")
	sb.WriteString("wrk.resolve = function(host, service)\n  wrk.addrs = wrk.lookup(\"127.0.0.1\", service)\nend\n")
	fmt.Fprintf(&sb, "wrk.method = %q\nwrk.path = %q\n", method, path)
	if bodyFile != "" {
		fmt.Fprintf(&sb, "local f = assert(io.open(%q, \"rb\"))\nwrk.body = f:read(\"*a\")\nf:close()\n", bodyFile)
		fmt.Fprintf(&sb, "wrk.headers[\"Content-Type\"] = %q\n", contentType)
	}
	sb.WriteString(`done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('BENCHJSON {"duration_us":%d,"requests":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.duration, summary.requests, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
`)
	return sb.String()
}

// opensslConf makes wrk (OpenSSL 3) offer AES-128-GCM first, as browsers
// do, and X25519 only: nginx follows the client's order, Go servers pick
// AES-128-GCM on AES hardware anyway.
const opensslConf = `openssl_conf = benchproxy_conf
[benchproxy_conf]
ssl_conf = benchproxy_ssl
[benchproxy_ssl]
system_default = benchproxy_tls
[benchproxy_tls]
Ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
Groups = X25519
MinProtocol = TLSv1.3
`

func render(path, tmpl string, data any) error {
	t, err := template.New(filepath.Base(path)).Parse(tmpl)
	if err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := t.Execute(f, data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// nginxUpstreamConf is the upstream: one worker, a fixed JSON answer to
// POST /i/v0/e/ and a static file, plain HTTP for the proxies and TLS for
// the direct TLS floor.
const nginxUpstreamConf = `# generated by cmd/benchproxy: the upstream
worker_processes 1;
daemon off;
master_process on;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 32768; }
http {
    access_log off;
    types { application/javascript js; }
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 300s;
    keepalive_requests 100000000;
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    server {
        listen 127.0.0.1:{{.Port}} backlog=4096;
        listen 127.0.0.1:{{.TLSPort}} ssl backlog=4096;
        ssl_certificate {{.Cert}};
        ssl_certificate_key {{.Key}};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        location = /i/v0/e/ {
            default_type application/json;
            return 200 '{{.Answer}}';
        }
        location = /e/ {
            default_type application/json;
            return 200 '{{.Answer}}';
        }
        location = /flags/ {
            default_type application/json;
            return 200 '{{.FlagsAnswer}}';
        }
        location /static/ {
            root {{.WWW}};
        }
    }
    # How many connections the proxies opened: the accepts counter.
    server {
        listen 127.0.0.1:{{.StatusPort}};
        location = /status { stub_status; }
    }
}
`

// nginxProxyConf is nginx as the proxy, configured like the edge: TLS 1.3
// with the same certificate, HTTP/2 offered, Host rewritten to the
// upstream's, X-Forwarded-*, a keep-alive pool to the upstream, no access
// log, no limit on requests per connection. Response buffers hold the
// 60 KB file in memory (nginx's defaults would spill it to a temp file).
const nginxProxyConf = `# generated by cmd/benchproxy: nginx as the proxy
worker_processes 1;
daemon off;
master_process on;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 32768; }
http {
    access_log off;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    client_max_body_size 64m;
    client_body_temp_path {{.Dir}}/body;
    proxy_temp_path {{.Dir}}/proxy;
    upstream backend {
        server 127.0.0.1:{{.Upstream}};
        keepalive {{.Pool}};
        keepalive_requests 100000000;
        keepalive_timeout 90s;
    }
    server {
        listen 127.0.0.1:{{.Port}} ssl http2 backlog=4096;
        server_name {{.Domain}};
        ssl_certificate {{.Cert}};
        ssl_certificate_key {{.Key}};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ecdh_curve X25519:prime256v1;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Host 127.0.0.1:{{.Upstream}};
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_set_header X-Forwarded-Host $host;
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_busy_buffers_size 32k;
        }
    }
}
`

// caddyfile is Caddy as the proxy: the same certificate (no ACME), HTTP/1.1
// and HTTP/2, reverse_proxy with the upstream's Host and a keep-alive pool.
// Caddy logs no requests unless told to; it adds X-Forwarded-* itself.
// keepalive_idle_conns_per_host matters: without it Go's Transport keeps 2
// idle connections per host whatever keepalive_idle_conns says, and under
// load Caddy opens a new upstream connection for most requests.
const caddyfile = `# generated by cmd/benchproxy: Caddy as the proxy
{
	admin off
	auto_https disable_redirects
	skip_install_trust
	storage file_system {{.Dir}}/data
	servers {
		protocols h1 h2
	}
}

https://{{.Domain}}:{{.Port}} {
	bind 127.0.0.1
	tls {{.Cert}} {{.Key}} {
		protocols tls1.2 tls1.3
		curves x25519 secp256r1
	}
	reverse_proxy 127.0.0.1:{{.Upstream}} {
		header_up Host {upstream_hostport}
		transport http {
			keepalive 90s
			keepalive_idle_conns {{.Pool}}
{{- if .PerHost}}
			keepalive_idle_conns_per_host {{.PerHost}}
{{- end}}
		}
	}
}
`

type confData struct {
	Dir, Cert, Key, WWW, Answer, FlagsAnswer, Domain string
	Port, TLSPort, StatusPort, Upstream              int
	// Pool is the proxies' idle keep-alive pool to the upstream, PerHost
	// Caddy's per-host pool (0: the directive is left out).
	Pool, PerHost int
}

func (b *bench) startUpstream() error {
	ports, err := testbin.FreePorts(3)
	if err != nil {
		return err
	}
	b.upstreamPort, b.upstreamTLS, b.statusPort = ports[0], ports[1], ports[2]
	dir := b.path("upstream")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := render(conf, nginxUpstreamConf, confData{Dir: dir, Cert: b.certFile, Key: b.keyFile, WWW: b.wwwDir,
		Answer: b.postAnswer, FlagsAnswer: flagsAnswer, Port: b.upstreamPort, TLSPort: b.upstreamTLS,
		StatusPort: b.statusPort}); err != nil {
		return err
	}
	p, err := b.startProc("upstream", b.o.loadCPU, baseEnv(), filepath.Join(dir, "stderr.log"), true,
		b.o.nginxBin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf)
	if err != nil {
		return err
	}
	b.upstream = p
	if err := waitListening(b.ctx, p, fmt.Sprintf("127.0.0.1:%d", b.upstreamPort), 15*time.Second); err != nil {
		return err
	}
	logf("upstream: nginx on CPU %s, http://127.0.0.1:%d (and TLS on :%d)", b.o.loadCPU, b.upstreamPort, b.upstreamTLS)
	return nil
}

// newPeer makes the peer named by spec; start starts it.
func (b *bench) newPeer(spec string) (*peer, error) {
	kind, envSpec, _ := strings.Cut(spec, "+")
	kind, kindBin, _ := strings.Cut(kind, "@")
	p, err := b.newPeerOf(spec, kind, kindBin, envSpec)
	if p != nil {
		p.spec = spec
	}
	return p, err
}

func (b *bench) newPeerOf(spec, kind, kindBin, envSpec string) (*peer, error) {
	if kindBin != "" && kind != "edgeproxy" && kind != "edgeproxy-etcd" {
		return nil, fmt.Errorf("peer %q: only edgeproxy and edgeproxy-etcd take @BINARY", spec)
	}
	switch kind {
	case "upstream":
		return &peer{name: "upstream direct (plain HTTP)", kind: kind, port: b.upstreamPort, start: func() error { return nil }}, nil
	case "upstream-tls":
		return &peer{name: "upstream direct (TLS)", kind: kind, port: b.upstreamTLS, tls: true, start: func() error { return nil }}, nil
	case "nginx":
		return b.nginxPeer()
	case "caddy":
		return b.caddyPeer()
	case "edgeproxy", "edgeproxy-etcd":
		bin := b.o.bin
		if kindBin != "" {
			var err error
			if bin, err = filepath.Abs(kindBin); err != nil {
				return nil, err
			}
		}
		var env []string
		if envSpec != "" {
			env = strings.Split(envSpec, "+")
			for _, kv := range env {
				if !strings.Contains(kv, "=") {
					return nil, fmt.Errorf("peer %q: %q is not NAME=VALUE", spec, kv)
				}
			}
		}
		return b.edgePeer(spec, bin, kindBin != "", kind == "edgeproxy-etcd", env)
	}
	return nil, fmt.Errorf("unknown peer %q (upstream, upstream-tls, edgeproxy[@BINARY][+ENV=VALUE...], edgeproxy-etcd[@BINARY][+ENV=VALUE...], nginx, caddy)", spec)
}

// configuredPeer is a TLS peer of the given kind on a free port, with its
// own directory and a configuration file rendered there from tmpl.
func (b *bench) configuredPeer(kind, confName, tmpl string) (p *peer, dir, conf string, err error) {
	ports, err := testbin.FreePorts(1)
	if err != nil {
		return nil, "", "", err
	}
	p = &peer{name: kind, kind: kind, port: ports[0], tls: true}
	dir = b.path(kind)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, "", "", err
	}
	conf = filepath.Join(dir, confName)
	if err := render(conf, tmpl, confData{Dir: dir, Cert: b.certFile, Key: b.keyFile, Domain: benchDomain,
		Port: p.port, Upstream: b.upstreamPort, Pool: b.o.upstreamPool, PerHost: b.o.caddyPerHost}); err != nil {
		return nil, "", "", err
	}
	return p, dir, conf, nil
}

func (b *bench) nginxPeer() (*peer, error) {
	p, dir, conf, err := b.configuredPeer("nginx", "nginx.conf", nginxProxyConf)
	if err != nil {
		return nil, err
	}
	p.start = func() error {
		pr, err := b.startProc("nginx", b.o.proxyCPU, baseEnv(), filepath.Join(dir, "stderr.log"), true,
			b.o.nginxBin, "-p", dir, "-e", filepath.Join(dir, "error.log"), "-c", conf)
		if err != nil {
			return err
		}
		p.proc = pr
		return waitListening(b.ctx, pr, p.addr(), 15*time.Second)
	}
	return p, nil
}

func (b *bench) caddyPeer() (*peer, error) {
	p, dir, conf, err := b.configuredPeer("caddy", "Caddyfile", caddyfile)
	if err != nil {
		return nil, err
	}
	p.start = func() error {
		env := baseEnv("HOME="+dir, "XDG_DATA_HOME="+filepath.Join(dir, "xdg-data"), "XDG_CONFIG_HOME="+filepath.Join(dir, "xdg-config"))
		pr, err := b.startProc("caddy", b.o.proxyCPU, env, filepath.Join(dir, "caddy.log"), false,
			b.o.caddyBin, "run", "--config", conf, "--adapter", "caddyfile")
		if err != nil {
			return err
		}
		p.proc = pr
		return waitListening(b.ctx, pr, p.addr(), 30*time.Second)
	}
	return p, nil
}

// edgePeer prepares a data directory holding a valid record for
// benchDomain and its certificate in certmagic's storage, under the keys
// the binary's ACME issuer (for unreachableACME) reads, so the edge serves
// it at start without ACME traffic. With onEtcd, the same records are
// copied (edgeproxy migrate --to-etcd) into a prefix of their own on
// benchproxy's etcd, and the edge runs in cluster mode on it: its data dir
// then holds only its local copy of the store.
func (b *bench) edgePeer(spec, bin string, ownBin, onEtcd bool, env []string) (*peer, error) {
	b.edgeSeq++
	dir := b.path(fmt.Sprintf("edgeproxy-%d", b.edgeSeq))
	dataDir := filepath.Join(dir, "data")
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	seedDir := dataDir
	if onEtcd {
		seedDir = filepath.Join(dir, "seed")
		if err := os.MkdirAll(seedDir, 0o700); err != nil {
			return nil, err
		}
	}
	if err := b.seedEdgeData(seedDir); err != nil {
		return nil, fmt.Errorf("%s: preparing data dir: %w", spec, err)
	}
	ports, err := testbin.FreePorts(4)
	if err != nil {
		return nil, err
	}
	name := "edgeproxy"
	if onEtcd {
		name += " on etcd"
	}
	if ownBin {
		name += " (" + filepath.Base(bin) + ")"
	}
	if len(env) > 0 {
		name += " " + strings.Join(env, " ")
	}
	p := &peer{name: name, kind: "edgeproxy", port: ports[0], tls: true, etcd: onEtcd}
	args := []string{"serve",
		"--data-dir", dataDir,
		"--https-addr", p.addr(),
		"--http-addr", fmt.Sprintf("127.0.0.1:%d", ports[1]),
		"--api-addr", fmt.Sprintf("127.0.0.1:%d", ports[2]),
		"--target-cname-base", "proxy.bench.invalid",
		"--upstream", fmt.Sprintf("http://127.0.0.1:%d", b.upstreamPort),
		"--assets-upstream", fmt.Sprintf("http://127.0.0.1:%d", b.upstreamPort),
		"--acme-ca", unreachableACME,
		// A closed port: the engine has nothing to verify, and if it did it
		// would not leave the machine.
		"--dns-resolvers", fmt.Sprintf("127.0.0.1:%d", ports[3]),
	}
	if onEtcd {
		endpoint, err := b.startEtcd()
		if err != nil {
			return nil, err
		}
		prefix := fmt.Sprintf("/benchproxy-%d/", b.edgeSeq)
		etcdArgs := []string{"--etcd-endpoints", endpoint, "--etcd-prefix", prefix}
		migrate := exec.Command(bin, append([]string{"migrate", "--to-etcd", "--from", filepath.Join(seedDir, edgeDBFile)}, etcdArgs...)...)
		migrate.Env = baseEnv()
		if out, err := migrate.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: edgeproxy migrate --to-etcd: %w\n%s", spec, err, out)
		}
		args = append(args, etcdArgs...)
		args = append(args, "--node-name", fmt.Sprintf("bench-%d", b.edgeSeq))
	}
	p.start = func() error {
		pr, err := b.startProc(name, b.o.proxyCPU, baseEnv(env...), filepath.Join(dir, "edgeproxy.log"), false, bin, args...)
		if err != nil {
			return err
		}
		p.proc = pr
		return waitListening(b.ctx, pr, p.addr(), 30*time.Second)
	}
	return p, nil
}

// startEtcd starts, once, the single-member etcd the edgeproxy-etcd peers
// keep their store on, pinned to the load CPU (like the upstream, it is
// not the proxy under test), and returns its client endpoint.
func (b *bench) startEtcd() (string, error) {
	if b.etcd != nil {
		return b.etcdEndpoint, nil
	}
	bin := b.o.etcdBin
	if _, err := os.Stat(bin); err != nil {
		if bin, err = exec.LookPath("etcd"); err != nil {
			return "", fmt.Errorf("no etcd at %s nor on PATH (sh scripts/ensure-etcd.sh builds it)", b.o.etcdBin)
		}
	}
	ports, err := testbin.FreePorts(2)
	if err != nil {
		return "", err
	}
	dir := b.path("etcd")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	client, peerURL := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	p, err := b.startProc("etcd", b.o.loadCPU, baseEnv(), filepath.Join(dir, "etcd.log"), false, bin,
		"--name", "bench",
		"--data-dir", filepath.Join(dir, "data"),
		"--listen-client-urls", "http://"+client,
		"--advertise-client-urls", "http://"+client,
		"--listen-peer-urls", peerURL,
		"--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "bench="+peerURL,
		"--initial-cluster-state", "new",
		"--log-level", "warn",
	)
	if err != nil {
		return "", err
	}
	b.etcd, b.etcdEndpoint = p, client
	if err := waitEtcdHealthy(b.ctx, p, client, 30*time.Second); err != nil {
		return "", err
	}
	logf("etcd: on CPU %s, %s", b.o.loadCPU, client)
	return client, nil
}

// waitEtcdHealthy waits until etcd at addr answers /health with health
// true (it has a leader and answers a linearizable read).
func waitEtcdHealthy(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := testbin.EtcdHealth(ctx, addr)
		if err == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("etcd exited during start:\n%s", testbin.FileTail(p.logPath, 2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("etcd not healthy after %s: %v\n%s", timeout, err, testbin.FileTail(p.logPath, 2000))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// edgeDBFile is the database file in the edge's data dir
// (cmd/edgeproxy's dbFile).
const edgeDBFile = "edgeproxy.db"

func (b *bench) seedEdgeData(dataDir string) error {
	st, err := store.Open(filepath.Join(dataDir, edgeDBFile), store.Options{})
	if err != nil {
		return err
	}
	defer st.Close()
	org, err := st.CreateOrg("benchproxy", nil)
	if err != nil {
		return err
	}
	if _, err := st.CreateRecord(store.Record{
		OrgID:        org.ID,
		Domain:       benchDomain,
		TargetCNAME:  "bench-example-com.proxy.bench.invalid",
		Status:       store.StatusValid,
		CertNotAfter: b.certs.leaf.NotAfter,
	}, 10); err != nil {
		return err
	}
	// The binary normalizes --acme-ca with url.Parse(...).String() before
	// certmagic derives the issuer key from it; do the same.
	ca, err := url.Parse(unreachableACME)
	if err != nil {
		return err
	}
	issuerKey := (&certmagic.ACMEIssuer{CA: ca.String()}).IssuerKey()
	meta, err := json.Marshal(certmagic.CertificateResource{SANs: []string{benchDomain}})
	if err != nil {
		return err
	}
	storage := certs.NewStorage(st, certs.StorageOptions{})
	ctx := context.Background()
	for key, value := range map[string][]byte{
		certmagic.StorageKeys.SiteCert(issuerKey, benchDomain):       b.certs.leafPEM,
		certmagic.StorageKeys.SitePrivateKey(issuerKey, benchDomain): b.certs.keyPEM,
		certmagic.StorageKeys.SiteMeta(issuerKey, benchDomain):       meta,
	} {
		if err := storage.Store(ctx, key, value); err != nil {
			return err
		}
	}
	return storage.Close()
}
