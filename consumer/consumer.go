package consumer

import (
	"time"

	"github.com/sluicehq/sluice/shard"
)

// Of returns the scope of record r under s: its key, one of its headers (the
// first of that name), a literal, or "" for none (and for a record without
// the header).
func (s Scope) Of(r *shard.Record) string {
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
		Backoff: shard.Backoff{
			Initial:    c.RetryBackoff.Initial,
			Max:        c.RetryBackoff.Max,
			Multiplier: c.RetryBackoff.Multiplier,
			Jitter:     c.RetryBackoff.Jitter,
		},
	}
}
