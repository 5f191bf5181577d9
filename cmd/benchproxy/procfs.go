package main

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/prometheus/procfs"
)

// childrenOf lists the live processes whose parent is pid (nginx's
// workers).
func childrenOf(pid int) []int {
	all, _ := procfs.AllProcs()
	var out []int
	for _, p := range all {
		if s, err := p.Stat(); err == nil && s.PPID == pid {
			out = append(out, p.PID)
		}
	}
	return out
}

// cpuSeconds sums the CPU time (utime+stime) of pids, in seconds.
func cpuSeconds(pids []int) (float64, error) {
	var total float64
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return 0, err
		}
		s, err := p.Stat()
		if err != nil {
			return 0, err
		}
		total += s.CPUTime()
	}
	return total, nil
}

// rssKB sums VmRSS of pids, in KB.
func rssKB(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		p, err := procfs.NewProc(pid)
		if err != nil {
			return 0, err
		}
		s, err := p.NewStatus()
		if err != nil {
			return 0, fmt.Errorf("pid %d: %w", pid, err)
		}
		total += int64(s.VmRSS / 1024)
	}
	return total, nil
}

// perCPU reads each CPU's times from /proc/stat, by CPU number.
func perCPU() (map[int64]procfs.CPUStat, error) {
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		return nil, err
	}
	stat, err := fs.Stat()
	if err != nil {
		return nil, err
	}
	return stat.CPU, nil
}

// cpuListFirst is the first CPU of a taskset list such as "1" or "2-3".
func cpuListFirst(list string) int {
	s := list
	if i := strings.IndexAny(s, ",-"); i >= 0 {
		s = s[:i]
	}
	n, _ := strconv.Atoi(s)
	return n
}
