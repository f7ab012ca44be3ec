package consumer

import (
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// PartitionLoad is what the per-partition metrics read of one shard.
type PartitionLoad struct {
	Partition   int32
	Lag         int64
	IteratorAge time.Duration
}

// PartitionLoader is a stream source that reports the load of each of its
// partitions (the per-partition metrics and the admin API's shard lags read
// it); async sources have no shards and do not implement it.
type PartitionLoader interface {
	Name() string
	PartitionLoads() []PartitionLoad
}

// partitionCollector is the per-partition breakdown of sluice_offset_lag
// and sluice_iterator_age_seconds (config metrics.per_partition), read at
// scrape time like shardCollector. Its series are bounded by the source's
// partition count: one per partition owned here.
type partitionCollector struct {
	loads    func() []PartitionLoad
	lag, age *prometheus.Desc
}

// NewPartitionCollector returns the collector of
// sluice_partition_offset_lag and sluice_partition_iterator_age_seconds for
// source, one series per partition that loads reports at each scrape.
func NewPartitionCollector(source string, loads func() []PartitionLoad) prometheus.Collector {
	cl := prometheus.Labels{"source": source}
	return &partitionCollector{
		loads: loads,
		lag: prometheus.NewDesc("sluice_partition_offset_lag",
			"Records not yet checkpointed in one partition owned here (metrics.per_partition).",
			[]string{"partition"}, cl),
		age: prometheus.NewDesc("sluice_partition_iterator_age_seconds",
			"Age of the oldest record not yet checkpointed in one partition owned here; 0 when none (metrics.per_partition).",
			[]string{"partition"}, cl),
	}
}

func (c *partitionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.lag
	ch <- c.age
}

func (c *partitionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, l := range c.loads() {
		p := strconv.FormatInt(int64(l.Partition), 10)
		ch <- prometheus.MustNewConstMetric(c.lag, prometheus.GaugeValue, float64(l.Lag), p)
		ch <- prometheus.MustNewConstMetric(c.age, prometheus.GaugeValue, l.IteratorAge.Seconds(), p)
	}
}
