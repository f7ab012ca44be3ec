package shard

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
)

// BenchmarkLaneScaling measures how parallelization_factor scales one
// shard with nothing but the shard engine in the way: a Deliverer that
// takes 5 ms per batch (the function), batches of 100, records over 10,000
// keys pushed as fast as the shard takes them, and a Commit hook that
// returns at once. It runs pf 1 and pf 10 alternately (interleaved) and
// reports their records/s and x-pf1 = pf 10 ÷ pf 1 (10 is perfect
// scaling). Out of process the same ratio also pays for HTTP, the function
// server and the broker on the same CPUs (BENCHMARKS.md).
//
//	go test -run '^$' -bench LaneScaling -benchtime 2x ./shard/
func BenchmarkLaneScaling(b *testing.B) {
	const (
		records = 20000
		keys    = 10000
		batch   = 100
		delay   = 5 * time.Millisecond
	)
	recs := make([]event.Record, records)
	for i := range recs {
		recs[i] = event.Record{Topic: "t", Offset: int64(i), Key: []byte(strconv.Itoa(i % keys)), Value: make([]byte, 200)}
	}
	run := func(pf int) time.Duration {
		var delivered atomic.Int64
		done := make(chan struct{})
		d := delivererFunc(func(ctx context.Context, dl Delivery) event.Result {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return event.Result{Outcome: event.Throttled}
			}
			if delivered.Add(int64(len(dl.Records))) == records {
				close(done)
			}
			return event.Result{Outcome: event.Delivered}
		})
		cfg := WorkerConfig{Source: "s", Function: "fn", BatchSize: batch, ParallelizationFactor: pf,
			MaxRecordAge: -1, MaxRetryAttempts: -1, Buffer: 2 * records}
		w := NewWorker(ID{Source: "s"}, cfg, Hooks{Deliverer: d, Logger: slog.New(slog.DiscardHandler),
			Commit: func(event.Record) func() { return nil }})
		ctx, cancel := context.WithCancel(context.Background())
		stopped := make(chan struct{})
		start := time.Now()
		go func() { w.Run(ctx); close(stopped) }()
		for i := 0; i < records; i += 1000 { // pushes of a poll's size
			w.Push(recs[i : i+1000 : i+1000])
		}
		<-done
		took := time.Since(start)
		cancel()
		<-stopped
		return took
	}
	var t1, t10 time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			t1 += run(1)
			t10 += run(10)
		} else {
			t10 += run(10)
			t1 += run(1)
		}
	}
	n := float64(records) * float64(b.N)
	b.ReportMetric(n/t1.Seconds(), "pf1-rec/s")
	b.ReportMetric(n/t10.Seconds(), "pf10-rec/s")
	b.ReportMetric(t1.Seconds()/t10.Seconds(), "x-pf1")
}

type delivererFunc func(ctx context.Context, d Delivery) event.Result

func (f delivererFunc) Deliver(ctx context.Context, d Delivery) event.Result { return f(ctx, d) }
