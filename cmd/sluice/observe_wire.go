package main

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
	"github.com/sluicehq/sluice/telemetry"
)

// tracingShutdown bounds the flush of the spans still buffered at exit.
const tracingShutdown = 5 * time.Second

// tracer starts the OTLP exporter of tracing.otlp_endpoint and returns the
// dispatcher option that makes invocation spans, or nothing when tracing is
// off. The exporter is flushed and stopped by the app's last closer.
func tracer(cfg telemetry.Config, log *slog.Logger, closers *[]func()) ([]dispatch.Option, error) {
	v, _ := buildInfo()
	p, err := telemetry.NewProvider(cfg, v, log)
	if err != nil || p == nil {
		return nil, err
	}
	*closers = append(*closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), tracingShutdown)
		defer cancel()
		_ = p.Shutdown(ctx) // the exporter has logged what it could not send
	})
	return []dispatch.Option{dispatch.WithTracer(p.Tracer())}, nil
}

// wireObservability registers sluice_build_info, sluice_ready and, with
// metrics.per_partition, the per-partition lag and iterator age of every
// stream source. It runs after wireSources.
func (a *app) wireObservability() error {
	v, _ := buildInfo()
	info := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "sluice_build_info",
		Help: "Always 1; the labels name the version of sluice and the Go release it was built with.",
	}, []string{"version", "goversion"})
	info.WithLabelValues(v, runtime.Version()).Set(1)
	// What /readyz answers, as a series an alert can watch; the broker
	// checks are cached (readyCacheFor), so a scrape adds no broker load.
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sluice_ready",
		Help: "1 when sluice is ready to work (/readyz answers 200), 0 while it starts, stops or a broker in use does not answer.",
	}, func() float64 {
		if a.ready.Load() && a.readiness.check() == nil {
			return 1
		}
		return 0
	})
	for _, c := range []prometheus.Collector{info, ready} {
		if err := a.reg.Register(c); err != nil {
			return fmt.Errorf("run: metrics: %w", err)
		}
	}
	if !a.cfg.Metrics.PerPartition {
		return nil
	}
	for _, src := range a.sources {
		name, loads := partitionLoads(src)
		if loads == nil {
			continue // async sources have no shards
		}
		if err := a.reg.Register(consumer.NewPartitionCollector(name, loads)); err != nil {
			return fmt.Errorf("run: metrics.per_partition: source %s: %w", name, err)
		}
	}
	return nil
}

// partitionLoads returns the name of a stream source and the reader of its
// partitions' lag and iterator age; nil for a source without shards.
func partitionLoads(src source) (string, func() []consumer.PartitionLoad) {
	if l, ok := src.(consumer.PartitionLoader); ok {
		return l.Name(), l.PartitionLoads
	}
	return "", nil
}

// shardLags returns the lag of every shard of the stream sources, for the
// admin API's shard view.
func (a *app) shardLags() map[shard.ID]int64 {
	out := map[shard.ID]int64{}
	for _, src := range a.sources {
		name, loads := partitionLoads(src)
		if loads == nil {
			continue
		}
		for _, l := range loads() {
			out[shard.ID{Source: name, Partition: l.Partition}] = l.Lag
		}
	}
	return out
}

// deadLetterConditions are the conditions a source of mode can dead-letter
// with, the sluice_dead_letters_total series created at zero for it.
func deadLetterConditions(mode consumer.Mode) []event.Condition {
	if mode == consumer.ModeAsync {
		return []event.Condition{event.RetryAttemptsExhausted, event.EventAgeExceeded, event.PermanentError, event.InvalidRecord, event.RetryTooLarge}
	}
	return []event.Condition{event.RetryAttemptsExhausted, event.RecordAgeExceeded, event.PermanentError, event.RecordTooLarge, event.InvalidRecord}
}

// deadLetterCounts reads sluice_dead_letters_total from the registry, for
// the admin API's GET /v1/dead-letter-counts: the page shows the same
// numbers as the metric.
func (a *app) deadLetterCounts() []admin.DeadLetterCount {
	families, err := a.reg.Gather()
	if err != nil {
		a.log.Warn("admin: gather metrics for dead-letter counts", "err", err)
	}
	var out []admin.DeadLetterCount
	for _, f := range families {
		if f.GetName() != "sluice_dead_letters_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			c := admin.DeadLetterCount{Count: int64(m.GetCounter().GetValue())}
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "source":
					c.Source = l.GetValue()
				case "condition":
					c.Condition = l.GetValue()
				}
			}
			out = append(out, c)
		}
	}
	return out
}
