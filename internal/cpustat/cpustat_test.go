package cpustat

import (
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/prometheus/procfs"
)

// TestBusy reads a fixed /proc/stat through procfs: idle, iowait and
// steal are not busy, and guest time (already inside user) is not counted
// twice.
func TestBusy(t *testing.T) {
	dir := t.TempDir()
	// cpu user nice system idle iowait irq softirq steal guest guest_nice
	stat := "cpu  10 0 10 100 5 0 0 3 7 0\n" +
		"cpu0 1 2 3 40 5 6 7 8 0 0\n" +
		"cpu1 10 0 0 90 0 0 0 0 0 0\n" +
		"intr 1\nctxt 1\nbtime 1\nprocesses 1\nprocs_running 1\nprocs_blocked 0\n"
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	fs, err := procfs.NewFS(dir)
	if err != nil {
		t.Fatal(err)
	}
	s, err := fs.Stat()
	if err != nil {
		t.Fatal(err)
	}
	// procfs gives seconds: USER_HZ is 100 ticks a second.
	for _, c := range []struct {
		name        string
		got         procfs.CPUStat
		busy, total float64
	}{
		{"cpu", s.CPUTotal, 20, 128},
		{"cpu0", s.CPU[0], 1 + 2 + 3 + 6 + 7, 1 + 2 + 3 + 40 + 5 + 6 + 7 + 8},
		{"cpu1", s.CPU[1], 10, 100},
	} {
		if got, want := Busy(c.got), c.busy/100; math.Abs(got-want) > 1e-9 {
			t.Errorf("%s: Busy = %v s, want %v s", c.name, got, want)
		}
		if got, want := Total(c.got), c.total/100; math.Abs(got-want) > 1e-9 {
			t.Errorf("%s: Total = %v s, want %v s", c.name, got, want)
		}
	}
	if len(s.CPU) != 2 {
		t.Errorf("%d CPUs, want 2", len(s.CPU))
	}
}
