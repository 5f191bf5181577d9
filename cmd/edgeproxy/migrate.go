package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/edgeproxy/edgeproxy/store"
)

// migrateReachTimeout bounds the first request to etcd: a cluster that
// cannot be reached is reported before anything is read or written.
const migrateReachTimeout = 10 * time.Second

// runMigrate is `edgeproxy migrate --to-etcd --from FILE --etcd-endpoints
// …`: it copies a bbolt database, everything in it, into an empty etcd
// prefix, where nodes started with the same --etcd-endpoints and
// --etcd-prefix find it.
func runMigrate(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("migrate", flag.ContinueOnError)
	var (
		toEtcd bool
		from   string
		ec     = etcdConfig{Prefix: defaultEtcdPrefix}
	)
	defineFlag(fs, &toEtcd, "to-etcd", "copy the database into an etcd cluster (the only migration there is)", parseBool, func(b bool) string { return fmt.Sprint(b) })
	defineFlag(fs, &from, "from", "the bbolt database `file` to copy (edgeproxy.db of a stopped server, or a backup)", nonEmpty, func(s string) string { return s })
	etcdFlags(fs, &ec, "comma-separated `host:port` list of the members of the etcd cluster to copy into")
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "usage: edgeproxy migrate --to-etcd --from FILE --etcd-endpoints host:port[,host:port…] [--etcd-prefix P] [--etcd-ca/--etcd-cert/--etcd-key]")
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "edgeproxy: %v\n", err)
		return 2
	}
	usageErr := func(err error) int {
		fmt.Fprintf(stderr, "edgeproxy: %v\n", err)
		return 2
	}
	switch {
	case !toEtcd:
		return usageErr(errors.New("--to-etcd is required (a bbolt database into etcd is the only migration there is)"))
	case from == "":
		return usageErr(errors.New("--from is required (the bbolt database file to copy)"))
	case len(ec.Endpoints) == 0:
		return usageErr(errors.New("--etcd-endpoints is required (the etcd cluster to copy into)"))
	}
	if err := ec.finish(); err != nil {
		return usageErr(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := migrate(ctx, from, &ec, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "edgeproxy: migrate: %v\n", err)
		return 1
	}
	out, _ := json.MarshalIndent(sum, "", "  ")
	fmt.Fprintf(stdout, "%s\n", out)
	return 0
}

// migrateSummary is what migrate prints once done.
type migrateSummary struct {
	From          string   `json:"from"`
	EtcdEndpoints []string `json:"etcd_endpoints"`
	EtcdPrefix    string   `json:"etcd_prefix"`
	Keys          int      `json:"keys"`
	Organizations int      `json:"organizations"`
	Records       int      `json:"records"`
	Seconds       float64  `json:"seconds"`
}

// migrate copies the bbolt database at from into ec's prefix, reporting
// progress on progressOut.
func migrate(ctx context.Context, from string, ec *etcdConfig, progressOut io.Writer) (*migrateSummary, error) {
	start := time.Now()
	// store.Open would create a missing file: a mistyped path must not
	// migrate an empty database.
	fi, err := os.Stat(from)
	if err != nil {
		return nil, fmt.Errorf("--from: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("--from: %s is not a file", from)
	}
	// A running server holds the file's lock: its database changes while
	// it serves, so it is refused (a backup can be migrated instead).
	src, err := store.Open(from, store.Options{})
	if err != nil {
		return nil, fmt.Errorf("--from: %w (stop the server first, or migrate a copy from `edgeproxy backup`)", err)
	}
	defer src.Close()
	orgs, err := src.Orgs()
	if err != nil {
		return nil, fmt.Errorf("--from: reading organizations: %w", err)
	}
	records, err := src.Records(nil)
	if err != nil {
		return nil, fmt.Errorf("--from: reading records: %w", err)
	}

	cli, err := ec.client()
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	rctx, cancel := context.WithTimeout(ctx, migrateReachTimeout)
	_, err = cli.Get(rctx, ec.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	cancel()
	if err != nil {
		return nil, fmt.Errorf("etcd at %s cannot be reached: %w", joinList(ec.Endpoints), err)
	}

	p := newProgress(progressOut)
	if err := store.MigrateToEtcd(ctx, src, cli, ec.Prefix, p.report); err != nil {
		p.finish()
		return nil, err
	}
	p.finish()
	return &migrateSummary{
		From: from, EtcdEndpoints: ec.Endpoints, EtcdPrefix: ec.Prefix,
		Keys: p.total, Organizations: len(orgs), Records: len(records),
		Seconds: time.Since(start).Round(time.Millisecond).Seconds(),
	}, nil
}

// progress shows a migration's progress: on a terminal, one line updated
// in place; elsewhere (a log, a pipe), one line per tenth done.
type progress struct {
	out   io.Writer
	tty   bool
	total int
	// shown is the last tenth printed (not on a terminal).
	shown int
	// drawn: a line is on the terminal without its newline.
	drawn bool
}

func newProgress(out io.Writer) *progress {
	return &progress{out: out, tty: isTerminal(out), shown: -1}
}

func (p *progress) report(done, total int) {
	p.total = total
	pct := 100 * done / max(total, 1)
	if p.tty {
		fmt.Fprintf(p.out, "\rmigrating to etcd: %d of %d keys (%d%%)", done, total, pct)
		p.drawn = true
		return
	}
	if tenth := pct / 10; tenth > p.shown {
		p.shown = tenth
		fmt.Fprintf(p.out, "migrating to etcd: %d of %d keys (%d%%)\n", done, total, pct)
	}
}

func (p *progress) finish() {
	if p.drawn {
		fmt.Fprintln(p.out)
		p.drawn = false
	}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
