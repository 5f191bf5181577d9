package certstest

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/wfe"
	"golang.org/x/net/publicsuffix"
)

// Paths of Pebble's ACME endpoints, for Fault.Paths.
const (
	DirectoryPath  = wfe.DirectoryPath
	NoncePath      = "/nonce-plz"
	NewAccountPath = "/sign-me-up"
	NewOrderPath   = "/order-plz"
)

// Mode is what a FaultProxy does with the traffic a Fault covers.
type Mode int

const (
	// Pass forwards every request to the CA.
	Pass Mode = iota
	// Refuse resets every connection as soon as it is accepted (TCP RST,
	// seen by the client as "connection reset by peer" before any TLS),
	// like a CA whose front has no healthy backend. The port stays bound,
	// so each refused connection is counted and the CA comes back on the
	// same address.
	Refuse
	// ServerError answers 503 with an ACME serverInternal problem, as
	// Let's Encrypt does during maintenance.
	ServerError
	// RateLimited answers 429 with a Retry-After header and an ACME
	// rateLimited problem.
	RateLimited
)

func (m Mode) String() string {
	switch m {
	case Pass:
		return "pass"
	case Refuse:
		return "refuse"
	case ServerError:
		return "server_error"
	case RateLimited:
		return "rate_limited"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// Fault is the behaviour a FaultProxy is switched to.
type Fault struct {
	Mode Mode
	// Paths limits ServerError and RateLimited to requests whose path
	// starts with one of these (e.g. NewOrderPath, so the account and
	// nonces still work); other requests pass. Empty: every request.
	// Refuse works on connections and ignores it.
	Paths []string
	// Until is, for RateLimited, the end of the limit: given as an
	// HTTP-date in the Retry-After header and, as Let's Encrypt does, in
	// the problem's detail ("retry after 2006-01-02 15:04:05 UTC"). Zero
	// means one hour from when the fault is set.
	Until time.Time
	// NoTimeInDetail leaves the time out of the detail, so it is only in
	// the Retry-After header, as at a CA other than Let's Encrypt.
	NoTimeInDetail bool
}

// FaultProxy is a TLS reverse proxy in front of a Pebble that injects CA
// faults on demand: it is the fault, not the CA. Point the ACME client at
// its DirectoryURL and trust its ServerRoots; Pebble builds its URLs from
// the Host the client sent, so every later request also goes through the
// proxy. Besides the faults of Set, which hit every request they cover,
// LimitName answers the new orders for one name with one of Let's
// Encrypt's rate limits. It counts what it receives (new orders by name
// included), so a test can bound how hard a client presses a failing CA.
// Safe for concurrent use.
type FaultProxy struct {
	srv *httptest.Server
	rp  *httputil.ReverseProxy

	// mu guards fault, limits and newOrders. limits are the rate limits
	// set with LimitName, by name; newOrders counts the new-order requests
	// naming each name.
	mu        sync.Mutex
	fault     Fault
	limits    map[string]nameLimit
	newOrders map[string]int

	requests atomic.Int64 // HTTP requests received, faulted or not
	faulted  atomic.Int64 // HTTP requests answered with a fault
	refused  atomic.Int64 // connections reset by Refuse
	perPath  sync.Map     // path prefix → *atomic.Int64, every request
}

// StartFaultProxy starts a FaultProxy in front of p, passing everything
// through. It stops when the test ends.
func StartFaultProxy(t testing.TB, p *Pebble) *FaultProxy {
	t.Helper()
	target, err := url.Parse(p.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	f := &FaultProxy{limits: map[string]nameLimit{}, newOrders: map[string]int{}}
	f.rp = &httputil.ReverseProxy{
		Rewrite: func(r *httputil.ProxyRequest) {
			r.SetURL(target)
			// Pebble writes its URLs with the Host it is asked for: keep
			// the proxy's, so the client's next request comes back here.
			r.Out.Host = r.In.Host
		},
		Transport: &http.Transport{
			TLSClientConfig:     &tls.Config{RootCAs: p.ServerRoots()},
			MaxIdleConnsPerHost: 16,
		},
		ErrorLog: log.New(io.Discard, "", 0),
	}
	f.srv = httptest.NewUnstartedServer(http.HandlerFunc(f.serve))
	f.srv.Listener = &refusingListener{Listener: f.srv.Listener, f: f}
	f.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	f.srv.StartTLS()
	t.Cleanup(f.srv.Close)
	return f
}

// DirectoryURL is the ACME directory's URL through the proxy.
func (f *FaultProxy) DirectoryURL() string { return f.srv.URL + DirectoryPath }

// ServerRoots trusts the proxy's TLS certificate: give it to the ACME
// client instead of Pebble's ServerRoots.
func (f *FaultProxy) ServerRoots() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(f.srv.Certificate())
	return pool
}

// ServerCertPEM is the proxy's TLS certificate in PEM form: the file to
// give edgeproxy's --acme-ca-root.
func (f *FaultProxy) ServerCertPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.srv.Certificate().Raw})
}

// RateLimit is one of Let's Encrypt's rate limits, as LimitName answers
// it: 429, a Retry-After header and a rateLimited problem whose detail is
// Let's Encrypt's own wording for the limit.
type RateLimit int

const (
	// DuplicateCertificate: "too many certificates (5) already issued for
	// this exact set of identifiers in the last 168h0m0s".
	DuplicateCertificate RateLimit = iota + 1
	// FailedAuthorizations: "too many failed authorizations (5) for
	// "<name>" in the last 1h0m0s".
	FailedAuthorizations
	// CertificatesPerRegisteredDomain: "too many certificates (50) already
	// issued for "<registered domain>" in the last 168h0m0s".
	CertificatesPerRegisteredDomain
	// NewOrdersPerAccount: "too many new orders (300) from this account in
	// the last 3h0m0s": an account-wide limit, answered here only to the
	// orders for the name.
	NewOrdersPerAccount
	// UnknownLimit: a rateLimited problem whose words name no limit.
	UnknownLimit
)

type nameLimit struct {
	limit RateLimit
	until time.Time
}

// LimitName answers every new-order for name with the rate limit, its
// time until (in the Retry-After header and in the detail), until it is
// lifted with a zero until. Other names pass. A zero limit also lifts it.
func (f *FaultProxy) LimitName(name string, limit RateLimit, until time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if limit == 0 || until.IsZero() {
		delete(f.limits, name)
		return
	}
	f.limits[name] = nameLimit{limit, until}
}

// NewOrders counts the new-order requests whose identifiers include name,
// answered or refused; with name "", every new-order request.
func (f *FaultProxy) NewOrders(name string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if name != "" {
		return f.newOrders[name]
	}
	n := 0
	for _, c := range f.newOrders {
		n += c
	}
	return n
}

// rateLimitDetail is Let's Encrypt's detail for the limit met by an order
// for name (Boulder's ratelimits package).
func rateLimitDetail(l nameLimit, name string) string {
	after := l.until.UTC().Format("2006-01-02 15:04:05") + " UTC"
	switch l.limit {
	case DuplicateCertificate:
		return "too many certificates (5) already issued for this exact set of identifiers in the last 168h0m0s, retry after " + after +
			": see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-exact-set-of-identifiers"
	case FailedAuthorizations:
		return fmt.Sprintf("too many failed authorizations (5) for %q in the last 1h0m0s, retry after %s", name, after) +
			": see https://letsencrypt.org/docs/rate-limits/#authorization-failures-per-identifier-per-account"
	case CertificatesPerRegisteredDomain:
		registered, err := publicsuffix.EffectiveTLDPlusOne(name)
		if err != nil {
			registered = name
		}
		return fmt.Sprintf("too many certificates (50) already issued for %q in the last 168h0m0s, retry after %s", registered, after) +
			": see https://letsencrypt.org/docs/rate-limits/#new-certificates-per-registered-domain"
	case NewOrdersPerAccount:
		return "too many new orders (300) from this account in the last 3h0m0s, retry after " + after +
			": see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account"
	}
	return "request refused, retry after " + after
}

// newOrder counts a new-order request by the names it asks for and
// returns the rate limit one of them is under, if any. The body is left
// readable.
func (f *FaultProxy) newOrder(r *http.Request) (nameLimit, string, bool) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	r.Body = io.NopCloser(bytes.NewReader(body))
	if err != nil {
		return nameLimit{}, "", false
	}
	var jws struct{ Payload string }
	var order struct {
		Identifiers []struct{ Type, Value string }
	}
	if json.Unmarshal(body, &jws) != nil {
		return nameLimit{}, "", false
	}
	payload, err := base64.RawURLEncoding.DecodeString(jws.Payload)
	if err != nil || json.Unmarshal(payload, &order) != nil {
		return nameLimit{}, "", false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var (
		found nameLimit
		name  string
		ok    bool
	)
	for _, id := range order.Identifiers {
		f.newOrders[id.Value]++
		if l, limited := f.limits[id.Value]; limited && !ok {
			found, name, ok = l, id.Value, true
		}
	}
	return found, name, ok
}

// Set switches the proxy to fault from now on. Connections open when
// Refuse is set are closed, so nothing passes on a kept-alive one.
func (f *FaultProxy) Set(fault Fault) {
	if fault.Mode == RateLimited && fault.Until.IsZero() {
		fault.Until = time.Now().Add(time.Hour)
	}
	fault.Paths = append([]string(nil), fault.Paths...)
	f.mu.Lock()
	f.fault = fault
	f.mu.Unlock()
	if fault.Mode == Refuse {
		f.srv.CloseClientConnections()
	}
}

func (f *FaultProxy) current() Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fault
}

// Requests counts the HTTP requests received, faulted or passed.
func (f *FaultProxy) Requests() int { return int(f.requests.Load()) }

// Faulted counts the HTTP requests answered with a fault.
func (f *FaultProxy) Faulted() int { return int(f.faulted.Load()) }

// Refused counts the connections reset by Refuse. A client sends no
// request on them, so each is one attempt to reach the CA.
func (f *FaultProxy) Refused() int { return int(f.refused.Load()) }

// RequestsTo counts the HTTP requests received whose path starts with
// prefix, faulted or passed.
func (f *FaultProxy) RequestsTo(prefix string) int {
	n := 0
	f.perPath.Range(func(k, v any) bool {
		if strings.HasPrefix(k.(string), prefix) {
			n += int(v.(*atomic.Int64).Load())
		}
		return true
	})
	return n
}

func (f *FaultProxy) serve(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	key := r.URL.Path
	if i := strings.Index(key[1:], "/"); i >= 0 {
		key = key[:i+2] // "/my-order/<id>" counts as "/my-order/": bounded keys
	}
	c, _ := f.perPath.LoadOrStore(key, new(atomic.Int64))
	c.(*atomic.Int64).Add(1)
	if r.Method == http.MethodPost && r.URL.Path == NewOrderPath {
		if l, name, limited := f.newOrder(r); limited && f.current().Mode != Refuse {
			f.faulted.Add(1)
			w.Header().Set("Retry-After", l.until.UTC().Format(http.TimeFormat))
			writeProblemStatus(w, http.StatusTooManyRequests, "rateLimited", rateLimitDetail(l, name))
			return
		}
	}

	fault := f.current()
	if fault.Mode == Refuse {
		// A request on a connection accepted just before the switch.
		f.faulted.Add(1)
		if hj, ok := w.(http.Hijacker); ok {
			if conn, _, err := hj.Hijack(); err == nil {
				conn.Close()
				return
			}
		}
		w.Header().Set("Connection", "close")
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	if fault.Mode == Pass || !fault.covers(r.URL.Path) {
		f.rp.ServeHTTP(w, r)
		return
	}
	f.faulted.Add(1)
	io.Copy(io.Discard, io.LimitReader(r.Body, 1<<20))
	switch fault.Mode {
	case ServerError:
		writeProblemStatus(w, http.StatusServiceUnavailable, "serverInternal",
			"The service is down for maintenance or had an internal error. Check https://letsencrypt.status.io/ for more details.")
	case RateLimited:
		w.Header().Set("Retry-After", fault.Until.UTC().Format(http.TimeFormat))
		detail := "too many new orders (300) from this account in the last 3h0m0s"
		if !fault.NoTimeInDetail {
			detail += ", retry after " + fault.Until.UTC().Format("2006-01-02 15:04:05") + " UTC"
		}
		detail += ": see https://letsencrypt.org/docs/rate-limits/#new-orders-per-account"
		writeProblemStatus(w, http.StatusTooManyRequests, "rateLimited", detail)
	default:
		http.Error(w, fmt.Sprintf("certstest: unknown fault mode %v", fault.Mode), http.StatusInternalServerError)
	}
}

func (fault Fault) covers(path string) bool {
	if len(fault.Paths) == 0 {
		return true
	}
	for _, p := range fault.Paths {
		if strings.HasPrefix(path, p) {
			return true
		}
	}
	return false
}

func writeProblemStatus(w http.ResponseWriter, status int, typ, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{
		"type":   "urn:ietf:params:acme:error:" + typ,
		"detail": detail,
		"status": status,
	})
}

// refusingListener resets the connections it accepts while the proxy is
// in Refuse mode, and hands the others to the HTTP server.
type refusingListener struct {
	net.Listener
	f *FaultProxy
}

func (l *refusingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if l.f.current().Mode != Refuse {
			return c, nil
		}
		l.f.refused.Add(1)
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0) // close with RST, not FIN
		}
		c.Close()
	}
}
