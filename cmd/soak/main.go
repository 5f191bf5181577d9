// Command soak runs the edgeproxy binary for a long while under steady
// load and checks that it neither fails nor grows (`make soak`; the
// results are in docs/RELIABILITY.md, "Sustained load").
//
// Everything runs on loopback, in this process except the binary: Pebble as
// the ACME CA (certs/certstest), a DNS server (dnsverify/dnstest)
// standing in for the customers' zones and the operator's wildcard, and two
// upstreams (ingestion and assets) that report what they received, so each
// answer is checked and not just counted.
//
// Three things happen at once for the whole run:
//   - traffic: HTTPS requests at a fixed rate, open loop. Request i is due
//     at start + i/rate whatever happened to the earlier ones, and its
//     latency is measured from that due time to the last byte of its
//     answer, so a stall shows up as latency instead of as fewer requests
//     (no coordinated omission). 4 in 5 are POST /i/v0/e/ with 1–4 KiB
//     bodies, 1 in 5 GET /static/…; HTTP/1.1 keep-alive, with 1 in 50 on a
//     new TLS connection. Requests go round-robin over the domains served
//     at that moment;
//   - churn: workers that each loop create a record through the API, set
//     its CNAME in DNS, wait for waiting → issuing → valid against Pebble,
//     add the domain to the traffic for a while, delete it, wait until it is
//     gone, then send a few requests to the deleted domain. Those must fail
//     (they are the only failures the soak provokes, and are counted apart);
//   - sampling: every few seconds the server's RSS (VmRSS), open file
//     descriptors (/proc/<pid>/fd), CPU time and go_goroutines (/metrics).
//
// After the run, with the soak's connections closed, the server's
// goroutines and fds must come back to within a few of what they were before
// the first request (rest.go); then it gets SIGTERM and must exit 0. The
// soak passes when no request or API call failed unprovoked, every provoked
// request failed, RSS, goroutines and fds are flat after the warm-up (the
// rule is in flat.go), the server came back to rest and exited cleanly. It prints a markdown report, also
// written to -out, and exits 1 when it does not pass.
//
//	go run ./cmd/soak -bin bin/edgeproxy -duration 10m -out soak-report.md
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

// config is one soak run. Zero fields take the defaults of defaultConfig.
type config struct {
	Bin         string        // the edgeproxy binary
	Duration    time.Duration // how long traffic and churn run
	Warmup      time.Duration // samples before this are left out of the flatness check
	Period      time.Duration // one row of the traffic table; the flatness windows
	SampleEvery time.Duration // resource sampling interval
	Rate        int           // requests per second, open loop
	Stable      int           // domains served for the whole run
	Churners    int           // concurrent create → valid → traffic → delete loops
	LiveFor     time.Duration // how long a churned domain gets traffic
	Provoked    int           // requests sent to each deleted domain, which must fail
	RestWait    time.Duration // how long the server may take to come back to rest after the run
	ServerLog   string        // if set, the server's log is copied here at the end

	// upstreamFault, when set, is asked for each request the ingestion
	// upstream receives (numbered from 1) and makes it answer 500 when it
	// returns true. Tests use it to check that failures are caught and
	// counted exactly.
	upstreamFault func(n int64) bool
}

func defaultConfig() config {
	return config{
		Bin:         "bin/edgeproxy",
		Duration:    10 * time.Minute,
		Warmup:      2 * time.Minute,
		Period:      time.Minute,
		SampleEvery: 10 * time.Second,
		Rate:        400,
		Stable:      2,
		Churners:    3,
		LiveFor:     20 * time.Second,
		Provoked:    2,
		RestWait:    2 * time.Minute,
	}
}

func (c config) validate() error {
	switch {
	case c.Rate <= 0:
		return fmt.Errorf("-rate %d: must be at least 1", c.Rate)
	case c.Stable < 1:
		return fmt.Errorf("-stable %d: at least one domain must be served for the whole run", c.Stable)
	case c.Churners < 0:
		return fmt.Errorf("-churners %d: must not be negative", c.Churners)
	case c.Period <= 0 || c.SampleEvery <= 0:
		return errors.New("-period and -sample must be positive")
	case c.SampleEvery > c.Period:
		return fmt.Errorf("-sample %v: must not exceed -period %v, or a flatness window may hold no sample", c.SampleEvery, c.Period)
	case c.Duration < c.Warmup+2*c.Period:
		return fmt.Errorf("-duration %v: must be at least -warmup (%v) plus two periods (%v each), so there is a first and a last window after the warm-up to compare",
			c.Duration, c.Warmup, c.Period)
	}
	return nil
}

func main() {
	c := defaultConfig()
	// Every flag can come from the environment, as SOAK_<NAME>; a flag
	// beats the environment.
	flag.StringVar(&c.Bin, "bin", envString("SOAK_BIN", c.Bin), "the edgeproxy binary to run (env SOAK_BIN)")
	flag.DurationVar(&c.Duration, "duration", envDuration("SOAK_DURATION", c.Duration), "how long traffic and churn run (env SOAK_DURATION)")
	flag.DurationVar(&c.Warmup, "warmup", envDuration("SOAK_WARMUP", c.Warmup), "left out of the flatness check (env SOAK_WARMUP)")
	flag.DurationVar(&c.Period, "period", envDuration("SOAK_PERIOD", c.Period), "one row of the traffic table, and the flatness windows (env SOAK_PERIOD)")
	flag.DurationVar(&c.SampleEvery, "sample", envDuration("SOAK_SAMPLE", c.SampleEvery), "resource sampling interval (env SOAK_SAMPLE)")
	flag.IntVar(&c.Rate, "rate", envInt("SOAK_RATE", c.Rate), "requests per second, open loop (env SOAK_RATE)")
	flag.IntVar(&c.Stable, "stable", envInt("SOAK_STABLE", c.Stable), "domains served for the whole run (env SOAK_STABLE)")
	flag.IntVar(&c.Churners, "churners", envInt("SOAK_CHURNERS", c.Churners), "concurrent create → valid → traffic → delete loops (env SOAK_CHURNERS)")
	flag.DurationVar(&c.LiveFor, "live-for", envDuration("SOAK_LIVE_FOR", c.LiveFor), "how long a churned domain gets traffic (env SOAK_LIVE_FOR)")
	flag.DurationVar(&c.RestWait, "rest-wait", envDuration("SOAK_REST_WAIT", c.RestWait), "how long the server may take to come back to rest after the run (env SOAK_REST_WAIT)")
	out := flag.String("out", envString("SOAK_OUT", "soak-report.md"), "where the markdown report is written, besides stdout (env SOAK_OUT)")
	flag.StringVar(&c.ServerLog, "server-log", envString("SOAK_SERVER_LOG", ""), "where to keep the server's log; empty drops it with the data directory (env SOAK_SERVER_LOG)")
	flag.Parse()
	if err := c.validate(); err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	res, err := run(ctx, c, os.Stderr)
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %v\n", err)
		os.Exit(1)
	}
	report := res.markdown()
	fmt.Print(report)
	if err := os.WriteFile(*out, []byte(report), 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "soak: writing the report: %v\n", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "soak: report written to %s\n", *out)
	if !res.passed() {
		os.Exit(1)
	}
}

func envString(name, def string) string {
	if v, ok := os.LookupEnv(name); ok {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %s=%q: not a Go duration such as 10m\n", name, v)
		os.Exit(2)
	}
	return d
}

func envInt(name string, def int) int {
	v, ok := os.LookupEnv(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "soak: %s=%q: not an integer\n", name, v)
		os.Exit(2)
	}
	return n
}

// progress writes one line of what the soak is doing to w (stderr), so a
// long run shows it is alive.
func progress(w io.Writer, format string, args ...any) {
	fmt.Fprintf(w, "soak %s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}
