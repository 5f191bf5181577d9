package lifecycle

import (
	"time"

	"github.com/edgeproxy/edgeproxy/certs"
	"github.com/edgeproxy/edgeproxy/dnsverify"
	"github.com/edgeproxy/edgeproxy/store"
	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "edgeproxy"

// engineMetrics are the lifecycle engine's: what DNS checks find, how many
// records wait, and every transition.
type engineMetrics struct {
	dnsChecks   *prometheus.CounterVec // {result}
	dnsDuration prometheus.Histogram
	caaChecks   *prometheus.CounterVec // {result}
	transitions *prometheus.CounterVec // {from, to}
	pauses      *prometheus.CounterVec // {cause}
	orders      prometheus.Counter
	held        *prometheus.CounterVec // {by}
}

func newEngineMetrics(e *Engine, reg prometheus.Registerer) *engineMetrics {
	m := &engineMetrics{
		dnsChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "dns_checks_total",
			Help: "CNAME checks of records by result.",
		}, []string{"result"}),
		dnsDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "dns_check_duration_seconds",
			Help:    "Time taken by one CNAME check, all its queries included.",
			Buckets: []float64{.001, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		caaChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "caa_checks_total",
			Help: "CAA pre-flight checks by result: allowed, forbidden, resolver_failure.",
		}, []string{"result"}),
		transitions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "record_transitions_total",
			Help: "Status changes of records made by the lifecycle engine (to=gone for a finished deletion).",
		}, []string{"from", "to"}),
		pauses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "acme_pauses_total",
			Help: "Pauses of every ACME order by cause: rate_limited (the CA's rate limit) or ca_unavailable (the CA down or failing).",
		}, []string{"cause"}),
		orders: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: namespace, Name: "acme_budget_orders_total",
			Help: "Certificate orders the engine placed with the CA, each counted against its organization's order budget (a certificate reused from storage is not).",
		}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "acme_orders_held_total",
			Help: "Orders a due record did not place, by what held it: org_budget (its organization's orders per hour), name_limit (a CA rate limit on its name or registered domain), account_pause (a pause of every order).",
		}, []string{"by"}),
	}
	pausedUntil := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: namespace, Name: "acme_paused_until_seconds",
		Help: "End of the pause of every ACME order (Unix seconds); 0 when orders are not paused.",
	}, func() float64 {
		if p, ok := e.activePause(e.cfg.Now()); ok {
			return float64(p.until.Unix())
		}
		return 0
	})
	for _, c := range []string{pauseRateLimited, pauseUnavailable} {
		m.pauses.WithLabelValues(c)
	}
	for _, by := range []string{"org_budget", "name_limit", "account_pause"} {
		m.held.WithLabelValues(by)
	}
	for _, o := range []dnsverify.Outcome{dnsverify.Pointing, dnsverify.Missing, dnsverify.WrongTarget,
		dnsverify.CloudflareProxied, dnsverify.OtherAddresses, dnsverify.ResolverFailure, dnsverify.OwnershipMissing} {
		m.dnsChecks.WithLabelValues(o.String())
	}
	for _, r := range []string{"allowed", "forbidden", "resolver_failure"} {
		m.caaChecks.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.dnsChecks, m.dnsDuration, m.caaChecks, m.transitions, m.pauses, m.orders, m.held, pausedUntil, &recordsCollector{engine: e})
	}
	return m
}

// recordsCollector reads the store at scrape time: records by status,
// certificates close to expiry, and the engine's backlog.
type recordsCollector struct {
	engine *Engine
}

var (
	descRecords  = prometheus.NewDesc(namespace+"_records", "Proxy records by status.", []string{"status"}, nil)
	descExpiring = prometheus.NewDesc(namespace+"_certificates_expiring_soon",
		"Served records whose certificate expires within 21 days.", nil, nil)
	descSoonest = prometheus.NewDesc(namespace+"_certificate_soonest_expiry_timestamp_seconds",
		"Expiry of the served certificate that expires first (Unix seconds); absent when none is served.", nil, nil)
	descQueue = prometheus.NewDesc(namespace+"_engine_queue_depth",
		"Records whose next check is due now, in flight included.", nil, nil)
	descOverdue = prometheus.NewDesc(namespace+"_engine_oldest_overdue_seconds",
		"How long the most overdue check has been waiting; 0 when none is due.", nil, nil)
	descInflight = prometheus.NewDesc(namespace+"_engine_in_flight",
		"Records the engine is working on now.", nil, nil)
	descScrapeErr = prometheus.NewDesc(namespace+"_records_scrape_error",
		"1 when reading the store for these metrics failed.", nil, nil)
	descRefusing = prometheus.NewDesc(namespace+"_store_refusing_writes",
		"1 while the data disk refuses writes (full, quota, file size limit, read-only, I/O error): API writes answer 503.", nil, nil)
)

func (c *recordsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRecords, descExpiring, descSoonest, descQueue, descOverdue, descInflight, descScrapeErr, descRefusing} {
		ch <- d
	}
}

func (c *recordsCollector) Collect(ch chan<- prometheus.Metric) {
	e := c.engine
	now := e.cfg.Now()
	counts := make(map[store.Status]int, len(store.Statuses))
	expiring := 0
	var soonest time.Time
	failed := 0.0
	_, err := e.store.Records(func(r *store.Record) bool {
		counts[r.Status]++
		if r.Served() {
			if r.CertNotAfter.Sub(now) < certs.ExpiryWarning {
				expiring++
			}
			if soonest.IsZero() || r.CertNotAfter.Before(soonest) {
				soonest = r.CertNotAfter
			}
		}
		return false // counted, not kept
	})
	if err != nil {
		failed = 1
	}
	for _, st := range store.Statuses {
		ch <- prometheus.MustNewConstMetric(descRecords, prometheus.GaugeValue, float64(counts[st]), string(st))
	}
	ch <- prometheus.MustNewConstMetric(descExpiring, prometheus.GaugeValue, float64(expiring))
	if !soonest.IsZero() {
		ch <- prometheus.MustNewConstMetric(descSoonest, prometheus.GaugeValue, float64(soonest.Unix()))
	}
	n, oldest, err := e.store.DueStats(now)
	if err != nil {
		failed = 1
	}
	overdue := 0.0
	if n > 0 {
		overdue = max(now.Sub(oldest).Seconds(), 0)
	}
	ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(descOverdue, prometheus.GaugeValue, overdue)
	e.mu.Lock()
	inflight := len(e.inflight)
	e.mu.Unlock()
	ch <- prometheus.MustNewConstMetric(descInflight, prometheus.GaugeValue, float64(inflight))
	ch <- prometheus.MustNewConstMetric(descScrapeErr, prometheus.GaugeValue, failed)
	// Only after a refused write does a scrape cost a write: the probe is
	// what clears the store's flag once space is back.
	refusing := 0.0
	if e.store.RefusingWrites() && e.store.Writable() != nil {
		refusing = 1
	}
	ch <- prometheus.MustNewConstMetric(descRefusing, prometheus.GaugeValue, refusing)
}
