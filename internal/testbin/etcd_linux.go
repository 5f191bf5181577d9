package testbin

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd when the test process dies, so
// that an interrupted test leaves no etcd behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
