package dnszone

import (
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "edgeproxy"

// rcodeNames are the response codes the zone answers with, named as the
// rcode label shows them: a bounded set. (miekg/dns names 16 BADSIG,
// its meaning in TSIG; in an answer to a query it is BADVERS.)
var rcodeNames = map[int]string{
	dns.RcodeSuccess:        "NOERROR",
	dns.RcodeNameError:      "NXDOMAIN",
	dns.RcodeRefused:        "REFUSED",
	dns.RcodeNotImplemented: "NOTIMP",
	dns.RcodeFormatError:    "FORMERR",
	dns.RcodeServerFailure:  "SERVFAIL",
	dns.RcodeBadVers:        "BADVERS",
}

type metrics struct {
	queries     *prometheus.CounterVec // {rcode}
	byRcode     map[int]prometheus.Counter
	dropped     prometheus.Counter
	truncated   prometheus.Counter
	rateLimited *prometheus.CounterVec // {action}
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		queries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "dns_queries_total",
			Help: "Queries the target zone's DNS server answered, by response code (NOERROR, NXDOMAIN, REFUSED, NOTIMP, FORMERR, SERVFAIL, BADVERS).",
		}, []string{"rcode"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "dns_rate_limited_total",
			Help: "UDP queries over their client address's rate limit: dropped, or answered empty with TC set (truncated) so a real resolver retries over TCP.",
		}, []string{"action"}),
		byRcode: map[int]prometheus.Counter{},
	}
	for rc, name := range rcodeNames {
		m.byRcode[rc] = m.queries.WithLabelValues(name)
	}
	m.dropped = m.rateLimited.WithLabelValues("dropped")
	m.truncated = m.rateLimited.WithLabelValues("truncated")
	if reg != nil {
		reg.MustRegister(m.queries, m.rateLimited)
	}
	return m
}

// answered counts one answer sent with rcode.
func (m *metrics) answered(rcode int) {
	if c, ok := m.byRcode[rcode]; ok {
		c.Inc()
	}
}
