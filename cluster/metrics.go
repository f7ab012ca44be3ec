package cluster

import "github.com/prometheus/client_golang/prometheus"

type registerer = prometheus.Registerer

// metrics of the cluster engine; labels are function names only.
type metrics struct {
	members       prometheus.Gauge
	share         *prometheus.GaugeVec
	rebalance     prometheus.Histogram
	renewFailures prometheus.Counter
	lapsed        prometheus.Counter
}

func newMetrics(r prometheus.Registerer) *metrics {
	m := &metrics{
		members: prometheus.NewGauge(prometheus.GaugeOpts{Name: "sluice_cluster_members",
			Help: "Members of the cluster with a record renewed within two leases, as this process last read them."}),
		share: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "sluice_cluster_share",
			Help: "This process's share of a function's reservation (the slots it may grant locally)."}, []string{"function"}),
		rebalance: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "sluice_cluster_rebalance_seconds",
			Help:    "Time from when this process was owed capacity (its fair part above its share) until its share reached it (hand-off latency).",
			Buckets: []float64{0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30}}),
		renewFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_cluster_lease_renew_failures_total",
			Help: "Failed attempts to renew or change a share or the member record in the engine (conflicts excluded)."}),
		lapsed: prometheus.NewCounter(prometheus.CounterOpts{Name: "sluice_cluster_leases_lapsed_total",
			Help: "Times this process stopped granting on its shares because it could not renew them within the lease."}),
	}
	if r != nil {
		r.MustRegister(m.members, m.share, m.rebalance, m.renewFailures, m.lapsed)
	}
	return m
}
