// Package cpustat says what edgeproxy's measuring tools (cmd/benchproxy,
// cmd/soak and the provisioning benchmark of control) count as busy CPU
// time. The times themselves are read from /proc/stat by
// github.com/prometheus/procfs (procfs.FS.Stat), in seconds.
//
// A CPU is busy while it runs work of this machine: user, nice, system,
// irq and softirq time (guest time is already counted in user). It is not
// busy while idle, in iowait (idle with a disk request outstanding), or
// while the hypervisor has it run another guest (steal): no process of
// this machine used that time, and benchproxy's speed probe, not the CPU
// times, is what sees the host's other guests.
package cpustat

import "github.com/prometheus/procfs"

// Busy is the time, in seconds, s counts as busy (see the package doc).
func Busy(s procfs.CPUStat) float64 {
	return s.User + s.Nice + s.System + s.IRQ + s.SoftIRQ
}

// Total is all the time, in seconds, s accounts for: busy, idle, iowait
// and steal. Over an interval, the change of Busy over the change of Total
// is the fraction of the time the CPU was busy.
func Total(s procfs.CPUStat) float64 {
	return Busy(s) + s.Idle + s.Iowait + s.Steal
}
