package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	mathrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/certmagic"
	"github.com/mholt/acmez/v3/acme"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/internal/testcert"
	"github.com/edgeproxy/edgeproxy/store"
)

// dbFile is the database in a node's data dir (cmd/edgeproxy's dbFile).
const dbFile = "edgeproxy.db"

// targetBase is the nodes' --target-cname-base.
const targetBase = "proxy.scale.example.net"

// seedWriters is how many goroutines write records and certificates at
// once: the store's Batch groups their writes into a few large
// transactions, one fsync each.
const seedWriters = 512

// seeded is the data directory seed built.
type seeded struct {
	dir    string
	dbPath string
	// valid lists the valid records' domains, in the shuffled order the
	// records were made; the handshakes take names from it.
	valid  []string
	counts map[store.Status]int
	size   int64         // bytes of edgeproxy.db
	took   time.Duration // to build it all
}

// seed builds the data dir in dir: c.Orgs organizations under one owner
// and c.Records records spread over them (c.Valid valid with their
// certificates, c.Waiting waiting, the rest erroring and timed_out, in a
// shuffled order), through the store's API. caURL is the --acme-ca the
// nodes get, whose issuer key the certificates are stored under.
func seed(ctx context.Context, dir string, c config, caURL string, ca *testcert.CA, log io.Writer) (*seeded, error) {
	began := time.Now()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	s := &seeded{dir: dir, dbPath: filepath.Join(dir, dbFile)}
	st, err := store.Open(s.dbPath, store.Options{})
	if err != nil {
		return nil, err
	}
	defer st.Close()

	user, err := st.CreateUser("scale@example.com")
	if err != nil {
		return nil, err
	}
	limit := (c.Records + c.Orgs - 1) / c.Orgs
	orgs := make([]store.Org, c.Orgs)
	for i := range orgs {
		if orgs[i], err = st.CreateOrg(fmt.Sprintf("Scale %05d", i), &limit); err != nil {
			return nil, err
		}
		if _, err := st.SetMembership(orgs[i].ID, user.ID, store.LevelOwner); err != nil {
			return nil, err
		}
	}
	progress(log, "seed: %d organizations made in %v", c.Orgs, time.Since(began).Round(time.Millisecond))

	// The mix, shuffled so that valid records are spread over the
	// organizations and the store's key space as a real history leaves
	// them. A fixed seed: every invocation builds the same mix.
	statuses := make([]store.Status, c.Records)
	for i := range statuses {
		switch {
		case i < c.Valid:
			statuses[i] = store.StatusValid
		case i < c.Valid+c.Waiting:
			statuses[i] = store.StatusWaiting
		case i%2 == 0:
			statuses[i] = store.StatusErroring
		default:
			statuses[i] = store.StatusTimedOut
		}
	}
	rng := mathrand.New(mathrand.NewPCG(1, 2))
	rng.Shuffle(len(statuses), func(i, j int) { statuses[i], statuses[j] = statuses[j], statuses[i] })

	storage := certs.NewStorage(st, certs.StorageOptions{})
	issuerKey := (&certmagic.ACMEIssuer{CA: caURL}).IssuerKey()
	now := st.Now()
	var (
		next     atomic.Int64
		done     atomic.Int64
		wg       sync.WaitGroup
		errOnce  sync.Once
		firstErr error
		failed   atomic.Bool
	)
	fail := func(err error) {
		errOnce.Do(func() { firstErr = err })
		failed.Store(true)
	}
	stopProgress := make(chan struct{})
	go func() {
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-stopProgress:
				return
			case <-t.C:
				progress(log, "seed: %d of %d records", done.Load(), c.Records)
			}
		}
	}()
	for range seedWriters {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= c.Records || failed.Load() || ctx.Err() != nil {
					return
				}
				org := orgs[i%c.Orgs]
				r := store.Record{
					OrgID:          org.ID,
					Domain:         fmt.Sprintf("e%06d.org%05d.example.com", i, i%c.Orgs),
					Status:         statuses[i],
					CreatedBy:      &user.ID,
					OwnershipToken: store.NewOwnershipToken(),
					WaitingSince:   now.Add(-mathrand.N(6 * 24 * time.Hour)),
				}
				r.TargetCNAME = control.TargetCNAME(org.ID, r.Domain, targetBase)
				switch r.Status {
				case store.StatusValid:
					// 90 days, issued 10 days ago: no renewal is due.
					cert, err := ca.Issue(now.Add(-10*24*time.Hour), now.Add(80*24*time.Hour), r.Domain)
					if err != nil {
						fail(err)
						return
					}
					meta, err := json.MarshalIndent(certmagic.CertificateResource{
						SANs:       []string{r.Domain},
						IssuerData: mustJSON(acme.Certificate{URL: caURL + "/cert/" + strconv.Itoa(i), CA: caURL}),
					}, "", "\t")
					if err != nil {
						fail(err)
						return
					}
					// The keys and contents certmagic's saveCertResource
					// writes, and CacheManagedCertificate reads.
					for _, kv := range []struct {
						key   string
						value []byte
					}{
						{certmagic.StorageKeys.SitePrivateKey(issuerKey, r.Domain), cert.KeyPEM},
						{certmagic.StorageKeys.SiteCert(issuerKey, r.Domain), cert.ChainPEM},
						{certmagic.StorageKeys.SiteMeta(issuerKey, r.Domain), meta},
					} {
						if err := storage.Store(ctx, kv.key, kv.value); err != nil {
							fail(err)
							return
						}
					}
					r.IssuingSince = cert.Leaf.NotBefore
					r.CertNotAfter = cert.Leaf.NotAfter
					// The monitor's next visit, spread over a day as the
					// records' ages spread it, and at least an hour away:
					// none falls in the measurement.
					r.NextCheckAt = now.Add(time.Hour + mathrand.N(23*time.Hour))
				case store.StatusWaiting:
					r.Message = ptr(fmt.Sprintf("DNS shows no CNAME for %s. Add a CNAME record: %s → %s.", r.Domain, r.Domain, r.TargetCNAME))
					r.Checks = 20
					// Waiting a while: checked every --recheck-max (5 m),
					// so due within the next five minutes.
					r.NextCheckAt = now.Add(mathrand.N(5 * time.Minute))
				case store.StatusErroring:
					r.IssuingSince = r.WaitingSince
					r.Message = ptr("The certificate authority refused the order: CAA records for " + r.Domain + " forbid letsencrypt.org.")
				case store.StatusTimedOut:
					r.Message = ptr(fmt.Sprintf("DNS did not point %s at %s within 168h0m0s. Add a CNAME record: %s → %s, then retry.",
						r.Domain, r.TargetCNAME, r.Domain, r.TargetCNAME))
				}
				if _, err := st.CreateRecord(r, limit); err != nil {
					fail(err)
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	close(stopProgress)
	if firstErr != nil {
		return nil, fmt.Errorf("seed: %w", firstErr)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := storage.Close(); err != nil {
		return nil, err
	}

	if s.counts, err = st.CountRecordsByStatus(); err != nil {
		return nil, err
	}
	want := map[store.Status]int{}
	for _, stt := range statuses {
		want[stt]++
	}
	for _, stt := range store.Statuses {
		if s.counts[stt] != want[stt] {
			return nil, fmt.Errorf("seed: %d %s records in the store, %d made", s.counts[stt], stt, want[stt])
		}
	}
	recs, err := st.Records(func(r *store.Record) bool { return r.Status == store.StatusValid })
	if err != nil {
		return nil, err
	}
	// In creation order (Seq is per organization; the domain carries i).
	byDomain := make(map[string]bool, len(recs))
	for _, r := range recs {
		byDomain[r.Domain] = true
	}
	for i, stt := range statuses {
		if stt == store.StatusValid {
			d := fmt.Sprintf("e%06d.org%05d.example.com", i, i%c.Orgs)
			if !byDomain[d] {
				return nil, fmt.Errorf("seed: valid record %s missing", d)
			}
			s.valid = append(s.valid, d)
		}
	}

	// The layout is what the certificate manager loads: read a few back
	// through it, as the nodes will.
	cm, err := certs.New(st, certs.Config{CA: caURL})
	if err != nil {
		return nil, err
	}
	for _, d := range []string{s.valid[0], s.valid[len(s.valid)/2], s.valid[len(s.valid)-1]} {
		if _, err := cm.Load(ctx, d); err != nil {
			cm.Close()
			return nil, fmt.Errorf("seed: the certificate written for %s is not what certs.Manager loads: %w", d, err)
		}
	}
	if err := cm.Close(); err != nil {
		return nil, err
	}
	if err := st.Check(); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	if err := st.Close(); err != nil {
		return nil, err
	}
	fi, err := os.Stat(s.dbPath)
	if err != nil {
		return nil, err
	}
	s.size = fi.Size()
	s.took = time.Since(began)
	return s, nil
}

// copyFile copies the file src to dst (a fresh data dir's database).
func copyFile(dst, src string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o700); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return errors.Join(out.Sync(), out.Close())
}

func mustJSON(v any) json.RawMessage {
	data, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return data
}

func ptr(s string) *string { return &s }
