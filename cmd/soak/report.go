package main

import (
	"fmt"
	"runtime"
	"slices"
	"sort"
	"strings"
	"time"
)

// result is everything one soak found.
type result struct {
	cfg                 config
	started             time.Time
	binVersion, machine string
	loadStart, loadEnd  string
	setup               time.Duration // until the stable domains were valid
	traffic             *trafficStats
	churn               churnStats
	samples             []sample
	flat                []flatResult
	rest                restResult
	upstreamFaults      int64
	shutdown            string
	shutdownErr         error
	logIssues           logSummary
	failures            []failure
	interrupted         bool
}

// problems lists why the soak did not pass; none means it passed.
func (r *result) problems() []string {
	var out []string
	if r.interrupted {
		out = append(out, "the soak was interrupted before its end")
	}
	if n := r.unprovoked(); n > 0 {
		out = append(out, fmt.Sprintf("%d unprovoked failures (see Failures)", n))
	}
	for _, f := range r.flat {
		if !f.ok {
			out = append(out, "not flat: "+f.why)
		}
	}
	if !r.rest.ok {
		out = append(out, "not back at rest: "+r.rest.why)
	}
	if r.shutdownErr != nil {
		out = append(out, "shutdown: "+r.shutdownErr.Error())
	}
	if r.cfg.Churners > 0 && r.churn.served == 0 {
		out = append(out, "no churned record completed create → valid → traffic → delete")
	}
	return out
}

func (r *result) passed() bool { return len(r.problems()) == 0 }

// unprovoked counts every failure the soak did not provoke on purpose.
func (r *result) unprovoked() int {
	n := 0
	for _, f := range r.failures {
		n += f.count
	}
	return n
}

func (r *result) markdown() string {
	var b strings.Builder
	c := r.cfg
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	tot := r.traffic.totals()
	slices.Sort(tot.latencies)

	verdict := "PASS"
	if !r.passed() {
		verdict = "FAIL"
	}
	p("### Soak, %s: %v at %d req/s — %s\n\n", r.started.UTC().Format("2006-01-02 15:04 MST"), c.Duration, c.Rate, verdict)
	p("- **Binary**: `%s` (%s), built without -race; run by `cmd/soak` with %s.\n", c.Bin, r.binVersion, serverFlagsText)
	p("- **Machine**: %s; load average %s at the start, %s at the end (the machine is shared: other work ran on the same cores).\n", r.machine, r.loadStart, r.loadEnd)
	p("- **Traffic**: open loop, request *i* due at start + *i*/%d s whatever happened before; latency from the due time to the last byte of the answer (or the error), so stalls show as latency. 4 in 5 `POST /i/v0/e/` with 1–4 KiB bodies, 1 in 5 `GET /static/…` (8 KiB answers); HTTP/1.1 keep-alive, 1 in 50 requests on a new TLS connection; round-robin over the domains served at that moment (%d stable, plus the churned ones while served). Each answer is checked: status 200, from the right upstream, which saw the right `X-Forwarded-Host` and the whole body.\n", c.Rate, c.Stable)
	p("- **Churn**: %d workers, each looping: create a record → set its CNAME in DNS → waiting → issuing → valid (Pebble) → %v of traffic → DELETE → gone → %d requests to the deleted domain, which must fail with a refused TLS handshake (the only failures provoked, counted apart).\n", c.Churners, c.LiveFor, c.Provoked)
	p("- **Setup**: %d stable domain(s) valid %v after start (not counted in the run).\n\n", c.Stable, r.setup.Round(time.Millisecond))

	unit := "minute"
	if c.Period != time.Minute {
		unit = "period of " + c.Period.String()
	}
	p("#### Traffic per %s\n\n", unit)
	p("| t | sent | ok | failed | provoked (failed as expected) | p50 ms | p99 ms | max ms | send lag max ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	r.traffic.mu.Lock()
	for i, ps := range r.traffic.periods {
		lat := slices.Clone(ps.latencies)
		slices.Sort(lat)
		from, to := time.Duration(i)*c.Period, min(time.Duration(i+1)*c.Period, c.Duration)
		p("| %s–%s | %d | %d | %d | %d (%d) | %s | %s | %s | %s |\n", clock(from), clock(to), ps.sent, ps.ok, ps.failed,
			ps.provoked, ps.provokedFailed, ms(percentile(lat, 0.5)), ms(percentile(lat, 0.99)), ms(percentile(lat, 1)), ms(ps.maxLag))
	}
	r.traffic.mu.Unlock()
	p("| **all** | **%d** | **%d** | **%d** | **%d (%d)** | **%s** | **%s** | **%s** | **%s** |\n\n", tot.sent, tot.ok, tot.failed, tot.provoked, tot.provokedFailed,
		ms(percentile(tot.latencies, 0.5)), ms(percentile(tot.latencies, 0.99)), ms(percentile(tot.latencies, 1)), ms(tot.maxLag))
	p("Send lag is how late the generator sent a request: large when the soak itself was starved of CPU, so a latency spike with a small send lag is the server's or the upstream's.\n\n")
	if r.upstreamFaults > 0 {
		p("The ingestion upstream was told to answer 500 to %d requests (a test of the soak itself).\n\n", r.upstreamFaults)
	}

	ch := r.churn
	p("#### Record churn\n\n")
	p("%d records created, %d reached valid, %d were served traffic (%d requests), %d deleted and gone.", ch.created, ch.valid, ch.served, ch.requests, ch.deleted)
	if len(ch.toValid) > 0 {
		v := slices.Clone(ch.toValid)
		slices.Sort(v)
		p(" Create → valid: p50 %s, max %s.", secs(percentile(v, 0.5)), secs(percentile(v, 1)))
	}
	if len(ch.toGone) > 0 {
		g := slices.Clone(ch.toGone)
		slices.Sort(g)
		p(" DELETE → gone: p50 %s, max %s.", secs(percentile(g, 0.5)), secs(percentile(g, 1)))
	}
	p("\n")
	if len(ch.paths) > 0 {
		keys := make([]string, 0, len(ch.paths))
		for k := range ch.paths {
			keys = append(keys, k)
		}
		sort.Slice(keys, func(i, j int) bool { return ch.paths[keys[i]] > ch.paths[keys[j]] })
		p("Statuses seen on the way to valid (polled every %v): ", pollEvery)
		for i, k := range keys {
			if i > 0 {
				p("; ")
			}
			p("%s ×%d", k, ch.paths[k])
		}
		p(".\n")
	}
	p("\n")

	p("#### Server resources (every %v)\n\n", c.SampleEvery)
	p("| t | RSS MiB | goroutines | open fds | records | server CPU %% | machine CPU %% | /healthz ms | upstream direct ms |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, s := range r.samples {
		cpu, mcpu := "–", "–"
		if i > 0 {
			prev := r.samples[i-1]
			if dt := (s.at - prev.at).Seconds(); dt > 0 {
				cpu = fmt.Sprintf("%.0f", 100*(s.cpuSeconds-prev.cpuSeconds)/dt)
			}
			if dt := s.machineTotal - prev.machineTotal; dt > 0 {
				mcpu = fmt.Sprintf("%.0f", 100*(s.machineBusy-prev.machineBusy)/dt)
			}
		}
		p("| %s | %.1f | %d | %d | %d | %s | %s | %s | %s |\n", clock(s.at), float64(s.rssKB)/1024, s.goroutines, s.fds, s.records, cpu, mcpu, ms(s.healthz), ms(s.upstream))
	}
	p("\nServer CPU is of one core, since the previous sample; machine CPU is of all %d cores, everyone's work included.\n", runtime.NumCPU())
	if n := len(r.samples); n > 1 {
		first, last := r.samples[0], r.samples[n-1]
		if dt := (last.at - first.at).Seconds(); dt > 0 {
			p("\nServer CPU over the run: %.0f %% of one core on average.\n", 100*(last.cpuSeconds-first.cpuSeconds)/dt)
		}
	}
	p("\n")

	p("#### Flatness after a %v warm-up\n\n", c.Warmup)
	p("Rule: the lowest sample of the last %s (%s–%s) must not exceed the lowest sample of the first %s after the warm-up (%s–%s) by more than 20 %% of it or the allowance, whichever is larger. The floor, because a leak raises the floor while a burst of load (a stall on the shared machine makes the open-loop generator hold more requests at once, so more connections) raises only the peaks; RSS gets 16 MiB because the Go runtime keeps part of what a burst made it grow to.\n\n",
		c.Period, clock(c.Duration-c.Period), clock(c.Duration), c.Period, clock(c.Warmup), clock(c.Warmup+c.Period))
	p("| resource | base floor (median) | last floor (median) | allowance | limit | trend per 10 min | verdict |\n|---|---:|---:|---:|---:|---:|---|\n")
	for _, f := range r.flat {
		v := "flat"
		if !f.ok {
			v = "**" + f.why + "**"
		}
		name := f.rule.name
		if f.rule.unit != "" {
			name += " (" + f.rule.unit + ")"
		}
		p("| %s | %.1f (%.1f) | %.1f (%.1f) | +%.0f | %.1f | %+.1f | %s |\n", name, f.baseline, f.baseMedian, f.last, f.lastMedian, f.rule.abs, f.limit, f.trend, v)
	}
	p("\n")

	p("#### At rest after the run\n\n")
	rb, ra := r.rest.before, r.rest.after
	p("Traffic stopped, the soak's connections closed, every churned record deleted; the server must come back to within +%d goroutines and +%d fds of its state before the first request, with only the stable records.\n\n", restAllowance, restAllowance)
	p("| | goroutines | open fds | records | RSS MiB |\n|---|---:|---:|---:|---:|\n")
	p("| before the first request | %d | %d | %d | %.1f |\n", rb.goroutines, rb.fds, rb.records, float64(rb.rssKB)/1024)
	p("| at rest, %v after the run | %d | %d | %d | %.1f |\n\n", r.rest.took.Round(time.Second), ra.goroutines, ra.fds, ra.records, float64(ra.rssKB)/1024)
	if r.rest.ok {
		p("Back at rest (RSS is shown, not judged: the Go runtime returns freed memory to the OS gradually).\n\n")
	} else {
		p("**Not back at rest**: %s.\n\n", r.rest.why)
	}

	p("#### Failures\n\n")
	if len(r.failures) == 0 {
		p("No unprovoked failure: every request was answered 200 with the right content, every API call and resource sample succeeded, every record became valid and was gone after its DELETE, and every request to a deleted domain was refused at the handshake.\n\n")
	} else {
		p("| kind | cause | count | first example |\n|---|---|---:|---|\n")
		for _, f := range r.failures {
			p("| %s | %s | %d | %s |\n", f.kind, f.cause, f.count, cell(f.example))
		}
		p("\n")
	}
	p("Server log: %d lines, %d WARN, %d ERROR.", r.logIssues.lines, r.logIssues.warnings, r.logIssues.errors)
	for i, e := range r.logIssues.examples {
		if i == 0 {
			p(" Distinct WARN/ERROR messages:\n")
		}
		p("- `%s`\n", strings.ReplaceAll(e, "`", "'"))
	}
	p("\n")
	if r.shutdown != "" {
		p("Shutdown: %s.\n\n", r.shutdown)
	}

	if probs := r.problems(); len(probs) == 0 {
		p("**Verdict: PASS** — no unprovoked failure; RSS, goroutines and open fds flat; back at rest after the run; clean exit on SIGTERM.\n")
	} else {
		p("**Verdict: FAIL**\n\n")
		for _, pr := range probs {
			p("- %s\n", pr)
		}
	}
	return b.String()
}

// clock formats a time since the start as m:ss.
func clock(d time.Duration) string {
	d = d.Round(time.Second)
	return fmt.Sprintf("%d:%02d", int(d.Minutes()), int(d.Seconds())%60)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f", float64(d)/float64(time.Millisecond)) }

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

// cell makes text safe inside a markdown table cell.
func cell(s string) string {
	s = strings.ReplaceAll(s, "|", `\|`)
	s = strings.ReplaceAll(s, "\n", " ")
	return s
}
