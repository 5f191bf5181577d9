package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/edgeproxy/edgeproxy/store"
)

// The issue's targets for a node of a deployment this size.
const (
	targetStart = 10 * time.Second
	targetRSS   = 1 << 30
)

// problems lists what makes the run fail: a node that did not do its job,
// or ACME traffic. Slowness and memory are measured, not judged here.
func (r *result) problems() []string {
	var out []string
	if r.interrupted {
		out = append(out, "interrupted before every scenario ran")
	}
	if r.acmeReqs > 0 {
		out = append(out, fmt.Sprintf("the nodes sent %d requests to the ACME CA; starting on stored certificates must send none", r.acmeReqs))
	}
	for _, n := range r.nodes {
		id := fmt.Sprintf("%s, %s, run %d", n.store, n.scenario, n.run)
		if n.latFailed > 0 {
			out = append(out, fmt.Sprintf("%s: %d of the timed handshakes failed: %s", id, n.latFailed, strings.Join(n.latErrs, "; ")))
		}
		if n.sweep.failed > 0 {
			out = append(out, fmt.Sprintf("%s: %d of %d valid names not served: %s", id, n.sweep.failed, n.sweep.names, strings.Join(n.sweep.errs, "; ")))
		}
		if n.sweep.names == 0 {
			out = append(out, id+": the valid names were never swept")
		}
		if m := n.handshakes["missing"]; m > 0 {
			out = append(out, fmt.Sprintf("%s: %.0f handshakes for a served name found no certificate in the cache", id, m))
		}
		if n.stopErr != nil {
			out = append(out, fmt.Sprintf("%s: %v", id, n.stopErr))
		}
		if len(n.logIssues) > 0 {
			out = append(out, fmt.Sprintf("%s: %d warnings or errors logged, the first: %s", id, len(n.logIssues), n.logIssues[0]))
		}
	}
	return out
}

// markdown is the report: what ran where, every node's figures, and the
// spread per store and scenario against the targets.
func (r *result) markdown() string {
	var b strings.Builder
	c := r.cfg
	// The tool runs as `go run ./cmd/scale` (a temporary binary) or
	// built: either way the flags are what matters.
	fmt.Fprintf(&b, "Command: `go run ./cmd/scale %s`\n\n", strings.Join(r.args[1:], " "))
	m := r.machine
	fmt.Fprintf(&b, "Machine: %d × %s, %.1f GiB RAM; %s; edgeproxy %s", m.cpus, orUnknown(m.cpuModel), float64(m.memTotal)/(1<<30), m.goVersion, m.binary)
	if m.etcd != "" {
		fmt.Fprintf(&b, "; %s", m.etcd)
	}
	fmt.Fprintf(&b, "; tree %s.\n\n", m.commit)

	fmt.Fprintf(&b, "Data: %s records in %s organizations: ", thousands(c.Records), thousands(c.Orgs))
	var parts []string
	for _, s := range store.Statuses {
		if n := r.seed.counts[s]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", thousands(n), s))
		}
	}
	fmt.Fprintf(&b, "%s. Every valid record has its own P-256 key and certificate (leaf + intermediate). "+
		"Built through the store's API in %s; `edgeproxy.db` %.1f MiB.\n\n",
		strings.Join(parts, ", "), r.seed.took.Round(100*time.Millisecond), mib(uint64(r.seed.size)))
	if mg := r.migrate; mg != nil {
		fmt.Fprintf(&b, "etcd: one member on loopback, fsync on. `edgeproxy migrate --to-etcd` copied %s keys in %s; "+
			"etcd's database then %.1f MiB, its VmRSS %.0f MiB",
			thousands(mg.keys), mg.took.Round(100*time.Millisecond), mib(uint64(mg.before.dbSize)), mib(mg.etcdMem.VmRSS))
		if mg.after.revision > 0 {
			fmt.Fprintf(&b, "; after the runs %.1f MiB (revision %s, the engine's writes), VmRSS %.0f MiB",
				mib(uint64(mg.after.dbSize)), thousands(int(mg.after.revision)), mib(mg.etcdMemAfter.VmRSS))
		}
		b.WriteString(".\n\n")
	}
	fmt.Fprintf(&b, "Requests the nodes sent to the ACME CA: %d.\n\n", r.acmeReqs)

	b.WriteString("| store | node | run | ready | serving | CPU to serving | others' CPU | VmRSS serving (anon + file) | VmHWM | handshake p50 / p90 / p99 / max | sweep of every valid name | exec → all served | VmRSS after |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|\n")
	for _, n := range r.nodes {
		lat := "–"
		if len(n.latency) > 0 {
			lat = fmt.Sprintf("%s / %s / %s / %s (%d)", ms(pct(n.latency, 50)), ms(pct(n.latency, 90)), ms(pct(n.latency, 99)), ms(pct(n.latency, 100)), len(n.latency))
		}
		sw := "–"
		if n.sweep.names > 0 {
			sw = fmt.Sprintf("%s of %s in %s", thousands(n.sweep.names-n.sweep.failed), thousands(n.sweep.names), secs(n.sweep.took))
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | **%s** | %.2f s | %.2f | **%.0f MiB** (%.0f + %.0f) | %.0f MiB | %s | %s | %s | %.0f MiB |\n",
			n.store, n.scenario, n.run, secs(n.ready), secs(n.serving), n.cpu, n.others,
			mib(n.mem.VmRSS), mib(n.mem.RssAnon), mib(n.mem.RssFile), mib(n.mem.VmHWM), lat, sw, secs(n.allServed), mib(n.memAfter.VmRSS))
	}
	b.WriteString("\n")

	b.WriteString("Spread (min / median / max over the runs, or min – max of two) against the targets (start ≤ 10 s, RSS ≤ 1 GiB; RSS is VmRSS once serving and after the sweep, peak RSS is VmHWM):\n\n")
	b.WriteString("| store | node | runs | serving | VmRSS serving | VmRSS after the sweep | VmHWM (peak) | handshake p50 | handshake p99 | start | RSS | peak RSS |\n")
	b.WriteString("|---|---|---:|---|---|---|---|---|---|---|---|---|\n")
	type key struct{ store, scenario string }
	var keys []key
	groups := map[key][]nodeResult{}
	for _, n := range r.nodes {
		k := key{n.store, n.scenario}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], n)
	}
	for _, k := range keys {
		ns := groups[k]
		var serving, p50, p99 []time.Duration
		var rss, rssAfter, hwm []uint64
		for _, n := range ns {
			serving = append(serving, n.serving)
			rss = append(rss, n.mem.VmRSS)
			rssAfter = append(rssAfter, n.memAfter.VmRSS)
			hwm = append(hwm, max(n.mem.VmHWM, n.memAfter.VmHWM))
			if len(n.latency) > 0 {
				p50 = append(p50, pct(n.latency, 50))
				p99 = append(p99, pct(n.latency, 99))
			}
		}
		verdict := func(missed bool) string {
			if missed {
				return "**missed**"
			}
			return "met"
		}
		inMiB := func(v uint64) string { return fmt.Sprintf("%.0f MiB", mib(v)) }
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", k.store, k.scenario, len(ns),
			spread(serving, secs), spread(rss, inMiB), spread(rssAfter, inMiB), spread(hwm, inMiB),
			spread(p50, ms), spread(p99, ms), verdict(slices.Max(serving) > targetStart),
			verdict(max(slices.Max(rss), slices.Max(rssAfter)) > targetRSS), verdict(slices.Max(hwm) > targetRSS))
	}
	b.WriteString("\n")

	if ps := r.problems(); len(ps) > 0 {
		b.WriteString("Problems:\n\n")
		for _, p := range ps {
			fmt.Fprintf(&b, "- %s\n", p)
		}
	} else {
		b.WriteString("Every node served every valid name (no handshake failed, none found its certificate missing from the cache), sent nothing to the ACME CA, logged no warning or error, and exited 0 on SIGTERM.\n")
	}
	return b.String()
}

// pct is the p-th percentile of ds by nearest rank (100: the maximum).
func pct(ds []time.Duration, p float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// spread formats min / median / max of vs (the lower median of an even
// count), or min – max of two.
func spread[T time.Duration | uint64](vs []T, f func(T) string) string {
	if len(vs) == 0 {
		return "–"
	}
	s := slices.Clone(vs)
	slices.Sort(s)
	switch len(s) {
	case 1:
		return f(s[0])
	case 2:
		return fmt.Sprintf("%s – %s", f(s[0]), f(s[1]))
	}
	return fmt.Sprintf("%s / %s / %s", f(s[0]), f(s[(len(s)-1)/2]), f(s[len(s)-1]))
}

func secs(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond)) }

func orUnknown(s string) string {
	if s == "" {
		return "unknown CPU"
	}
	return s
}

// thousands writes n with commas between groups of three digits.
func thousands(n int) string {
	s := fmt.Sprint(n)
	if n < 0 {
		return "-" + thousands(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}
