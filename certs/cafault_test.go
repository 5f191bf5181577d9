package certs

import (
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/edgeproxy/edgeproxy/certs/certstest"
)

// newFaultyManager makes a Manager that reaches the edge's Pebble through a
// fault-injecting proxy, and makes it the one the listeners use.
func (e *edge) newFaultyManager(t *testing.T) (*Manager, *certstest.FaultProxy) {
	t.Helper()
	proxy := certstest.StartFaultProxy(t, e.pebble)
	w := newTestWriter(t)
	m, err := New(e.st, Config{
		CA:       proxy.DirectoryURL(),
		CARoots:  proxy.ServerRoots(),
		HTTPPort: e.httpPort,
		TLSPort:  e.tlsPort,
		Logger:   slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	e.manager.Store(m)
	return m, proxy
}

// TestObtainCAFaults runs one Obtain against each CA fault through the real
// certmagic and acmez stack and checks what the caller learns from the
// error and how many requests the one Obtain cost the CA: acmez retries
// inside an Obtain, and that multiplier must stay small and fixed.
func TestObtainCAFaults(t *testing.T) {
	t.Parallel()
	until := time.Now().Add(3 * time.Hour).UTC().Truncate(time.Second)
	for _, tt := range []struct {
		name  string
		fault certstest.Fault
		// maxCost bounds the HTTP requests (or, refused, connections) one
		// Obtain makes: see each case.
		maxCost     int
		unavailable bool
		rateLimited bool
		reason      string
	}{
		// A dial gets three tries in acmez's httpReq; the first request
		// (the directory) fails, so nothing else is asked.
		{"refused", certstest.Fault{Mode: certstest.Refuse}, 3, true, false,
			"the certificate authority could not be reached"},
		// The directory GET is retried on 5xx, three tries in all.
		{"server error everywhere", certstest.Fault{Mode: certstest.ServerError}, 3, true, false,
			"The service is down for maintenance"},
		// Directory, account, nonces pass; the order POST is tried three
		// times (acmez retries a 5xx POST twice), each after a fresh
		// nonce unless the error answer carried one.
		{"server error on new-order", certstest.Fault{Mode: certstest.ServerError, Paths: []string{certstest.NewOrderPath}}, 10, true, false,
			"The service is down for maintenance"},
		// A 429 is not retried: one order request.
		{"rate limited on new-order", certstest.Fault{Mode: certstest.RateLimited, Until: until, Paths: []string{certstest.NewOrderPath}}, 6, false, true,
			"too many new orders"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEdge(t)
			m, proxy := e.newFaultyManager(t)
			name := strings.ReplaceAll(tt.name, " ", "-") + ".example.com"
			e.point(name)
			proxy.Set(tt.fault)

			_, err := m.Obtain(obtainCtx(t), name)
			if err == nil {
				t.Fatal("Obtain succeeded through a faulty CA")
			}
			cost := proxy.Requests() + proxy.Refused()
			t.Logf("one Obtain: %d requests, %d refused connections, %d requests to new-order; error: %v",
				proxy.Requests(), proxy.Refused(), proxy.RequestsTo(certstest.NewOrderPath), err)
			if cost == 0 || cost > tt.maxCost {
				t.Errorf("one Obtain cost the CA %d requests and connections, want 1..%d", cost, tt.maxCost)
			}
			if tt.fault.Mode != certstest.Refuse && proxy.Faulted() == 0 {
				t.Errorf("no request met the fault")
			}
			if IsPermanent(err) {
				t.Errorf("IsPermanent = true for a CA fault")
			}
			if got := CAUnavailable(err); got != tt.unavailable {
				t.Errorf("CAUnavailable = %v, want %v", got, tt.unavailable)
			}
			gotUntil, limited := RateLimit(err)
			if limited != tt.rateLimited {
				t.Errorf("RateLimit ok = %v, want %v", limited, tt.rateLimited)
			}
			if tt.rateLimited && !gotUntil.Equal(until) {
				t.Errorf("RateLimit until = %v, want %v", gotUntil, until)
			}
			if got := Reason(err); !strings.Contains(got, tt.reason) {
				t.Errorf("Reason = %q, want it to contain %q", got, tt.reason)
			}
			if got := e.pebble.Orders(); got != 0 {
				t.Errorf("%d orders reached Pebble through the fault", got)
			}

			// The CA comes back: the same manager gets its certificate.
			proxy.Set(certstest.Fault{Mode: certstest.Pass})
			if _, err := m.Obtain(obtainCtx(t), name); err != nil {
				t.Fatalf("Obtain after the fault cleared: %v", err)
			}
			e.mustServeAfter(name)
		})
	}
}

// mustServeAfter checks the edge serves name once it is allowed.
func (e *edge) mustServeAfter(name string) {
	e.t.Helper()
	e.manager.Load().Serve(name, true)
	e.mustServe(name)
}
