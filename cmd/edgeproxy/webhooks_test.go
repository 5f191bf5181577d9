package main

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/webhooks"
)

// hookDelivery is one request the receiver got, decoded.
type hookDelivery struct {
	id       string
	verified error
	at       time.Time
	status   int // what the receiver answered
	body     struct {
		Type      string `json:"type"`
		Timestamp string `json:"timestamp"`
		Data      struct {
			Record struct {
				ID     string `json:"id"`
				Status string `json:"status"`
			} `json:"record"`
			PreviousStatus string `json:"previous_status"`
		} `json:"data"`
	}
}

// hookReceiver is a real TLS receiver on loopback whose certificate the
// binary trusts through SSL_CERT_FILE.
type hookReceiver struct {
	srv *httptest.Server
	env []string
	got chan hookDelivery

	// mu guards secret and down.
	mu     sync.Mutex
	secret string
	down   bool
}

func newHookReceiver(t *testing.T) *hookReceiver {
	t.Helper()
	rc := &hookReceiver{got: make(chan hookDelivery, 100)}
	rc.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		secret, down := rc.secret, rc.down
		rc.mu.Unlock()
		d := hookDelivery{id: r.Header.Get(webhooks.HeaderID), at: time.Now(), status: http.StatusNoContent,
			verified: webhooks.Verify(secret, r.Header.Get, body, time.Now(), 5*time.Minute)}
		json.Unmarshal(body, &d.body)
		if down {
			d.status = http.StatusServiceUnavailable
		}
		rc.got <- d
		w.WriteHeader(d.status)
	}))
	t.Cleanup(rc.srv.Close)
	certFile := filepath.Join(t.TempDir(), "receiver.pem")
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rc.srv.Certificate().Raw})
	if err := os.WriteFile(certFile, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	rc.env = []string{"SSL_CERT_FILE=" + certFile}
	return rc
}

func (rc *hookReceiver) set(secret string, down bool) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.secret, rc.down = secret, down
}

// await returns the first delivery (skipping others) for which match holds.
func (rc *hookReceiver) await(t *testing.T, what string, match func(hookDelivery) bool) hookDelivery {
	t.Helper()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case d := <-rc.got:
			if match(d) {
				return d
			}
		case <-deadline:
			t.Fatalf("no delivery: %s", what)
		}
	}
}

func isEvent(typ, previous, status string) func(hookDelivery) bool {
	return func(d hookDelivery) bool {
		return d.body.Type == typ && d.body.Data.PreviousStatus == previous && d.body.Data.Record.Status == status
	}
}

// TestWebhooksThroughTheBinary drives the real binary with a real ACME CA
// (Pebble), DNS server and TLS receiver. A webhook created through the
// API gets the record's created event, both status changes on the way to
// valid (with previous_status), and the delete's status change. Then,
// with the receiver down and a delivery pending, the process is killed
// with SIGKILL; after a restart, with the receiver back, the pending
// event is delivered with the same webhook-id and a valid signature.
func TestWebhooksThroughTheBinary(t *testing.T) {
	w := newACMEWorld(t)
	rc := newHookReceiver(t)
	dir := t.TempDir()
	s := startServerEnv(t, dir, rc.env, w.args...)
	key := s.key(t)

	var hook struct {
		ID     string `json:"id"`
		Secret string `json:"secret"`
	}
	if code := s.request(t, key, "POST", "/api/organizations/@current/webhooks/", `{"url": "`+rc.srv.URL+`/hooks"}`, &hook); code != 201 {
		t.Fatalf("create webhook: %d", code)
	}
	rc.set(hook.Secret, false)

	var rec recordJSON
	if code := s.request(t, key, "POST", "/api/organizations/@current/proxy_records/", `{"domain":"e.hooks.example.com"}`, &rec); code != 201 {
		t.Fatalf("create record: %d", code)
	}
	var latencies []time.Duration
	check := func(d hookDelivery) {
		t.Helper()
		if d.verified != nil {
			t.Errorf("%s: signature: %v", d.body.Type, d.verified)
		}
		if d.body.Data.Record.ID != rec.ID {
			t.Errorf("%s: record %s, want %s", d.body.Type, d.body.Data.Record.ID, rec.ID)
		}
		if ts, err := time.Parse(time.RFC3339Nano, d.body.Timestamp); err == nil {
			latencies = append(latencies, d.at.Sub(ts))
		}
	}
	check(rc.await(t, "proxy_record.created", isEvent("proxy_record.created", "", "waiting")))
	w.dns.SetA(rec.TargetCNAME, "127.0.0.1")
	w.dns.SetCNAME(rec.Domain, rec.TargetCNAME)
	check(rc.await(t, "waiting → issuing", isEvent("proxy_record.status_changed", "waiting", "issuing")))
	check(rc.await(t, "issuing → valid", isEvent("proxy_record.status_changed", "issuing", "valid")))
	s.waitStatus(t, key, rec.ID, "valid")

	// The receiver goes down; the delete's status change fails its first
	// attempt and is pending when the process dies.
	rc.set(hook.Secret, true)
	if code := s.request(t, key, "DELETE", "/api/organizations/@current/proxy_records/"+rec.ID+"/", "", nil); code != 204 {
		t.Fatalf("delete: %d", code)
	}
	first := rc.await(t, "valid → deleting, receiver down", isEvent("proxy_record.status_changed", "valid", "deleting"))
	s.kill9(t)

	rc.set(hook.Secret, false)
	s2 := startServerEnv(t, dir, rc.env, w.args...)
	again := rc.await(t, "valid → deleting after the restart", func(d hookDelivery) bool { return d.id == first.id && d.status < 300 })
	if again.verified != nil || again.body.Type != "proxy_record.status_changed" {
		t.Errorf("after restart: %s, signature %v", again.body.Type, again.verified)
	}
	rc.await(t, "deleted", isEvent("proxy_record.deleted", "", "deleting"))

	// The operator's view: the webhook, its last delivery a success, its
	// queue empty, and no secret.
	var list []map[string]any
	deadline := time.Now().Add(30 * time.Second)
	for {
		s2.admin(t, &list, "webhooks", "list")
		if len(list) == 1 && list[0]["queued"] == float64(0) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("webhooks list: %v", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, ok := list[0]["secret"]; ok || list[0]["id"] != hook.ID {
		t.Errorf("webhooks list shows %v", list[0])
	}
	sort.Slice(latencies, func(i, j int) bool { return latencies[i] < latencies[j] })
	t.Logf("change committed → receiver, %d events through the binary: %v", len(latencies), fmt.Sprint(latencies))
}
