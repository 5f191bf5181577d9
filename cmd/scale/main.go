// Command scale measures edgeproxy at the scale of a large deployment
// (`make scale`; the figures are in docs/PERFORMANCE.md, "Scale: 100,000
// records"): how long the real binary takes to start serving a store
// holding -records proxy records of which -valid are valid with a
// certificate, how much memory it then holds, how long a TLS handshake
// takes for a name not handshaken before, and, on etcd, how long a new
// node takes to catch up while another node runs.
//
// It is a load tool, not a test: it prints what it measured and fails only
// when the binary does not do its job (a valid name not served, an exit
// that is not clean, ACME traffic, a warning in the log).
//
// # What it builds
//
// One bbolt data directory, written through the store's own API (no CA, no
// API server): -orgs organizations under one owner, and -records records
// spread over them, in a shuffled mix of -valid valid records, -waiting
// waiting ones (their next DNS check due within the next five minutes, as
// for records that have waited a while), and the rest erroring and
// timed_out. Every valid record has its own ECDSA P-256 key and a
// certificate from a local test CA (leaf plus intermediate), written under
// the storage keys certmagic loads them from (certificate, key, and JSON
// metadata under certificates/<issuer>/<domain>/), for the issuer of the
// -acme-ca the nodes are given. One certificate is loaded back through
// certs.Manager.Load before anything is measured.
//
// # What it runs
//
// Everything is on loopback. The nodes are the real binary (-bin), run
// with `serve` and these around them, in this process: a DNS server with
// no records (dnsverify/dnstest), so every waiting record stays waiting;
// an "ACME CA" that is an HTTPS server answering 503 to everything and
// counting requests, so any ACME traffic shows (there must be none); and
// for etcd, one etcd member (-etcd-bin, fsync on) into which the bbolt
// file is copied with `edgeproxy migrate --to-etcd`.
//
// Each of -runs runs does, for each store of -stores:
//   - bbolt: a node on a fresh copy of the seeded file;
//   - etcd: a first node with an empty data dir; then a second node with
//     an empty data dir while the first runs (the catch-up); then the
//     first node restarted on its local copy while the second runs.
//
// For each node: the time from exec to /readyz answering 200, and to the
// first successful handshake for a valid name ("serving"); the process's
// CPU time until then; its VmRSS, RssAnon, RssFile and VmHWM (from
// /proc/<pid>/status) once serving; the latency of -names handshakes, one
// at a time, each on a new connection with a full TLS 1.3 handshake
// (X25519, no resumption) for a valid name this process has not
// handshaken before; then a handshake for every valid name (-sweepers at
// a time), which must all succeed, and the time from exec until that
// sweep ended; its memory again; the edge's handshake counters; and a
// clean exit on SIGTERM with no WARN or ERROR in its log.
//
//	go run ./cmd/scale -bin bin/edgeproxy -etcd-bin .tools/bin/etcd -out scale-report.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"
)

// config is one invocation of the tool.
type config struct {
	Bin     string   // the edgeproxy binary
	EtcdBin string   // the etcd server binary (for the etcd store)
	Stores  []string // "bbolt", "etcd"
	Records int      // proxy records in the store
	Valid   int      // of which valid, each with a certificate
	Waiting int      // of which waiting; the rest erroring and timed_out
	Orgs    int      // organizations the records are spread over
	Names   int      // handshakes whose latency is measured, per node
	Runs    int      // times each store's scenarios run
	// Sweepers is how many handshakes the sweep over every valid name
	// runs at once.
	Sweepers int
	// WorkDir holds the data (about 1 KiB per record and 3 KiB per
	// certificate, several times over); empty means the system's
	// temporary directory. Keep leaves it in place at the end.
	WorkDir string
	Keep    bool
	// ServeTimeout bounds each node's start, and each sweep.
	ServeTimeout time.Duration
}

func defaultConfig() config {
	return config{
		Bin:          "bin/edgeproxy",
		EtcdBin:      ".tools/bin/etcd",
		Stores:       []string{storeBbolt, storeEtcd},
		Records:      100_000,
		Valid:        20_000,
		Waiting:      20_000,
		Orgs:         1_000,
		Names:        200,
		Runs:         2,
		Sweepers:     4,
		ServeTimeout: 10 * time.Minute,
	}
}

const (
	storeBbolt = "bbolt"
	storeEtcd  = "etcd"
)

func (c config) validate() error {
	switch {
	case c.Bin == "":
		return errors.New("-bin: the edgeproxy binary is required")
	case len(c.Stores) == 0:
		return errors.New("-stores: name at least one of bbolt, etcd")
	case c.Records < 1:
		return fmt.Errorf("-records %d: must be at least 1", c.Records)
	case c.Valid < 2:
		return fmt.Errorf("-valid %d: must be at least 2 (one name proves a node serves, the others are measured)", c.Valid)
	case c.Waiting < 0:
		return fmt.Errorf("-waiting %d: must not be negative", c.Waiting)
	case c.Valid+c.Waiting > c.Records:
		return fmt.Errorf("-valid %d plus -waiting %d: must not exceed -records %d", c.Valid, c.Waiting, c.Records)
	case c.Orgs < 1 || c.Orgs > c.Records:
		return fmt.Errorf("-orgs %d: must be between 1 and -records (%d)", c.Orgs, c.Records)
	case c.Names < 1 || c.Names > c.Valid-1:
		return fmt.Errorf("-names %d: must be between 1 and -valid minus one (%d): each is a valid name not handshaken before", c.Names, c.Valid-1)
	case c.Runs < 1:
		return fmt.Errorf("-runs %d: must be at least 1", c.Runs)
	case c.Sweepers < 1:
		return fmt.Errorf("-sweepers %d: must be at least 1", c.Sweepers)
	case c.ServeTimeout <= 0:
		return fmt.Errorf("-serve-timeout %v: must be positive", c.ServeTimeout)
	}
	for _, s := range c.Stores {
		if s != storeBbolt && s != storeEtcd {
			return fmt.Errorf("-stores: %q is not a store (bbolt, etcd)", s)
		}
	}
	if slices.Contains(c.Stores, storeEtcd) && c.EtcdBin == "" {
		return errors.New("-etcd-bin: the etcd binary is required for the etcd store (`sh scripts/ensure-etcd.sh` builds it)")
	}
	return nil
}

func main() {
	c := defaultConfig()
	flag.StringVar(&c.Bin, "bin", c.Bin, "the edgeproxy binary to run")
	flag.StringVar(&c.EtcdBin, "etcd-bin", c.EtcdBin, "the etcd server binary, for -stores etcd (`sh scripts/ensure-etcd.sh` builds it)")
	stores := flag.String("stores", strings.Join(c.Stores, ","), "comma list of the stores to measure: bbolt, etcd")
	flag.IntVar(&c.Records, "records", c.Records, "proxy records in the store")
	flag.IntVar(&c.Valid, "valid", c.Valid, "of which valid, each with its certificate")
	flag.IntVar(&c.Waiting, "waiting", c.Waiting, "of which waiting (DNS rechecked every few minutes); the rest are erroring and timed_out")
	flag.IntVar(&c.Orgs, "orgs", c.Orgs, "organizations the records are spread over")
	flag.IntVar(&c.Names, "names", c.Names, "handshakes timed per node, each for a valid name not handshaken before")
	flag.IntVar(&c.Runs, "runs", c.Runs, "how many times each store's scenarios run")
	flag.IntVar(&c.Sweepers, "sweepers", c.Sweepers, "concurrent handshakes of the sweep over every valid name")
	flag.StringVar(&c.WorkDir, "work-dir", c.WorkDir, "where the data go (empty: the system's temporary directory)")
	flag.BoolVar(&c.Keep, "keep", c.Keep, "keep the data and the logs at the end")
	flag.DurationVar(&c.ServeTimeout, "serve-timeout", c.ServeTimeout, "the longest a node may take to serve, and a sweep to end")
	out := flag.String("out", "", "also write the markdown report to this file")
	flag.Parse()
	c.Stores = splitList(*stores)
	if err := c.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "scale: %v\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, c, os.Stderr)
	if res != nil {
		report := res.markdown()
		fmt.Print(report)
		if *out != "" {
			if werr := os.WriteFile(*out, []byte(report), 0o644); werr != nil {
				fmt.Fprintf(os.Stderr, "scale: writing the report: %v\n", werr)
				os.Exit(1)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "scale: %v\n", err)
		os.Exit(1)
	}
	if problems := res.problems(); len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintf(os.Stderr, "scale: %s\n", p)
		}
		os.Exit(1)
	}
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// progress writes one line of what the tool is doing to w (stderr), so a
// long run shows it is alive.
func progress(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "scale %s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
