package consumer

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// Of returns the scope of record r under s: its key, one of its headers (the
// first of that name), a literal, or "" for none (and for a record without
// the header).
func (s Scope) Of(r *event.Record) string {
	switch s.Kind {
	case ScopeKey:
		return string(r.Key)
	case ScopeHeader:
		for _, h := range r.Headers {
			if h.Key == s.Arg {
				return string(h.Value)
			}
		}
		return ""
	case ScopeLiteral:
		return s.Arg
	default:
		return ""
	}
}

// WorkerConfig returns the shard engine's settings for source name.
func (c SourceConfig) WorkerConfig(name string) shard.WorkerConfig {
	age := time.Duration(-1)
	if !c.MaxRecordAge.IsInfinite() {
		age = c.MaxRecordAge.Duration()
	}
	return shard.WorkerConfig{
		Source:                name,
		Function:              c.Function,
		Mode:                  string(c.Mode),
		BatchSize:             c.BatchSize,
		BatchingWindow:        c.BatchingWindow,
		MaxBatchBytes:         int64(c.MaxBatchBytes),
		ParallelizationFactor: c.ParallelizationFactor,
		MaxRetryAttempts:      c.MaxRetryAttempts,
		MaxRecordAge:          age,
		BisectOnError:         c.BisectBatchOnError,
		Backoff: event.Backoff{
			Initial:    c.RetryBackoff.Initial,
			Max:        c.RetryBackoff.Max,
			Multiplier: c.RetryBackoff.Multiplier,
			Jitter:     c.RetryBackoff.Jitter,
		},
	}
}

// AsyncDeliverer invokes a source's function with one event (SPEC §2.2); the
// Kafka and JetStream async sources both call it, dispatch.AsyncDeliverer
// implements it. attempt is 1 for the first function attempt; throttled
// tries do not count. It blocks while the invocation waits for a concurrency
// slot, at most until waitUntil (the source passes the event's expiry; past
// it the Result is Throttled). waitUntil never bounds the invocation itself,
// which runs to its answer or the function's timeout. ctx cancels the wait
// and the invocation at shutdown. Outcomes: Delivered; Throttled
// (RetryAfter: wait at least that long); Failed (consumes an attempt);
// Permanent (dead-letter at once). Partial counts as Failed.
type AsyncDeliverer interface {
	Deliver(ctx context.Context, rec event.Record, attempt int, waitUntil time.Time) event.Result
}
