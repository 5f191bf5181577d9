package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd when this process dies, so
// that an interrupted run leaves no node or etcd behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
