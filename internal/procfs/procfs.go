// Package procfs reads the few Linux /proc figures that edgeproxy's
// measuring tools (cmd/benchproxy, cmd/soak) judge a process by: its CPU
// time and parent from /proc/<pid>/stat, fields such as VmRSS from
// /proc/<pid>/status, and the machine's CPU time from /proc/stat. The
// parsers take the files' contents, so they are tested on fixed text.
package procfs

import (
	"fmt"
	"os"
	"strconv"
	"strings"
)

// ClockTicks is USER_HZ, the unit of the CPU times in /proc (100 on every
// Linux architecture Go runs on).
const ClockTicks = 100

// Stat is what is read of /proc/<pid>/stat.
type Stat struct {
	PPID         int
	UTime, STime int64 // clock ticks, all threads of the process
}

// ParseStat parses the contents of /proc/<pid>/stat. The command name, in
// parentheses, may itself hold spaces and parentheses, so fields are
// counted from the last ')'.
func ParseStat(data string) (Stat, error) {
	i := strings.LastIndexByte(data, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("malformed /proc stat %q", data)
	}
	f := strings.Fields(data[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
	if len(f) < 13 {
		return Stat{}, fmt.Errorf("malformed /proc stat %q", data)
	}
	var s Stat
	var err error
	if s.PPID, err = strconv.Atoi(f[1]); err != nil {
		return s, err
	}
	if s.UTime, err = strconv.ParseInt(f[11], 10, 64); err != nil {
		return s, err
	}
	if s.STime, err = strconv.ParseInt(f[12], 10, 64); err != nil {
		return s, err
	}
	return s, nil
}

// ReadStat reads and parses /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return Stat{}, err
	}
	return ParseStat(string(data))
}

// StatusField returns the number of a "Name:   123 kB" field of the
// contents of /proc/<pid>/status.
func StatusField(status, name string) (int64, error) {
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

// CPUTimes is one cpu line of /proc/stat in clock ticks: busy is all but
// idle and iowait.
type CPUTimes struct{ Busy, Total int64 }

// ParseCPUTimes parses the contents of /proc/stat: the whole machine (the
// "cpu" line) and each CPU by number (the "cpuN" lines).
func ParseCPUTimes(data string) (machine CPUTimes, perCPU map[int]CPUTimes, err error) {
	perCPU = map[int]CPUTimes{}
	found := false
	for _, line := range strings.Split(data, "\n") {
		f := strings.Fields(line)
		if len(f) < 5 || !strings.HasPrefix(f[0], "cpu") {
			continue
		}
		var t CPUTimes
		// user nice system idle iowait irq softirq steal (guest time is
		// already counted in user).
		for i, s := range f[1:min(len(f), 9)] {
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil {
				return CPUTimes{}, nil, fmt.Errorf("/proc/stat: %q: %w", line, err)
			}
			t.Total += v
			if i != 3 && i != 4 { // idle, iowait
				t.Busy += v
			}
		}
		if f[0] == "cpu" {
			machine, found = t, true
			continue
		}
		if n, err := strconv.Atoi(f[0][3:]); err == nil {
			perCPU[n] = t
		}
	}
	if !found || len(perCPU) == 0 {
		return CPUTimes{}, nil, fmt.Errorf("/proc/stat: no cpu lines")
	}
	return machine, perCPU, nil
}

// ReadCPUTimes reads and parses /proc/stat.
func ReadCPUTimes() (machine CPUTimes, perCPU map[int]CPUTimes, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return CPUTimes{}, nil, err
	}
	return ParseCPUTimes(string(data))
}
