package webhooks

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

const namespace = "edgeproxy"

// metrics of the worker. Labels are bounded: results, drop reasons and
// disable reasons are fixed sets; no label names a webhook, URL or
// organization.
type metrics struct {
	deliveries *prometheus.CounterVec // {result}
	dropped    *prometheus.CounterVec // {reason}
	disabled   *prometheus.CounterVec // {reason}
	attempts   prometheus.Histogram
	latency    prometheus.Histogram
}

func newMetrics(w *Worker, reg prometheus.Registerer) *metrics {
	m := &metrics{
		deliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "webhook_deliveries_total",
			Help: "Webhook delivery attempts by result: success, http_error (a non-2xx answer other than 410), gone (410, which disables the webhook), timeout, connection_error, address_refused (the URL resolved to an address that is not public).",
		}, []string{"result"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "webhook_deliveries_dropped_total",
			Help: "Webhook deliveries given up: retries_exhausted (the last retry failed) or webhook_disabled (dropped with their webhook).",
		}, []string{"reason"}),
		disabled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "webhooks_disabled_total",
			Help: "Webhooks disabled by the worker: gone (the receiver answered 410) or failing (5 days of failures).",
		}, []string{"reason"}),
		attempts: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "webhook_attempt_duration_seconds",
			Help:    "Duration of webhook delivery attempts, from the dial to the end of the response.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: namespace, Name: "webhook_delivery_latency_seconds",
			Help:    "Time from the change that caused an event to its successful delivery, retries included.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200, 36000},
		}),
	}
	for _, r := range results {
		m.deliveries.WithLabelValues(r)
	}
	for _, r := range []string{dropRetriesExhausted, dropWebhookDisabled} {
		m.dropped.WithLabelValues(r)
	}
	for _, r := range []string{disabledGone, disabledFailing} {
		m.disabled.WithLabelValues(r)
	}
	if reg != nil {
		reg.MustRegister(m.deliveries, m.dropped, m.disabled, m.attempts, m.latency, &queueCollector{w: w})
	}
	return m
}

// queueCollector reads the outbox at scrape time.
type queueCollector struct{ w *Worker }

var (
	queueDepthDesc = prometheus.NewDesc(namespace+"_webhook_queue_depth",
		"Webhook deliveries queued (due now or waiting for a retry).", nil, nil)
	queueLagDesc = prometheus.NewDesc(namespace+"_webhook_queue_lag_seconds",
		"How long the earliest due webhook delivery has been due; 0 when none is overdue.", nil, nil)
)

func (c *queueCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- queueDepthDesc
	ch <- queueLagDesc
}

func (c *queueCollector) Collect(ch chan<- prometheus.Metric) {
	n, earliest, err := c.w.store.OutboxStats()
	if err != nil {
		ch <- prometheus.NewInvalidMetric(queueDepthDesc, err)
		return
	}
	lag := time.Duration(0)
	if !earliest.IsZero() {
		lag = max(c.w.cfg.Now().Sub(earliest), 0)
	}
	ch <- prometheus.MustNewConstMetric(queueDepthDesc, prometheus.GaugeValue, float64(n))
	ch <- prometheus.MustNewConstMetric(queueLagDesc, prometheus.GaugeValue, lag.Seconds())
}
