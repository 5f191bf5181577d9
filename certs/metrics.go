package certs

import "github.com/prometheus/client_golang/prometheus"

// metrics are the manager's Prometheus collectors. Handshake counts are
// read from the manager's atomic counters at scrape time, so the handshake
// path does no metric work of its own.
type metrics struct {
	obtained *prometheus.CounterVec // {kind: obtain|renewal}
	failures *prometheus.CounterVec // {kind}
	orders   *prometheus.CounterVec // {outcome, error_type}
}

func newMetrics(m *Manager, reg prometheus.Registerer) *metrics {
	mt := &metrics{
		obtained: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgeproxy", Name: "certificates_obtained_total",
			Help: "Certificates obtained from the CA, first issues and renewals.",
		}, []string{"kind"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgeproxy", Name: "certificate_failures_total",
			Help: "Attempts to obtain or renew a certificate that failed.",
		}, []string{"kind"}),
		orders: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "edgeproxy", Name: "acme_orders_total",
			Help: "ACME certificate requests by outcome and, for failures, the CA's error type.",
		}, []string{"outcome", "error_type"}),
	}
	for _, kind := range []string{"obtain", "renewal"} {
		mt.obtained.WithLabelValues(kind)
		mt.failures.WithLabelValues(kind)
	}
	mt.orders.WithLabelValues("success", "")
	if reg == nil {
		return mt
	}
	handshakes := func(result string, read func(Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{
			Namespace: "edgeproxy", Name: "tls_handshakes_total",
			Help:        "TLS certificate selections on the edge by result: served, refused (name not served), challenge (ACME TLS-ALPN-01), missing (served name without a cached certificate).",
			ConstLabels: prometheus.Labels{"result": result},
		}, func() float64 { return float64(read(m.Stats())) })
	}
	reg.MustRegister(mt.obtained, mt.failures, mt.orders,
		handshakes("served", func(s Stats) uint64 { return s.HandshakesServed }),
		handshakes("refused", func(s Stats) uint64 { return s.HandshakesRefused }),
		handshakes("challenge", func(s Stats) uint64 { return s.HandshakesChallenge }),
		handshakes("missing", func(s Stats) uint64 { return s.HandshakesMissing }),
	)
	return mt
}

func (mt *metrics) record(kind string, err error) {
	if err == nil {
		mt.obtained.WithLabelValues(kind).Inc()
		mt.orders.WithLabelValues("success", "").Inc()
		return
	}
	mt.failures.WithLabelValues(kind).Inc()
	mt.orders.WithLabelValues("failure", ErrorType(err)).Inc()
}
