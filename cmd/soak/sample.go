package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/procfs"

	"github.com/edgeproxy/edgeproxy/internal/cpustat"
)

// sample is the server's resources at one moment of the run.
type sample struct {
	at         time.Duration // since traffic started
	rssKB      int64         // VmRSS
	goroutines int           // go_goroutines from /metrics
	fds        int           // entries of /proc/<pid>/fd
	cpuSeconds float64       // utime+stime so far
	records    int           // sum of edgeproxy_records over statuses

	// Probes that tell a stall of the server from one of the machine or of
	// the soak itself: a GET /healthz on the server's API (no disk, no
	// upstream) and a request straight to the ingestion upstream (in this
	// process, bypassing the edge), each timed; and the whole machine's
	// busy and total CPU seconds so far (/proc/stat; busy as package
	// cpustat defines it).
	healthz, upstream time.Duration
	machineBusy       float64
	machineTotal      float64
}

// sampler reads the server's resources every interval.
type sampler struct {
	pid        int
	metricsURL string
	healthzURL string
	probeURL   string // the ingestion upstream, reached directly
	fails      *failures
	samples    []sample
}

// run takes a sample at t0, t0+every, … up to end included, and prints a
// progress line with each.
func (s *sampler) run(ctx context.Context, t0, end time.Time, every time.Duration, log io.Writer, traffic *trafficStats) {
	client := &http.Client{Timeout: 10 * time.Second}
	for k := 0; ; k++ {
		at := t0.Add(time.Duration(k) * every)
		if at.After(end) {
			return
		}
		sleepCtx(ctx, time.Until(at))
		if ctx.Err() != nil {
			return
		}
		smp, err := s.take(ctx, client)
		if err != nil {
			s.fails.add("sampling", "reading the server's resources failed", err.Error())
			continue
		}
		smp.at = at.Sub(t0)
		s.samples = append(s.samples, smp)
		sent, failed, provoked := traffic.counts()
		progress(log, "t=%-6v rss %.1f MiB, %d goroutines, %d fds, %d records; %d requests sent, %d failed, %d provoked",
			smp.at.Round(time.Second), float64(smp.rssKB)/1024, smp.goroutines, smp.fds, smp.records, sent, failed, provoked)
	}
}

func (s *sampler) take(ctx context.Context, client *http.Client) (sample, error) {
	var smp sample
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return smp, err
	}
	proc, err := fs.Proc(s.pid)
	if err != nil {
		return smp, err
	}
	status, err := proc.NewStatus()
	if err != nil {
		return smp, err
	}
	smp.rssKB = int64(status.VmRSS / 1024)
	if smp.fds, err = proc.FileDescriptorsLen(); err != nil {
		return smp, err
	}
	st, err := proc.Stat()
	if err != nil {
		return smp, err
	}
	smp.cpuSeconds = st.CPUTime()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.metricsURL, nil)
	if err != nil {
		return smp, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return smp, fmt.Errorf("scraping /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return smp, fmt.Errorf("scraping /metrics: status %d", resp.StatusCode)
	}
	g, recs, err := parseMetrics(resp.Body)
	if err != nil {
		return smp, fmt.Errorf("scraping /metrics: %w", err)
	}
	smp.goroutines, smp.records = g, recs
	machine, err := fs.Stat()
	if err != nil {
		return smp, err
	}
	smp.machineBusy, smp.machineTotal = cpustat.Busy(machine.CPUTotal), cpustat.Total(machine.CPUTotal)
	if s.healthzURL != "" {
		if smp.healthz, err = timeGet(ctx, client, s.healthzURL); err != nil {
			return smp, fmt.Errorf("GET /healthz: %w", err)
		}
	}
	if s.probeURL != "" {
		if smp.upstream, err = timeGet(ctx, client, s.probeURL); err != nil {
			return smp, fmt.Errorf("GET the upstream directly: %w", err)
		}
	}
	return smp, nil
}

// timeGet times a GET of url to the end of its body; a status other than
// 200 is an error.
func timeGet(ctx context.Context, client *http.Client, url string) (time.Duration, error) {
	t := time.Now()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return 0, err
	}
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("status %d", resp.StatusCode)
	}
	return time.Since(t), nil
}

// parseMetrics reads go_goroutines and the sum of edgeproxy_records from a
// Prometheus text exposition.
func parseMetrics(r io.Reader) (goroutines, records int, err error) {
	found := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, value, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		switch {
		case name == "go_goroutines":
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("go_goroutines %q: %w", value, err)
			}
			goroutines, found = int(v), true
		case strings.HasPrefix(name, "edgeproxy_records{"):
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return 0, 0, fmt.Errorf("%s %q: %w", name, value, err)
			}
			records += int(v)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if !found {
		return 0, 0, fmt.Errorf("no go_goroutines")
	}
	return goroutines, records, nil
}
