package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/edgeproxy/edgeproxy/internal/procfs"
)

// childrenOf lists the live processes whose parent is pid (nginx's
// workers).
func childrenOf(pid int) []int {
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	var out []int
	for _, d := range dirs {
		child, err := strconv.Atoi(filepath.Base(d))
		if err != nil {
			continue
		}
		if s, err := procfs.ReadStat(child); err == nil && s.PPID == pid {
			out = append(out, child)
		}
	}
	return out
}

// cpuTicks sums utime+stime of pids.
func cpuTicks(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		s, err := procfs.ReadStat(pid)
		if err != nil {
			return 0, err
		}
		total += s.UTime + s.STime
	}
	return total, nil
}

// rssKB sums VmRSS of pids, in KB.
func rssKB(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			return 0, err
		}
		v, err := procfs.StatusField(string(data), "VmRSS")
		if err != nil {
			return 0, fmt.Errorf("pid %d: %w", pid, err)
		}
		total += v
	}
	return total, nil
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
