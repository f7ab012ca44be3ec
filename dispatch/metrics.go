package dispatch

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the dispatcher's series of SPEC §6. Labels are function names
// (from the config), reasons and outcomes: all bounded. Scopes never become
// labels.
type metrics struct {
	throttles   *prometheus.CounterVec
	invocations *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	connWait    *prometheus.HistogramVec
	collectors  []prometheus.Collector // what newMetrics registered
}

func newMetrics(reg prometheus.Registerer, lim Limits) (*metrics, error) {
	m := &metrics{
		throttles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_throttles_total",
			Help: "Invocations throttled, by function and reason (sluice's limits, or the function answering 429/503).",
		}, []string{"function", "reason"}),
		invocations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sluice_invocations_total",
			Help: "Invocations that ran, by function and outcome.",
		}, []string{"function", "outcome"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "sluice_invocation_duration_seconds",
			Help:    "Time from sending an invocation to its outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10), // 1ms .. ~4.4min
		}, []string{"function"}),
		connWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "sluice_http_connection_wait_seconds",
			Help: "Time an HTTP invocation waited to get a connection to its function (from the pool, or by dialling). " +
				"The pool is sized for the function's concurrency, so waits beyond a dial's time mean invocations queue on the pool.",
			// A reused connection takes microseconds, a dial about a
			// millisecond on a LAN; past 100ms something waits.
			Buckets: []float64{0.0001, 0.001, 0.005, 0.025, 0.1, 0.5, 2.5, 10},
		}, []string{"function"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.throttles, m.invocations, m.duration, m.connWait, usageCollector{lim}} {
		if err := reg.Register(c); err != nil {
			m.unregister(reg)
			return nil, err
		}
		m.collectors = append(m.collectors, c)
	}
	return m, nil
}

// unregister removes what newMetrics registered on reg, so that a failed
// New leaves reg as it found it.
func (m *metrics) unregister(reg prometheus.Registerer) {
	for _, c := range m.collectors {
		reg.Unregister(c)
	}
	m.collectors = nil
}

// outcomes are the values of sluice_invocations_total{outcome}.
var outcomes = []Outcome{OutcomeSuccess, OutcomePartial, OutcomeThrottled, OutcomeError, OutcomeTimeout, OutcomePermanent}

// initFunction creates fn's sluice_invocations_total series at zero, one per
// outcome, so that a rate or ratio over them has series from the first
// scrape rather than from the first invocation of each outcome.
func (m *metrics) initFunction(fn string) {
	for _, o := range outcomes {
		m.invocations.WithLabelValues(fn, string(o))
	}
}

// connObserver returns the WithConnObserver callback of function fn; the
// series is looked up once, not per request.
func (m *metrics) connObserver(fn string) func(time.Duration, bool) {
	o := m.connWait.WithLabelValues(fn)
	return func(wait time.Duration, _ bool) { o.Observe(wait.Seconds()) }
}

func (m *metrics) throttled(fn string, r Reason) { m.throttles.WithLabelValues(fn, string(r)).Inc() }

func (m *metrics) invoked(fn string, err error, d time.Duration) {
	o := OutcomeOf(err)
	if o == OutcomeThrottled {
		if t, ok := AsThrottled(err); ok {
			m.throttled(fn, t.Reason)
		}
	}
	m.invocations.WithLabelValues(fn, string(o)).Inc()
	m.duration.WithLabelValues(fn).Observe(d.Seconds())
}

var (
	descAccount = prometheus.NewDesc("sluice_account_concurrent_executions",
		"Invocations running now, all functions.", nil, nil)
	descUnreserved = prometheus.NewDesc("sluice_unreserved_concurrent_executions",
		"Invocations running now on the unreserved pool.", nil, nil)
	descFunction = prometheus.NewDesc("sluice_function_concurrent_executions",
		"Invocations running now, by function.", []string{"function"}, nil)
	descWaiting = prometheus.NewDesc("sluice_queue_waiting",
		"Invocations waiting for a slot, by function.", []string{"function"}, nil)
	descExpired = prometheus.NewDesc("sluice_expired_leases_total",
		"Slots taken back from invocations that outlived their timeout plus grace.", nil, nil)
)

// usageCollector reads the limiter's counts at scrape time, so the hot path
// pays nothing for these gauges.
type usageCollector struct{ lim Limits }

func (c usageCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descAccount, descUnreserved, descFunction, descWaiting, descExpired} {
		ch <- d
	}
}

func (c usageCollector) Collect(ch chan<- prometheus.Metric) {
	u := c.lim.Usage()
	ch <- prometheus.MustNewConstMetric(descAccount, prometheus.GaugeValue, float64(u.InFlight))
	ch <- prometheus.MustNewConstMetric(descUnreserved, prometheus.GaugeValue, float64(u.UnreservedInUse))
	ch <- prometheus.MustNewConstMetric(descExpired, prometheus.CounterValue, float64(u.ExpiredLeases))
	for fn, f := range u.Functions {
		ch <- prometheus.MustNewConstMetric(descFunction, prometheus.GaugeValue, float64(f.InFlight), fn)
		ch <- prometheus.MustNewConstMetric(descWaiting, prometheus.GaugeValue, float64(f.Waiting), fn)
	}
}
