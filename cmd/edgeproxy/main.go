// Command edgeproxy is a managed reverse proxy for analytics traffic in one
// binary: a management API where organizations register their domains, DNS
// verification, certificates over ACME, a TLS edge that proxies to the
// ingestion upstream, and Prometheus metrics.
//
//	edgeproxy serve [flags]        run the server
//	edgeproxy org|user|member|key|records|backup ...   admin commands
//	edgeproxy migrate --to-etcd ...  copy a bbolt database into etcd
//	edgeproxy version
//
// Admin commands talk to the running server over <data-dir>/admin.sock.
// Every flag can also come from EDGEPROXY_<FLAG_NAME>; a flag beats the
// environment.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr, os.Getenv))
}

const usage = `usage: edgeproxy <command> [flags]

commands:
  serve                       run the server (edgeproxy serve --help for flags)
  org create|list|update      organizations
  user create                 users
  member add|remove           memberships
  key create|list|revoke      personal API keys
  records list                every proxy record (the operator's view)
  webhooks list               every webhook, its queue and last delivery (never its secret)
  backup --out FILE           a consistent copy of the database, taken while serving
  migrate --to-etcd --from FILE --etcd-endpoints H:P[,H:P…]
                              copy a bbolt database into an empty etcd prefix (several nodes)
  version                     print the version
`

// run is main without the process: it returns the exit code.
func run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return runServe(args[1:], stdout, stderr, getenv)
	case "migrate":
		return runMigrate(args[1:], stdout, stderr, getenv)
	case "version":
		fmt.Fprintf(stdout, "{\"version\": %q, \"go\": %q}\n", versionString(), goVersion())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	return runAdmin(args, stdout, stderr, getenv)
}

func runServe(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := serveFlags(fs)
	if err := parseFlags(fs, args, getenv); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fmt.Fprintln(stdout, "usage: edgeproxy serve [flags]  (each flag also from EDGEPROXY_<FLAG_NAME>)")
			fs.PrintDefaults()
			return 0
		}
		fmt.Fprintf(stderr, "edgeproxy: %v\n", err)
		return 2
	}
	if err := cfg.finish(fs); err != nil {
		fmt.Fprintf(stderr, "edgeproxy: %v\n", err)
		return 2
	}
	log := newLogger(cfg.LogFormat, stderr)
	switch {
	case getenv("GOGC") != "" || getenv("GOMEMLIMIT") != "":
		// The operator's settings, which the runtime has applied.
		log.Info("garbage collector paced by GOGC/GOMEMLIMIT from the environment", "gogc", getenv("GOGC"), "gomemlimit", getenv("GOMEMLIMIT"))
		if cfg.GCHeadroom > 0 {
			log.Warn("--gc-headroom is ignored: GOGC or GOMEMLIMIT is set in the environment", "gc_headroom", cfg.GCHeadroom)
		}
	case cfg.GCHeadroom > 0:
		defer startGCTuner(uint64(cfg.GCHeadroom))()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, stdout, log); err != nil {
		log.Error("edgeproxy stopped", "err", err)
		return 1
	}
	return 0
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				return bi.Main.Version + "+" + s.Value[:12]
			}
		}
		return bi.Main.Version
	}
	return "devel"
}

func goVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return bi.GoVersion
	}
	return "unknown"
}
