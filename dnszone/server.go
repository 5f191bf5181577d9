package dnszone

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/miekg/dns"
	"golang.org/x/net/netutil"
)

// Limits of the TCP side, where one client holds a connection.
const (
	// maxTCPConns bounds the TCP connections open at once; more wait to
	// be accepted.
	maxTCPConns = 256
	// maxTCPQueries is the most queries answered on one connection.
	maxTCPQueries = 128
	// ioTimeout bounds reading a query and writing an answer.
	ioTimeout = 2 * time.Second
	// tcpIdle is how long a TCP connection may wait between queries.
	tcpIdle = 8 * time.Second
)

// udpReadSize is the buffer one UDP query is read into; a query cannot
// usefully be larger.
const udpReadSize = 4096

// Listen opens UDP and TCP on addr, the same port for both. With port 0
// a free port is chosen (UDP's, then TCP on it, retried when that TCP
// port is taken), as tests need.
func Listen(addr string) (net.PacketConn, net.Listener, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, nil, err
	}
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", addr)
		if err != nil {
			return nil, nil, fmt.Errorf("udp: %w", err)
		}
		tcpAddr := addr
		if port == "0" {
			tcpAddr = net.JoinHostPort(host, strconv.Itoa(pc.LocalAddr().(*net.UDPAddr).Port))
		}
		ln, err := net.Listen("tcp", tcpAddr)
		if err == nil {
			return pc, ln, nil
		}
		pc.Close()
		lastErr = fmt.Errorf("tcp: %w", err)
		if port != "0" {
			break
		}
	}
	return nil, nil, lastErr
}

// ServeDNS answers one query: the zone as a dns.Handler. A UDP query over
// its client's rate limit is dropped or answered empty with TC set.
func (z *Zone) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	udp := false
	if ua, ok := w.RemoteAddr().(*net.UDPAddr); ok {
		udp = true
		switch z.limiter.check(ua.AddrPort().Addr()) {
		case drop:
			z.metrics.dropped.Inc()
			return
		case truncate:
			z.metrics.truncated.Inc()
			w.WriteMsg(truncated(req))
			return
		}
	}
	resp := z.answer(req, udp)
	if err := w.WriteMsg(resp); err != nil {
		// The client is gone, or the question does not pack again;
		// either way there is nothing to tell it.
		return
	}
	z.metrics.answered(resp.Rcode)
}

// truncated is the answer to a query over the rate limit: the question
// and TC, which sends a real resolver to TCP. It is no larger than the
// query was.
func truncated(req *dns.Msg) *dns.Msg {
	resp := new(dns.Msg)
	resp.Id, resp.Response, resp.Opcode, resp.Truncated = req.Id, true, req.Opcode, true
	if len(req.Question) == 1 {
		resp.Question = []dns.Question{req.Question[0]}
	}
	return resp
}

// Serve answers queries on pc (UDP) and ln (TCP), as Listen opened them,
// until Shutdown. It returns nil after Shutdown, else the error that
// stopped a listener.
func (z *Zone) Serve(pc net.PacketConn, ln net.Listener) error {
	z.srvMu.Lock()
	if z.closed {
		z.srvMu.Unlock()
		pc.Close()
		ln.Close()
		return nil
	}
	accept := func(h dns.Header) dns.MsgAcceptAction {
		// Answers are never answered. Everything else reaches ServeDNS,
		// so that it is rate-limited and counted.
		if h.Bits&(1<<15) != 0 {
			return dns.MsgIgnore
		}
		return dns.MsgAccept
	}
	udp := &dns.Server{PacketConn: pc, Handler: z, UDPSize: udpReadSize, MsgAcceptFunc: accept,
		ReadTimeout: ioTimeout, WriteTimeout: ioTimeout}
	tcp := &dns.Server{Listener: netutil.LimitListener(ln, maxTCPConns), Handler: z, MsgAcceptFunc: accept,
		ReadTimeout: ioTimeout, WriteTimeout: ioTimeout, MaxTCPQueries: maxTCPQueries,
		IdleTimeout: func() time.Duration { return tcpIdle }}
	errc := make(chan error, 2)
	for _, srv := range []*dns.Server{udp, tcp} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		go func() { errc <- srv.ActivateAndServe() }()
		select {
		case <-started:
			z.servers = append(z.servers, srv)
		case err := <-errc:
			// It never started: stop the one that did.
			for _, s := range z.servers {
				s.Shutdown()
			}
			z.servers = nil
			z.srvMu.Unlock()
			pc.Close()
			ln.Close()
			return fmt.Errorf("dnszone: serving: %w", err)
		}
	}
	z.srvMu.Unlock()

	var first error
	for range 2 {
		if err := <-errc; err != nil && first == nil {
			first = err
			// One side failed: stop the other, and report the failure.
			go z.shutdownServers(context.Background())
		}
	}
	if first != nil {
		return fmt.Errorf("dnszone: serving: %w", first)
	}
	return nil
}

// Shutdown stops serving and following the store, waiting for the
// answers in flight until ctx ends.
func (z *Zone) Shutdown(ctx context.Context) error {
	err := z.shutdownServers(ctx)
	if z.stop != nil {
		z.stop()
		<-z.followed
	}
	return err
}

func (z *Zone) shutdownServers(ctx context.Context) error {
	z.srvMu.Lock()
	z.closed = true
	servers := z.servers
	z.servers = nil
	z.srvMu.Unlock()
	var errs []error
	for _, srv := range servers {
		errs = append(errs, srv.ShutdownContext(ctx))
	}
	return errors.Join(errs...)
}
