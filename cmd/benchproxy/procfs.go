package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc (100 on
// every Linux architecture Go runs on).
const clockTicks = 100

// procStat is what benchproxy reads of /proc/<pid>/stat.
type procStat struct {
	ppid         int
	utime, stime int64 // clock ticks, all threads of the process
}

// parseProcStat parses the contents of /proc/<pid>/stat. The command
// name, in parentheses, may itself hold spaces and parentheses, so fields
// are counted from the last ')'.
func parseProcStat(data string) (procStat, error) {
	i := strings.LastIndexByte(data, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("malformed stat %q", data)
	}
	f := strings.Fields(data[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return procStat{}, fmt.Errorf("malformed stat %q", data)
	}
	var s procStat
	var err error
	if s.ppid, err = strconv.Atoi(f[1]); err != nil {
		return s, err
	}
	if s.utime, err = strconv.ParseInt(f[11], 10, 64); err != nil {
		return s, err
	}
	if s.stime, err = strconv.ParseInt(f[12], 10, 64); err != nil {
		return s, err
	}
	return s, nil
}

func readProcStat(pid int) (procStat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	return parseProcStat(string(data))
}

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
		if s, err := readProcStat(child); err == nil && s.ppid == pid {
			out = append(out, child)
		}
	}
	return out
}

// cpuTicks sums utime+stime of pids.
func cpuTicks(pids []int) (int64, error) {
	var total int64
	for _, pid := range pids {
		s, err := readProcStat(pid)
		if err != nil {
			return 0, err
		}
		total += s.utime + s.stime
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
		v, err := statusField(string(data), "VmRSS")
		if err != nil {
			return 0, fmt.Errorf("pid %d: %w", pid, err)
		}
		total += v
	}
	return total, nil
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
	return 0, fmt.Errorf("no %s in status", name)
}

// cpuTimes is one line of /proc/stat in clock ticks.
type cpuTimes struct{ busy, total int64 }

// readCPUTimes returns the per-CPU lines of /proc/stat, by CPU number.
func readCPUTimes() (map[int]cpuTimes, error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return nil, err
	}
	return parseCPUTimes(string(data))
}

func parseCPUTimes(data string) (map[int]cpuTimes, error) {
	out := map[int]cpuTimes{}
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[0], "cpu") || f[0] == "cpu" {
			continue
		}
		n, err := strconv.Atoi(f[0][3:])
		if err != nil {
			continue
		}
		var t cpuTimes
		// user nice system idle iowait irq softirq steal (guest time is
		// already counted in user).
		for i, s := range f[1:min(len(f), 9)] {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return nil, fmt.Errorf("/proc/stat: %q: %w", line, err)
			}
			t.total += v
			if i != 3 && i != 4 { // idle, iowait
				t.busy += v
			}
		}
		out[n] = t
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("/proc/stat: no per-CPU lines")
	}
	return out, nil
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
