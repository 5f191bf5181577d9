// Package testbin serves the tests that run the edgeproxy binary or another
// program as a separate process (cmd/edgeproxy, deploy, cmd/e2e,
// cmd/soak): it builds the binary once per test process and flavour,
// finds the external programs some tests run (Tool), and holds the small
// helpers every such test needs: free loopback ports and a buffer for a
// process's output. StartEtcd runs a cluster of etcd server processes
// (the binary scripts/ensure-etcd.sh builds) for tests that kill members
// with SIGKILL; internal/etcdtest runs members inside the test process
// instead, for everything else. Tests import it, and so do the programs that drive
// the binary the way those tests do (cmd/e2e, cmd/soak, cmd/benchproxy),
// for their ports.
package testbin

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
)

// builds are the binaries built in this process, by flavour (race or
// not), all under dir.
var (
	mu     sync.Mutex
	dir    string
	builds = map[bool]*build{}
)

type build struct {
	once sync.Once
	path string
	err  error
}

// Build returns the path of the edgeproxy binary (./cmd/edgeproxy of this
// module), built with the race detector when race is set. Each flavour is
// built once per test process; Main removes them.
func Build(tb testing.TB, race bool) string {
	tb.Helper()
	mu.Lock()
	b := builds[race]
	if b == nil {
		b = &build{}
		builds[race] = b
	}
	mu.Unlock()
	b.once.Do(func() {
		mu.Lock()
		if dir == "" {
			dir, b.err = os.MkdirTemp("", "edgeproxy-testbin")
		}
		d := dir
		mu.Unlock()
		if b.err != nil {
			return
		}
		name, args := "edgeproxy", []string{"build"}
		if race {
			name, args = "edgeproxy-race", append(args, "-race")
		}
		b.path = filepath.Join(d, name)
		args = append(args, "-o", b.path, "github.com/edgeproxy/edgeproxy/cmd/edgeproxy")
		if out, err := exec.Command("go", args...).CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go %v: %v\n%s", args, err, out)
		}
	})
	if b.err != nil {
		tb.Fatal(b.err)
	}
	return b.path
}

// Main runs the package's tests, then removes the binaries Build made.
// Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	mu.Lock()
	if dir != "" {
		os.RemoveAll(dir)
	}
	mu.Unlock()
	os.Exit(code)
}

// RequireToolsEnv is the environment variable that turns a missing
// external program from a skip into a failure. `make test` sets it to 1
// after installing the programs, so that there a test cannot silently stop
// checking anything; a plain `go test ./...` leaves it unset.
const RequireToolsEnv = "EDGEPROXY_REQUIRE_TOOLS"

// Tool returns the path of the program name, looked up on PATH. When it is
// missing the test is skipped, with the reason naming the program and the
// make target that installs it, or fails when RequireToolsEnv is 1.
func Tool(tb testing.TB, name, makeTarget string) string {
	tb.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	Missing(tb, name+" is not on PATH", makeTarget)
	return ""
}

// Missing ends the test for want of something external that makeTarget
// installs (what says what is missing): a skip, or a failure when
// RequireToolsEnv is 1.
func Missing(tb testing.TB, what, makeTarget string) {
	tb.Helper()
	if os.Getenv(RequireToolsEnv) == "1" {
		tb.Fatalf("%s and %s=1: `make %s` installs it", what, RequireToolsEnv, makeTarget)
	}
	tb.Skipf("%s: `make %s` installs it (with %s=1 this is a failure, not a skip)", what, makeTarget, RequireToolsEnv)
}

// FreeAddr returns a loopback address whose port is free right now.
func FreeAddr(tb testing.TB) string {
	tb.Helper()
	ports, err := FreePorts(1)
	if err != nil {
		tb.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
}

// FreePorts returns n distinct loopback TCP ports that are free right
// now, for a program to be told to listen on: the listeners that found
// them stay open until all n are found, so no two are the same.
//
// The ports come from below the kernel's range of ephemeral ports
// (ip_local_port_range), where they would otherwise come from: a port
// from that range, free when found, may be taken by any connection the
// machine opens (as its source port) before the program listens, and
// with parallel tests opening thousands that happened. Below the range,
// only another listener can take it. Each process walks that space in
// order from a random start, so it never hands out a port twice, and two
// test processes (go test runs packages in parallel) rarely walk the same
// ports at the same moment, as two random draws would. Where the range
// cannot be read (not Linux), the kernel chooses.
func FreePorts(n int) ([]int, error) {
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	low := ephemeralLow()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		port := 0
		if span := low - minPort; span > 0 && tries < 1000 {
			nextPort.once.Do(func() { nextPort.n.Store(int64(rand.IntN(span))) })
			port = minPort + int(nextPort.n.Add(1)%int64(span))
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				continue // taken: draw another
			}
			return nil, fmt.Errorf("testbin: free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// nextPort is where this process's walk of the ports below the
// ephemeral range is.
var nextPort struct {
	once sync.Once
	n    atomic.Int64
}

// minPort is the lowest port FreePorts draws: above the ports services
// commonly listen on.
const minPort = 10000

// ephemeralLow is the first port of the kernel's ephemeral range, or 0
// when it cannot be read.
func ephemeralLow() int {
	data, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return 0
	}
	low, err := strconv.Atoi(fields[0])
	if err != nil {
		return 0
	}
	return low
}

// LockedBuffer collects output written by one goroutine (a child
// process's, a logger's) while the test reads it from another.
type LockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *LockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
