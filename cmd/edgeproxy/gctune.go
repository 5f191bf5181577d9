package main

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
)

// defaultGCHeadroom is --gc-headroom's default: off. The headroom is
// memory the process keeps whether it is busy or not (32 MiB, the value
// measured in docs/PERFORMANCE.md, is that much more RSS at rest, and
// several times that under the race detector), so it is the operator's
// choice, not a default.
const defaultGCHeadroom = 0

// The edge's live heap under load is small (about 3 MB proxying 1 KB
// posts on 64 connections), so with GOGC=100 the collector runs every
// ~3 MB of allocation, some 300 requests, and costs ~10 % of a request's
// CPU (docs/PERFORMANCE.md, "Edge"). A GOGC raised for good would multiply
// the memory of many idle connections, where the live heap is large; a
// memory limit would make the collector run without pause once the live
// heap passes it. The tuner gives the heap a floor instead: after each
// collection it sets GOGC so that the next one comes at live + max(live,
// headroom), i.e. GOGC=100 once the live heap exceeds the headroom.
type gcTuner struct {
	headroom uint64
	// stopped ends the chain of finalizers.
	stopped atomic.Bool
	// mu guards percent, the GOGC last set.
	mu      sync.Mutex
	percent int
	orig    int
	sample  []metrics.Sample
}

// gcTunerMaxPercent bounds GOGC when almost nothing is live (at start).
const gcTunerMaxPercent = 5000

// gcSentinel is garbage the tuner's finalizer hangs on: it becomes
// unreachable at once, so its finalizer runs after every collection.
type gcSentinel struct {
	t *gcTuner
	_ [16]byte // not a tiny allocation, whose finalizer could wait for its neighbours
}

// startGCTuner starts tuning GOGC with headroom; stop restores the GOGC
// there was before.
func startGCTuner(headroom uint64) (stop func()) {
	t := &gcTuner{headroom: headroom, percent: -2,
		sample: []metrics.Sample{{Name: "/gc/heap/live:bytes"}}}
	t.orig = debug.SetGCPercent(100)
	debug.SetGCPercent(t.orig)
	t.tune()
	t.arm()
	return func() {
		t.stopped.Store(true)
		t.mu.Lock()
		defer t.mu.Unlock()
		debug.SetGCPercent(t.orig)
	}
}

func (t *gcTuner) arm() {
	runtime.SetFinalizer(&gcSentinel{t: t}, func(s *gcSentinel) {
		if s.t.stopped.Load() {
			return
		}
		s.t.tune()
		s.t.arm()
	})
}

// tune sets GOGC from the heap live after the last collection.
func (t *gcTuner) tune() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped.Load() {
		return
	}
	metrics.Read(t.sample)
	live := uint64(1 << 20)
	if s := t.sample[0]; s.Value.Kind() == metrics.KindUint64 {
		live = max(s.Value.Uint64(), live)
	}
	p := gcPercentFor(live, t.headroom)
	// Setting GOGC recomputes the pacer's goal; not worth doing for a
	// change of a few percent.
	if p == t.percent || t.percent > 0 && p > t.percent*19/20 && p < t.percent*21/20 {
		return
	}
	debug.SetGCPercent(p)
	t.percent = p
}

// gcPercentFor is the GOGC that puts the next collection at live +
// max(live, headroom).
func gcPercentFor(live, headroom uint64) int {
	if live == 0 || headroom <= live {
		return 100
	}
	if headroom/live >= gcTunerMaxPercent/100 {
		return gcTunerMaxPercent // and headroom*100 cannot overflow below
	}
	p := headroom * 100 / live
	return int(min(p, gcTunerMaxPercent))
}
