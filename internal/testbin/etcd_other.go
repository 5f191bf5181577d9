//go:build !linux

package testbin

import "os/exec"

// setDeathSignal does nothing where the kernel has no parent-death
// signal: the test's cleanup is then the only thing that stops etcd.
func setDeathSignal(cmd *exec.Cmd) {}
