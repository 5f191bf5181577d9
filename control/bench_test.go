package control

import (
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/edgeproxy/edgeproxy/store"
)

// The benchmarks below drive the management API through API.ServeHTTP
// with httptest recorders: no network, but everything else is real — key
// authentication, the organization and membership checks, JSON, and a
// bbolt file in b.TempDir() with fsync on every commit (the store never
// turns it off). Each reports ops/s besides ns/op. docs/PERFORMANCE.md
// holds the numbers and the goals they are held to.
//
//	go test -run '^$' -bench . -benchtime 3s ./control/

// benchClients is the number of concurrent API clients BenchmarkCreate
// simulates.
const benchClients = 32

// benchEnv is an API over a fresh store with one organization, a user who
// owns it and a key of that user.
type benchEnv struct {
	st   *store.Store
	api  *API
	org  store.Org
	user store.User
	auth string // the Authorization header's value
}

// newBenchEnv opens a fresh store in b.TempDir(). The organization's limit
// is orgMax, so a benchmark can create as many records as it needs.
func newBenchEnv(b *testing.B, orgMax int) *benchEnv {
	b.Helper()
	st, err := store.Open(filepath.Join(b.TempDir(), "edgeproxy.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { st.Close() })
	org, err := st.CreateOrg("bench", &orgMax)
	if err != nil {
		b.Fatal(err)
	}
	user, err := st.CreateUser("bench@example.com")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := st.SetMembership(org.ID, user.ID, store.LevelOwner); err != nil {
		b.Fatal(err)
	}
	key, value := NewKey(user.ID, "bench", []string{ScopeAll}, nil)
	if _, err := st.CreateKey(key); err != nil {
		b.Fatal(err)
	}
	api := NewAPI(st, Config{
		TargetCNAMEBase: "proxy.example.net",
		MaxProxyRecords: 10,
		Logger:          slog.New(slog.DiscardHandler),
	})
	return &benchEnv{st: st, api: api, org: org, user: user, auth: "Bearer " + value}
}

// do serves one request and returns the recorder.
func (e *benchEnv) do(method, path, body string) *httptest.ResponseRecorder {
	var r *http.Request
	if body == "" {
		r = httptest.NewRequest(method, path, nil)
	} else {
		r = httptest.NewRequest(method, path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
	}
	r.Header.Set("Authorization", e.auth)
	w := httptest.NewRecorder()
	e.api.ServeHTTP(w, r)
	return w
}

// benchFailure reports the first unexpected response of a parallel
// benchmark (b.Fatal may not be called from its goroutines) and stays
// quiet about the rest.
type benchFailure struct{ once sync.Once }

func (f *benchFailure) check(b *testing.B, what string, w *httptest.ResponseRecorder, want int) {
	if w.Code != want {
		f.once.Do(func() { b.Errorf("%s: status %d, want %d: %s", what, w.Code, want, w.Body) })
	}
}

func reportOpsPerSecond(b *testing.B) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(b.N)/s, "ops/s")
	}
}

// BenchmarkCreate is 32 clients creating records at once, each with a
// domain of its own, into one organization with room for them all.
func BenchmarkCreate(b *testing.B) {
	e := newBenchEnv(b, 1<<30)
	path := "/api/organizations/" + e.org.ID + "/proxy_records"
	var (
		next atomic.Int64
		fail benchFailure
	)
	procs := runtime.GOMAXPROCS(0)
	b.SetParallelism((benchClients + procs - 1) / procs) // 16 on 2 CPUs
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			body := fmt.Sprintf(`{"domain": "r%d.bench.example.com"}`, next.Add(1))
			fail.check(b, "POST "+path, e.do(http.MethodPost, path, body), http.StatusCreated)
		}
	})
	b.StopTimer()
	reportOpsPerSecond(b)
}

// BenchmarkRetrieve is parallel GETs of one record.
func BenchmarkRetrieve(b *testing.B) {
	e := newBenchEnv(b, 10)
	w := e.do(http.MethodPost, "/api/organizations/"+e.org.ID+"/proxy_records", `{"domain": "e.bench.example.com"}`)
	if w.Code != http.StatusCreated {
		b.Fatalf("creating the record: %d %s", w.Code, w.Body)
	}
	recs, err := e.st.OrgRecords(e.org.ID)
	if err != nil || len(recs) != 1 {
		b.Fatalf("OrgRecords: %v, %v", recs, err)
	}
	path := "/api/organizations/" + e.org.ID + "/proxy_records/" + recs[0].ID
	var fail benchFailure
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			fail.check(b, "GET "+path, e.do(http.MethodGet, path, ""), http.StatusOK)
		}
	})
	b.StopTimer()
	reportOpsPerSecond(b)
}

// BenchmarkList lists an organization of 100 records, once in a store
// that holds only them and once in a store of 100,000 records, the rest
// spread over 999 other organizations of 100 each. The two should cost
// the same: a list reads the organization's index, not the store. A third
// case, an organization of 1,000 records, shows the cost growing with the
// organization.
func BenchmarkList(b *testing.B) {
	for _, tt := range []struct{ perOrg, total int }{
		{100, 100},
		{100, 100_000},
		{1000, 1000},
	} {
		b.Run(fmt.Sprintf("org=%d/store=%d", tt.perOrg, tt.total), func(b *testing.B) {
			e := newBenchEnv(b, tt.perOrg)
			fillStore(b, e, tt.perOrg, tt.total)
			path := "/api/organizations/" + e.org.ID + "/proxy_records"
			if w := e.do(http.MethodGet, path, ""); w.Code != http.StatusOK || strings.Count(w.Body.String(), `"domain"`) != tt.perOrg {
				b.Fatalf("GET %s: %d, want %d records: %.300s", path, w.Code, tt.perOrg, w.Body)
			}
			for b.Loop() {
				if w := e.do(http.MethodGet, path, ""); w.Code != http.StatusOK {
					b.Fatalf("GET %s: %d %s", path, w.Code, w.Body)
				}
			}
			reportOpsPerSecond(b)
		})
	}
}

// fillStore gives e's organization perOrg records and fills the store up
// to total records with other organizations of perOrg records each. Up to
// 1,000 goroutines create the records at once, so the store's Batch groups
// them into large transactions (100,000 records take seconds, not
// minutes). Nothing is cached: each benchmark builds its store afresh.
func fillStore(b *testing.B, e *benchEnv, perOrg, total int) {
	b.Helper()
	orgs := []store.Org{e.org}
	for len(orgs)*perOrg < total {
		org, err := e.st.CreateOrg(fmt.Sprintf("other-%d", len(orgs)), &perOrg)
		if err != nil {
			b.Fatal(err)
		}
		orgs = append(orgs, org)
	}
	jobs := len(orgs) * perOrg
	var (
		wg       sync.WaitGroup
		next     atomic.Int64
		failOnce sync.Once
		failed   error
	)
	for range min(jobs, 1000) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				k := int(next.Add(1)) - 1
				if k >= jobs {
					return
				}
				// Interleave the organizations, as real traffic would.
				i, j := k%len(orgs), k/len(orgs)
				domain := fmt.Sprintf("r%d.o%d.bench.example.com", j, i)
				_, err := e.st.CreateRecord(store.Record{
					OrgID:       orgs[i].ID,
					Domain:      domain,
					TargetCNAME: TargetCNAME(orgs[i].ID, domain, "proxy.example.net"),
					Status:      store.StatusWaiting,
					CreatedBy:   &e.user.ID,
				}, perOrg)
				if err != nil {
					failOnce.Do(func() { failed = err })
					return
				}
			}
		}()
	}
	wg.Wait()
	if failed != nil {
		b.Fatalf("filling the store: %v", failed)
	}
}
