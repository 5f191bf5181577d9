package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/edgeproxy/edgeproxy/internal/testbin"
)

// proc is a server process benchproxy started, pinned with taskset (which
// execs the server, so the pid is the server's).
type proc struct {
	name     string
	cmd      *exec.Cmd
	logPath  string
	children bool // count the process's children too (nginx's workers)
	done     chan struct{}
}

// startProc starts bin on the CPUs cpu with its output to logPath.
func (b *bench) startProc(name, cpu string, env []string, logPath string, children bool, bin string, args ...string) (*proc, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command("taskset", append([]string{"-c", cpu, bin}, args...)...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group: a Ctrl-C in the terminal reaches benchproxy,
	// which stops its servers in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, children: children, done: make(chan struct{})}
	go func() {
		cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	b.procs = append(b.procs, p)
	return p, nil
}

// pids are the processes whose CPU time and memory count for p.
func (p *proc) pids() []int {
	pids := []int{p.cmd.Process.Pid}
	if p.children {
		pids = append(pids, childrenOf(p.cmd.Process.Pid)...)
	}
	return pids
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks p to stop (SIGTERM) and kills it after 10 s.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func (b *bench) stopAll() {
	for i := len(b.procs) - 1; i >= 0; i-- {
		b.procs[i].stop()
	}
	b.procs = nil
}

// waitListening waits until something accepts on addr, or p exits, or
// timeout.
func waitListening(ctx context.Context, p *proc, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited during start:\n%s", p.name, testbin.FileTail(p.logPath, 2000))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("%s not listening on %s after %s:\n%s", p.name, addr, timeout, testbin.FileTail(p.logPath, 2000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// baseEnv is benchproxy's environment without EDGEPROXY_* variables, which
// would change the edge's flags.
func baseEnv(extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EDGEPROXY_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// cpusAllowed is the Cpus_allowed_list of this process.
func cpusAllowed() string {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return "?"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == "Cpus_allowed_list" {
			return strings.TrimSpace(v)
		}
	}
	return "?"
}
