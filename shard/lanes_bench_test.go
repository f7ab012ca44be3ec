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
	recs := benchRecords(20000, 10000)
	var t1, t10 time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			t1 += runShard(recs, 100, 1, 5*time.Millisecond)
			t10 += runShard(recs, 100, 10, 5*time.Millisecond)
		} else {
			t10 += runShard(recs, 100, 10, 5*time.Millisecond)
			t1 += runShard(recs, 100, 1, 5*time.Millisecond)
		}
	}
	n := float64(len(recs)) * float64(b.N)
	b.ReportMetric(n/t1.Seconds(), "pf1-rec/s")
	b.ReportMetric(n/t10.Seconds(), "pf10-rec/s")
	b.ReportMetric(t1.Seconds()/t10.Seconds(), "x-pf1")
}

// BenchmarkRoutingCost measures what lanes cost a shard per record when
// the function costs nothing: batches of 500 to a Deliverer that returns
// at once, parallelization_factor 1 (no router) and 2 (the router keys
// every record, and the checkpoint waits for the slower lane), interleaved.
// ns-pf1 and ns-pf2 are wall-clock nanoseconds a record; x-pf1 = pf 2 ÷ pf 1
// (above 1: the router costs more than the second lane gains on a no-op
// function).
//
//	go test -run '^$' -bench RoutingCost -benchtime 20x ./shard/
func BenchmarkRoutingCost(b *testing.B) {
	recs := benchRecords(100000, 10000)
	var t1, t2 time.Duration
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			t1 += runShard(recs, 500, 1, 0)
			t2 += runShard(recs, 500, 2, 0)
		} else {
			t2 += runShard(recs, 500, 2, 0)
			t1 += runShard(recs, 500, 1, 0)
		}
	}
	n := float64(len(recs)) * float64(b.N)
	b.ReportMetric(float64(t1.Nanoseconds())/n, "ns-pf1")
	b.ReportMetric(float64(t2.Nanoseconds())/n, "ns-pf2")
	b.ReportMetric(t2.Seconds()/t1.Seconds(), "x-pf1")
}

// benchRecords returns n records of 200 bytes over keys keys, in offset
// order.
func benchRecords(n, keys int) []event.Record {
	recs := make([]event.Record, n)
	for i := range recs {
		recs[i] = event.Record{Topic: "t", Offset: int64(i), Key: []byte(strconv.Itoa(i % keys)), Value: make([]byte, 200)}
	}
	return recs
}

// runShard pushes recs into one shard (in pushes of a poll's size) and
// returns how long it took to deliver them all, each batch taking delay;
// Commit returns at once.
func runShard(recs []event.Record, batch, pf int, delay time.Duration) time.Duration {
	var delivered atomic.Int64
	done := make(chan struct{})
	d := delivererFunc(func(ctx context.Context, dl Delivery) event.Result {
		if delay > 0 {
			select {
			case <-time.After(delay):
			case <-ctx.Done():
				return event.Result{Outcome: event.Throttled}
			}
		}
		if delivered.Add(int64(len(dl.Records))) == int64(len(recs)) {
			close(done)
		}
		return event.Result{Outcome: event.Delivered}
	})
	cfg := WorkerConfig{Source: "s", Function: "fn", BatchSize: batch, ParallelizationFactor: pf,
		MaxRecordAge: -1, MaxRetryAttempts: -1, Buffer: 2 * len(recs)}
	w := NewWorker(ID{Source: "s"}, cfg, Hooks{Deliverer: d, Logger: slog.New(slog.DiscardHandler),
		Commit: func(event.Record) func() { return nil }})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	start := time.Now()
	go func() { w.Run(ctx); close(stopped) }()
	for i := 0; i < len(recs); i += 1000 {
		w.Push(recs[i:min(i+1000, len(recs)):min(i+1000, len(recs))])
	}
	<-done
	took := time.Since(start)
	cancel()
	<-stopped
	return took
}

type delivererFunc func(ctx context.Context, d Delivery) event.Result

func (f delivererFunc) Deliver(ctx context.Context, d Delivery) event.Result { return f(ctx, d) }
