package diagnose_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/store"
)

// checkIDs are the checks of a report, in order.
var checkIDs = []string{"cname", "ownership", "dcv_delegation", "caa", "http_challenge", "certificate", "live"}

// postDiagnose sends POST …/proxy_records/{id}/diagnose/ with key to srv.
func postDiagnose(t *testing.T, srv *httptest.Server, key, org, id string) (int, http.Header, []byte) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/api/organizations/"+org+"/proxy_records/"+id+"/diagnose/", nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, resp.Header, body
}

// diagnoseRecord runs the diagnosis of record id through env's API,
// checks the report's exact shape and returns it.
func diagnoseRecord(t *testing.T, env *lifecycleEnv, id string) diagnose.Report {
	t.Helper()
	start := time.Now()
	code, _, body := postDiagnose(t, env.API, env.Key, "@current", id)
	if elapsed := time.Since(start); elapsed > 5500*time.Millisecond {
		t.Errorf("the diagnosis took %v, want about 5 s at most", elapsed)
	}
	if code != http.StatusOK {
		t.Fatalf("diagnose: status %d: %s", code, body)
	}
	checkReportShape(t, body)
	var rep diagnose.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		t.Fatal(err)
	}
	return rep
}

// fields returns the sorted keys of a JSON object, failing the test if raw
// is not one.
func fields(t *testing.T, what string, raw json.RawMessage) map[string]json.RawMessage {
	t.Helper()
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		t.Fatalf("%s is not a JSON object: %s", what, raw)
	}
	return obj
}

func wantFields(t *testing.T, what string, obj map[string]json.RawMessage, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := slices.Sorted(maps.Keys(obj)); !slices.Equal(got, want) {
		t.Errorf("%s has fields %v, want exactly %v", what, got, want)
	}
}

// checkReportShape holds a report to its documented shape: exactly these
// fields at every level, the checks in order, statuses from their sets,
// null where docs/API.md allows null and nowhere else.
func checkReportShape(t *testing.T, body []byte) {
	t.Helper()
	rep := fields(t, "the report", body)
	wantFields(t, "the report", rep, "ran_at", "summary", "checks")
	var ranAt string
	if err := json.Unmarshal(rep["ran_at"], &ranAt); err != nil {
		t.Errorf("ran_at %s is not a string", rep["ran_at"])
	} else if ts, err := time.Parse(time.RFC3339, ranAt); err != nil || ts.Location() != time.UTC {
		t.Errorf("ran_at %q is not RFC 3339 in UTC", ranAt)
	}

	sum := fields(t, "summary", rep["summary"])
	wantFields(t, "summary", sum, "status", "primary_issue", "next_action")
	var status string
	json.Unmarshal(sum["status"], &status)
	if !slices.Contains([]string{"healthy", "warn", "fail"}, status) {
		t.Errorf("summary.status %s", sum["status"])
	}
	for _, f := range []string{"primary_issue", "next_action"} {
		var s *string
		if err := json.Unmarshal(sum[f], &s); err != nil {
			t.Errorf("summary.%s %s is neither a string nor null", f, sum[f])
		}
		if status == "healthy" && s != nil {
			t.Errorf("a healthy summary has %s %q", f, *s)
		}
	}

	var checks []json.RawMessage
	if err := json.Unmarshal(rep["checks"], &checks); err != nil {
		t.Fatalf("checks %s is not an array", rep["checks"])
	}
	var ids []string
	for i, raw := range checks {
		c := fields(t, "a check", raw)
		wantFields(t, "a check", c, "id", "name", "status", "detail", "remediation")
		var id, name, st, detail string
		json.Unmarshal(c["id"], &id)
		json.Unmarshal(c["name"], &name)
		json.Unmarshal(c["status"], &st)
		json.Unmarshal(c["detail"], &detail)
		ids = append(ids, id)
		if name == "" || detail == "" {
			t.Errorf("checks[%d] (%s): empty name or detail: %s", i, id, raw)
		}
		if !slices.Contains([]string{"pass", "warn", "fail", "skip"}, st) {
			t.Errorf("checks[%d] (%s): status %q", i, id, st)
		}
		if string(c["remediation"]) == "null" {
			if st == "fail" || st == "warn" {
				t.Errorf("checks[%d] (%s): %s with no remediation", i, id, st)
			}
			continue
		}
		rem := fields(t, id+".remediation", c["remediation"])
		wantFields(t, id+".remediation", rem, "type", "summary", "records")
		var typ, summary string
		json.Unmarshal(rem["type"], &typ)
		json.Unmarshal(rem["summary"], &summary)
		if !slices.Contains([]string{"dns", "config", "wait", "retry"}, typ) || summary == "" {
			t.Errorf("%s.remediation: type %q, summary %q", id, typ, summary)
		}
		var records []json.RawMessage
		if err := json.Unmarshal(rem["records"], &records); err != nil || records == nil {
			t.Errorf("%s.remediation.records %s is not an array", id, rem["records"])
		}
		for _, r := range records {
			wantFields(t, id+".remediation.records[]", fields(t, "a record", r), "name", "type", "value")
		}
	}
	if !slices.Equal(ids, checkIDs) {
		t.Errorf("checks %v, want %v", ids, checkIDs)
	}
}

// byID returns the report's check id.
func byID(t *testing.T, rep diagnose.Report, id string) diagnose.Check {
	t.Helper()
	for _, c := range rep.Checks {
		if c.ID == id {
			return c
		}
	}
	t.Fatalf("no check %q in the report", id)
	return diagnose.Check{}
}

// wantStatuses checks the status of every check, in checkIDs order.
func wantStatuses(t *testing.T, rep diagnose.Report, want ...string) {
	t.Helper()
	var got []string
	for _, c := range rep.Checks {
		got = append(got, c.Status)
	}
	if !slices.Equal(got, want) {
		for _, c := range rep.Checks {
			t.Logf("%s: %s: %s", c.ID, c.Status, c.Detail)
		}
		t.Errorf("check statuses %v, want %v (in the order %v)", got, want, checkIDs)
	}
}

// wantSummary checks that the summary points at check id.
func wantSummary(t *testing.T, rep diagnose.Report, status, id string) {
	t.Helper()
	s := rep.Summary
	if s.Status != status {
		t.Errorf("summary status %q, want %q", s.Status, status)
	}
	c := byID(t, rep, id)
	if s.PrimaryIssue == nil || *s.PrimaryIssue != c.Detail {
		t.Errorf("primary_issue %v, want the %s detail %q", s.PrimaryIssue, id, c.Detail)
	}
	if c.Remediation == nil || s.NextAction == nil || *s.NextAction != c.Remediation.Summary {
		t.Errorf("next_action %v, want the %s remediation's summary", s.NextAction, id)
	}
}

func TestDiagnoseWaitingWithoutCNAME(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "diag.shop.example.com")
	rep := diagnoseRecord(t, env, rec.ID)

	wantStatuses(t, rep, "fail", "skip", "skip", "pass", "skip", "skip", "skip")
	wantSummary(t, rep, "fail", "cname")
	cname := byID(t, rep, "cname")
	if cname.Remediation == nil || cname.Remediation.Type != "dns" {
		t.Fatalf("cname remediation %+v, want type dns", cname.Remediation)
	}
	want := []diagnose.DNSRecord{{Name: "diag.shop.example.com", Type: "CNAME", Value: rec.TargetCNAME}}
	if got := cname.Remediation.Records; !slices.Equal(got, want) {
		t.Errorf("cname remediation records %+v, want %+v", got, want)
	}
	if cert := byID(t, rep, "certificate"); cert.Remediation == nil || cert.Remediation.Type != "wait" {
		t.Errorf("certificate of a waiting record: remediation %+v, want type wait", cert.Remediation)
	}
	if r, _ := env.Store.Record(rec.ID); r.Status != store.StatusWaiting {
		t.Errorf("the diagnosis moved the record to %s", r.Status)
	}
}

func TestDiagnoseValidIsHealthy(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "ok.shop.example.com")
	env.DNS.SetCNAME("ok.shop.example.com", rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)

	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "pass", "pass", "skip", "pass", "pass", "pass", "pass")
	if s := rep.Summary; s.Status != "healthy" || s.PrimaryIssue != nil || s.NextAction != nil {
		t.Errorf("summary %+v, want healthy with nothing to do", s)
	}
	for _, c := range rep.Checks {
		if c.Remediation != nil {
			t.Errorf("healthy report: %s has a remediation %+v", c.ID, c.Remediation)
		}
	}
	if d := byID(t, rep, "http_challenge").Detail; !strings.Contains(d, "127.0.0.1") {
		t.Errorf("http_challenge detail %q does not name the address reached", d)
	}
}

func TestDiagnoseCAAForbids(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "caa.shop.example.com")
	env.DNS.SetCAA("shop.example.com", 0, "issue", "other-ca.example")
	env.DNS.SetCNAME("caa.shop.example.com", rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusErroring)

	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "pass", "pass", "skip", "fail", "pass", "warn", "skip")
	wantSummary(t, rep, "fail", "caa")
	caa := byID(t, rep, "caa")
	if caa.Remediation == nil || caa.Remediation.Type != "dns" {
		t.Fatalf("caa remediation %+v, want type dns", caa.Remediation)
	}
	want := []diagnose.DNSRecord{{Name: "shop.example.com", Type: "CAA", Value: `0 issue "` + certstest.CAAIdentity + `"`}}
	if got := caa.Remediation.Records; !slices.Equal(got, want) {
		t.Errorf("caa remediation records %+v, want %+v", got, want)
	}
	if !strings.Contains(caa.Remediation.Summary, "retry") {
		t.Errorf("caa remediation %q of an erroring record does not say to retry", caa.Remediation.Summary)
	}
	if cert := byID(t, rep, "certificate"); cert.Remediation == nil || cert.Remediation.Type != "retry" {
		t.Errorf("certificate of an erroring record: remediation %+v, want type retry", cert.Remediation)
	}
}

func TestDiagnoseCNAMERemoved(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "gone.shop.example.com")
	env.DNS.SetCNAME("gone.shop.example.com", rec.TargetCNAME)
	env.WaitStatus(t, rec.ID, store.StatusValid)
	env.DNS.Remove("gone.shop.example.com")

	rep := diagnoseRecord(t, env, rec.ID)
	wantStatuses(t, rep, "fail", "skip", "skip", "pass", "skip", "pass", "pass")
	wantSummary(t, rep, "fail", "cname")
	if got := byID(t, rep, "cname").Remediation.Records; len(got) != 1 || got[0].Value != rec.TargetCNAME {
		t.Errorf("cname remediation records %+v", got)
	}
}

func TestDiagnoseResolverFailure(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "down.shop.example.com")
	env.DNS.SetRcode("down.shop.example.com", dns.RcodeServerFailure)

	rep := diagnoseRecord(t, env, rec.ID)
	cname := byID(t, rep, "cname")
	if cname.Status != "warn" || cname.Remediation == nil || cname.Remediation.Type != "wait" || len(cname.Remediation.Records) != 0 {
		t.Errorf("cname on SERVFAIL: %s, remediation %+v; want warn, type wait, no records", cname.Status, cname.Remediation)
	}
	if strings.Contains(cname.Detail, "Add this record") {
		t.Errorf("cname detail %q asks the customer to change DNS for a resolver failure", cname.Detail)
	}
	wantSummary(t, rep, "warn", "cname")
	for _, id := range []string{"http_challenge", "certificate", "live"} {
		if c := byID(t, rep, id); c.Status != "skip" {
			t.Errorf("%s: %s, want skip: %s", id, c.Status, c.Detail)
		}
	}
}

func TestDiagnoseCertificateExpiry(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "exp.shop.example.com")
	env.DNS.SetCNAME("exp.shop.example.com", rec.TargetCNAME)
	r := env.WaitStatus(t, rec.ID, store.StatusValid)
	notAfter, ok := env.Certs.Info(r.Domain)
	if !ok {
		t.Fatal("no certificate held for a valid record")
	}
	for _, tt := range []struct {
		now  time.Time
		want string
	}{
		{notAfter.Add(-30 * 24 * time.Hour), "pass"},
		{notAfter.Add(-10 * 24 * time.Hour), "warn"},
		{notAfter.Add(time.Hour), "fail"},
	} {
		d := clone(env.Diagnoser)
		d.Now = func() time.Time { return tt.now }
		rep := d.Run(context.Background(), r)
		if c := byID(t, rep, "certificate"); c.Status != tt.want || !strings.Contains(c.Detail, notAfter.UTC().Format(time.RFC3339)) {
			t.Errorf("%v before expiry: certificate %s %q, want %s naming the expiry", notAfter.Sub(tt.now), c.Status, c.Detail, tt.want)
		}
	}
}

// TestDiagnoseBounded makes every network check slow at once: DNS answers
// after 1.5 s (the CAA climb needs several answers), and the HTTP and TLS
// listeners accept connections but never answer. The report still comes
// within 5 s, each slow check reported rather than waited for.
func TestDiagnoseBounded(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "slow.shop.example.com")
	env.DNS.SetCNAME("slow.shop.example.com", rec.TargetCNAME)
	r := env.WaitStatus(t, rec.ID, store.StatusValid)

	slow := dnstest.Start(t)
	slow.SetCNAME("slow.shop.example.com", rec.TargetCNAME)
	slow.SetA(rec.TargetCNAME, "127.0.0.1")
	slow.SetDelay(1500 * time.Millisecond)
	verifier, err := dnsverify.New([]string{slow.Addr()}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	hang, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer hang.Close()
	go func() {
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := hang.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()

	d := clone(env.Diagnoser)
	d.DNS = verifier
	d.HTTPAddr = hang.Addr().String()
	d.HTTPSAddr = hang.Addr().String()
	start := time.Now()
	rep := d.Run(context.Background(), r)
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("the diagnosis took %v, want at most 5 s", elapsed)
	}
	wantStatuses(t, rep, "pass", "pass", "skip", "warn", "fail", "pass", "fail")
}

func TestDiagnoseAuthorization(t *testing.T) {
	env := newLifecycleEnv(t, nil)
	rec := env.Create(t, "auth.shop.example.com")
	org, err := env.Store.Org(mustOrgOf(t, env, rec.ID))
	if err != nil {
		t.Fatal(err)
	}

	t.Run("a plain member with a read key", func(t *testing.T) {
		u, _ := env.Store.CreateUser("member@lifecycle.test")
		env.Store.SetMembership(org.ID, u.ID, store.LevelMember)
		k, value := control.NewKey(u.ID, "read", []string{control.ScopeOrgRead}, nil)
		if _, err := env.Store.CreateKey(k); err != nil {
			t.Fatal(err)
		}
		code, _, body := postDiagnose(t, env.API, value, org.ID, rec.ID)
		if code != http.StatusOK {
			t.Fatalf("status %d: %s", code, body)
		}
		checkReportShape(t, body)
	})

	t.Run("another organization's record", func(t *testing.T) {
		other, err := env.Store.CreateOrg("Other", nil)
		if err != nil {
			t.Fatal(err)
		}
		theirs, err := env.Store.CreateRecord(store.Record{
			OrgID:       other.ID,
			Domain:      "theirs.example.org",
			TargetCNAME: control.TargetCNAME(other.ID, "theirs.example.org", lifecycleBase),
			Status:      store.StatusWaiting,
		}, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, id := range []string{theirs.ID, store.NewID(), "not-a-uuid"} {
			code, _, body := postDiagnose(t, env.API, env.Key, "@current", id)
			if want := `{"type":"invalid_request","code":"not_found","detail":"Not found.","attr":null}` + "\n"; code != http.StatusNotFound || string(body) != want {
				t.Errorf("record %s: %d %s, want 404 %s", id, code, body, want)
			}
		}
	})

	t.Run("no key", func(t *testing.T) {
		code, _, _ := postDiagnose(t, env.API, "", "@current", rec.ID)
		if code != http.StatusUnauthorized {
			t.Errorf("status %d, want 401", code)
		}
	})

	t.Run("GET is not allowed", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodGet, env.API.URL+"/api/organizations/@current/proxy_records/"+rec.ID+"/diagnose", nil)
		req.Header.Set("Authorization", "Bearer "+env.Key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "POST" {
			t.Errorf("GET: %d, Allow %q; want 405, Allow POST", resp.StatusCode, resp.Header.Get("Allow"))
		}
	})

	t.Run("no Diagnoser", func(t *testing.T) {
		srv := httptest.NewServer(control.NewAPI(env.Store, control.Config{TargetCNAMEBase: lifecycleBase, MaxProxyRecords: 2,
			Logger: slog.New(slog.DiscardHandler)}))
		defer srv.Close()
		code, hdr, body := postDiagnose(t, srv, env.Key, "@current", rec.ID)
		want := `{"type":"server_error","code":"unavailable","detail":"Diagnostics are not available on this server.","attr":null}` + "\n"
		if code != http.StatusServiceUnavailable || string(body) != want {
			t.Errorf("%d %s, want 503 %s", code, body, want)
		}
		if ct := hdr.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
	})
}

// mustOrgOf returns the organization of record id.
func mustOrgOf(t *testing.T, env *lifecycleEnv, id string) string {
	t.Helper()
	r, err := env.Store.Record(id)
	if err != nil {
		t.Fatal(err)
	}
	return r.OrgID
}

func TestProbes(t *testing.T) {
	get := func(p *diagnose.Probes, method, path string) (bool, *httptest.ResponseRecorder) {
		w := httptest.NewRecorder()
		r := httptest.NewRequest(method, "http://e.example.com"+path, nil)
		return p.Handle(w, r), w
	}
	const prefix = "/.well-known/acme-challenge/edgeproxy-probe-"
	var p diagnose.Probes
	token, release := p.Register(time.Minute)
	if token == "" {
		t.Fatal("empty token")
	}
	if ok, w := get(&p, http.MethodGet, prefix+token); !ok || w.Code != http.StatusOK || w.Body.String() != token {
		t.Errorf("registered token: handled %t, %d %q; want 200 with the token", ok, w.Code, w.Body.String())
	}
	other, releaseOther := p.Register(time.Minute)
	defer releaseOther()
	if other == token {
		t.Error("two registrations got the same token")
	}
	for _, tt := range []struct{ method, path string }{
		{http.MethodPost, prefix + token},
		{http.MethodGet, prefix + token + "x"},
		{http.MethodGet, prefix},
		{http.MethodGet, "/.well-known/acme-challenge/" + token},
		{http.MethodGet, "/"},
	} {
		if ok, _ := get(&p, tt.method, tt.path); ok {
			t.Errorf("%s %s was handled", tt.method, tt.path)
		}
	}
	release()
	if ok, _ := get(&p, http.MethodGet, prefix+token); ok {
		t.Error("a released token is still answered")
	}
	expired, _ := p.Register(0)
	if ok, _ := get(&p, http.MethodGet, prefix+expired); ok {
		t.Error("an expired token is answered")
	}
	if ok, _ := get(&p, http.MethodGet, prefix+other); !ok {
		t.Error("releasing one token dropped another")
	}
	var none *diagnose.Probes
	if ok, _ := get(none, http.MethodGet, prefix+other); ok {
		t.Error("a nil Probes answered")
	}
}

// clone is a Diagnoser configured as d, with limits of its own.
func clone(d *diagnose.Diagnoser) *diagnose.Diagnoser {
	return &diagnose.Diagnoser{DNS: d.DNS, Certs: d.Certs, CAAIdentities: d.CAAIdentities,
		HTTPAddr: d.HTTPAddr, HTTPSAddr: d.HTTPSAddr, Probes: d.Probes, Now: d.Now}
}
