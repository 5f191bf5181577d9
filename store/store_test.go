package store_test

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/edgeproxy/edgeproxy/store"
)

// clock is an injected clock: every reading is one millisecond after the
// previous one, so things made one after another have distinct, ordered
// times and no test depends on the wall clock.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

// openStore opens a store on a fresh file in t.TempDir() with an injected
// clock. The file is checked for consistency when the test ends.
func openStore(t *testing.T) *store.Store {
	t.Helper()
	return openAt(t, filepath.Join(t.TempDir(), "edgeproxy.db"), store.Options{Now: newClock().Now})
}

// openAt opens the store at path. When the test ends the store is closed
// (closing twice is harmless, so a test may close it itself), the file is
// opened afresh and bbolt's consistency check must find nothing.
func openAt(t *testing.T, path string, opts store.Options) *store.Store {
	t.Helper()
	s, err := openRaw(path, opts)
	if err != nil {
		t.Fatalf("Open(%s): %v", path, err)
	}
	t.Cleanup(func() { checkFile(t, s, path) })
	return s
}

func checkFile(t *testing.T, s *store.Store, path string) {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	again, err := openRaw(path, store.Options{})
	if err != nil {
		t.Errorf("reopening %s for the consistency check: %v", path, err)
		return
	}
	defer again.Close()
	if err := again.Check(); err != nil {
		t.Errorf("Check(%s): %v", path, err)
	}
	if err := again.CheckOutbox(); err != nil {
		t.Errorf("CheckOutbox(%s): %v", path, err)
	}
}

// mustOrg creates an organization or fails the test. max is its own limit
// of records, or nil for the default.
func mustOrg(t *testing.T, s *store.Store, name string, max *int) store.Org {
	t.Helper()
	org, err := s.CreateOrg(name, max)
	if err != nil {
		t.Fatalf("CreateOrg(%q): %v", name, err)
	}
	return org
}

func mustUser(t *testing.T, s *store.Store, email string) store.User {
	t.Helper()
	u, err := s.CreateUser(email)
	if err != nil {
		t.Fatalf("CreateUser(%q): %v", email, err)
	}
	return u
}

// noLimit is a default limit no test reaches.
const noLimit = 1 << 30

func mustRecord(t *testing.T, s *store.Store, orgID, domain string) store.Record {
	t.Helper()
	r, err := s.CreateRecord(store.Record{OrgID: orgID, Domain: domain, TargetCNAME: "t." + domain, Status: store.StatusWaiting}, noLimit)
	if err != nil {
		t.Fatalf("CreateRecord(%s): %v", domain, err)
	}
	return r
}

func intp(v int) *int { return &v }

func TestOpenCreatesPrivateDirAndFile(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "data", "edgeproxy")
	path := filepath.Join(dir, "edgeproxy.db")
	openAt(t, path, store.Options{})
	for _, tt := range []struct {
		name string
		path string
		want os.FileMode
	}{
		{"parent dir", filepath.Dir(dir), 0o700},
		{"dir", dir, 0o700},
		{"file", path, 0o600},
	} {
		fi, err := os.Stat(tt.path)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := fi.Mode().Perm(), tt.want; got != want {
			t.Errorf("%s %s: mode %v, want %v", tt.name, tt.path, got, want)
		}
	}
}

func TestOpenRecordsSchemaVersion(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	v, err := s.SchemaVersionOf()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := v, uint64(store.SchemaVersion); got != want {
		t.Errorf("SchemaVersionOf() = %d, want %d", got, want)
	}
	s.Close()

	// The version is in the file, not only in memory.
	if got, want := rawSchemaVersion(t, path), uint64(store.SchemaVersion); got != want {
		t.Errorf("schema version in the file = %d, want %d", got, want)
	}
}

// rawSchemaVersion reads the schema version with bbolt directly.
func rawSchemaVersion(t *testing.T, path string) uint64 {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v uint64
	err = db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte("meta"))
		if b == nil {
			return errors.New("no meta bucket")
		}
		raw := b.Get([]byte("schema_version"))
		if len(raw) != 8 {
			return fmt.Errorf("schema_version is %x", raw)
		}
		v = binary.BigEndian.Uint64(raw)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	newer := uint64(store.SchemaVersion + 1)
	err = db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucket([]byte("meta"))
		if err != nil {
			return err
		}
		return b.Put([]byte("schema_version"), binary.BigEndian.AppendUint64(nil, newer))
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	// Twice: a refused Open must release the file lock, or the second
	// attempt would time out instead.
	for i := range 2 {
		s, err := store.Open(path, store.Options{Timeout: 100 * time.Millisecond})
		if !errors.Is(err, store.ErrNewerSchema) {
			if s != nil {
				s.Close()
			}
			t.Fatalf("attempt %d: Open of a file with schema %d: err = %v, want ErrNewerSchema", i+1, newer, err)
		}
	}
	if got, want := rawSchemaVersion(t, path), newer; got != want {
		t.Errorf("after the refusal the file has schema %d, want it untouched at %d", got, want)
	}
}

// TestOpenMigratesEmptyFile: a bbolt file without buckets is schema 0 and
// is brought up to date.
func TestOpenMigratesEmptyFile(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	s := openAt(t, path, store.Options{})
	if v, err := s.SchemaVersionOf(); err != nil || v != store.SchemaVersion {
		t.Errorf("SchemaVersionOf() = %d, %v; want %d", v, err, store.SchemaVersion)
	}
	if _, err := s.CreateOrg("acme", nil); err != nil {
		t.Errorf("CreateOrg after migration: %v", err)
	}
}

func TestOpenLockedFile(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	openAt(t, path, store.Options{})
	s, err := store.Open(path, store.Options{Timeout: 50 * time.Millisecond})
	if err == nil {
		s.Close()
		t.Fatal("a second Open of a file in use succeeded")
	}
	if !strings.Contains(err.Error(), "locked") {
		t.Errorf("Open of a locked file: %v; want it to say the file is locked", err)
	}
}

func TestReopenKeepsData(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{Now: newClock().Now})
	org := mustOrg(t, s, "acme", intp(7))
	user := mustUser(t, s, "ada@example.com")
	m, err := s.SetMembership(org.ID, user.ID, store.LevelAdmin)
	if err != nil {
		t.Fatal(err)
	}
	key, err := s.CreateKey(store.APIKey{UserID: user.ID, Label: "ci", Hash: "sha256$aa", Mask: "phx_...aa", Scopes: []string{"*"}, Orgs: []string{}})
	if err != nil {
		t.Fatal(err)
	}
	msg := "no CNAME yet"
	by := user.ID
	rec, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: "e.example.com", TargetCNAME: "abc.proxy.example.net",
		Status: store.StatusWaiting, Message: &msg, CreatedBy: &by}, 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openAt(t, path, store.Options{})
	for _, tt := range []struct {
		name      string
		got, want any
		err       error
	}{
		{"org", must(s.Org(org.ID)), org, nil},
		{"user", must(s.User(user.ID)), user, nil},
		{"membership", must(s.Membership(org.ID, user.ID)), m, nil},
		{"key", must(s.KeyByHash("sha256$aa")), key, nil},
		{"record", must(s.Record(rec.ID)), rec, nil},
		{"record by domain", must(s.RecordByDomain("e.example.com")), rec, nil},
		{"org records", must(s.OrgRecords(org.ID)), []store.Record{rec}, nil},
	} {
		if !reflect.DeepEqual(tt.got, tt.want) {
			t.Errorf("%s after reopening:\n got %+v\nwant %+v", tt.name, tt.got, tt.want)
		}
	}
}

// must drops a nil error; a test that gets an error sees a zero value that
// differs from what it wants.
func must[T any](v T, err error) any {
	if err != nil {
		return err
	}
	return v
}

func TestWritable(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	if err := s.Writable(); err != nil {
		t.Errorf("Writable() on an open store: %v", err)
	}
	s.Close()
	if err := s.Writable(); err == nil {
		t.Error("Writable() on a closed store: nil error")
	}
}

func TestPath(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	s := openAt(t, path, store.Options{})
	if got, want := s.Path(), path; got != want {
		t.Errorf("Path() = %q, want %q", got, want)
	}
}

// TestBackupDuringWrites takes a backup while writers create, update and
// delete records, then checks that the copy opens, passes bbolt's check
// and is one consistent state: its records, its domain index and its
// per-organization index all agree.
func TestBackupDuringWrites(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	var orgs []store.Org
	for i := range 4 {
		orgs = append(orgs, mustOrg(t, s, fmt.Sprintf("org-%d", i), nil))
	}

	const writers, perWriter = 16, 40
	var (
		wg      sync.WaitGroup
		writes  atomic.Int64
		started = make(chan struct{})
		once    sync.Once
	)
	domain := func(w, i int) string { return fmt.Sprintf("w%d-%d.example.com", w, i) }
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				r, err := s.CreateRecord(store.Record{OrgID: orgs[(w+i)%len(orgs)].ID, Domain: domain(w, i), Status: store.StatusWaiting}, noLimit)
				if err != nil {
					t.Errorf("CreateRecord: %v", err)
					return
				}
				// Every third record is updated, every fifth deleted, so
				// the backup sees all three kinds of write in flight.
				switch {
				case i%5 == 0:
					_, _, err = s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil })
				case i%3 == 0:
					_, _, err = s.Mutate(r.ID, func(r *store.Record) (store.Op, error) {
						r.Status = store.StatusIssuing
						return store.OpSave, nil
					})
				}
				if err != nil {
					t.Errorf("Mutate: %v", err)
					return
				}
				if writes.Add(1) == writers*perWriter/4 {
					once.Do(func() { close(started) })
				}
			}
		}()
	}

	<-started
	backupPath := filepath.Join(t.TempDir(), "backup.db")
	f, err := os.OpenFile(backupPath, os.O_CREATE|os.O_WRONLY|os.O_EXCL, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	n, err := s.Backup(f)
	if err != nil {
		t.Fatalf("Backup: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if written := writes.Load(); written == writers*perWriter {
		t.Logf("the writers finished before the backup did; it still must be consistent")
	}
	wg.Wait()

	if fi, err := os.Stat(backupPath); err != nil || fi.Size() != n {
		t.Errorf("backup file: %v, %v; Backup reported %d bytes", fi, err, n)
	}
	// A backup is a bbolt file on either backend.
	b, err := store.Open(backupPath, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if err := b.Check(); err != nil {
		t.Fatalf("Check() of the backup: %v", err)
	}
	recs, err := b.Records(nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) == 0 {
		t.Fatal("the backup holds no records, though it was started after a quarter of the writes")
	}
	inRecords := map[string]store.Record{}
	for _, r := range recs {
		inRecords[r.ID] = r
	}
	// Every domain ever written is either absent from the backup everywhere
	// or present everywhere, as the same record.
	for w := range writers {
		for i := range perWriter {
			d := domain(w, i)
			got, err := b.RecordByDomain(d)
			switch {
			case errors.Is(err, store.ErrNotFound):
				for _, r := range recs {
					if r.Domain == d {
						t.Errorf("record %s (%s) is in records but not in the domain index", r.ID, d)
					}
				}
			case err != nil:
				t.Errorf("RecordByDomain(%s): %v", d, err)
			default:
				if want, ok := inRecords[got.ID]; !ok || !reflect.DeepEqual(got, want) {
					t.Errorf("RecordByDomain(%s) = %+v; records hold %+v (%t)", d, got, want, ok)
				}
			}
		}
	}
	listed := 0
	for _, org := range orgs {
		rs, err := b.OrgRecords(org.ID)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if want, ok := inRecords[r.ID]; !ok || !reflect.DeepEqual(r, want) || r.OrgID != org.ID {
				t.Errorf("OrgRecords(%s) lists %+v; records hold %+v (%t)", org.ID, r, want, ok)
			}
		}
		listed += len(rs)
	}
	if got, want := listed, len(recs); got != want {
		t.Errorf("the organizations list %d records in all; records hold %d", got, want)
	}

	// The live store went on and holds every write.
	live, err := s.Records(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := len(live), writers*perWriter*4/5; got != want {
		t.Errorf("live store holds %d records after the writers finished, want %d", got, want)
	}
}

func TestBackupToFailingWriter(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	mustOrg(t, s, "acme", nil)
	boom := errors.New("disk full")
	if _, err := s.Backup(failingWriter{boom}); !errors.Is(err, boom) && !strings.Contains(fmt.Sprint(err), boom.Error()) {
		t.Errorf("Backup to a failing writer: %v, want it to carry %v", err, boom)
	}
}

type failingWriter struct{ err error }

func (w failingWriter) Write([]byte) (int, error) { return 0, w.err }

// TestClosedStore pins a bug: the methods of a closed store returned
// bbolt's "database not open" instead of the documented ErrClosed.
func TestClosedStore(t *testing.T) {
	t.Parallel()
	s := openStore(t)
	org := mustOrg(t, s, "acme", nil)
	user := mustUser(t, s, "ada@example.com")
	r := mustRecord(t, s, org.ID, "e.example.com")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		call func() error
	}{
		{"Check", s.Check},
		{"Writable", s.Writable},
		{"SchemaVersionOf", func() error { _, err := s.SchemaVersionOf(); return err }},
		{"Backup", func() error { _, err := s.Backup(failingWriter{errAny}); return err }},
		{"CreateOrg", func() error { _, err := s.CreateOrg("x", nil); return err }},
		{"Org", func() error { _, err := s.Org(org.ID); return err }},
		{"Orgs", func() error { _, err := s.Orgs(); return err }},
		{"UpdateOrg", func() error { _, err := s.UpdateOrg(org.ID, func(*store.Org) {}); return err }},
		{"CreateUser", func() error { _, err := s.CreateUser("x@example.com"); return err }},
		{"User", func() error { _, err := s.User(user.ID); return err }},
		{"Users", func() error { _, err := s.Users(); return err }},
		{"SetMembership", func() error { _, err := s.SetMembership(org.ID, user.ID, store.LevelOwner); return err }},
		{"Membership", func() error { _, err := s.Membership(org.ID, user.ID); return err }},
		{"UserMemberships", func() error { _, err := s.UserMemberships(user.ID); return err }},
		{"BootstrapIfEmpty", func() error { _, _, err := s.BootstrapIfEmpty(store.Bootstrap{}); return err }},
		{"CreateKey", func() error { _, err := s.CreateKey(store.APIKey{UserID: user.ID}); return err }},
		{"KeyByHash", func() error { _, err := s.KeyByHash("sha256$x"); return err }},
		{"Keys", func() error { _, err := s.Keys(0); return err }},
		{"RevokeKey", func() error { _, err := s.RevokeKey(store.NewID()); return err }},
		{"CreateRecord", func() error {
			_, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: "f.example.com"}, 10)
			return err
		}},
		{"Record", func() error { _, err := s.Record(r.ID); return err }},
		{"RecordByDomain", func() error { _, err := s.RecordByDomain(r.Domain); return err }},
		{"OrgRecords", func() error { _, err := s.OrgRecords(org.ID); return err }},
		{"Records", func() error { _, err := s.Records(nil); return err }},
		{"Mutate", func() error {
			_, _, err := s.Mutate(r.ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil })
			return err
		}},
		{"CountRecordsByStatus", func() error { _, err := s.CountRecordsByStatus(); return err }},
	} {
		if err := tt.call(); !errors.Is(err, store.ErrClosed) {
			t.Errorf("%s on a closed store: %v, want ErrClosed", tt.name, err)
		}
	}
}

// TestOpenMigratesVersion1: a file written by schema 1 gains the due index;
// its waiting records, never checked, become due at once and start their
// DNS wait at the migration; other records are left alone.
func TestOpenMigratesVersion1(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	path := filepath.Join(t.TempDir(), "edgeproxy.db")
	orgID := store.NewID()
	created := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	v1 := []store.Record{
		{ID: store.NewID(), OrgID: orgID, Domain: "waiting.example.com", Status: store.StatusWaiting, CreatedAt: created, UpdatedAt: created, Seq: 1},
		{ID: store.NewID(), OrgID: orgID, Domain: "valid.example.com", Status: store.StatusValid, CreatedAt: created, UpdatedAt: created, Seq: 2},
	}
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		buckets := map[string]*bolt.Bucket{}
		for _, name := range []string{"meta", "orgs", "users", "users_by_email", "members", "user_orgs", "keys",
			"keys_by_hash", "records", "records_by_domain", "records_by_org"} {
			b, err := tx.CreateBucket([]byte(name))
			if err != nil {
				return err
			}
			buckets[name] = b
		}
		if err := buckets["meta"].Put([]byte("schema_version"), binary.BigEndian.AppendUint64(nil, 1)); err != nil {
			return err
		}
		org, _ := json.Marshal(store.Org{ID: orgID, Name: "acme", CreatedAt: created})
		if err := buckets["orgs"].Put([]byte(orgID), org); err != nil {
			return err
		}
		for _, r := range v1 {
			// Schema 1 had no lifecycle fields: none are written.
			data, _ := json.Marshal(map[string]any{"id": r.ID, "org_id": r.OrgID, "domain": r.Domain, "target_cname": "",
				"status": r.Status, "message": nil, "created_at": r.CreatedAt, "updated_at": r.UpdatedAt, "created_by": nil, "seq": r.Seq})
			if err := buckets["records"].Put([]byte(r.ID), data); err != nil {
				return err
			}
			if err := buckets["records_by_domain"].Put([]byte(r.Domain), []byte(r.ID)); err != nil {
				return err
			}
			if err := buckets["records_by_org"].Put(binary.BigEndian.AppendUint64([]byte(orgID), r.Seq), []byte(r.ID)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()

	// The migration reads the wall clock, not Options.Now.
	before := time.Now().UTC().Truncate(time.Microsecond)
	s := openAt(t, path, store.Options{})
	after := time.Now().UTC()
	if v, err := s.SchemaVersionOf(); err != nil || v != store.SchemaVersion {
		t.Errorf("SchemaVersionOf() = %d, %v; want %d", v, err, store.SchemaVersion)
	}
	due, err := s.DueRecords(after.Add(time.Hour), 10, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(due) != 1 || due[0].ID != v1[0].ID {
		t.Fatalf("DueRecords after migration = %+v, want just the waiting record", due)
	}
	w := due[0]
	if w.NextCheckAt.Before(before) || w.NextCheckAt.After(after) || !w.WaitingSince.Equal(w.NextCheckAt) {
		t.Errorf("migrated waiting record: NextCheckAt %v, WaitingSince %v; want both the migration time, in [%v, %v]",
			w.NextCheckAt, w.WaitingSince, before, after)
	}
	if !w.CreatedAt.Equal(created) || w.Domain != v1[0].Domain || w.Seq != 1 {
		t.Errorf("migrated waiting record = %+v, want its fields kept", w)
	}
	valid, err := s.Record(v1[1].ID)
	if err != nil {
		t.Fatal(err)
	}
	if !valid.NextCheckAt.IsZero() || !valid.WaitingSince.IsZero() {
		t.Errorf("migrated valid record = %+v, want it left unscheduled", valid)
	}
	if recs, err := s.OrgRecords(orgID); err != nil || len(recs) != 2 || recs[0].ID != v1[1].ID {
		t.Errorf("OrgRecords after migration = %+v, %v; want both, newest first", recs, err)
	}
	// The migration counted the organization's two records: a limit of 2
	// is reached, a limit of 3 is not.
	var limitErr *store.LimitError
	if _, err := s.CreateRecord(store.Record{OrgID: orgID, Domain: "third.example.com"}, 2); !errors.As(err, &limitErr) || limitErr.Max != 2 {
		t.Errorf("CreateRecord over a migrated organization's limit: %v, want a LimitError of 2", err)
	}
	// The migrated file is fully usable.
	if _, err := s.CreateRecord(store.Record{OrgID: orgID, Domain: "new.example.com"}, 3); err != nil {
		t.Errorf("CreateRecord after migration: %v", err)
	}
	if _, err := s.CreateRecord(store.Record{OrgID: orgID, Domain: "waiting.example.com"}, 10); !errors.Is(err, store.ErrDomainTaken) {
		t.Errorf("CreateRecord of a migrated domain: %v, want ErrDomainTaken", err)
	}
}
