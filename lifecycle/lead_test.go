package lifecycle_test

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/dnsverify/dnstest"
	"github.com/edgeproxy/edgeproxy/internal/testbin"
	"github.com/edgeproxy/edgeproxy/lifecycle"
	"github.com/edgeproxy/edgeproxy/store"
)

// startEtcd runs a one-member etcd cluster in the test process and
// returns a client of it.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	ports, err := testbin.FreePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	peer := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[0])}
	client := url.URL{Scheme: "http", Host: "127.0.0.1:" + strconv.Itoa(ports[1])}
	cfg := embed.NewConfig()
	cfg.Name, cfg.Dir = "m0", t.TempDir()
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	cfg.TickMs, cfg.ElectionMs = 50, 500
	cfg.LogLevel = "fatal"
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready in 30 s")
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{client.Host}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// TestLeadEndsWithItsLeadership runs the engine for a leadership term on
// etcd: it works on due records through the fenced handle, and once the
// leadership is gone (resigned here, as a successor's election would
// replace it) its next write is refused, Lead returns store.ErrNotLeader
// at once, and nothing of that is logged as an error.
func TestLeadEndsWithItsLeadership(t *testing.T) {
	cli := startEtcd(t)
	var logs testbin.LockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	st, err := store.OpenEtcd(store.EtcdOptions{Client: cli, Prefix: "/lead/", CopyPath: filepath.Join(t.TempDir(), "copy.db"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	dns := dnstest.Start(t)
	verifier, err := dnsverify.New([]string{dns.Addr()}, 500*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	cm, err := certs.New(st, certs.Config{Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer cm.Close()
	engine := lifecycle.NewEngine(st, verifier, cm, lifecycle.Config{
		FirstRecheck: 20 * time.Millisecond, RecheckMax: 50 * time.Millisecond, Logger: log,
	})

	org, err := st.CreateOrg("Lead", nil)
	if err != nil {
		t.Fatal(err)
	}
	now := st.Now()
	rec, err := st.CreateRecord(store.Record{OrgID: org.ID, Domain: "e.lead.example.com", TargetCNAME: "0123456789abcdef0123.proxy.example.net",
		Status: store.StatusWaiting, NextCheckAt: now, WaitingSince: now}, 10)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	fence, lost, resign, err := st.Campaign(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- engine.Lead(ctx, st.WithFence(fence)) }()

	// The engine checks the record's DNS and records what it saw, again
	// and again (it never points): its writes pass the fence.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		r, err := st.Record(rec.ID)
		if err == nil && r.Checks >= 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the leading engine never recorded two checks (%+v, %v)\n%s", r, err, logs.String())
		}
	}

	resign()
	select {
	case err := <-done:
		if !errors.Is(err, store.ErrNotLeader) {
			t.Errorf("Lead returned %v after the leadership went, want store.ErrNotLeader", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("Lead still runs 30 s after the leadership went\n%s", logs.String())
	}
	select {
	case <-lost:
		t.Error("the session ended: Lead should have stopped on the fenced write, not on the session")
	default:
	}
	if strings.Contains(logs.String(), "level=ERROR") {
		t.Errorf("the end of the term was logged as an error:\n%s", logs.String())
	}
	if !strings.Contains(logs.String(), "no longer the leader") {
		t.Errorf("the refused write is not in the debug log:\n%s", logs.String())
	}
}
