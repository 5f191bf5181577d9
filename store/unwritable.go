package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A disk that refuses writes.
//
// bbolt writes a transaction's pages into free pages of the file or past
// its high-water mark, growing the file in steps when it must (truncate,
// then fsync), and only then writes the meta page that makes the
// transaction visible. When the kernel refuses any of those writes, bbolt
// rolls the transaction back: the meta page still names the previous
// commit, so nothing of the refused transaction is stored and nothing
// stored before is touched. The store reports such a failure as
// ErrUnwritable.
//
// A full disk (or a file size limit, or a quota) refuses growth, not
// writes as such: a small transaction that fits in pages bbolt freed
// earlier can still commit while a larger one fails. So once a write has
// failed for want of space, Writable (the readiness probe) does not stop
// at a small write: it also makes the file grow by bbolt's next growth
// step, with real blocks, and the store counts as writable again only when
// that succeeds.

// unwritableErrnos are the errors with which the kernel refuses a write
// while the data already on disk stays readable: space (ENOSPC, EDQUOT),
// the file size limit (EFBIG, RLIMIT_FSIZE), a read-only file system
// (EROFS) and a failing device (EIO).
var unwritableErrnos = []syscall.Errno{syscall.ENOSPC, syscall.EDQUOT, syscall.EFBIG, syscall.EROFS, syscall.EIO}

// diskErrno returns the errno with which the kernel refused a write
// transaction, if it did. bbolt (v1.5.0, DB.grow) formats the errors of
// growing the file with %s, "file resize error: truncate ...: file too
// large", which drops the errno from the chain, so the end of the message
// is matched as well.
func diskErrno(err error) (syscall.Errno, bool) {
	msg := err.Error()
	for _, errno := range unwritableErrnos {
		if errors.Is(err, errno) || strings.HasSuffix(msg, ": "+errno.Error()) {
			return errno, true
		}
	}
	return 0, false
}

// writeErr turns the error of a write transaction the disk refused into
// ErrUnwritable (wrapping the errno and bbolt's error) and remembers the
// refusal for Writable. Other errors pass unchanged.
func (s *Store) writeErr(err error) error {
	if err == nil {
		return nil
	}
	errno, ok := diskErrno(err)
	if !ok {
		return err
	}
	s.unwritable.Store(true)
	return fmt.Errorf("%w (%w): %w", ErrUnwritable, errno, err)
}

// RefusingWrites reports whether the last write the disk refused has not
// yet been followed by a successful Writable: cheap, for metrics that then
// confirm with Writable.
func (s *Store) RefusingWrites() bool { return s.unwritable.Load() }

// Writable reports whether a write transaction can commit now; readiness
// checks use it, since a store that cannot write cannot accept API calls.
// After a write failed with ErrUnwritable it also makes the file grow, as
// described above, and returns ErrUnwritable until that succeeds.
//
// On etcd it asks etcd for its revision instead: a write is possible
// exactly when etcd answers.
func (s *Store) Writable() error {
	if s.etcd != nil {
		return s.Ping(context.Background())
	}
	grow := s.unwritable.Load()
	err := s.update(func(tx *txn) error {
		if grow {
			// Inside the write transaction: no commit can write the file
			// or grow it meanwhile.
			if err := s.growFile(); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put([]byte("last_write_probe"), []byte(s.stamp().Format(time.RFC3339Nano)))
	})
	if err == nil && grow {
		s.unwritable.Store(false)
	}
	return err
}

// growFile extends the data file by bbolt's next growth step (the file's
// size while it is under bbolt's AllocSize, then AllocSize) and has the
// file system allocate blocks for all of it, so that a disk that is full,
// a quota or a file size limit refuses it. The file stays larger, as after
// bbolt's own growth: bbolt writes its next pages there.
func (s *Store) growFile() error {
	f, err := os.OpenFile(s.db.Path(), os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("opening the data file to grow it: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return fmt.Errorf("growing the data file: %w", err)
	}
	size := info.Size() + min(info.Size(), int64(s.db.AllocSize))
	// fallocate can be interrupted by a signal (the Go runtime's
	// preemption, on tmpfs) before it has done anything.
	for range 5 {
		if err = unix.Fallocate(int(f.Fd()), 0, 0, size); !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if errors.Is(err, unix.EOPNOTSUPP) {
		// A file system without fallocate: truncate as bbolt does, which
		// meets a file size limit but not a full disk.
		err = f.Truncate(size)
	}
	if err != nil {
		return fmt.Errorf("growing the data file to %d bytes: %w", size, err)
	}
	return nil
}
