package store_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/edgeproxy/edgeproxy/store"
)

// fsizeChildEnv names the data directory of the re-executed test binary
// that runs the file-size-limit scenario.
const fsizeChildEnv = "EDGEPROXY_TEST_FSIZE_CHILD_DIR"

// TestUnwritableFileSizeLimit makes the kernel refuse the store's writes
// with a real RLIMIT_FSIZE. The limit binds the whole process, so the
// scenario runs in a child: this test binary, re-executed.
func TestUnwritableFileSizeLimit(t *testing.T) {
	bboltOnly(t)
	if dir := os.Getenv(fsizeChildEnv); dir != "" {
		fileSizeLimitScenario(t, dir)
		return
	}
	t.Parallel()
	cmd := exec.Command(os.Args[0], "-test.run=^TestUnwritableFileSizeLimit$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), fsizeChildEnv+"="+t.TempDir())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the scenario's process failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: TestUnwritableFileSizeLimit") {
		t.Fatalf("the scenario did not run:\n%s", out)
	}
}

// setFileSizeLimit sets this process's soft RLIMIT_FSIZE.
func setFileSizeLimit(t *testing.T, cur uint64) {
	t.Helper()
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatal(err)
	}
	lim.Cur = cur
	if err := unix.Setrlimit(unix.RLIMIT_FSIZE, &lim); err != nil {
		t.Fatalf("setting RLIMIT_FSIZE to %d: %v", cur, err)
	}
}

// wantUnwritable fails the test unless err is ErrUnwritable wrapping
// errno.
func wantUnwritable(t *testing.T, what string, err error, errno syscall.Errno) {
	t.Helper()
	if !errors.Is(err, store.ErrUnwritable) || !errors.Is(err, errno) {
		t.Fatalf("%s: got %v, want store.ErrUnwritable wrapping %v", what, err, errno)
	}
}

// fileSizeLimitScenario fills the file up to a file size limit, checks
// that nothing of a refused write is stored and that the store stays
// consistent and says it is unwritable, then lifts the limit and checks
// that everything works again without reopening. The Go runtime catches
// SIGXFSZ and ignores it, so the process lives on and sees EFBIG.
func fileSizeLimitScenario(t *testing.T, dir string) {
	path := filepath.Join(dir, "edgeproxy.db")
	s := openAt(t, path, store.Options{Now: newClock().Now})
	defer setFileSizeLimit(t, unix.RLIM_INFINITY)
	org := mustOrg(t, s, "acme", nil)
	var kept []store.Record
	for i := range 3 {
		kept = append(kept, mustRecord(t, s, org.ID, fmt.Sprintf("kept%d.example.com", i)))
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}

	// Growth refused: the limit is the file's size, so writes go on in
	// the room the file has until one needs it to grow.
	setFileSizeLimit(t, uint64(fi.Size()))
	n, refused := createUntilRefused(t, s, org.ID, "CreateRecord beyond the file size limit", syscall.EFBIG)
	created := len(kept) + n
	t.Logf("%d records stored before a create was refused at %d bytes", created, fi.Size())
	if _, err := s.RecordByDomain(refused); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused create of %s: RecordByDomain = %v, want ErrNotFound", refused, err)
	}
	wantUnwritable(t, "Writable after a refused growth", s.Writable(), syscall.EFBIG)
	if err := s.Check(); err != nil {
		t.Errorf("Check after a refused growth: %v", err)
	}

	// Every write refused: no page past the two meta pages may be written.
	setFileSizeLimit(t, 2*uint64(os.Getpagesize()))
	_, _, err = s.Mutate(kept[0].ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil })
	wantUnwritable(t, "deleting a record", err, syscall.EFBIG)
	_, err = s.CreateOrg("refused", nil)
	wantUnwritable(t, "CreateOrg", err, syscall.EFBIG)
	wantUnwritable(t, "PutBlob", s.PutBlob("certificates/x/x.crt", []byte("pem")), syscall.EFBIG)
	wantUnwritable(t, "Writable", s.Writable(), syscall.EFBIG)
	if _, err := s.Record(kept[0].ID); err != nil {
		t.Errorf("the record whose delete was refused: %v", err)
	}
	if err := s.Check(); err != nil {
		t.Errorf("Check while every write is refused: %v", err)
	}

	// Space returns: no reopening, no restart.
	setFileSizeLimit(t, unix.RLIM_INFINITY)
	if err := s.Writable(); err != nil {
		t.Fatalf("Writable once the limit is lifted: %v", err)
	}
	if _, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: refused, Status: store.StatusWaiting}, noLimit); err != nil {
		t.Fatalf("creating %s again once the limit is lifted: %v", refused, err)
	}
	created++
	records, err := s.OrgRecords(org.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != created {
		t.Errorf("the organization lists %d records, want %d", len(records), created)
	}
	// The organization's count is what its records are: at a limit of
	// exactly that, one more create is refused.
	if _, err := s.UpdateOrg(org.ID, func(o *store.Org) { o.MaxProxyRecords = &created }); err != nil {
		t.Fatal(err)
	}
	var limitErr *store.LimitError
	if _, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: "one-more.example.com", Status: store.StatusWaiting}, noLimit); !errors.As(err, &limitErr) {
		t.Errorf("a create at the limit of %d: %v, want a LimitError", created, err)
	}
	if _, _, err := s.Mutate(kept[0].ID, func(*store.Record) (store.Op, error) { return store.OpDelete, nil }); err != nil {
		t.Errorf("deleting a record once the limit is lifted: %v", err)
	}
	// openAt's cleanup closes, reopens and checks the file.
}

// TestUnwritableDiskFull fills a real, small file system (a tmpfs of
// 256 KiB, which needs root to mount) until the disk refuses a write with
// ENOSPC, then makes room by growing the file system, as an operator
// freeing space would.
func TestUnwritableDiskFull(t *testing.T) {
	bboltOnly(t)
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("mounting a tmpfs needs root; TestUnwritableFileSizeLimit covers non-root runs")
	}
	mnt := t.TempDir()
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, 0); err != nil {
			t.Errorf("unmounting %s: %v", mnt, err)
		}
	})
	s := openAt(t, filepath.Join(mnt, "edgeproxy.db"), store.Options{Now: newClock().Now})
	org := mustOrg(t, s, "acme", nil)
	created, refused := createUntilRefused(t, s, org.ID, "CreateRecord on a full disk", syscall.ENOSPC)
	t.Logf("%d records stored before the disk was full", created)
	if _, err := s.RecordByDomain(refused); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the refused create of %s: RecordByDomain = %v, want ErrNotFound", refused, err)
	}
	wantUnwritable(t, "Writable on a full disk", s.Writable(), syscall.ENOSPC)
	if err := s.Check(); err != nil {
		t.Errorf("Check on a full disk: %v", err)
	}

	if err := unix.Mount("tmpfs", mnt, "tmpfs", unix.MS_REMOUNT, "size=4m,mode=0700"); err != nil {
		t.Fatalf("growing the tmpfs: %v", err)
	}
	if err := s.Writable(); err != nil {
		t.Fatalf("Writable once there is room: %v", err)
	}
	if _, err := s.CreateRecord(store.Record{OrgID: org.ID, Domain: refused, Status: store.StatusWaiting}, noLimit); err != nil {
		t.Fatalf("creating %s again once there is room: %v", refused, err)
	}
	records, err := s.OrgRecords(org.ID)
	if err != nil {
		t.Fatal(err)
	}
	if len(records) != created+1 {
		t.Errorf("the organization lists %d records, want %d", len(records), created+1)
	}
}

// createUntilRefused creates records in the organization until the disk
// refuses one, which must be for errno; it returns how many were stored
// and the domain refused. At most 5000 are tried.
func createUntilRefused(t *testing.T, s *store.Store, orgID, what string, errno syscall.Errno) (created int, refused string) {
	t.Helper()
	for i := range 5000 {
		domain := fmt.Sprintf("r%04d.example.com", i)
		_, err := s.CreateRecord(store.Record{OrgID: orgID, Domain: domain, Status: store.StatusWaiting}, noLimit)
		switch {
		case err == nil:
			created++
		case errors.Is(err, store.ErrUnwritable):
			wantUnwritable(t, what, err, errno)
			return created, domain
		default:
			t.Fatalf("CreateRecord(%s): %v", domain, err)
		}
	}
	t.Fatalf("%s: 5000 creates all succeeded", what)
	return created, ""
}
