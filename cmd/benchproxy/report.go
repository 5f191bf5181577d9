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

func perSec(test string) metric  { return metric{test, func(r result) float64 { return r.PerSec }} }
func proxyUS(test string) metric { return metric{test, func(r result) float64 { return r.ProxyUS }} }
func busy(test string) metric {
	return metric{test, func(r result) float64 { return 100 * r.ProxyBusy }}
}
func p50(test string) metric    { return metric{test, func(r result) float64 { return r.P50ms }} }
func p99(test string) metric    { return metric{test, func(r result) float64 { return r.P99ms }} }
func meanMS(test string) metric { return metric{test, func(r result) float64 { return r.MeanMS }} }
func upConns(test string) metric {
	return metric{test, func(r result) float64 { return float64(r.UpstreamConns) }}
}

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
	w("%d repeats, interleaved; each cell is **median** (min–max). %d connections per load (wrk -t1 for HTTP/1.1, h2load -t1 -m%d for HTTP/2), "+
		"%s per run after %s of the same load unmeasured, TLS 1.3 TLS_AES_128_GCM_SHA256 X25519, ECDSA P-256. "+
		"Load CPU %s: wrk, h2load, handshake clients, upstream; proxy CPU %s: the proxy alone. "+
		"Every proxy keeps up to %d idle connections to the upstream.\n",
		o.repeats, o.conns, o.h2Streams, o.duration, o.prewarm, o.loadCPU, o.proxyCPU, o.upstreamPool)
	w("Machine: %s × %s, %s; nginx %s; %s; %s; %s; %s; edgeproxy %s.\n\n",
		mach["nproc"], mach["cpu"], mach["go"], strings.TrimPrefix(mach["nginx"], "nginx version: "), "Caddy "+mach["caddy"],
		mach["wrk"], mach["h2load"], mach["openssl"], mach["edgeproxy"])

	var tests []string
	for _, t := range allTests {
		if slices.Contains(o.tests, t) {
			tests = append(tests, t)
		}
	}
	header := func(first string) {
		w("| %s |", first)
		for _, t := range tests {
			w(" %s |", testLabel[t])
		}
		w("\n|---|")
		for range tests {
			w("---:|")
		}
		w("\n")
	}
	row := func(name string, m func(string) metric, skip func(string) bool) {
		w("| %s |", name)
		for _, t := range tests {
			if skip != nil && skip(t) {
				w(" – |")
				continue
			}
			w(" %s |", cell(results, name, m(t)))
		}
		w("\n")
	}

	w("Proxy CPU time per operation, µs (utime+stime of the proxy's processes ÷ requests or handshakes):\n\n")
	header("peer")
	for _, p := range b.peers {
		if p.proc != nil {
			row(p.name, proxyUS, nil)
		}
	}
	w("\nHow busy that made the proxy's core (%%):\n\n")
	header("peer")
	for _, p := range b.peers {
		if p.proc != nil {
			row(p.name, busy, nil)
		}
	}
	w("\nOperations per second:\n\n")
	header("peer")
	for _, p := range b.peers {
		row(p.name, perSec, nil)
	}
	w("\nLatency, ms: p50 / p99 (wrk); for HTTP/2 the mean per request (h2load gives no percentiles):\n\n")
	header("peer")
	for _, p := range b.peers {
		w("| %s |", p.name)
		for _, t := range tests {
			switch t {
			case testHandshake:
				w(" – |")
			case testPostH2:
				w(" %s |", cell(results, p.name, meanMS(t)))
			default:
				w(" %s / %s |", cell(results, p.name, p50(t)), cell(results, p.name, p99(t)))
			}
		}
		w("\n")
	}
	w("\nConnections the upstream accepted during each measured run (after the pre-warm; a proxy's pool should leave this near 0):\n\n")
	header("peer")
	for _, p := range b.peers {
		w("| %s |", p.name)
		for _, t := range tests {
			s, ok := spreadOf(values(series(results, p.name, upConns(t))))
			if t == testHandshake || !ok {
				w(" – |")
				continue
			}
			w(" %.0f (%.0f–%.0f) |", s.med, s.min, s.max)
		}
		w("\n")
	}

	var edges []string
	for _, p := range b.peers {
		if p.kind == "edgeproxy" {
			edges = append(edges, p.name)
		}
	}
	nginx, caddy := peerNamed(b, "nginx"), peerNamed(b, "caddy")
	for _, e := range edges {
		w("\nProxy CPU per operation of %s ÷ the peer's: of the medians, and (in parentheses) the range of the per-repeat ratios:\n\n", e)
		w("| load | ÷ nginx | ÷ Caddy |\n|---|---:|---:|\n")
		for _, t := range tests {
			w("| %s | %s | %s |\n", testLabel[t], ratioOf(results, e, nginx, proxyUS(t)), ratioOf(results, e, caddy, proxyUS(t)))
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
		w("\nGoals for %s (proxy CPU per operation, medians; same run):\n\n| goal | measured | verdict |\n|---|---|---|\n", e)
		abs := func(name, test string, limit float64) {
			s, ok := spreadOf(values(series(results, e, proxyUS(test))))
			if !ok {
				w("| %s | not measured | – |\n", name)
				return
			}
			w("| %s | **%s** µs (%s–%s) | %s |\n", name, num(s.med), num(s.min), num(s.max), verdict(s.med <= limit, s.max <= limit))
		}
		rel := func(name, test, peer string, limit float64) {
			r := ratioOf(results, e, peer, proxyUS(test))
			if !r.ok {
				w("| %s | not measured | – |\n", name)
				return
			}
			w("| %s | ÷ %s %s | %s |\n", name, peer, r, verdict(r.ofMedians <= limit, r.paired.max <= limit))
		}
		abs("POST 1 KB (HTTP/1.1) ≤ 50 µs", testPost, 50)
		abs("static 60 KB ≤ 120 µs", testStatic, 120)
		rel("full handshake ≤ nginx's", testHandshake, nginx, 1)
		rel("POST 1 KB over HTTP/2 ≤ 1.3× nginx's", testPostH2, nginx, 1.3)
		for _, m := range mems {
			if m.Peer == e {
				w("| ≤ 40 KB per idle TLS connection | %.1f KB (%.1f KB 10 s later) | %s |\n", m.KBPerConn, m.KBPerConnLate,
					verdict(m.KBPerConn <= 40, m.KBPerConnLate <= 40))
			}
		}
	}

	// Noise: what other processes did during the runs.
	var others, probes []float64
	errs, retried := 0, 0
	for _, r := range results {
		others = append(others, 100*r.Others)
		probes = append(probes, r.ProbeMS)
		if r.Errors > 0 {
			errs++
		}
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

// verdict says whether a goal was met on the median, and in every repeat.
func verdict(median, every bool) string {
	switch {
	case median && every:
		return "met"
	case median:
		return "met on the median, not in every repeat"
	}
	return "missed"
}

// peerNamed is the report name of the first peer of kind, or kind itself.
func peerNamed(b *bench, kind string) string {
	for _, p := range b.peers {
		if p.kind == kind {
			return p.name
		}
	}
	return kind
}
