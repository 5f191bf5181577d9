package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

// sample is the server's resources at one moment of the run.
type sample struct {
	at         time.Duration // since traffic started
	rssKB      int64         // VmRSS
	goroutines int           // go_goroutines from /metrics
	fds        int           // entries of /proc/<pid>/fd
	cpuTicks   int64         // utime+stime so far, in clock ticks
	records    int           // sum of edgeproxy_records over statuses

	// Probes that tell a stall of the server from one of the machine or of
	// the soak itself: a GET /healthz on the server's API (no disk, no
	// upstream) and a request straight to the ingestion upstream (in this
	// process, bypassing the edge), each timed; and the whole machine's
	// busy CPU ticks so far (/proc/stat).
	healthz, upstream time.Duration
	machineBusy       int64
	machineTotal      int64
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc (100 on
// every Linux architecture Go runs on).
const clockTicks = 100

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
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", s.pid))
	if err != nil {
		return smp, err
	}
	if smp.rssKB, err = statusField(string(status), "VmRSS"); err != nil {
		return smp, err
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", s.pid))
	if err != nil {
		return smp, err
	}
	smp.fds = len(fds)
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.pid))
	if err != nil {
		return smp, err
	}
	if smp.cpuTicks, err = parseCPUTicks(string(stat)); err != nil {
		return smp, err
	}
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
	if smp.machineBusy, smp.machineTotal, err = readMachineTicks(); err != nil {
		return smp, err
	}
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

// readMachineTicks returns the busy and total ticks of all CPUs from the
// first line of /proc/stat (idle and iowait are not busy).
func readMachineTicks() (busy, total int64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, err
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 5 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("/proc/stat: unexpected first line %q", line)
	}
	// user nice system idle iowait irq softirq steal (guest is in user).
	for i, v := range f[1:min(len(f), 9)] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("/proc/stat: %q: %w", line, err)
		}
		total += n
		if i != 3 && i != 4 {
			busy += n
		}
	}
	return busy, total, nil
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

// statusField returns a "Name:   123 kB" field of /proc/<pid>/status.
func statusField(status, name string) (int64, error) {
	for _, line := range strings.Split(status, "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != name {
			continue
		}
		f := strings.Fields(v)
		if len(f) == 0 {
			break
		}
		return strconv.ParseInt(f[0], 10, 64)
	}
	return 0, fmt.Errorf("no %s in /proc status", name)
}

// parseCPUTicks returns utime+stime from the contents of /proc/<pid>/stat.
// The command name, in parentheses, may hold spaces and parentheses, so
// fields are counted from the last ')'.
func parseCPUTicks(stat string) (int64, error) {
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	f := strings.Fields(stat[i+1:])
	// f[0] is field 3 (state); utime is field 14, stime 15.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed /proc stat %q", stat)
	}
	u, err := strconv.ParseInt(f[11], 10, 64)
	if err != nil {
		return 0, err
	}
	s, err := strconv.ParseInt(f[12], 10, 64)
	if err != nil {
		return 0, err
	}
	return u + s, nil
}
