package proxy

import (
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// maxDomainLabels caps the domain label of --metrics-per-domain; further
// domains are counted under overflowDomain.
const (
	maxDomainLabels = 1000
	overflowDomain  = "_other"
)

var (
	routes      = []Route{RouteIngest, RouteStatic}
	codeClasses = []string{"1xx", "2xx", "3xx", "4xx", "5xx"}
)

// edgeMetrics are the edge's collectors. The label values a request needs
// are resolved once in New, so the hot path only increments.
type edgeMetrics struct {
	requests     [2][5]prometheus.Counter // [route][code class]
	duration     [2]prometheus.Observer
	upstreamTime [2]prometheus.Observer
	reqBytes     [2]prometheus.Counter
	respBytes    [2]prometheus.Counter
	inFlight     prometheus.Gauge

	// perDomain replaces requests when --metrics-per-domain is on.
	perDomain *prometheus.CounterVec // {route, code, domain}
	// domainsMu guards domains, the domains given their own label so far.
	domainsMu sync.Mutex
	domains   map[string]bool
}

func routeIndex(r Route) int {
	if r == RouteStatic {
		return 1
	}
	return 0
}

func classIndex(status int) int {
	c := status/100 - 1
	if c < 0 || c > 4 {
		return 4
	}
	return c
}

func newEdgeMetrics(e *Edge, reg prometheus.Registerer, perDomain bool) *edgeMetrics {
	m := &edgeMetrics{domains: map[string]bool{}}
	labels := []string{"route", "code"}
	if perDomain {
		labels = append(labels, "domain")
	}
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "edgeproxy", Name: "proxy_requests_total",
		Help: "Requests answered by the edge, by route and status class.",
	}, labels)
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "edgeproxy", Name: "proxy_request_duration_seconds",
		Help:    "Time from a request's headers to the end of its answer, by route.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route"})
	upstream := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "edgeproxy", Name: "proxy_upstream_duration_seconds",
		Help:    "Time from sending a request upstream to the upstream's response headers, by route.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"route"})
	reqBytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "edgeproxy", Name: "proxy_request_bytes_total",
		Help: "Request body bytes read from clients, by route.",
	}, []string{"route"})
	respBytes := prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "edgeproxy", Name: "proxy_response_bytes_total",
		Help: "Response body bytes written to clients, by route.",
	}, []string{"route"})
	m.inFlight = prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "edgeproxy", Name: "proxy_requests_in_flight",
		Help: "Requests the edge is answering now.",
	})
	for i, r := range routes {
		for j, c := range codeClasses {
			if !perDomain {
				m.requests[i][j] = requests.WithLabelValues(string(r), c)
			}
		}
		m.duration[i] = duration.WithLabelValues(string(r))
		m.upstreamTime[i] = upstream.WithLabelValues(string(r))
		m.reqBytes[i] = reqBytes.WithLabelValues(string(r))
		m.respBytes[i] = respBytes.WithLabelValues(string(r))
	}
	if perDomain {
		m.perDomain = requests
	}
	if reg == nil {
		return m
	}
	outcome := func(name, help, label, value string, read func() uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "edgeproxy", Name: name, Help: help, ConstLabels: prometheus.Labels{label: value},
		}, func() float64 { return float64(read()) })
	}
	const refusedHelp = "Requests the edge answered itself: misdirected (Host is not the SNI, 421), not_served (404), too_large (413), method (CONNECT, 405), bad_request (a request body that could not be read, 400)."
	const errorsHelp = "Forwarded requests that failed, by kind: unreachable (502), timeout (504), client_gone (the client left first)."
	reg.MustRegister(requests, duration, upstream, reqBytes, respBytes, m.inFlight,
		outcome("proxy_refused_total", refusedHelp, "reason", "misdirected", e.misdirected.Load),
		outcome("proxy_refused_total", refusedHelp, "reason", "not_served", e.notServed.Load),
		outcome("proxy_refused_total", refusedHelp, "reason", "too_large", e.tooLarge.Load),
		outcome("proxy_refused_total", refusedHelp, "reason", "method", e.badMethod.Load),
		outcome("proxy_refused_total", refusedHelp, "reason", "bad_request", e.badRequest.Load),
		outcome("proxy_upstream_errors_total", errorsHelp, "kind", "unreachable", e.badGateway.Load),
		outcome("proxy_upstream_errors_total", errorsHelp, "kind", "timeout", e.gatewayTimeout.Load),
		outcome("proxy_upstream_errors_total", errorsHelp, "kind", "client_gone", e.clientGone.Load),
	)
	return m
}

// domainLabel is the domain's own label, or overflowDomain once the cap
// is reached.
func (m *edgeMetrics) domainLabel(domain string) string {
	m.domainsMu.Lock()
	defer m.domainsMu.Unlock()
	if m.domains[domain] {
		return domain
	}
	if len(m.domains) >= maxDomainLabels {
		return overflowDomain
	}
	m.domains[domain] = true
	return domain
}

func (m *edgeMetrics) count(route Route, status int, domain string) {
	if m.perDomain != nil {
		m.perDomain.WithLabelValues(string(route), codeClasses[classIndex(status)], m.domainLabel(domain)).Inc()
		return
	}
	m.requests[routeIndex(route)][classIndex(status)].Inc()
}

// exchange is what the edge learns about one request while answering it:
// for metrics and the access log.
type exchange struct {
	http.ResponseWriter
	status  int
	written int64
	// forwarded is when the request was handed to the upstream's
	// ReverseProxy, upstream the time from then to the answer's headers
	// (the upstream's, or the error handler's); 0 when not forwarded.
	forwarded time.Time
	upstream  time.Duration
	body      *countingBody // nil when the request has no body
	// bodyStore is where body points: one allocation per request fewer.
	bodyStore countingBody
}

func (x *exchange) WriteHeader(code int) {
	if x.status == 0 && code >= 200 {
		x.status = code
		if !x.forwarded.IsZero() {
			x.upstream = time.Since(x.forwarded)
		}
	}
	x.ResponseWriter.WriteHeader(code)
}

func (x *exchange) Write(b []byte) (int, error) {
	if x.status == 0 {
		x.status = http.StatusOK
	}
	n, err := x.ResponseWriter.Write(b)
	x.written += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush on the real writer, so
// streamed responses still stream.
func (x *exchange) Unwrap() http.ResponseWriter { return x.ResponseWriter }

// countingBody counts the request body bytes read, and keeps the first
// error reading it, which is the client's doing: a malformed chunked
// body, or a connection cut mid-body.
type countingBody struct {
	io.ReadCloser
	// n is read by ServeHTTP while the transport may still be reading the
	// body (an upstream that answered before the end of it).
	n atomic.Int64
	// err is set by whichever goroutine reads the body (the upstream
	// transport's) and read by the error handler.
	err atomic.Pointer[bodyError]
}

type bodyError struct{ error }

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	if err != nil && err != io.EOF {
		c.err.CompareAndSwap(nil, &bodyError{err})
	}
	return n, err
}

// readError is the error reading the body of the request answered
// through w, or nil.
func readError(w http.ResponseWriter) error {
	x, ok := w.(*exchange)
	if !ok || x.body == nil {
		return nil
	}
	if e := x.body.err.Load(); e != nil {
		return e.error
	}
	return nil
}

// clientIP is the address of the connection's peer, without the port.
func clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
