//go:build !linux

package main

import "os/exec"

// setDeathSignal does nothing where the kernel offers no death signal;
// the tool kills its processes itself on the way out.
func setDeathSignal(*exec.Cmd) {}
