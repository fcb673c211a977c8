package main

import (
	"context"
	"net/http"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/dsyncd/dsyncd/reconcile"
	"github.com/dsyncd/dsyncd/server"
	"github.com/dsyncd/dsyncd/storage"
	"github.com/dsyncd/dsyncd/worker"
)

// metrics is dsyncd's Prometheus registry (no global registry).
type metrics struct {
	reg          *prometheus.Registry
	applied      *prometheus.CounterVec
	parked       prometheus.Counter
	holdsOpened  *prometheus.CounterVec
	applyLatency prometheus.Histogram
	eventAge     prometheus.Histogram
	batchSize    prometheus.Histogram
	yielded      prometheus.Counter
	future       prometheus.Counter
}

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		applied: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dsyncd_events_total",
			Help: "Events taken from the stream, by outcome: applied, duplicate, stale, ignored, invalid, deferred."}, []string{"outcome"}),
		parked: prometheus.NewCounter(prometheus.CounterOpts{Name: "dsyncd_events_parked_total",
			Help: "Events moved to the dead-letter stream."}),
		holdsOpened: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "dsyncd_holds_opened_total",
			Help: "Holds opened by the safeguards, by kind."}, []string{"kind"}),
		applyLatency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dsyncd_apply_batch_seconds",
			Help: "Time to decode, apply and commit one batch.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		eventAge: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dsyncd_event_age_seconds",
			Help: "now - created_at of each applied event.", Buckets: prometheus.ExponentialBuckets(0.05, 2, 20)}),
		batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "dsyncd_apply_batch_events",
			Help: "Events per applied batch.", Buckets: prometheus.ExponentialBuckets(1, 2, 12)}),
		future: prometheus.NewCounter(prometheus.CounterOpts{Name: "dsyncd_events_future_dated_total",
			Help: "Events not applied because their created_at is later than the node's clock plus webhook.tolerance (parked as dead letters)."}),
		yielded: prometheus.NewCounter(prometheus.CounterOpts{Name: "dsyncd_worker_yield_seconds_total",
			Help: "Time the worker paused to leave the CPU to the webhook receiver during a flood (worker.max_yield_lag)."}),
	}
	// Every label value exists from the start, at 0, so that an alert on
	// increase(...) > 0 sees the first one.
	for _, o := range []string{"applied", "duplicate", "stale", "ignored", "invalid", "deferred"} {
		m.applied.WithLabelValues(o)
	}
	for _, k := range storage.HoldKinds() {
		m.holdsOpened.WithLabelValues(string(k))
	}
	m.reg.MustRegister(m.applied, m.parked, m.future, m.holdsOpened, m.applyLatency, m.eventAge, m.batchSize, m.yielded,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) observeBatch(r worker.BatchReport) {
	c := r.Counts
	for o, n := range map[string]int{"applied": c.Applied, "duplicate": c.Duplicate, "stale": c.Stale, "ignored": c.Ignored, "invalid": c.Invalid, "deferred": c.Deferred} {
		if n > 0 {
			m.applied.WithLabelValues(o).Add(float64(n))
		}
	}
	m.parked.Add(float64(r.Parked))
	m.future.Add(float64(c.Future))
	m.applyLatency.Observe(r.Duration.Seconds())
	m.batchSize.Observe(float64(len(r.CreatedAt)))
	now := time.Now()
	for _, t := range r.CreatedAt {
		m.eventAge.Observe(now.Sub(t).Seconds())
	}
}

func (m *metrics) observeYield(d time.Duration) { m.yielded.Add(d.Seconds()) }

// register adds the metrics read from the daemon's components at scrape time.
func (m *metrics) register(d *daemon) {
	st := d.srv.Stats()
	counter := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f)
	}
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f)
	}
	scrapeCtx := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), 2*time.Second)
	}
	version, revision := buildInfo()
	m.reg.MustRegister(
		counter("dsyncd_webhooks_received_total", "Webhook requests received.", func() float64 { return float64(st.Received.Load()) }),
		counter("dsyncd_webhooks_enqueued_total", "Webhook events stored in JetStream (2xx).", func() float64 { return float64(st.Enqueued.Load()) }),
		counter("dsyncd_webhooks_duplicate_total", "Webhook events JetStream already had (2xx).", func() float64 { return float64(st.Duplicate.Load()) }),
		counter("dsyncd_webhooks_ignored_total", "Verified webhook events of types dsyncd does not handle (2xx, not stored).", func() float64 { return float64(st.Ignored.Load()) }),
		&refusedCollector{d: d, desc: prometheus.NewDesc("dsyncd_webhooks_refused_total", "Webhook requests refused, by reason.", []string{"reason"}, nil)},
		gauge("dsyncd_holds_open", "Open holds (last admin, mass deprovisioning).", func() float64 {
			hs, err := d.st.Holds(true)
			if err != nil {
				return -1
			}
			return float64(len(hs))
		}),
		gauge("dsyncd_dead_letters", "Events parked in the dead-letter stream.", func() float64 {
			ctx, cancel := scrapeCtx()
			defer cancel()
			n, err := d.q.DeadLetterCount(ctx)
			if err != nil {
				return -1
			}
			return float64(n)
		}),
		gauge("dsyncd_consumer_pending", "Events in the stream not yet applied and acknowledged (lag).", func() float64 {
			ctx, cancel := scrapeCtx()
			defer cancel()
			n, err := d.q.Pending(ctx, d.durable)
			if err != nil {
				return -1
			}
			return float64(n)
		}),
		gauge("dsyncd_store_writable", "1 while the worker's last commit succeeded; 0 while the store cannot be written (disk full, read-only): events wait in JetStream.", func() float64 {
			if !d.cfg.Worker.Enabled || d.w.Consuming() || !d.w.Attached() {
				return 1
			}
			return 0
		}),
		gauge("dsyncd_jetstream_writable", "1 while JetStream stores events; 0 while a write error (disk full, no file descriptors) stops it: webhooks get 503 until the embedded server recovers.", func() float64 {
			if d.q.Fault() != nil {
				return 0
			}
			return 1
		}),
		counter("dsyncd_jetstream_restarts_total", "Restarts of the embedded NATS server to clear a JetStream write error.", func() float64 { return float64(d.q.Restarts()) }),
		gauge("dsyncd_events_cursor_stale", "1 while the WorkOS Events API refuses the poller's cursor (an outage longer than it keeps events; events.on_stale_cursor says what happens), else 0.", func() float64 {
			if d.bg != nil && d.bg.Poller != nil && d.bg.Poller.CursorStale() != "" {
				return 1
			}
			return 0
		}),
		gauge("dsyncd_stream_bytes", "Bytes held by the event stream; at nats.max_bytes new webhooks get 503.", func() float64 {
			ctx, cancel := scrapeCtx()
			defer cancel()
			info, err := d.q.StreamInfo(ctx)
			if err != nil {
				return -1
			}
			return float64(info.State.Bytes)
		}),
		gauge("dsyncd_stream_max_bytes", "The event stream's size cap (nats.max_bytes; 0 = unlimited).", func() float64 {
			return float64(d.cfg.NATS.MaxBytes)
		}),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "dsyncd_build_info", Help: "Build information.",
			ConstLabels: prometheus.Labels{"version": version, "revision": revision}}, func() float64 { return 1 }),
	)
	if d.bg != nil && d.bg.Poller != nil {
		p := d.bg.Poller
		m.reg.MustRegister(
			counter("dsyncd_poller_polls_total", "Polls of the WorkOS Events API.", func() float64 { return float64(p.Stats().Polls) }),
			counter("dsyncd_poller_failures_total", "Polls of the Events API that failed after their retries (logged; tried again at the next interval).",
				func() float64 { return float64(p.Stats().Failures) }),
			&pollerCollector{p: p, desc: prometheus.NewDesc("dsyncd_poller_events_total",
				"Events read from the Events API, by outcome: published, duplicate (already on the stream), already_applied (not published), invalid, ignored.",
				[]string{"outcome"}, nil)},
		)
	}
}

type pollerCollector struct {
	p    *reconcile.Poller
	desc *prometheus.Desc
}

func (c *pollerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c *pollerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.p.Stats()
	for outcome, n := range map[string]uint64{"published": s.Published, "duplicate": s.Duplicates,
		"already_applied": s.AlreadyApplied, "invalid": s.Invalid, "ignored": s.Ignored} {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), outcome)
	}
}

type refusedCollector struct {
	d    *daemon
	desc *prometheus.Desc
}

func (c *refusedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect reports every reason, those never seen at 0.
func (c *refusedCollector) Collect(ch chan<- prometheus.Metric) {
	refused := c.d.srv.Stats().Refused()
	for _, r := range server.Reasons() {
		if _, ok := refused[r]; !ok {
			refused[r] = 0
		}
	}
	for reason, n := range refused {
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), reason)
	}
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// version and commit are set with -ldflags "-X main.version=... -X
// main.commit=..." (the Makefile does), so that a build without VCS
// information (-buildvcs=false, a copy without .git) still names its commit.
var version, commit = "", ""

// buildInfo returns the version and the commit (revision) of this build.
func buildInfo() (string, string) {
	v, rev := version, commit
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "" {
			v = bi.Main.Version
		}
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && rev == "" {
				rev = s.Value
			}
		}
	}
	if rev == "" {
		rev = "unknown"
	}
	if v == "" {
		v = "dev"
	}
	return v, rev
}
