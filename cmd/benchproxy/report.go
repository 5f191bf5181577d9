package main

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// spread is min / median / max of one metric over the repeats.
type spread struct{ min, med, max float64 }

func spreadOf(v []float64) (spread, bool) {
	if len(v) == 0 {
		return spread{}, false
	}
	s := slices.Clone(v)
	slices.Sort(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return spread{s[0], med, s[len(s)-1]}, true
}

// metric picks one number out of a result.
type metric struct {
	test string
	get  func(result) float64
}

var (
	mPostRPS    = metric{testPost, func(r result) float64 { return r.PerSec }}
	mPostP50    = metric{testPost, func(r result) float64 { return r.P50ms }}
	mPostP99    = metric{testPost, func(r result) float64 { return r.P99ms }}
	mPostUS     = metric{testPost, func(r result) float64 { return r.ProxyUS }}
	mPostBusy   = metric{testPost, func(r result) float64 { return 100 * r.ProxyBusy }}
	mStaticRPS  = metric{testStatic, func(r result) float64 { return r.PerSec }}
	mStaticP50  = metric{testStatic, func(r result) float64 { return r.P50ms }}
	mStaticP99  = metric{testStatic, func(r result) float64 { return r.P99ms }}
	mStaticUS   = metric{testStatic, func(r result) float64 { return r.ProxyUS }}
	mStaticBusy = metric{testStatic, func(r result) float64 { return 100 * r.ProxyBusy }}
	mHSRate     = metric{testHandshake, func(r result) float64 { return r.PerSec }}
	mHSUS       = metric{testHandshake, func(r result) float64 { return r.ProxyUS }}
	mHSBusy     = metric{testHandshake, func(r result) float64 { return 100 * r.ProxyBusy }}
)

// series is a metric of one peer by repeat.
func series(results []result, peer string, m metric) map[int]float64 {
	out := map[int]float64{}
	for _, r := range results {
		if r.Peer == peer && r.Test == m.test {
			out[r.Repeat] = m.get(r)
		}
	}
	return out
}

func values(s map[int]float64) []float64 {
	var v []float64
	for _, x := range s {
		v = append(v, x)
	}
	return v
}

// ratio is a/b for one metric: of the medians, and the range of the ratios
// paired by repeat (peers of one repeat ran back to back, so pairing
// removes the slow phases that hit every peer).
type ratio struct {
	ofMedians float64
	paired    spread
	ok        bool
}

func ratioOf(results []result, a, b string, m metric) ratio {
	sa, sb := series(results, a, m), series(results, b, m)
	ma, okA := spreadOf(values(sa))
	mb, okB := spreadOf(values(sb))
	if !okA || !okB || mb.med == 0 {
		return ratio{}
	}
	var paired []float64
	for rep, x := range sa {
		if y, ok := sb[rep]; ok && y != 0 {
			paired = append(paired, x/y)
		}
	}
	ps, _ := spreadOf(paired)
	return ratio{ofMedians: ma.med / mb.med, paired: ps, ok: true}
}

func (r ratio) String() string {
	if !r.ok {
		return "–"
	}
	return fmt.Sprintf("**%.2f** (%.2f–%.2f)", r.ofMedians, r.paired.min, r.paired.max)
}

// num formats with thousands separators, or with decimals below 100.
func num(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "–"
	}
	if math.Abs(v) < 10 {
		return fmt.Sprintf("%.2f", v)
	}
	if math.Abs(v) < 100 {
		return fmt.Sprintf("%.1f", v)
	}
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func cell(results []result, peer string, m metric) string {
	s, ok := spreadOf(values(series(results, peer, m)))
	if !ok || (s.max == 0 && s.min == 0) {
		return "–"
	}
	return fmt.Sprintf("**%s** (%s–%s)", num(s.med), num(s.min), num(s.max))
}

func report(o *options, b *bench, results []result, mems []memResult) string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format, args...) }
	mach := b.machine()
	w("\n## benchproxy results\n\n")
	w("%d repeats, interleaved; each cell is **median** (min–max). wrk -t1 -c%d, %s per run, TLS 1.3 "+
		"TLS_AES_128_GCM_SHA256 X25519, ECDSA P-256. Load CPU %s: wrk, handshake clients, upstream; proxy CPU %s: the proxy alone.\n",
		o.repeats, o.conns, o.duration, o.loadCPU, o.proxyCPU)
	w("Machine: %s × %s, %s; nginx %s; %s; %s; edgeproxy %s.\n\n",
		mach["nproc"], mach["cpu"], mach["go"], strings.TrimPrefix(mach["nginx"], "nginx version: "), "Caddy "+mach["caddy"], mach["openssl"], mach["edgeproxy"])

	var names []string
	for _, p := range b.peers {
		names = append(names, p.name)
	}

	w("| peer | 1 KB POST req/s | POST p50 ms | POST p99 ms | 60 KB GET req/s | GET p50 ms | GET p99 ms | full handshakes/s |\n")
	w("|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, n := range names {
		w("| %s | %s | %s | %s | %s | %s | %s | %s |\n", n,
			cell(results, n, mPostRPS), cell(results, n, mPostP50), cell(results, n, mPostP99),
			cell(results, n, mStaticRPS), cell(results, n, mStaticP50), cell(results, n, mStaticP99),
			cell(results, n, mHSRate))
	}
	w("\nProxy CPU time per operation (µs, utime+stime of the proxy's processes ÷ operations) and how busy that made the proxy's core (%%):\n\n")
	w("| peer | µs per POST | µs per GET | µs per handshake | busy POST | busy GET | busy handshakes |\n")
	w("|---|---:|---:|---:|---:|---:|---:|\n")
	for _, p := range b.peers {
		if p.proc == nil {
			continue
		}
		n := p.name
		w("| %s | %s | %s | %s | %s | %s | %s |\n", n,
			cell(results, n, mPostUS), cell(results, n, mStaticUS), cell(results, n, mHSUS),
			cell(results, n, mPostBusy), cell(results, n, mStaticBusy), cell(results, n, mHSBusy))
	}

	var edges []string
	for _, p := range b.peers {
		if p.kind == "edgeproxy" {
			edges = append(edges, p.name)
		}
	}
	for _, e := range edges {
		w("\nRatios for %s: of the medians, and (in parentheses) the range of the per-repeat ratios:\n\n", e)
		w("| metric | %s ÷ nginx | %s ÷ Caddy |\n|---|---:|---:|\n", e, e)
		for _, row := range []struct {
			label string
			m     metric
		}{
			{"1 KB POST req/s", mPostRPS}, {"POST p99 latency", mPostP99}, {"60 KB GET req/s", mStaticRPS},
			{"GET p99 latency", mStaticP99}, {"full handshakes/s", mHSRate},
			{"proxy µs per POST", mPostUS}, {"proxy µs per GET", mStaticUS}, {"proxy µs per handshake", mHSUS},
		} {
			w("| %s | %s | %s |\n", row.label, ratioOf(results, e, "nginx", row.m), ratioOf(results, e, "caddy", row.m))
		}
	}

	if len(mems) > 0 {
		w("\nMemory per idle keep-alive TLS connection (VmRSS after − before, ÷ connections; nginx: master + worker). " +
			"Each connection did a full handshake (HTTP/1.1) and one 1 KB POST, then stayed open:\n\n")
		w("| peer | connections | RSS before | RSS 5 s after | KB per connection | RSS 15 s after | KB per connection |\n|---|---:|---:|---:|---:|---:|---:|\n")
		for _, m := range mems {
			w("| %s | %s | %s KB | %s KB | **%.1f** | %s KB | %.1f |\n", m.Peer, num(float64(m.Conns)),
				num(float64(m.RSSBeforeKB)), num(float64(m.RSSAfterKB)), m.KBPerConn, num(float64(m.RSSLateKB)), m.KBPerConnLate)
		}
	}

	for _, e := range edges {
		w("\nGoals for %s (on the medians):\n\n| goal | measured | verdict |\n|---|---|---|\n", e)
		goal := func(name string, r ratio, pass func(float64) bool, what string) {
			if !r.ok {
				w("| %s | not measured | – |\n", name)
				return
			}
			verdict := "missed"
			if pass(r.ofMedians) {
				verdict = "met"
				if !pass(r.paired.min) || !pass(r.paired.max) {
					verdict = "met on the median, not in every repeat"
				}
			}
			w("| %s | %s %s | %s |\n", name, what, r, verdict)
		}
		goal("1 KB POST ≥ 1.3× Caddy", ratioOf(results, e, "caddy", mPostRPS), func(x float64) bool { return x >= 1.3 }, "÷ Caddy")
		goal("1 KB POST ≥ 0.9× nginx", ratioOf(results, e, "nginx", mPostRPS), func(x float64) bool { return x >= 0.9 }, "÷ nginx")
		goal("POST p99 no worse than nginx", ratioOf(results, e, "nginx", mPostP99), func(x float64) bool { return x <= 1 }, "÷ nginx")
		goal("static GET ≥ 0.9× nginx", ratioOf(results, e, "nginx", mStaticRPS), func(x float64) bool { return x >= 0.9 }, "÷ nginx")
		goal("handshakes/s ≥ nginx", ratioOf(results, e, "nginx", mHSRate), func(x float64) bool { return x >= 1 }, "÷ nginx")
		for _, m := range mems {
			if m.Peer == e {
				v := "met"
				if m.KBPerConn > 40 {
					v = "missed"
				}
				w("| ≤ 40 KB per idle connection | %.1f KB (%.1f KB 10 s later) | %s |\n", m.KBPerConn, m.KBPerConnLate, v)
			}
		}
	}

	// Noise: what other processes did during the runs.
	var others []float64
	errs := 0
	for _, r := range results {
		others = append(others, 100*r.Others)
		if r.Errors > 0 {
			errs++
		}
	}
	var probes []float64
	retried := 0
	for _, r := range results {
		probes = append(probes, r.ProbeMS)
		if r.Attempts > 1 {
			retried++
		}
	}
	if s, ok := spreadOf(others); ok {
		w("\nOther processes on the machine used %.0f%% / %.0f%% / %.0f%% of a core (min / median / max over the runs); "+
			"%d runs were disturbed (over %.0f%%) and run again (up to %d times).", s.min, s.med, s.max, retried, 100*o.maxOthers, o.retries)
	}
	if s, ok := spreadOf(probes); ok {
		w(" The speed probe (SHA-256 of 4 MB on the load CPU before each run) took %.1f / %.1f / %.1f ms.", s.min, s.med, s.max)
	}
	if errs > 0 {
		w(" **%d runs had errors** (see the raw lines).", errs)
	}
	w("\n\nRaw runs:\n\n```\n")
	for _, r := range results {
		w("%s\n", r.line())
	}
	w("```\n")
	return sb.String()
}
