package control

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// stoppedClock stands still until the test moves it: no token comes back
// while a test runs, however slowly (-race) it runs.
type stoppedClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *stoppedClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *stoppedClock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestFailLimiterBucket(t *testing.T) {
	clock := &stoppedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	l := newFailLimiter(clock.now)
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	for i := range authFailBurst {
		if w := l.fail(a); w != 0 {
			t.Fatalf("failure %d: must wait %v before the burst is used up", i, w)
		}
	}
	if w := l.fail(a); w != authFailRefill {
		t.Errorf("past the burst: wait %v, want %v", w, authFailRefill)
	}
	if w := l.fail(b); w != 0 {
		t.Errorf("another address must not wait: %v", w)
	}
	clock.advance(authFailRefill)
	if w := l.fail(a); w != 0 {
		t.Errorf("after one refill period: wait %v, want 0", w)
	}
	if w := l.fail(a); w != authFailRefill {
		t.Errorf("the refilled token is spent: wait %v, want %v", w, authFailRefill)
	}
	clock.advance(-time.Hour)
	if w := l.fail(a); w == 0 {
		t.Error("a clock going back refilled the bucket")
	}
}

// TestFailLimiterBounded plays an attacker that cycles through addresses
// after exhausting its own: the table never holds more than
// maxFailBuckets addresses, the exhausted address stays throttled (no
// eviction hands it a fresh burst), addresses that find the table full
// share one bucket, and once the buckets have refilled a sweep empties
// the table.
func TestFailLimiterBounded(t *testing.T) {
	clock := &stoppedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	l := newFailLimiter(clock.now)
	attacker := netip.MustParseAddr("203.0.113.9")
	for range authFailBurst {
		l.fail(attacker)
	}
	// Every address of 10.0.0.0/8 up to the cap and beyond, one failure
	// each.
	cycled := maxFailBuckets + 2*authFailBurst
	refused := 0
	base := netip.MustParseAddr("10.0.0.0").As4()
	for i := range cycled {
		a := base
		a[1], a[2], a[3] = byte(i>>16), byte(i>>8), byte(i)
		if l.fail(netip.AddrFrom4(a)) > 0 {
			refused++
		}
	}
	if got := l.size(); got > maxFailBuckets {
		t.Errorf("after %d addresses the table holds %d, want at most %d", cycled+1, got, maxFailBuckets)
	}
	if w := l.fail(attacker); w == 0 {
		t.Errorf("the exhausted address got a fresh burst after cycling %d addresses", cycled)
	}
	// The table was full after maxFailBuckets-1 of them; the rest shared
	// one bucket of authFailBurst.
	if want := cycled - (maxFailBuckets - 1) - authFailBurst; refused != want {
		t.Errorf("%d of the cycled addresses were refused, want %d (past the table, beyond one shared burst)", refused, want)
	}
	t.Logf("%d addresses cycled: table %d entries, %d failures refused from the overflow", cycled, l.size(), refused)

	clock.advance(failSweepEvery)
	if w := l.fail(netip.MustParseAddr("198.51.100.1")); w != 0 {
		t.Errorf("a new address after the sweep: wait %v", w)
	}
	if got := l.size(); got != 1 {
		t.Errorf("after every bucket refilled and a sweep, the table holds %d, want 1", got)
	}
}

func TestClientAddr(t *testing.T) {
	for _, tt := range []struct{ remote, want string }{
		{"192.0.2.7:4242", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:4242", "192.0.2.7"},
		{"[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::"},
		{"[2001:db8:1:2:bbbb::9]:443", "2001:db8:1:2::"},
		{"[2001:db8:1:3::1]:443", "2001:db8:1:3::"},
		{"[fe80::1%eth0]:443", "fe80::"},
		{"@", "invalid IP"},
	} {
		r := &http.Request{RemoteAddr: tt.remote}
		if got := clientAddr(r).String(); got != tt.want {
			t.Errorf("clientAddr(%q) = %s, want %s", tt.remote, got, tt.want)
		}
	}
}

// throttleEnv is the API over a real store in a temporary directory,
// served on loopback with the failed-authentication limiter on a stopped
// clock. The server counts the request body bytes the API reads.
type throttleEnv struct {
	api   *API
	srv   *httptest.Server
	clock *stoppedClock
	org   store.Org
	key   string
	// bodyBytes is how many request body bytes the API has read.
	bodyBytes atomic.Int64
}

func newThrottleEnv(t *testing.T) *throttleEnv {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	e := &throttleEnv{clock: &stoppedClock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}}
	if e.org, err = st.CreateOrg("Acme", nil); err != nil {
		t.Fatal(err)
	}
	u, err := st.CreateUser("owner@acme.test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.SetMembership(e.org.ID, u.ID, store.LevelOwner); err != nil {
		t.Fatal(err)
	}
	k, value := NewKey(u.ID, "ci", []string{ScopeAll}, nil)
	if _, err := st.CreateKey(k); err != nil {
		t.Fatal(err)
	}
	e.key = value
	e.api = NewAPI(st, Config{TargetCNAMEBase: "proxy.example.net", MaxProxyRecords: 100})
	e.api.fails = newFailLimiter(e.clock.now)
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			// A copy, so that the server still sees its own body and
			// closes the connection when a 100-continue body went
			// unread, instead of asking for it.
			r = r.WithContext(r.Context())
			r.Body = &countingBody{ReadCloser: r.Body, n: &e.bodyBytes}
		}
		e.api.ServeHTTP(w, r)
	}))
	t.Cleanup(e.srv.Close)
	return e
}

// countingBody adds the bytes read through it to n.
type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

// client sends from the loopback address ip, so each test address is a
// real peer of its own. It waits for 100 Continue before sending a body
// that asks for it: a body the server does not read is then never sent.
func (e *throttleEnv) client(t *testing.T, ip string) *http.Client {
	t.Helper()
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		ExpectContinueTimeout: time.Minute,
	}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

// thrReq is one request of these tests.
type thrReq struct {
	method, path, bearer, body string
	// expect sends "Expect: 100-continue".
	expect bool
}

type thrRes struct {
	status int
	header http.Header
	body   []byte
}

func (e *throttleEnv) do(t *testing.T, c *http.Client, q thrReq) thrRes {
	t.Helper()
	var body io.Reader
	if q.body != "" {
		body = strings.NewReader(q.body)
	}
	r, err := http.NewRequest(q.method, e.srv.URL+q.path, body)
	if err != nil {
		t.Fatal(err)
	}
	if q.bearer != "" {
		r.Header.Set("Authorization", "Bearer "+q.bearer)
	}
	if q.expect {
		r.Header.Set("Expect", "100-continue")
	}
	res, err := c.Do(r)
	if err != nil {
		t.Fatalf("%s %s: %v", q.method, q.path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the answer: %v", q.method, q.path, err)
	}
	return thrRes{res.StatusCode, res.Header, data}
}

func (e *throttleEnv) list() string { return "/api/organizations/" + e.org.ID + "/proxy_records/" }

// checkThrottled holds a 429 to the contract: throttled_error/throttled,
// the detail, and a Retry-After of the seconds the detail names.
func checkThrottled(t *testing.T, res thrRes) {
	t.Helper()
	if res.status != http.StatusTooManyRequests {
		t.Fatalf("status %d, want 429: %s", res.status, res.body)
	}
	var e map[string]any
	if err := json.Unmarshal(res.body, &e); err != nil {
		t.Fatalf("429 body %q: %v", res.body, err)
	}
	want := map[string]any{"type": "throttled_error", "code": "throttled",
		"detail": "Request was throttled. Expected available in 1 seconds.", "attr": nil}
	if fmt.Sprint(e) != fmt.Sprint(want) {
		t.Errorf("429 body %v, want %v", e, want)
	}
	if got := res.header.Get("Retry-After"); got != "1" {
		t.Errorf("Retry-After %q, want 1 (a token comes back every %v)", got, authFailRefill)
	}
}

// TestBadKeysNeverLockOutValidKey replays a CI job with a revoked key
// behind the same address as everyone else (a reverse proxy, a tunnel, a
// corporate NAT): 300 bad keys from one address. The limiter answers the
// burst 401 and the rest 429, and a valid key from that same address is
// served wherever it is carried: header, body, query. The bad keys do not
// throttle another address. (The limiter once ran before authentication
// and refused the valid key too.)
func TestBadKeysNeverLockOutValidKey(t *testing.T) {
	e := newThrottleEnv(t)
	shared, other := e.client(t, "127.0.0.2"), e.client(t, "127.0.0.3")
	revoked := NewKeyValue()

	counts := map[int]int{}
	for range 300 {
		res := e.do(t, shared, thrReq{method: "GET", path: e.list(), bearer: revoked})
		counts[res.status]++
		if res.status == http.StatusTooManyRequests && counts[res.status] == 1 {
			checkThrottled(t, res)
		}
	}
	if counts[401] != authFailBurst || counts[429] != 300-authFailBurst {
		t.Errorf("300 bad keys: %v, want %d answered 401 and %d refused 429", counts, authFailBurst, 300-authFailBurst)
	}
	t.Logf("300 bad keys from one address: %d answered 401, %d refused 429", counts[401], counts[429])

	served := []struct {
		name string
		q    thrReq
		want int
	}{
		{"header", thrReq{method: "GET", path: e.list(), bearer: e.key}, http.StatusOK},
		{"JSON body", thrReq{method: "POST", path: e.list(), body: `{"domain":"body.example.com","personal_api_key":"` + e.key + `"}`}, http.StatusCreated},
		{"form body", thrReq{method: "POST", path: e.list(), body: "domain=form.example.com&personal_api_key=" + e.key}, http.StatusCreated},
		{"query", thrReq{method: "GET", path: e.list() + "?personal_api_key=" + e.key}, http.StatusOK},
	}
	for _, s := range served {
		if res := e.do(t, shared, s.q); res.status != s.want {
			t.Errorf("valid key in the %s from the throttled address: %d, want %d: %s", s.name, res.status, s.want, res.body)
		}
	}
	// The valid keys did not refill the bucket: the next bad key is still
	// refused.
	checkThrottled(t, e.do(t, shared, thrReq{method: "GET", path: e.list(), bearer: revoked}))

	// Another address is not throttled by the first one's failures.
	if res := e.do(t, other, thrReq{method: "GET", path: e.list(), bearer: revoked}); res.status != http.StatusUnauthorized {
		t.Errorf("a bad key from another address: %d, want 401: %s", res.status, res.body)
	}
}

// TestMissingKeysCounted replays a flood of requests carrying no key at
// all, which the limiter once did not count: past the burst they get 429
// with Retry-After, another address still gets 401, a valid key from the
// flooding address is served, and one token refilled on the clock lets
// exactly one more keyless request through.
func TestMissingKeysCounted(t *testing.T) {
	e := newThrottleEnv(t)
	flooder, other := e.client(t, "127.0.0.2"), e.client(t, "127.0.0.3")
	noKey := thrReq{method: "GET", path: e.list()}

	for i := range authFailBurst {
		if res := e.do(t, flooder, noKey); res.status != http.StatusUnauthorized {
			t.Fatalf("keyless request %d: %d, want 401 within the burst: %s", i+1, res.status, res.body)
		}
	}
	checkThrottled(t, e.do(t, flooder, noKey))
	checkThrottled(t, e.do(t, flooder, thrReq{method: "POST", path: e.list(), body: `{"domain":"e.example.com"}`}))
	if res := e.do(t, other, noKey); res.status != http.StatusUnauthorized {
		t.Errorf("keyless request from another address: %d, want 401: %s", res.status, res.body)
	}
	if res := e.do(t, flooder, thrReq{method: "GET", path: e.list(), bearer: e.key}); res.status != http.StatusOK {
		t.Errorf("valid key from the flooding address: %d, want 200: %s", res.status, res.body)
	}

	e.clock.advance(authFailRefill)
	if res := e.do(t, flooder, noKey); res.status != http.StatusUnauthorized {
		t.Errorf("after one refill period: %d, want 401: %s", res.status, res.body)
	}
	checkThrottled(t, e.do(t, flooder, noKey))
}

// TestKeylessBodiesNotParsed replays a client that sends 1 MiB bodies
// without a key, to make the server read and parse them: a body where no
// key can be (GET, or behind a header key) is not read at all, so with
// Expect: 100-continue it never even crosses the wire; a throttled
// address's body with no personal_api_key field is read, since a valid
// key could be in it, but not parsed; and a valid key in the body of a
// throttled address, even with its name escaped, is still found.
func TestKeylessBodiesNotParsed(t *testing.T) {
	e := newThrottleEnv(t)
	flooder := e.client(t, "127.0.0.2")
	mib := 1 << 20
	// junk is 1 MiB that a parse would refuse: it opens like JSON.
	junk := "{" + strings.Repeat("x", mib-1)

	res := e.do(t, flooder, thrReq{method: "GET", path: e.list(), body: junk, expect: true})
	if res.status != http.StatusUnauthorized {
		t.Errorf("GET with a 1 MiB body and no key: %d, want 401: %s", res.status, res.body)
	}
	if got := e.bodyBytes.Load(); got != 0 {
		t.Errorf("GET with a 1 MiB body and no key: %d body bytes read, want 0", got)
	}
	res = e.do(t, flooder, thrReq{method: "POST", path: e.list(), bearer: NewKeyValue(), body: junk, expect: true})
	if res.status != http.StatusUnauthorized {
		t.Errorf("POST with a bad header key and 1 MiB body: %d, want 401: %s", res.status, res.body)
	}
	if got := e.bodyBytes.Load(); got != 0 {
		t.Errorf("POST with a bad header key: %d body bytes read, want 0", got)
	}

	// Use up the address's allowance, then send keyless POSTs of 1 MiB.
	for range authFailBurst {
		e.do(t, flooder, thrReq{method: "GET", path: e.list()})
	}
	const posts = 20
	for range posts {
		checkThrottled(t, e.do(t, flooder, thrReq{method: "POST", path: e.list(), body: junk, expect: true}))
	}
	read := e.bodyBytes.Load()
	if want := int64(posts * mib); read != want {
		t.Errorf("%d keyless 1 MiB POSTs: %d body bytes read, want %d (each read once, to look for a key)", posts, read, want)
	}
	t.Logf("%d keyless 1 MiB POSTs from a throttled address: %d refused 429, %d body bytes read", posts, posts, read)

	// What the server did with such a body: read it, did not parse it.
	r := httptest.NewRequest("POST", e.list(), strings.NewReader(junk))
	r.RemoteAddr = "127.0.0.2:4242"
	b := newBody(r)
	if _, aerr := e.api.authenticate(r, b); aerr != errNotAuthenticated {
		t.Errorf("authenticate of a keyless 1 MiB body: %v, want not_authenticated", aerr)
	}
	if !b.read || b.decoded {
		t.Errorf("keyless 1 MiB body: read %v, decoded %v; want read and not decoded", b.read, b.decoded)
	}

	// The throttled address still gets its valid body key honoured, even
	// spelt with an escape.
	for _, body := range []string{
		`{"domain":"a.example.com","personal_api_key":"` + e.key + `"}`,
		`{"domain":"b.example.com","personal\u005fapi_key":"` + e.key + `"}`,
		"domain=c.example.com&personal%5Fapi_key=" + e.key,
	} {
		if res := e.do(t, flooder, thrReq{method: "POST", path: e.list(), body: body}); res.status != http.StatusCreated {
			t.Errorf("throttled address, valid key in the body %s: %d, want 201: %s", body, res.status, res.body)
		}
	}
}
