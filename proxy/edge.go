// Package proxy is edgeproxy's data plane: it takes the requests that the
// TLS edge accepted for a customer domain and forwards them to the two
// configured upstreams, and answers plain HTTP.
//
// # What it will and will not forward
//
// A request is forwarded only when its Host (port stripped, case folded,
// one trailing dot dropped) equals the TLS SNI of its connection and that
// name is served (a record holds a certificate and is not being deleted).
// An absolute-form request target (GET https://other.example/ HTTP/1.1)
// sets the Host, so it meets the same rule. A mismatch answers 421, a name
// not served 404, CONNECT 405. The destination is always one of two fixed
// upstreams: /static/* goes to the assets upstream, every other path to
// the ingestion upstream. Nothing in a request can name another host.
//
// # What the upstream sees
//
// Host is the upstream's own host. X-Forwarded-For carries the client
// chain with the client's address appended, X-Forwarded-Proto is https,
// X-Forwarded-Host is the customer domain. Hop-by-hop headers are removed
// both ways, and so are the client's X-Real-IP and Forwarded; everything
// else, Cookie included, passes unchanged. No protocol switch passes:
// Upgrade is never forwarded, so a websocket handshake reaches the upstream
// as a plain request, and an upstream that answers 101 anyway gets its
// connection closed and the client a 502. A request body of announced
// length up to 16 KB (every event post and flag request) is read in full
// before it is forwarded; longer bodies and those without a length
// stream, and responses always stream. A request body longer than the
// limit is cut off and answered 413, whether or not its length was
// announced.
//
// # Errors
//
// Every upstream failure goes through one handler: 502 when the upstream
// cannot be reached or breaks the exchange, 504 when it does not answer in
// time, each with a JSON body naming the cause. A request body the client
// breaks off or frames badly (malformed chunks) answers 400: the upstream
// sees an aborted request, never a complete one. A client that goes away
// is counted, not logged as an error.
//
// # Hostile clients
//
// Request framing is net/http's, which refuses what could be read two
// ways: differing Content-Length headers and malformed lengths (400), any
// Transfer-Encoding but a single "chunked" (501). Over HTTP/2, where
// the server keeps the first of several Content-Length values, the edge
// refuses values that disagree itself (400). A request with both
// Transfer-Encoding: chunked and Content-Length is read as chunked and its
// connection closed after the answer, as is every chunked HTTP/1.1
// request. The upstream gets each request re-framed by the transport, so
// it reads exactly the requests the edge answered. NewTLSServer and
// NewPlainServer hold the listeners' bounds: headers within HeaderTimeout
// (slowloris) and MaxHeaderBytes (431), and an error log that a client
// cannot flood. Warnings about a failing upstream are limited the same
// way, since during an outage every request fails.
package proxy

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Hosts says which names the edge serves. certs.Manager is the one in
// production: its allowlist is kept equal to the served records by the
// lifecycle engine. Serving must be safe for concurrent use and cheap: it
// runs on every request.
type Hosts interface {
	Serving(domain string) bool
}

// DefaultMaxBodyBytes is the body limit when Config.MaxBodyBytes is zero:
// 64 MiB.
const DefaultMaxBodyBytes = 64 << 20

// Config configures an Edge. Upstream and AssetsUpstream are required.
type Config struct {
	// Upstream receives every path but /static/*.
	Upstream *url.URL
	// AssetsUpstream receives /static/*.
	AssetsUpstream *url.URL
	// MaxBodyBytes is the largest request body forwarded. If zero,
	// DefaultMaxBodyBytes.
	MaxBodyBytes int64
	// UpstreamTimeout bounds the wait for the upstream's response headers.
	// If zero, 30 s.
	UpstreamTimeout time.Duration
	// DialTimeout bounds connecting to an upstream. If zero, 5 s.
	DialTimeout time.Duration
	// Transport replaces the upstream transport (tests). If nil, one tuned
	// for thousands of requests per second is built.
	Transport http.RoundTripper
	// Logger gets upstream failures and the access log. If nil, nothing is
	// logged.
	Logger *slog.Logger
	// AccessLogEvery logs one line for every Nth request; 0 logs none.
	AccessLogEvery int
	// Registerer gets the edge's metrics. If nil, they are not registered.
	Registerer prometheus.Registerer
	// PerDomainMetrics adds a domain label (capped) to the request counter.
	PerDomainMetrics bool
}

// Route names the two destinations.
type Route string

const (
	RouteIngest Route = "ingest"
	RouteStatic Route = "static"
)

// Stats counts what the edge has done since New.
type Stats struct {
	Requests, Misdirected, NotServed, TooLarge, BadMethod, BadRequest, BadGateway, GatewayTimeout, ClientGone uint64
}

// Edge is the reverse proxy of the TLS edge, an http.Handler.
type Edge struct {
	hosts  Hosts
	cfg    Config
	log    *slog.Logger
	ingest *httputil.ReverseProxy
	static *httputil.ReverseProxy

	metrics *edgeMetrics

	// failLog and timeoutLog let through one warning per serverLogEvery
	// about a failing upstream: during an outage every request fails, and
	// the log must not grow with the request rate (the failures are
	// counted in edgeproxy_proxy_upstream_errors_total).
	failLog, timeoutLog *logLimiter

	requests, misdirected, notServed, tooLarge, badMethod, badRequest, badGateway, gatewayTimeout, clientGone atomic.Uint64
}

// New returns an Edge that serves the names hosts serves.
func New(hosts Hosts, cfg Config) (*Edge, error) {
	if cfg.Upstream == nil || cfg.AssetsUpstream == nil {
		return nil, errors.New("proxy: both upstreams are required")
	}
	if cfg.MaxBodyBytes == 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if cfg.UpstreamTimeout == 0 {
		cfg.UpstreamTimeout = 30 * time.Second
	}
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = 5 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	e := &Edge{hosts: hosts, cfg: cfg, log: cfg.Logger,
		failLog:    &logLimiter{every: serverLogEvery, now: time.Now},
		timeoutLog: &logLimiter{every: serverLogEvery, now: time.Now}}
	e.metrics = newEdgeMetrics(e, cfg.Registerer, cfg.PerDomainMetrics)
	transport := cfg.Transport
	if transport == nil {
		transport = newTransport(cfg)
	}
	e.ingest = e.reverseProxy(cfg.Upstream, transport)
	e.static = e.reverseProxy(cfg.AssetsUpstream, transport)
	return e, nil
}

// newTransport is the upstream transport: a large keep-alive pool (the
// upstreams are two hosts taking every request), HTTP/2 when the upstream
// offers it, TLS session resumption, and timeouts on every wait.
func newTransport(cfg Config) *http.Transport {
	dialer := &net.Dialer{Timeout: cfg.DialTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 nil, // never through an environment proxy: the upstreams are fixed
		DialContext:           dialer.DialContext,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          2048,
		MaxIdleConnsPerHost:   1024,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.DialTimeout,
		ResponseHeaderTimeout: cfg.UpstreamTimeout,
		ExpectContinueTimeout: time.Second,
		TLSClientConfig:       &tls.Config{ClientSessionCache: tls.NewLRUClientSessionCache(1024)},
	}
}

func (e *Edge) reverseProxy(target *url.URL, transport http.RoundTripper) *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			// SetXForwarded appends the client to what the outbound
			// request already carries; carry the inbound chain over.
			if prior, ok := pr.In.Header["X-Forwarded-For"]; ok {
				pr.Out.Header["X-Forwarded-For"] = prior
			}
			pr.SetXForwarded()
			// SetXForwarded set it to the Host as the client wrote it, in
			// a slice of its own: replaced in place, not reallocated.
			if v := pr.Out.Header["X-Forwarded-Host"]; len(v) == 1 {
				v[0] = hostOf(pr.In.Host)
			} else {
				pr.Out.Header.Set("X-Forwarded-Host", hostOf(pr.In.Host))
			}
			// The client-address headers other than X-Forwarded-For are
			// the client's word alone, and an upstream that trusts them
			// would take a spoofed address for the client's. ReverseProxy
			// already drops Forwarded when Rewrite is set; it is named
			// here so the rule does not hang on that.
			pr.Out.Header.Del("X-Real-Ip")
			pr.Out.Header.Del("Forwarded")
			if n := pr.In.ContentLength; n > 0 && n <= bufferedBodyBytes {
				// serve read this body whole. ReverseProxy wraps the
				// outbound body in a reader the transport cannot tell is
				// in memory, and the transport then flushes the head in a
				// write of its own; the buffered body itself it can.
				pr.Out.Body = pr.In.Body
			}
		},
		ModifyResponse: refuseProtocolSwitch,
		Transport:      transport,
		BufferPool:     copyBuffers,
		ErrorHandler:   e.upstreamError,
		ErrorLog:       slogLogger(e.log),
		FlushInterval:  0, // responses of unknown length are flushed at once
	}
}

// copyBuffers recycles the buffers that copy response bodies. Without a
// pool, ReverseProxy allocates 32 KB per request: three quarters of all
// the edge allocated, and most of its garbage collection (see
// docs/PERFORMANCE.md).
var copyBuffers = &bufferPool{pool: sync.Pool{New: func() any { return new([copyBufferBytes]byte) }}}

const copyBufferBytes = 32 << 10

// bufferPool pools arrays, not slices: putting a slice back into a
// sync.Pool would allocate its header on every request.
type bufferPool struct{ pool sync.Pool }

func (p *bufferPool) Get() []byte { return p.pool.Get().(*[copyBufferBytes]byte)[:] }

func (p *bufferPool) Put(b []byte) {
	if len(b) == copyBufferBytes {
		p.pool.Put((*[copyBufferBytes]byte)(b))
	}
}

// Stats reports the edge's counters.
func (e *Edge) Stats() Stats {
	return Stats{
		Requests: e.requests.Load(), Misdirected: e.misdirected.Load(), NotServed: e.notServed.Load(),
		TooLarge: e.tooLarge.Load(), BadGateway: e.badGateway.Load(), GatewayTimeout: e.gatewayTimeout.Load(),
		ClientGone: e.clientGone.Load(), BadMethod: e.badMethod.Load(), BadRequest: e.badRequest.Load(),
	}
}

// hostOf folds a Host header or SNI to the form the host table uses: a
// port (digits after the last colon, none in the name) stripped, lower
// case, one trailing dot dropped. Anything else stays as it is and so
// matches no SNI: "[a.example.com]:443" and "a.example.com:x" are not
// a.example.com (net.SplitHostPort would say they are).
func hostOf(host string) string {
	if i := strings.LastIndexByte(host, ':'); i >= 0 && !strings.Contains(host[:i], ":") &&
		strings.Trim(host[i+1:], "0123456789") == "" {
		host = host[:i]
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// RouteOf is where a path goes.
func RouteOf(path string) Route {
	if strings.HasPrefix(path, "/static/") {
		return RouteStatic
	}
	return RouteIngest
}

// ServeHTTP forwards a request of the TLS edge (see the package doc) and
// records it in the metrics and the access log.
func (e *Edge) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	n := e.requests.Add(1)
	route := RouteOf(r.URL.Path)
	x := &exchange{ResponseWriter: w}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &x.bodyStore
		body.ReadCloser = r.Body
		r.Body = body
		x.body = body
	}
	e.metrics.inFlight.Inc()
	domain, aborted := e.serveOrAbort(x, r, route)

	e.metrics.inFlight.Dec()
	status := x.status
	if status == 0 {
		status = http.StatusOK
	}
	if aborted != nil {
		// The response broke after its headers went out: counted as the
		// failure it is, then cut off as ReverseProxy asked.
		defer panic(aborted)
		status = http.StatusBadGateway
		if r.Context().Err() != nil {
			e.clientGone.Add(1)
			status = 499
		} else {
			e.badGateway.Add(1)
		}
	}
	took := time.Since(start)
	ri := routeIndex(route)
	e.metrics.count(route, status, domain)
	e.metrics.duration[ri].Observe(took.Seconds())
	if x.upstream > 0 {
		e.metrics.upstreamTime[ri].Observe(x.upstream.Seconds())
	}
	e.metrics.respBytes[ri].Add(float64(x.written))
	var read int64
	if body != nil {
		read = body.n.Load()
		e.metrics.reqBytes[ri].Add(float64(read))
	}
	if every := uint64(e.cfg.AccessLogEvery); every > 0 && n%every == 0 {
		e.log.Info("access", "domain", hostOf(r.Host), "method", r.Method, "route", string(route), "status", status,
			"request_bytes", read, "response_bytes", x.written, "duration", took, "upstream_duration", x.upstream,
			"client_ip", clientIP(r))
	}
}

// serveOrAbort is serve that hands back, rather than lets through, the
// http.ErrAbortHandler panic with which ReverseProxy cuts off a response
// whose body it could not copy (the upstream broke it, or the client
// left), so that ServeHTTP still accounts for the request.
func (e *Edge) serveOrAbort(x *exchange, r *http.Request, route Route) (domain string, aborted any) {
	defer func() {
		if v := recover(); v != nil {
			if v != http.ErrAbortHandler {
				panic(v)
			}
			domain, aborted = hostOf(r.Host), v
		}
	}()
	return e.serve(x, r, route), nil
}

// serve answers the request and returns the served domain it was for, or
// overflowDomain when the host is not served (so the metrics' domain label
// holds served domains only).
func (e *Edge) serve(x *exchange, r *http.Request, route Route) string {
	var w http.ResponseWriter = x
	// net/http reads a request with both Transfer-Encoding: chunked and
	// Content-Length as chunked and drops the length, as RFC 9112 §6.1
	// allows, but keeps the connection open, which it forbids: the request
	// may be a smuggling attempt, and the bytes after it must not be read
	// as another request. The two cannot be told apart once parsed, so
	// every chunked HTTP/1.1 request closes its connection after its
	// answer. Browsers send their bodies with a length.
	chunked := r.ProtoMajor == 1 && len(r.TransferEncoding) > 0
	refuse := func(status int, code, detail string) {
		if chunked {
			closeAfter(w, r)
		}
		writeError(w, status, code, detail)
	}
	host := hostOf(r.Host)
	sni := ""
	if r.TLS != nil {
		sni = hostOf(r.TLS.ServerName)
	}
	if host != sni {
		e.misdirected.Add(1)
		refuse(http.StatusMisdirectedRequest, "misdirected_request",
			fmt.Sprintf("The request's host %q is not the name this connection was opened for (%q).", host, sni))
		return overflowDomain
	}
	if !e.hosts.Serving(host) {
		e.notServed.Add(1)
		refuse(http.StatusNotFound, "not_served", fmt.Sprintf("edgeproxy does not serve %q.", host))
		return overflowDomain
	}
	if conflictingLengths(r.Header.Values("Content-Length")) {
		// net/http refuses this on HTTP/1.1; the HTTP/2 server takes the
		// first value and frames the body by DATA frames. RFC 9110 makes
		// such a request invalid whatever the protocol, so it is refused
		// here rather than forwarded with one of the two lengths.
		e.badRequest.Add(1)
		refuse(http.StatusBadRequest, "bad_request", "The request has Content-Length headers that disagree.")
		return host
	}
	if r.Method == http.MethodConnect {
		e.badMethod.Add(1)
		refuse(http.StatusMethodNotAllowed, "method_not_allowed", "CONNECT is not supported: this is a reverse proxy.")
		return host
	}
	if r.ContentLength > e.cfg.MaxBodyBytes {
		e.tooLarge.Add(1)
		refuse(http.StatusRequestEntityTooLarge, "request_too_large", e.tooLargeDetail())
		return host
	}
	if chunked {
		// upstreamError takes this back: when forwarding fails, net/http
		// closes the connection itself if the body was not read to its
		// end, after reading some of it so that the client, still
		// sending, gets the answer rather than a reset.
		w.Header().Set("Connection", "close")
	}
	buffered := r.ContentLength > 0 && r.ContentLength <= bufferedBodyBytes
	if r.Body != nil && r.Body != http.NoBody && !buffered {
		// A body read whole needs no limit of its own: its length is
		// announced and within the limit (checked above), and net/http
		// reads no further than that length.
		r.Body = http.MaxBytesReader(w, r.Body, e.cfg.MaxBodyBytes)
	}
	if buffered {
		body, err := readWhole(r.Body, r.ContentLength)
		if err != nil {
			// The client's doing (a body cut short, or the client gone):
			// answered as when the transport's read fails, and the
			// upstream sees nothing.
			e.upstreamError(w, r, err)
			return host
		}
		// A body known to be in memory goes out in the same write as the
		// request's head (net/http's transport flushes the head on its own
		// before any other body).
		r.Body = io.NopCloser(bytes.NewReader(body))
	}
	// No protocol switch passes: a tunnel would carry bytes past the body
	// limit and the request rules, straight to the upstream. ReverseProxy
	// forwards Upgrade whenever Connection names it; without Upgrade it
	// drops Connection with the other hop-by-hop headers, and the request
	// goes on as a plain one.
	r.Header.Del("Upgrade")
	x.forwarded = time.Now()
	if route == RouteStatic {
		e.static.ServeHTTP(w, r)
	} else {
		e.ingest.ServeHTTP(w, r)
	}
	return host
}

// bufferedBodyBytes is the largest request body, of announced length, that
// the edge reads in full before forwarding (as nginx buffers request
// bodies): event posts and flag requests are a few KB, and a body in
// memory leaves in one write with the request head instead of two. Longer
// bodies, and those without a length, stream.
const bufferedBodyBytes = 16 << 10

// readWhole reads a body of announced length n, and on to its end: net/http
// watches a connection for its client going away only once the request
// body has reached EOF.
func readWhole(body io.Reader, n int64) ([]byte, error) {
	buf := make([]byte, n)
	if _, err := io.ReadFull(body, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, err
	}
	var one [1]byte
	for range 8 {
		m, err := body.Read(one[:])
		switch {
		case m > 0:
			return nil, errors.New("request body longer than its Content-Length")
		case err == io.EOF:
			return buf, nil
		case err != nil:
			return nil, err
		}
	}
	return nil, errors.New("request body does not end after its Content-Length")
}

func (e *Edge) tooLargeDetail() string {
	return fmt.Sprintf("The request body is larger than the limit of %d bytes.", e.cfg.MaxBodyBytes)
}

// drainBeforeClose is how much of an unread request body closeAfter
// reads, as net/http does before answering a request whose body the
// handler left: a client still sending then reads the answer instead of
// a connection reset.
const drainBeforeClose = 256 << 10

// closeAfter makes the answer to r the last on its connection, after
// reading up to drainBeforeClose bytes of r's body. Only for answers given
// before anything else reads the body.
func closeAfter(w http.ResponseWriter, r *http.Request) {
	if r.Body != nil {
		io.CopyN(io.Discard, r.Body, drainBeforeClose)
	}
	w.Header().Set("Connection", "close")
}

// errProtocolSwitch is an upstream's 101 Switching Protocols, which the
// edge never passes on (it forwards no Upgrade, so the upstream answered
// one that nobody asked for).
var errProtocolSwitch = errors.New("proxy: upstream answered 101 Switching Protocols")

// refuseProtocolSwitch turns an upstream's 101 into an error, so that
// ReverseProxy closes the upstream connection instead of joining it to the
// client's as a tunnel, and upstreamError answers 502.
func refuseProtocolSwitch(res *http.Response) error {
	if res.StatusCode == http.StatusSwitchingProtocols {
		return errProtocolSwitch
	}
	return nil
}

// upstreamError maps every failure of a forwarded request to its answer.
func (e *Edge) upstreamError(w http.ResponseWriter, r *http.Request, err error) {
	w.Header().Del("Connection") // see serve
	var tooBig *http.MaxBytesError
	var netErr net.Error
	upstream := e.cfg.Upstream.Host
	if RouteOf(r.URL.Path) == RouteStatic {
		upstream = e.cfg.AssetsUpstream.Host
	}
	switch {
	case errors.Is(err, errProtocolSwitch):
		e.badGateway.Add(1)
		e.warnLimited(e.failLog, "upstream switched protocols", "upstream", upstream, "path", r.URL.Path)
		writeError(w, http.StatusBadGateway, "upstream_protocol_switch",
			fmt.Sprintf("The upstream %s answered 101 Switching Protocols; the edge does not pass protocol switches.", upstream))
	case errors.As(err, &tooBig):
		e.tooLarge.Add(1)
		writeError(w, http.StatusRequestEntityTooLarge, "request_too_large", e.tooLargeDetail())
	case r.Context().Err() != nil:
		// The client went away; nobody reads this answer.
		e.clientGone.Add(1)
		w.WriteHeader(499)
	case readError(w) != nil:
		// The client's body broke off or was malformed (chunked framing);
		// the upstream saw an aborted request, never a complete one.
		e.badRequest.Add(1)
		writeError(w, http.StatusBadRequest, "bad_request",
			fmt.Sprintf("The request body could not be read: %v.", readError(w)))
	case errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		e.gatewayTimeout.Add(1)
		e.warnLimited(e.timeoutLog, "upstream timed out", "upstream", upstream, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusGatewayTimeout, "upstream_timeout",
			fmt.Sprintf("The upstream %s did not answer in time.", upstream))
	default:
		e.badGateway.Add(1)
		e.warnLimited(e.failLog, "upstream failed", "upstream", upstream, "path", r.URL.Path, "err", err)
		writeError(w, http.StatusBadGateway, "upstream_unreachable",
			fmt.Sprintf("The upstream %s could not be reached or broke the connection: %s.", upstream, causeOf(err)))
	}
}

// causeOf names a transport failure without internal detail.
func causeOf(err error) string {
	var opErr *net.OpError
	msg := err.Error()
	switch {
	case errors.As(err, &opErr) && opErr.Op == "dial":
		return "could not connect"
	case strings.Contains(msg, "connection reset"):
		return "connection reset"
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || strings.Contains(msg, "EOF"):
		return "connection closed before a complete response"
	case errors.Is(err, net.ErrClosed) || errors.Is(err, syscall.EPIPE):
		// Writing the request body failed because the upstream closed
		// the connection (the transport closes it on the read error).
		return "connection closed before a complete response"
	}
	return "connection failed"
}

func slogLogger(l *slog.Logger) *log.Logger {
	return slog.NewLogLogger(l.Handler(), slog.LevelWarn)
}

func writeError(w http.ResponseWriter, status int, code, detail string) {
	body, _ := json.Marshal(map[string]string{"error": code, "detail": detail})
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", fmt.Sprint(len(body)+1))
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// RedirectHandler answers plain HTTP: ACME HTTP-01 challenges first (when
// challenge handles the request), then 308 to https:// for served names,
// 404 for every other host.
func RedirectHandler(hosts Hosts, challenge func(http.ResponseWriter, *http.Request) bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if challenge != nil && challenge(w, r) {
			return
		}
		host := hostOf(r.Host)
		if !hosts.Serving(host) {
			writeError(w, http.StatusNotFound, "not_served", fmt.Sprintf("edgeproxy does not serve %q.", host))
			return
		}
		http.Redirect(w, r, "https://"+host+r.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}

// conflictingLengths reports whether Content-Length values (each possibly
// a comma-separated list) name more than one length.
func conflictingLengths(values []string) bool {
	if len(values) < 2 && (len(values) == 0 || !strings.Contains(values[0], ",")) {
		return false // the usual request: nothing to split
	}
	first := ""
	for _, v := range values {
		for _, n := range strings.Split(v, ",") {
			n = strings.TrimSpace(n)
			if first == "" {
				first = n
			} else if n != first {
				return true
			}
		}
	}
	return false
}

// warnLimited logs a warning if l lets it through, with the number of
// lines l dropped before it.
func (e *Edge) warnLimited(l *logLimiter, msg string, args ...any) {
	ok, suppressed := l.allow()
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	e.log.Warn(msg, args...)
}
