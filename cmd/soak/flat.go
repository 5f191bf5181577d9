package main

import (
	"fmt"
	"slices"
	"time"
)

// flatRule says how much a resource may grow over the run. The rule: the
// lowest sample of the last period of the run (the last minute of `make
// soak`) must not exceed the lowest sample of the first period after the
// warm-up by more than pct of it or abs, whichever allows more.
//
// Why the lowest samples: a leak raises the floor, while a burst of load
// raises only the peaks. On a shared machine a stall of a few seconds makes
// the open-loop generator hold many more requests at once, so the server
// briefly holds many more connections, each with its goroutines, fds and
// buffers, and the edge keeps up to 1,024 idle upstream connections for
// 90 s after (proxy.New's transport). A first 10-minute run, judged on
// window medians, failed on exactly that with no leak: goroutines 110 →
// 3,100 → 110 around one 5 s stall. Why RSS gets 16 MiB: after such a
// burst the Go runtime keeps part of the memory it grew to (that run:
// 23 → 154 → 33 MiB, flat afterwards). abs keeps the rule meaningful for
// small numbers. The precise leak check is the one at rest after the run
// (rest.go).
type flatRule struct {
	name, unit string
	pct, abs   float64
	value      func(sample) float64
}

var flatRules = []flatRule{
	{name: "RSS", unit: "MiB", pct: 0.20, abs: 16, value: func(s sample) float64 { return float64(s.rssKB) / 1024 }},
	{name: "goroutines", pct: 0.20, abs: 20, value: func(s sample) float64 { return float64(s.goroutines) }},
	{name: "open fds", pct: 0.20, abs: 20, value: func(s sample) float64 { return float64(s.fds) }},
}

// flatResult is one resource judged by its rule.
type flatResult struct {
	rule                   flatRule
	baseline, last, limit  float64 // floors of the base and last periods
	baseMedian, lastMedian float64 // for the report
	nBase, nLast           int
	trend                  float64 // least-squares slope after the warm-up, per 10 minutes
	ok                     bool
	why                    string // why not ok
}

// judgeFlat applies every flatRule to the samples (their at is the time
// since traffic started): base period [warmup, warmup+period), last period
// [duration-period, duration].
func judgeFlat(samples []sample, warmup, period, duration time.Duration) []flatResult {
	var out []flatResult
	for _, rule := range flatRules {
		var base, last, xs, ys []float64
		for _, s := range samples {
			v := rule.value(s)
			if s.at >= warmup && s.at < warmup+period {
				base = append(base, v)
			}
			if s.at >= duration-period && s.at <= duration {
				last = append(last, v)
			}
			if s.at >= warmup {
				xs = append(xs, s.at.Minutes())
				ys = append(ys, v)
			}
		}
		r := flatResult{rule: rule, nBase: len(base), nLast: len(last), trend: 10 * slope(xs, ys)}
		if len(base) == 0 || len(last) == 0 {
			r.why = fmt.Sprintf("not enough samples (%d in the base period, %d in the last)", len(base), len(last))
			out = append(out, r)
			continue
		}
		r.baseline, r.last = slices.Min(base), slices.Min(last)
		r.baseMedian, r.lastMedian = median(base), median(last)
		r.limit = r.baseline + max(rule.pct*r.baseline, rule.abs)
		r.ok = r.last <= r.limit
		if !r.ok {
			r.why = fmt.Sprintf("%s floor grew from %.1f to %.1f, over the limit %.1f", rule.name, r.baseline, r.last, r.limit)
		}
		out = append(out, r)
	}
	return out
}

func median(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// slope is the least-squares slope of ys over xs; 0 for fewer than two
// distinct xs.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}
