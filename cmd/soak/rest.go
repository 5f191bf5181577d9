package main

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// restAllowance is how many more goroutines, and how many more fds, the
// server may hold at rest after the run than before its first request.
const restAllowance = 20

// restResult is the check at rest after the run: traffic stopped, every
// connection of the soak closed, every churned record deleted. Whatever
// the load made the server hold must then go away: the goroutines and fds
// come back to within restAllowance of what they were before the first
// request, and the records to the stable ones. Unlike the flatness rule
// this does not depend on how bursty the load was, so it is the precise
// leak check: a goroutine or fd leaked per connection, request or record
// stays. The edge keeps idle upstream connections for 90 s, so this may
// take that long.
type restResult struct {
	before, after sample
	took          time.Duration
	ok            bool
	why           string
}

// restCheck samples the server every 2 s until it is back at rest or
// limit has passed.
func restCheck(ctx context.Context, s *sampler, before sample, stable int, limit time.Duration) restResult {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	r := restResult{before: before}
	t := time.Now()
	for {
		smp, err := s.take(ctx, client)
		r.took = time.Since(t)
		if err != nil {
			r.why = "sampling at rest: " + err.Error()
			return r
		}
		r.after = smp
		if smp.goroutines <= before.goroutines+restAllowance && smp.fds <= before.fds+restAllowance && smp.records == stable {
			r.ok = true
			return r
		}
		if r.took >= limit || ctx.Err() != nil {
			r.why = fmt.Sprintf("%v after the run the server still holds %d goroutines, %d fds and %d records; before traffic %d goroutines and %d fds, allowance +%d each, and %d stable records",
				r.took.Round(time.Second), smp.goroutines, smp.fds, smp.records, before.goroutines, before.fds, restAllowance, stable)
			return r
		}
		sleepCtx(ctx, 2*time.Second)
	}
}
