package diagnose

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"testing"
	"time"
)

func TestPublicAddr(t *testing.T) {
	for _, tt := range []struct {
		addr   string
		public bool
	}{
		{"8.8.8.8", true},
		{"1.1.1.1", true},
		{"104.16.1.1", true},
		{"2606:4700:4700::1111", true},
		{"2a00:1450:4001:80b::200e", true},
		{"::ffff:8.8.8.8", true},

		{"0.0.0.0", false},
		{"0.1.2.3", false},
		{"10.0.0.1", false},
		{"100.64.0.1", false},
		{"100.127.255.254", false},
		{"127.0.0.1", false},
		{"127.0.0.2", false},
		{"169.254.169.254", false},
		{"172.16.0.1", false},
		{"172.31.255.255", false},
		{"192.0.0.170", false},
		{"192.0.2.1", false},
		{"192.88.99.1", false},
		{"192.168.1.1", false},
		{"198.18.0.1", false},
		{"198.51.100.1", false},
		{"203.0.113.1", false},
		{"224.0.0.1", false},
		{"239.255.255.250", false},
		{"240.0.0.1", false},
		{"255.255.255.255", false},
		{"::", false},
		{"::1", false},
		{"::127.0.0.1", false},
		{"::ffff:127.0.0.2", false},
		{"::ffff:10.0.0.1", false},
		{"::ffff:169.254.169.254", false},
		{"64:ff9b::a00:1", false},
		{"64:ff9b::808:808", false},
		{"100::1", false},
		{"2001::1", false},
		{"2001:db8::1", false},
		{"2002:a00:1::1", false},
		{"3fff::1", false},
		{"fc00::1", false},
		{"fd12:3456::1", false},
		{"fe80::1", false},
		{"fe80::1%eth0", false},
		{"fec0::1", false},
		{"ff02::1", false},
	} {
		if got := publicAddr(netip.MustParseAddr(tt.addr)); got != tt.public {
			t.Errorf("publicAddr(%s) = %t, want %t", tt.addr, got, tt.public)
		}
	}
	if publicAddr(netip.Addr{}) {
		t.Error("the zero Addr is public")
	}
}

// TestDialPolicyRefusesAtDial dials through the policy's dialer: an
// address of ours connects, loopback that is not ours is refused before
// any connection is made (the listener accepts nothing), whichever form
// the address is written in.
func TestDialPolicyRefusesAtDial(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	// accepted gets the peer address of every connection, in the order
	// they were made.
	accepted := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c.RemoteAddr().String()
			c.Close()
		}
	}()
	port := ln.Addr().(*net.TCPAddr).AddrPort().Port()
	ours := newDialPolicy(netip.MustParseAddr("::ffff:127.0.0.2"))
	notOurs := newDialPolicy(netip.MustParseAddr("127.0.0.1"))
	ctx := context.Background()

	for _, host := range []string{"127.0.0.2", "::ffff:127.0.0.2"} {
		addr := netip.AddrPortFrom(netip.MustParseAddr(host), port).String()
		if _, err := notOurs.dialer(time.Second).DialContext(ctx, "tcp", addr); !errors.Is(err, errAddrRefused) {
			t.Errorf("dial %s, not ours: %v, want errAddrRefused", addr, err)
		}
	}

	c, err := ours.dialer(time.Second).DialContext(ctx, "tcp", netip.AddrPortFrom(netip.MustParseAddr("127.0.0.2"), port).String())
	if err != nil {
		t.Fatalf("dial an address of ours: %v", err)
	}
	c.Close()
	// The listener accepts in order: a refused dial that had connected
	// would come first.
	if got, want := <-accepted, c.LocalAddr().String(); got != want {
		t.Errorf("the first connection accepted came from %s, not from the allowed dial (%s)", got, want)
	}

	if err := ours.control("tcp4", "not an address", nil); !errors.Is(err, errAddrRefused) {
		t.Errorf("control of an unreadable address: %v, want errAddrRefused", err)
	}
}
