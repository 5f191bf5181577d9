package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/store"
)

// TestChaos runs the real binary against Pebble and the loopback DNS server
// while workers create, delete and retry records through the API, and
// kill -9s it at random moments. After every kill it checks the database
// file with bbolt's own consistency check, restarts the server on it and
// compares what the server holds with what the workers were told:
//
//   - every record acknowledged with 201 and not deleted with 204 exists;
//   - every record deleted with 204 is gone or deleting;
//   - an operation cut by the kill (no answer) either happened or did not,
//     and nothing else appears;
//   - no domain is held twice, no organization is over its limit.
//
// After the last restart the workers stop, and every record must reach the
// status its DNS dictates (a CNAME to its target: valid and served; no
// CNAME: waiting), every deleted record must disappear, and after a clean
// shutdown the certificate storage must hold exactly the certificates of
// the records still pointing. Each organization has a webhook: every record
// that existed must have had its created event delivered, and every record
// gone its deleted event, and the outbox's indexes must be consistent.
//
// `make test` runs a short form (EDGEPROXY_CHAOS_KILLS unset: 5 kills);
// `make chaos` runs the long one. EDGEPROXY_CHAOS_SEED fixes the workers'
// choices (the kill moments still depend on timing).
func TestChaos(t *testing.T) {
	kills := envInt(t, "EDGEPROXY_CHAOS_KILLS", 5)
	seed := uint64(envInt(t, "EDGEPROXY_CHAOS_SEED", int(time.Now().UnixNano()%1e9)))
	t.Logf("chaos: %d kills, seed %d", kills, seed)
	rng := rand.New(rand.NewPCG(seed, 0))

	w := newACMEWorld(t)
	// The workers create records far faster than the default order budget
	// allows: the budget is not what this test is about.
	w.args = append(w.args, "--org-orders-per-hour", "100000")
	dir := t.TempDir()
	s := startServer(t, dir, w.args...)
	key := s.key(t)

	c := &chaos{t: t, w: w, key: key, seed: seed, point: func(_ *rand.Rand, domain, target string) {
		w.dns.SetA(target, "127.0.0.1")
		w.dns.SetCNAME(domain, target)
	}}
	for i, limit := range []int{4, 7} {
		var org struct{ ID string }
		s.admin(t, &org, "org", "create", "--name", fmt.Sprintf("chaos-%d", i), "--max-proxy-records", strconv.Itoa(limit))
		// User 1 is the bootstrap owner; its key has scope * and no org
		// restriction, so it reaches both organizations.
		s.admin(t, nil, "member", "add", "--org", org.ID, "--user", "1", "--level", "owner")
		c.orgs = append(c.orgs, chaosOrg{id: org.ID, limit: limit})
	}
	c.hooks = newChaosHooks(t)
	for _, org := range c.orgs {
		body := `{"url": "` + c.hooks.srv.URL + `/hooks", "events": ["proxy_record.created", "proxy_record.deleted"]}`
		if code := s.request(t, key, "POST", "/api/organizations/"+org.id+"/webhooks/", body, nil); code != 201 {
			t.Fatalf("create webhook: %d", code)
		}
	}
	const workers = 4
	for i := range workers {
		// Half the workers delete a pointing record only once it is valid,
		// so kills also land while certificates are stored and dropped.
		c.workers = append(c.workers, &chaosWorker{c: c, n: i, org: i % len(c.orgs), patient: i >= workers/2,
			rng: rand.New(rand.NewPCG(seed, uint64(i+1)))})
	}

	dbPath := filepath.Join(dir, "edgeproxy.db")
	for life := range kills {
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for _, cw := range c.workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				cw.run(func() string { return s.api }, stop)
			}()
		}
		// A random moment: early ones land during start-up work and the
		// first DNS checks, later ones during orders and deletions.
		time.Sleep(time.Duration(200+rng.IntN(2300)) * time.Millisecond)
		c.held(s) // no duplicate, no organization over its limit, while writes run
		s.kill9(t)
		close(stop)
		wg.Wait()
		c.kills++

		checkBolt(t, dbPath)
		s = startServer(t, dir, w.args...)
		c.reconcile(s, fmt.Sprintf("after kill %d", life+1))
		if t.Failed() {
			t.Fatalf("invariants broken after kill %d (seed %d)\n%s", life+1, seed, s.stderr)
		}
	}

	c.settle(s, func(domain string, want bool) error {
		err := w.handshake(t, domain)
		if !want && err == nil {
			return errors.New("handshake succeeded")
		}
		if want {
			return err
		}
		return nil
	})
	if t.Failed() {
		t.Fatalf("did not settle (seed %d)\n%s", seed, s.stderr)
	}
	c.eventsDelivered()

	// A clean stop, then the storage seen from outside.
	s.cmd.Process.Signal(syscall.SIGTERM)
	if err := <-s.done; err != nil {
		t.Errorf("SIGTERM: exit %v", err)
	}
	s.done <- nil // for the cleanup
	c.checkStorage(dbPath)
	c.report()
}

type chaosOrg struct {
	id    string
	limit int
}

// A chaosRecord is one domain a worker registered, and what the worker
// knows of it.
type chaosRecord struct {
	domain   string
	org      int
	pointing bool // the DNS server holds its CNAME to its target
	id       string
	state    chaosState
}

type chaosState int

const (
	live            chaosState = iota // 201 seen, no 204
	deleted                           // 204 seen: gone, or deleting
	uncertainCreate                   // create sent, no answer
	uncertainDelete                   // delete sent, no answer
	gone                              // not in the store and never will be
)

type chaos struct {
	t       *testing.T
	w       *acmeWorld
	key     string
	seed    uint64
	orgs    []chaosOrg
	workers []*chaosWorker
	kills   int
	// point makes domain a CNAME to target and gives target an address
	// of the edge; rng is the calling worker's.
	point func(rng *rand.Rand, domain, target string)
	// unavailable503 is set where a 503 (storage unavailable) is an
	// answer to expect, on a cluster whose etcd loses a member: it leaves
	// the outcome unknown, like no answer.
	unavailable503 bool

	created, refused, deletedOK, retried atomic.Int64
	unavailable                          atomic.Int64
	deletedValid                         atomic.Int64
	cutCreates, cutCreatesDone           int
	cutDeletes, cutDeletesDone           int
	hooks                                *chaosHooks
}

// chaosHooks is a receiver of both organizations' webhooks (plain HTTP:
// --dev allows it); it counts the events it got per type and record.
type chaosHooks struct {
	srv *httptest.Server

	// mu guards seen.
	mu   sync.Mutex
	seen map[string]int // type + " " + record id → deliveries
}

func newChaosHooks(t *testing.T) *chaosHooks {
	h := &chaosHooks{seen: map[string]int{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			Type string
			Data struct{ Record struct{ ID string } }
		}
		if err := json.NewDecoder(r.Body).Decode(&ev); err == nil {
			h.mu.Lock()
			h.seen[ev.Type+" "+ev.Data.Record.ID]++
			h.mu.Unlock()
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(h.srv.Close)
	return h
}

// eventsDelivered checks that every record that existed (its create was
// acknowledged, or a cut create had committed) had its created event
// delivered, and every record that is gone its deleted event, however the
// kills fell: each event was committed with its change.
func (c *chaos) eventsDelivered() {
	t := c.t
	deadline := time.Now().Add(2 * time.Minute)
	var missing []string
	for {
		missing = missing[:0]
		c.hooks.mu.Lock()
		for _, cw := range c.workers {
			for _, r := range cw.records {
				if r.id == "" {
					continue
				}
				if c.hooks.seen["proxy_record.created "+r.id] == 0 {
					missing = append(missing, "created "+r.domain)
				}
				if r.state == gone && c.hooks.seen["proxy_record.deleted "+r.id] == 0 {
					missing = append(missing, "deleted "+r.domain)
				}
			}
		}
		events, repeated := 0, 0
		for _, n := range c.hooks.seen {
			events += n
			repeated += n - 1
		}
		c.hooks.mu.Unlock()
		if len(missing) == 0 {
			t.Logf("chaos: %d webhook deliveries received, %d of them repeats of an event already delivered (at least once)", events, repeated)
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("2 minutes after settling, events never delivered: %v", missing)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

type chaosWorker struct {
	c       *chaos
	n       int
	org     int
	patient bool
	rng     *rand.Rand
	next    int
	records []*chaosRecord
}

// run does API operations until stop is closed, each through the API
// address api returns for it. Only this worker touches its records, so
// what it knows of each one is never contended.
func (cw *chaosWorker) run(api func() string, stop <-chan struct{}) {
	client := &http.Client{Timeout: 20 * time.Second, Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	atLimit := false
	for {
		select {
		case <-stop:
			return
		case <-time.After(time.Duration(10+cw.rng.IntN(40)) * time.Millisecond):
		}
		var liveRecs []*chaosRecord
		for _, r := range cw.records {
			if r.state == live {
				liveRecs = append(liveRecs, r)
			}
		}
		p := cw.rng.Float64()
		switch {
		case len(liveRecs) == 0 || (!atLimit && p < 0.55):
			atLimit = cw.create(client, api())
		case p < 0.9:
			cw.delete(client, api(), liveRecs[cw.rng.IntN(len(liveRecs))])
			atLimit = false
		default:
			cw.retry(client, api(), liveRecs[cw.rng.IntN(len(liveRecs))])
		}
	}
}

func (cw *chaosWorker) create(client *http.Client, api string) (atLimit bool) {
	c := cw.c
	cw.next++
	r := &chaosRecord{
		domain:   fmt.Sprintf("w%d-%d.chaos.example.com", cw.n, cw.next),
		org:      cw.org,
		pointing: cw.rng.IntN(4) != 0,
	}
	orgID := c.orgs[cw.org].id
	target := control.TargetCNAME(orgID, r.domain, "proxy.localhost")
	if r.pointing {
		c.point(cw.rng, r.domain, target)
	}
	var body struct {
		ID          string `json:"id"`
		TargetCNAME string `json:"target_cname"`
		Status      string `json:"status"`
		Code        string `json:"code"`
	}
	code, err := chaosCall(client, api, c.key, "POST", "/api/organizations/"+orgID+"/proxy_records/", `{"domain":"`+r.domain+`"}`, &body)
	switch {
	case err != nil:
		r.state = uncertainCreate
	case code == 503 && c.unavailable503:
		c.unavailable.Add(1)
		r.state = uncertainCreate
	case code == 201:
		if body.TargetCNAME != target || body.Status != "waiting" {
			c.t.Errorf("create %s: got %+v, want target %s and status waiting", r.domain, body, target)
		}
		r.id, r.state = body.ID, live
		c.created.Add(1)
	case code == 400 && body.Code == "max_proxy_records":
		c.refused.Add(1)
		return true
	default:
		c.t.Errorf("create %s: unexpected %d %+v", r.domain, code, body)
		return false
	}
	cw.records = append(cw.records, r)
	return false
}

func (cw *chaosWorker) delete(client *http.Client, api string, r *chaosRecord) {
	c := cw.c
	path := "/api/organizations/" + c.orgs[r.org].id + "/proxy_records/" + r.id + "/"
	var rec struct{ Status string }
	if code, err := chaosCall(client, api, c.key, "GET", path, "", &rec); err != nil || code != 200 {
		if err == nil {
			c.t.Errorf("get %s: unexpected %d", r.domain, code)
		}
		return
	}
	if cw.patient && r.pointing && rec.Status != "valid" {
		return
	}
	code, err := chaosCall(client, api, c.key, "DELETE", path, "", nil)
	switch {
	case err != nil:
		r.state = uncertainDelete
	case code == 503 && c.unavailable503:
		c.unavailable.Add(1)
		r.state = uncertainDelete
	case code == 204:
		r.state = deleted
		c.deletedOK.Add(1)
		if rec.Status == "valid" {
			c.deletedValid.Add(1)
		}
	default:
		c.t.Errorf("delete %s: unexpected %d", r.domain, code)
	}
}

func (cw *chaosWorker) retry(client *http.Client, api string, r *chaosRecord) {
	c := cw.c
	var body struct{ Code string }
	code, err := chaosCall(client, api, c.key, "POST", "/api/organizations/"+c.orgs[r.org].id+"/proxy_records/"+r.id+"/retry/", "", &body)
	switch {
	case err != nil, code == 503 && c.unavailable503:
		// A retry changes only status and deadlines: either outcome is fine.
	case code == 200 || (code == 400 && body.Code == "invalid_state"):
		c.retried.Add(1)
	default:
		c.t.Errorf("retry %s: unexpected %d %+v", r.domain, code, body)
	}
}

// chaosCall is one API call; err is set when no answer came (the server
// died), which leaves the operation's outcome unknown.
func chaosCall(client *http.Client, api, key, method, path, body string, out any) (int, error) {
	req, err := http.NewRequest(method, api+path, strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, err
	}
	if out != nil && len(data) > 0 {
		if err := json.Unmarshal(data, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: %d %q: %v", method, path, resp.StatusCode, data, err)
		}
	}
	return resp.StatusCode, nil
}

type heldRecord struct {
	OrgID  string `json:"org_id"`
	ID     string `json:"id"`
	Domain string `json:"domain"`
	Status string `json:"status"`
}

// held is every record the server holds, from the admin socket.
func (c *chaos) held(s *server) map[string]heldRecord {
	var all []heldRecord
	s.admin(c.t, &all, "records", "list")
	byDomain := make(map[string]heldRecord, len(all))
	count := make(map[string]int)
	for _, h := range all {
		if _, dup := byDomain[h.Domain]; dup {
			c.t.Errorf("domain %s held twice", h.Domain)
		}
		byDomain[h.Domain] = h
		count[h.OrgID]++
	}
	for _, o := range c.orgs {
		if count[o.id] > o.limit {
			c.t.Errorf("organization %s holds %d records, over its limit of %d", o.id, count[o.id], o.limit)
		}
	}
	return byDomain
}

// reconcile compares the server's records with what the workers were told,
// and settles every outcome the kill left unknown.
func (c *chaos) reconcile(s *server, when string) {
	t := c.t
	held := c.held(s)
	known := make(map[string]bool)
	for _, cw := range c.workers {
		for _, r := range cw.records {
			known[r.domain] = true
			h, ok := held[r.domain]
			if ok && r.id != "" && h.ID != r.id {
				t.Errorf("%s: %s has id %s, created as %s", when, r.domain, h.ID, r.id)
			}
			switch r.state {
			case live:
				switch {
				case !ok:
					t.Errorf("%s: %s was created (201) and never deleted, but is gone", when, r.domain)
				case h.Status == "deleting":
					t.Errorf("%s: %s is deleting, but no DELETE was sent", when, r.domain)
				}
			case deleted:
				switch {
				case !ok:
					r.state = gone
				case h.Status != "deleting":
					t.Errorf("%s: %s was deleted (204) but is %s", when, r.domain, h.Status)
				}
			case uncertainCreate:
				c.cutCreates++
				if ok {
					c.cutCreatesDone++
					r.id, r.state = h.ID, live
				} else {
					r.state = gone
				}
			case uncertainDelete:
				c.cutDeletes++
				switch {
				case !ok:
					c.cutDeletesDone++
					r.state = gone
				case h.Status == "deleting":
					c.cutDeletesDone++
					r.state = deleted
				default:
					r.state = live
				}
			case gone:
				if ok {
					t.Errorf("%s: %s was gone but is back (%s)", when, r.domain, h.Status)
				}
			}
		}
	}
	byStatus := map[string]int{}
	for _, h := range held {
		byStatus[h.Status]++
	}
	t.Logf("%s: held %v", when, byStatus)
	for d, h := range held {
		if !known[d] {
			t.Errorf("%s: the server holds %s (%s), which no worker created", when, d, h.Status)
		}
	}
}

// settle waits until every record has the status its DNS dictates and
// every deleted one is gone, then asks served whether every valid domain
// is served and no deleted one is (served returns why not).
func (c *chaos) settle(s *server, served func(domain string, want bool) error) {
	t := c.t
	deadline := time.Now().Add(3 * time.Minute)
	var wrong []string
	for {
		held := c.held(s)
		wrong = wrong[:0]
		for _, cw := range c.workers {
			for _, r := range cw.records {
				h, ok := held[r.domain]
				switch {
				case r.state == deleted && ok:
					wrong = append(wrong, r.domain+" still "+h.Status+" after its 204")
				case r.state == deleted:
					r.state = gone
				case r.state == live && !ok:
					t.Errorf("%s was created (201) and never deleted, but is gone", r.domain)
				case r.state == live && r.pointing && h.Status != "valid":
					wrong = append(wrong, r.domain+" points at its target but is "+h.Status)
				case r.state == live && !r.pointing && h.Status != "waiting":
					wrong = append(wrong, r.domain+" has no CNAME but is "+h.Status)
				}
			}
		}
		if len(wrong) == 0 || t.Failed() || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	for _, msg := range wrong {
		t.Errorf("3 minutes after the last restart: %s", msg)
	}
	for _, cw := range c.workers {
		for _, r := range cw.records {
			switch {
			case r.state == live && r.pointing:
				if err := served(r.domain, true); err != nil {
					t.Errorf("handshake for valid %s: %v", r.domain, err)
				}
			case r.state != live:
				// A deleted record's certificate may be kept for the
				// retention, never served.
				if err := served(r.domain, false); err != nil {
					t.Errorf("deleted %s: %v", r.domain, err)
				}
			}
		}
	}
}

// checkStorage opens the database the stopped server left and checks that
// it is consistent and that certificate storage holds the certificates of
// the records that point here, and besides them only certificates of
// deleted records, kept for the retention.
func (c *chaos) checkStorage(dbPath string) {
	t := c.t
	st, err := store.Open(dbPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if err := st.Check(); err != nil {
		t.Errorf("store check: %v", err)
	}
	if err := st.CheckOutbox(); err != nil {
		t.Errorf("outbox check: %v", err)
	}
	cm, err := certs.New(st, certs.Config{CA: c.w.pebble.DirectoryURL()})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	stored, err := cm.StoredDomains(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var want, deletedDomains []string
	for _, cw := range c.workers {
		for _, r := range cw.records {
			switch {
			case r.state == live && r.pointing:
				want = append(want, r.domain)
			case r.state != live:
				deletedDomains = append(deletedDomains, r.domain)
			}
		}
	}
	slices.Sort(want)
	for _, d := range stored {
		switch {
		case slices.Contains(want, d), slices.Contains(deletedDomains, d):
		default:
			t.Errorf("certificate for %s left in storage, but no record holds it and no retention covers it", d)
		}
	}
	for _, d := range want {
		if !slices.Contains(stored, d) {
			t.Errorf("valid record %s has no certificate in storage", d)
		}
	}
}

func (c *chaos) report() {
	var valid, waiting, total int
	for _, cw := range c.workers {
		for _, r := range cw.records {
			total++
			if r.state == live && r.pointing {
				valid++
			}
			if r.state == live && !r.pointing {
				waiting++
			}
		}
	}
	c.t.Logf("chaos: %d kills survived; %d creates acknowledged, %d refused at the limit, %d deletes acknowledged (%d of valid records), %d retries answered; "+
		"%d creates cut by a kill (%d had committed), %d deletes cut (%d had committed); %d domains tried, %d left valid and %d waiting; 0 lost",
		c.kills, c.created.Load(), c.refused.Load(), c.deletedOK.Load(), c.deletedValid.Load(), c.retried.Load(),
		c.cutCreates, c.cutCreatesDone, c.cutDeletes, c.cutDeletesDone, total, valid, waiting)
}

// checkBolt runs bbolt's own consistency check on the file a kill left,
// read-only, before anything opens it for writing.
func checkBolt(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("opening %s after the kill: %v", path, err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []string
		for err := range tx.Check() {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return fmt.Errorf("%d problems: %s", len(errs), strings.Join(errs, "; "))
		}
		return nil
	})
	if err != nil {
		t.Fatalf("bbolt check after the kill: %v", err)
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: not an integer", name, v)
	}
	return n
}
