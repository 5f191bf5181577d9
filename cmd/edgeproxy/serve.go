package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/control"
	"github.com/edgeproxy/edgeproxy/diagnose"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnszone"
	"github.com/edgeproxy/edgeproxy/docs"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/proxy"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/edgeproxy/edgeproxy/webhooks"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"
)

// drainTimeout bounds how long shutdown waits for in-flight requests.
const drainTimeout = 30 * time.Second

// Files in the data directory.
const (
	dbFile       = "edgeproxy.db"
	socketFile   = "admin.sock"
	bootstrapKey = "bootstrap-key"
)

func newLogger(format string, w io.Writer) *slog.Logger {
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, nil))
	}
	return slog.New(slog.NewTextHandler(w, nil))
}

// serve runs the server until ctx is done, then drains and returns. Startup
// failures return an error; a clean shutdown returns nil.
func serve(ctx context.Context, cfg *config, stdout io.Writer, log *slog.Logger) error {
	if cfg.clustered() {
		log = log.With("node", cfg.NodeName)
	}
	if err := privateDataDir(cfg.DataDir, log); err != nil {
		return err
	}
	opened, err := openStore(cfg, log)
	if err != nil {
		return err
	}
	defer opened.close()
	st := opened.Store

	if err := bootstrap(st, cfg, stdout, log); err != nil {
		if !errors.Is(err, store.ErrUnavailable) {
			return err
		}
		// A node that has seen the cluster empty and cannot reach it now
		// still serves from its copy; the cluster is bootstrapped once
		// etcd answers (by this node or another).
		log.Warn("bootstrap: the cluster store cannot be reached; trying again in the background", "err", err)
		go retryBootstrap(ctx, st, cfg, stdout, log)
	}

	// One registry for the whole process; each component registers its
	// own collectors.
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// leader is whether this node runs the lifecycle engine: always on
	// the bbolt file, while elected on etcd.
	var leader atomic.Bool
	leader.Store(!st.Clustered())
	storeUp := &storeProbe{store: st}
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeproxy_leader",
			Help: "1 on the node that runs the lifecycle engine and the webhook deliveries (always, on the bbolt file), else 0.",
		}, func() float64 { return b2f(leader.Load()) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "edgeproxy_store_up",
			Help: "1 while the store answers (on etcd: the last request reached the cluster; asked again at most once a second), else 0. While 0, API writes answer 503 and the edge serves from the node's local copy.",
		}, func() float64 { return b2f(storeUp.up()) }),
	)
	if cfg.NodeName != "" {
		nodeInfo := prometheus.NewGauge(prometheus.GaugeOpts{
			Name:        "edgeproxy_node_info",
			Help:        "Always 1; its label node is this node's --node-name.",
			ConstLabels: prometheus.Labels{"node": cfg.NodeName},
		})
		nodeInfo.Set(1)
		reg.MustRegister(nodeInfo)
	}

	verifier, err := dnsverify.New(cfg.DNSResolvers, 0)
	if err != nil {
		return fmt.Errorf("--dns-resolvers: %w", err)
	}
	// With the target zone served here (--dns-addr), a record's DCV
	// delegation lets the CA validate through the zone (DNS-01): the
	// certificate manager writes the challenge TXT there, the engine may
	// make a record valid before its traffic points here, and the CAA
	// pre-flight admits CAA records that allow DNS-01 only.
	zoneServed := cfg.DNSAddr != ""
	var zoneProvider *certs.ZoneDNSProvider
	if zoneServed {
		zoneProvider = &certs.ZoneDNSProvider{Store: st, Zone: cfg.TargetCNAMEBase}
		verifier.ValidationMethods = []string{"http-01", "tls-alpn-01", "dns-01"}
	}
	cm, err := certs.New(st, certs.Config{
		CA:         cfg.ACMECA,
		CARoots:    cfg.ACMECARoot,
		Email:      cfg.ACMEEmail,
		HTTPPort:   portOf(cfg.HTTPAddr),
		TLSPort:    portOf(cfg.HTTPSAddr),
		Logger:     log,
		Registerer: reg,
		Zone:       zoneProvider,
	})
	if err != nil {
		return err
	}
	// Before the store closes (defers run last-in first-out): stops the
	// renewal loop and releases the storage locks this process holds.
	defer cm.Close()
	engine := lifecycle.NewEngine(st, verifier, cm, lifecycle.Config{
		DNSWaitTimeout:   cfg.DNSWaitTimeout,
		IssueTimeout:     cfg.IssueTimeout,
		RecheckMax:       cfg.RecheckMax,
		MonitorInterval:  cfg.MonitorInterval,
		OrgOrdersPerHour: cfg.OrgOrdersPerHour,
		CertRetention:    cfg.CertRetention,
		CAAIdentities:    cfg.CAAIdentities,
		ProbeAddr:        cfg.HTTPSAddr,
		ZoneServed:       zoneServed,
		Logger:           log,
		Registerer:       reg,
	})

	probes := &diagnose.Probes{}
	ccfg := control.Config{
		TargetCNAMEBase: cfg.TargetCNAMEBase,
		MaxProxyRecords: cfg.MaxProxyRecords,
		Schema:          docs.OpenAPI,
		Logger:          log,
		Registerer:      reg,
		Diagnoser: &diagnose.Diagnoser{
			DNS: verifier, Certs: cm, CAAIdentities: cfg.CAAIdentities,
			HTTPAddr: cfg.HTTPAddr, HTTPSAddr: cfg.HTTPSAddr, Probes: probes, ZoneServed: zoneServed,
		},
		Webhooks: control.WebhookConfig{AllowPrivate: cfg.WebhookAllowPrivate},
	}
	// The delivery worker of status notifications. Its schedule is in the
	// store; it runs until the servers have drained.
	hooks := webhooks.New(st, control.RecordJSON, webhooks.Config{
		AllowPrivate: cfg.WebhookAllowPrivate,
		Logger:       log,
		Registerer:   reg,
	})
	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("ok\n"))
	})
	writable := &writeProbe{store: st}
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "starting\n", http.StatusServiceUnavailable)
			return
		}
		if st.Clustered() {
			// The edge serves from the local copy whatever etcd does: a
			// store outage must not take the node out of its load
			// balancer.
			if !storeUp.up() {
				w.Write([]byte("ready; degraded: store unreachable (writes answer 503)\n"))
				return
			}
			w.Write([]byte("ready\n"))
			return
		}
		if err := writable.check(); err != nil {
			http.Error(w, "store not writable: "+err.Error()+"\n", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ready\n"))
	})
	mux.Handle("/api/", control.NewAPI(st, ccfg))
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn)}))

	apiLn, err := net.Listen("tcp", cfg.APIAddr)
	if err != nil {
		return fmt.Errorf("--api-addr: %w", err)
	}
	apiSrv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}

	sockPath := filepath.Join(cfg.DataDir, socketFile)
	adminLn, err := listenAdmin(sockPath)
	if err != nil {
		apiLn.Close()
		return err
	}
	adminSrv := &http.Server{Handler: control.NewAdmin(st, ccfg), ReadHeaderTimeout: 10 * time.Second}

	edge, err := proxy.New(cm, proxy.Config{
		Upstream:         cfg.Upstream,
		AssetsUpstream:   cfg.AssetsUpstream,
		MaxBodyBytes:     cfg.MaxBodyBytes,
		Logger:           log,
		AccessLogEvery:   cfg.AccessLogEvery,
		Registerer:       reg,
		PerDomainMetrics: cfg.MetricsPerDomain,
	})
	if err != nil {
		return err
	}
	httpLn, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		apiLn.Close()
		adminLn.Close()
		return fmt.Errorf("--http-addr: %w", err)
	}
	httpsLn, err := net.Listen("tcp", cfg.HTTPSAddr)
	if err != nil {
		apiLn.Close()
		adminLn.Close()
		httpLn.Close()
		return fmt.Errorf("--https-addr: %w", err)
	}
	// The target zone's DNS server, when asked for: its names are read
	// before it listens, so its first answer is already complete.
	var zone *dnszone.Zone
	var dnsPC net.PacketConn
	var dnsLn net.Listener
	if cfg.DNSAddr != "" {
		zone, err = dnszone.New(st, dnszone.Config{
			Zone:        cfg.TargetCNAMEBase,
			EdgeIPs:     cfg.EdgeIPs,
			Nameservers: cfg.DNSNameservers,
			Logger:      log,
			Registerer:  reg,
		})
		if err == nil {
			err = zone.Start(context.Background())
		}
		if err == nil {
			dnsPC, dnsLn, err = dnszone.Listen(cfg.DNSAddr)
			if err != nil {
				zone.Shutdown(context.Background())
			}
		}
		if err != nil {
			apiLn.Close()
			adminLn.Close()
			httpLn.Close()
			httpsLn.Close()
			return fmt.Errorf("--dns-addr: %w", err)
		}
	}

	// Diagnose's reachability probes, then ACME HTTP-01, then the
	// redirect to HTTPS.
	httpSrv := proxy.NewPlainServer(proxy.RedirectHandler(cm, func(w http.ResponseWriter, r *http.Request) bool {
		return probes.Handle(w, r) || cm.HandleHTTPChallenge(w, r)
	}), log)
	// The edge's timeouts, header limit and rate-limited error log (failed
	// handshakes for names not served are counted, not logged one by one)
	// are proxy's, where the hostile-client tests hold them.
	httpsSrv := proxy.NewTLSServer(edge, cm.TLSConfig(), log)

	// Certificates of served records are loaded from storage before the
	// edge reports ready: no ACME traffic, and no handshake fails for a
	// domain that is valid.
	engineCtx, stopEngine := context.WithCancel(context.Background())
	defer stopEngine()
	engineDone := make(chan struct{})
	hooksCtx, stopHooks := context.WithCancel(context.Background())
	defer stopHooks()
	hooksDone := make(chan struct{})
	if st.Clustered() {
		follower := lifecycle.NewFollower(st, cm, log)
		if err := follower.Start(ctx); err != nil {
			return err
		}
		followerDone := make(chan struct{})
		go func() {
			defer close(followerDone)
			follower.Run(engineCtx)
		}()
		go func() {
			defer close(engineDone)
			leadership(engineCtx, st, cfg.NodeName, engine, hooks, &leader, log)
			<-followerDone
		}()
		close(hooksDone) // the deliveries run within the leadership
	} else {
		if err := engine.Start(ctx); err != nil {
			return err
		}
		go func() {
			defer close(engineDone)
			if err := engine.Run(engineCtx, true); err != nil {
				log.Error("lifecycle engine stopped", "err", err)
			}
		}()
		go func() {
			defer close(hooksDone)
			hooks.Run(hooksCtx)
		}()
	}

	errc := make(chan error, 5)
	go func() { errc <- apiSrv.Serve(apiLn) }()
	go func() { errc <- adminSrv.Serve(adminLn) }()
	go func() { errc <- httpSrv.Serve(httpLn) }()
	go func() { errc <- httpsSrv.ServeTLS(httpsLn, "", "") }()
	dnsAddr := "off"
	if zone != nil {
		dnsAddr = dnsPC.LocalAddr().String()
		go func() {
			if err := zone.Serve(dnsPC, dnsLn); err != nil {
				errc <- err
			}
		}()
	}
	ready.Store(true)
	log.Info("edgeproxy serving", "api_addr", apiLn.Addr().String(), "admin_socket", sockPath,
		"http_addr", httpLn.Addr().String(), "https_addr", httpsLn.Addr().String(), "dns_addr", dnsAddr,
		"target_cname_base", cfg.TargetCNAMEBase, "dev", cfg.Dev, "store", storeName(cfg))

	var serveErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down: draining in-flight requests", "timeout", drainTimeout)
	case serveErr = <-errc:
		log.Error("a listener failed; shutting down", "err", serveErr)
	}
	ready.Store(false)
	drainCtx, cancel := context.WithTimeout(context.Background(), drainTimeout)
	defer cancel()
	// Every listener closes at once, then each server drains: one after
	// the other, a server would still accept new connections while the
	// one before it drained.
	var drained sync.WaitGroup
	for name, srv := range map[string]*http.Server{"api": apiSrv, "admin": adminSrv, "edge": httpsSrv, "http": httpSrv} {
		drained.Go(func() {
			if err := srv.Shutdown(drainCtx); err != nil {
				log.Warn(name+" drain incomplete", "err", err)
			}
		})
	}
	if zone != nil {
		drained.Go(func() {
			if err := zone.Shutdown(drainCtx); err != nil {
				log.Warn("dns drain incomplete", "err", err)
			}
		})
	}
	drained.Wait()
	stopEngine()
	// An attempt cut short here is not recorded: the next start sends it
	// again, with the same webhook-id.
	stopHooks()
	if st.Clustered() {
		wait := clusterStopWait
		if !opened.reachable() {
			// Nothing can be handed over, and nothing the engine does
			// now can be stored: the leadership and the locks go with
			// the session's lease.
			log.Warn("etcd cannot be reached: stopping without resigning")
			opened.abandon()
			wait = time.Second
		}
		waitBounded(engineDone, wait, "the leadership loop", log)
	} else {
		<-engineDone
	}
	<-hooksDone
	os.Remove(sockPath)
	if serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
		return serveErr
	}
	log.Info("stopped")
	return nil
}

// privateDataDir creates the data directory with mode 0700, or sets an
// existing one to 0700: it holds the database with every private key, the
// bootstrap key and the admin socket, and a directory others can list or
// enter exposes them to a mistake in any one file's mode. A directory the
// server's user does not own cannot be tightened, and the server does not
// start in it.
func privateDataDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("--data-dir: creating %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	if mode := fi.Mode().Perm(); mode != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("--data-dir: setting %s to mode 0700 (it is %04o): %w", dir, mode, err)
		}
		log.Info("data dir set to mode 0700", "data_dir", dir, "was", fmt.Sprintf("%04o", mode))
	}
	return nil
}

// listenAdmin listens on the admin unix socket, readable and writable by
// the server's user only. A socket file left by a server that died is
// removed first; the database's file lock already guarantees that no other
// server runs on this data dir.
func listenAdmin(path string) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("removing stale admin socket: %w", err)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return &peerCheckListener{Listener: ln, uid: uint32(os.Getuid())}, nil
}

// peerCheckListener accepts admin connections only from root and from the
// server's own user, by the kernel's word (SO_PEERCRED). The socket's mode
// already keeps others out; this holds even if the mode or the directory's
// is loosened by hand.
type peerCheckListener struct {
	net.Listener
	uid     uint32
	refused atomic.Uint64
}

func (l *peerCheckListener) Accept() (net.Conn, error) {
	for {
		conn, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if uid, ok := peerUID(conn); ok && (uid == 0 || uid == l.uid) {
			return conn, nil
		}
		l.refused.Add(1)
		conn.Close()
	}
}

// peerUID is the user id of the process at the other end of a unix
// socket connection.
func peerUID(conn net.Conn) (uint32, bool) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil || credErr != nil {
		return 0, false
	}
	return cred.Uid, true
}

// bootstrap gives an empty database its first organization, owner and `*`
// key, and writes the key's value to <data-dir>/bootstrap-key. The file is
// written before the database commits: a crash in between leaves a key
// file that the next start overwrites, never a stored key nobody can read.
// On etcd, nodes starting together on an empty prefix all try; the store
// commits one bootstrap only (BootstrapIfEmpty is one transaction), and
// every other node removes the file it wrote, whose key was never stored.
func bootstrap(st *store.Store, cfg *config, stdout io.Writer, log *slog.Logger) error {
	orgs, err := st.Orgs()
	if err != nil {
		return err
	}
	if len(orgs) > 0 {
		return nil
	}
	key, value := control.NewKey(0, "bootstrap", []string{control.ScopeAll}, nil)
	keyPath := filepath.Join(cfg.DataDir, bootstrapKey)
	if err := writeFileAtomic(keyPath, []byte(value+"\n"), 0o600); err != nil {
		return fmt.Errorf("writing bootstrap key: %w", err)
	}
	created, _, err := st.BootstrapIfEmpty(store.Bootstrap{OrgName: "Default", Email: "admin@localhost", Key: key})
	if err != nil || !created {
		if rerr := os.Remove(keyPath); rerr != nil {
			log.Warn("removing a bootstrap key that was not stored", "key_file", keyPath, "err", rerr)
		}
	}
	switch {
	case err != nil:
		return err
	case !created:
		log.Info("the cluster was bootstrapped by another node: no bootstrap key on this one")
	default:
		log.Info("first start: created organization Default, user admin@localhost and a personal API key", "key_file", keyPath)
		if cfg.Dev {
			fmt.Fprintf(stdout, "\nBootstrap personal API key (also in %s):\n\n    %s\n\nTry: curl -H \"Authorization: Bearer %s\" http://%s/api/organizations/@current/proxy_records/\n\n",
				keyPath, value, value, cfg.APIAddr)
		}
	}
	return nil
}

// retryBootstrap runs bootstrap every few seconds until it succeeds (or
// finds the store bootstrapped) or ctx ends.
func retryBootstrap(ctx context.Context, st *store.Store, cfg *config, stdout io.Writer, log *slog.Logger) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		err := bootstrap(st, cfg, stdout, log)
		switch {
		case err == nil || ctx.Err() != nil:
			return
		case !errors.Is(err, store.ErrUnavailable):
			log.Error("bootstrap failed", "err", err)
			return
		}
	}
}

// storeName names the store in the start line.
func storeName(cfg *config) string {
	if cfg.clustered() {
		return "etcd " + joinList(cfg.Etcd.Endpoints) + " prefix " + cfg.Etcd.Prefix
	}
	return filepath.Join(cfg.DataDir, dbFile)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// writeFileAtomic writes data to path through a temporary file, fsynced
// and renamed, so path holds either the old content or the new.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return err
	}
	if dir, err := os.Open(filepath.Dir(path)); err == nil {
		dir.Sync()
		dir.Close()
	}
	return nil
}

// portOf is the port of a host:port address validated at start.
func portOf(addr string) int {
	_, port, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(port)
	return n
}

// writeProbe answers whether the store can commit a write, trying at most
// once a second however often readiness is asked: a store that cannot
// write cannot accept API calls, so the server is not ready.
type writeProbe struct {
	store *store.Store

	// mu guards at and err.
	mu  sync.Mutex
	at  time.Time
	err error
}

func (p *writeProbe) check() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.at) >= time.Second {
		p.err = p.store.Writable()
		p.at = time.Now()
	}
	return p.err
}
