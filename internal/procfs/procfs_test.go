package procfs

import "testing"

func TestParseStat(t *testing.T) {
	// The command name may hold spaces and parentheses.
	s, err := ParseStat("4242 (nginx: worker (x)) S 4241 4241 4241 0 -1 4194624 100 0 0 0 1234 567 0 0 20 0 1 0 100 1000 200 18446744073709551615\n")
	if err != nil {
		t.Fatal(err)
	}
	if s.PPID != 4241 || s.UTime != 1234 || s.STime != 567 {
		t.Errorf("got %+v, want ppid 4241 utime 1234 stime 567", s)
	}
	if _, err := ParseStat("garbage"); err == nil {
		t.Error("garbage parsed")
	}
}

func TestParseCPUTimes(t *testing.T) {
	machine, cpus, err := ParseCPUTimes("cpu  10 0 10 100 5 0 0 0 0 0\ncpu0 1 2 3 40 5 6 7 8 0 0\ncpu1 10 0 0 90 0 0 0 0 0 0\nintr 1\n")
	if err != nil {
		t.Fatal(err)
	}
	if machine.Busy != 20 || machine.Total != 125 {
		t.Errorf("machine = %+v, want busy 20 total 125", machine)
	}
	if got := cpus[0]; got.Busy != 1+2+3+6+7+8 || got.Total != 1+2+3+40+5+6+7+8 {
		t.Errorf("cpu0 = %+v", got)
	}
	if got := cpus[1]; got.Busy != 10 || got.Total != 100 {
		t.Errorf("cpu1 = %+v", got)
	}
	if len(cpus) != 2 {
		t.Errorf("%d CPUs, want 2", len(cpus))
	}
	if _, _, err := ParseCPUTimes("intr 1\n"); err == nil {
		t.Error("a /proc/stat without cpu lines parsed")
	}
}

func TestStatusField(t *testing.T) {
	v, err := StatusField("Name:\tx\nVmRSS:\t   12345 kB\n", "VmRSS")
	if err != nil || v != 12345 {
		t.Errorf("VmRSS = %d, %v", v, err)
	}
	if _, err := StatusField("Name:\tx\n", "VmRSS"); err == nil {
		t.Error("a missing field was found")
	}
}
