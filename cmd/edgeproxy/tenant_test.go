package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/store"
)

// faultWorld is acmeWorld with certstest.FaultProxy between the binary
// and Pebble.
func newFaultWorld(t *testing.T) (*acmeWorld, *certstest.FaultProxy) {
	t.Helper()
	w := newACMEWorld(t)
	proxy := certstest.StartFaultProxy(t, w.pebble)
	root := filepath.Join(t.TempDir(), "faultproxy.pem")
	if err := os.WriteFile(root, proxy.ServerCertPEM(), 0o600); err != nil {
		t.Fatal(err)
	}
	for i, a := range w.args {
		switch a {
		case "--acme-ca":
			w.args[i+1] = proxy.DirectoryURL()
		case "--acme-ca-root":
			w.args[i+1] = root
		}
	}
	return w, proxy
}

// newTenantKey makes an organization, its owner and a key reaching only
// it, through the admin commands, and returns the key's value.
func newTenantKey(t *testing.T, s *server, name string) string {
	t.Helper()
	var org struct{ ID string }
	s.admin(t, &org, "org", "create", "--name", name)
	var user struct{ ID int64 }
	s.admin(t, &user, "user", "create", "--email", "ops@"+strings.ToLower(name)+".example")
	uid := fmt.Sprint(user.ID)
	s.admin(t, nil, "member", "add", "--org", org.ID, "--user", uid, "--level", "owner")
	var key struct{ Value string }
	s.admin(t, &key, "key", "create", "--user", uid, "--scopes", "organization:write", "--orgs", org.ID)
	return key.Value
}

type tenantRecord struct {
	ID          string    `json:"id"`
	Domain      string    `json:"domain"`
	TargetCNAME string    `json:"target_cname"`
	Status      string    `json:"status"`
	Message     *string   `json:"message"`
	UpdatedAt   time.Time `json:"updated_at"`
}

func (r tenantRecord) msg() string {
	if r.Message == nil {
		return ""
	}
	return *r.Message
}

// createPointed creates a record with the key and points its CNAME.
func (w *acmeWorld) createPointed(t *testing.T, s *server, key, domain string) tenantRecord {
	t.Helper()
	var rec tenantRecord
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"`+domain+`"}`, &rec); code != 201 {
		t.Fatalf("create %s: %d", domain, code)
	}
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	return rec
}

// waitRecord polls the record through the API until cond holds.
func (s *server) waitRecord(t *testing.T, key, id, what string, cond func(tenantRecord) bool) tenantRecord {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	var rec tenantRecord
	for time.Now().Before(deadline) {
		if code := s.request(t, key, "GET", "/api/organizations/@current/proxy_records/"+id+"/", "", &rec); code == 200 && cond(rec) {
			return rec
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("record %s never became %s (last %+v, message %q)\n%s", id, what, rec, rec.msg(), s.stderr)
	return rec
}

// metric reads one unlabelled sample from the server's /metrics.
func (s *server) metric(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(s.api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s: %q", name, v)
			}
			return f
		}
	}
	t.Fatalf("no %s in /metrics", name)
	return 0
}

// TestCAHoldsAcrossRestart replays, against the real binary, a tenant
// whose orders make the CA rate limit: first one of its names (a
// duplicate-certificate limit), then the whole account with a Retry-After
// in 2030. The name's limit holds only that name: another tenant's record
// goes valid. The account's pause is capped at 24 hours and is not written
// into the other tenant's schedule or message. After kill -9 the store
// holds both limits, and the restarted server keeps the pause (same end,
// still at most 24 hours from the order) and sends the CA nothing while
// the other tenant's record keeps coming due.
func TestCAHoldsAcrossRestart(t *testing.T) {
	w, proxy := newFaultWorld(t)
	dir := t.TempDir()
	s := startServer(t, dir, w.args...)
	keyA := s.key(t)
	keyB := newTenantKey(t, s, "Bystander")

	// A per-name limit: only A's name is held.
	dupUntil := time.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
	proxy.LimitName("www.dup-shop.com", certstest.DuplicateCertificate, dupUntil)
	a1 := w.createPointed(t, s, keyA, "www.dup-shop.com")
	ra := s.waitRecord(t, keyA, a1.ID, "rate limited", func(r tenantRecord) bool {
		return r.Status == "issuing" && strings.Contains(r.msg(), "The CA said: too many certificates (5) already issued for this exact set of identifiers")
	})
	b1 := w.createPointed(t, s, keyB, "www.calm-shop.com")
	s.waitRecord(t, keyB, b1.ID, "valid", func(r tenantRecord) bool { return r.Status == "valid" })
	if want := "rate limiting certificates for www.dup-shop.com: rate limited until " + dupUntil.Format(time.RFC3339); !strings.Contains(ra.msg(), want) {
		t.Errorf("A's message %q lacks %q", ra.msg(), want)
	}
	if got := s.metric(t, "edgeproxy_acme_paused_until_seconds"); got != 0 {
		t.Errorf("edgeproxy_acme_paused_until_seconds = %v after a limit on one name", got)
	}

	// An account-wide limit until 2030: every order paused, for 24 h.
	proxy.Set(certstest.Fault{Mode: certstest.RateLimited, Until: time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC), Paths: []string{certstest.NewOrderPath}})
	start := time.Now()
	a2 := w.createPointed(t, s, keyA, "www.first-shop.com")
	s.waitRecord(t, keyA, a2.ID, "paused by the account's limit", func(r tenantRecord) bool {
		return strings.Contains(r.msg(), "The CA said: too many new orders")
	})
	pauseEnd := s.metric(t, "edgeproxy_acme_paused_until_seconds")
	if lo, hi := float64(start.Add(24*time.Hour).Unix()-1), float64(time.Now().Add(24*time.Hour).Unix()); pauseEnd < lo || pauseEnd > hi {
		t.Fatalf("edgeproxy_acme_paused_until_seconds = %v, want 24 h after the order (%v..%v), not 2030", pauseEnd, lo, hi)
	}
	b2 := w.createPointed(t, s, keyB, "www.second-shop.com")
	rb := s.waitRecord(t, keyB, b2.ID, "held by the pause", func(r tenantRecord) bool {
		return r.Status == "issuing" && strings.Contains(r.msg(), "every certificate order is rate limited until")
	})
	if m := rb.msg(); strings.Contains(m, "The CA said") || strings.Contains(m, "too many") || strings.Contains(m, "first-shop") || strings.Contains(m, "dup-shop") {
		t.Errorf("B's message carries A's orders: %q", m)
	}
	orders := proxy.NewOrders("")
	s.kill9(t)

	// What the kill left: both limits stored; B's schedule free of them.
	st, err := store.Open(filepath.Join(dir, "edgeproxy.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	holds, err := st.CAHolds(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var account, name *store.CAHold
	for i, h := range holds {
		switch h.Scope {
		case "account":
			account = &holds[i]
		case "name":
			name = &holds[i]
		}
	}
	if account == nil || float64(account.Until.Unix()) != pauseEnd || !account.Capped {
		t.Errorf("stored account hold = %+v, want the capped pause until %v", account, pauseEnd)
	}
	if name == nil || name.Subject != "www.dup-shop.com" || !name.Until.Equal(dupUntil) {
		t.Errorf("stored name hold = %+v, want www.dup-shop.com until %v", name, dupUntil)
	}
	recB, err := st.Record(b2.ID)
	if err != nil {
		t.Fatal(err)
	}
	if end := time.Unix(int64(pauseEnd), 0); !recB.NextCheckAt.Before(end.Add(-23 * time.Hour)) {
		t.Errorf("B's next check %v: the pause's end %v was written into its schedule", recB.NextCheckAt, end)
	}
	st.Close()

	s2 := startServer(t, dir, w.args...)
	if got := s2.metric(t, "edgeproxy_acme_paused_until_seconds"); got != pauseEnd {
		t.Errorf("after the restart edgeproxy_acme_paused_until_seconds = %v, want the stored %v", got, pauseEnd)
	}
	// B comes due again and again (every --recheck-max) and asks nothing.
	seen := rb.UpdatedAt
	for range 3 {
		r := s2.waitRecord(t, keyB, b2.ID, "looked at again", func(r tenantRecord) bool { return r.UpdatedAt.After(seen) })
		if r.Status != "issuing" || !strings.Contains(r.msg(), "every certificate order is rate limited until") || strings.Contains(r.msg(), "The CA said") {
			t.Errorf("after the restart B is %s: %q", r.Status, r.msg())
		}
		seen = r.UpdatedAt
	}
	if got := proxy.NewOrders(""); got != orders {
		t.Errorf("after the restart the CA got %d new orders during the stored pause", got-orders)
	}
	if got := proxy.NewOrders("www.dup-shop.com"); got != 1 {
		t.Errorf("%d orders for the name under its limit, want 1", got)
	}
	t.Logf("figures: Retry-After 2030; pause %.1f h, kept across kill -9; new orders at the CA: %d before the kill, %d after",
		time.Unix(int64(pauseEnd), 0).Sub(start).Hours(), orders, proxy.NewOrders("")-orders)
}
