package cluster_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/sluicehq/sluice/cluster"
	"github.com/sluicehq/sluice/consumer"
	natsb "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/dispatch"
)

// embeddedKV opens a shares bucket on an embedded nats-server (JetStream
// KV, the engine of the cluster mode).
func embeddedKV(b *testing.B) consumer.KV {
	b.Helper()
	nc := consumer.DefaultNATSConfig()
	br, err := natsb.Kind{}.Open(context.Background(), "bus", consumer.BrokerConfig{NATS: &nc}, consumer.Env{StateDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(br.Close)
	kv, err := br.(consumer.KVOpener).OpenKV(context.Background(), "bench", consumer.KVOptions{TTL: 20 * time.Second})
	if err != nil {
		b.Fatal(err)
	}
	return kv
}

func benchConfig(reserved int) dispatch.Config {
	return dispatch.Config{
		Account:   dispatch.AccountConfig{Concurrency: 1000, MinUnreserved: 100},
		Functions: map[string]dispatch.FunctionConfig{"f": {ReservedConcurrency: &reserved}},
		Rules:     []dispatch.Rule{{Pattern: "*", Concurrency: 50}},
	}
}

func newEngine(b *testing.B, kv consumer.KV, reserved int) *cluster.Engine {
	b.Helper()
	e, err := cluster.New(cluster.Config{Name: "bench", Broker: "bus", Lease: 10 * time.Second}, benchConfig(reserved))
	if err != nil {
		b.Fatal(err)
	}
	e.Start(kv)
	b.Cleanup(func() { e.Stop(); e.Close() })
	return e
}

// BenchmarkClusterAcquireVsLocal times Acquire+Release of one slot (one
// scope) on a cluster Engine over JetStream KV, once it holds a share,
// against the local Limiter over the same b.N in the same run; x-local is
// cluster ÷ local (the target: within 2×).
func BenchmarkClusterAcquireVsLocal(b *testing.B) {
	kv := embeddedKV(b)
	e := newEngine(b, kv, 100)
	local, err := dispatch.NewLimiter(benchConfig(100))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	scopes := []string{"tenant-1"}
	// Win the share first: ask until granted.
	l, err := e.Acquire(ctx, "f", scopes, nil)
	if err != nil {
		b.Fatal(err)
	}
	l.Release()
	run := func(lim dispatch.Limits, n int) {
		for range n {
			l, err := lim.Acquire(ctx, "f", scopes, nil)
			if err != nil {
				b.Fatal(err)
			}
			l.Release()
		}
	}
	b.StopTimer()
	run(local, 1000)
	run(e, 1000)
	start := time.Now()
	run(local, b.N)
	localDur := time.Since(start)
	b.StartTimer()
	start = time.Now()
	run(e, b.N)
	clusterDur := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(clusterDur)/float64(localDur), "x-local")
	b.ReportMetric(float64(localDur.Nanoseconds())/float64(b.N), "local-ns/op")
}

// BenchmarkClusterHandOff measures how long a member that gets a demand
// waits for capacity another member holds and no longer uses: member A
// keeps the whole reservation (6) busy, B asks for a slot, A releases
// everything; the time from A's release to B's grant is one hand-off
// (p50/p99 over b.N hand-offs, JetStream KV on an embedded server).
func BenchmarkClusterHandOff(b *testing.B) {
	kv := embeddedKV(b)
	a, bb := newEngine(b, kv, 6), newEngine(b, kv, 6)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var lat []time.Duration
	for i := range b.N {
		// A takes all 6 (the others' old claims lapse or are given back).
		var held []dispatch.Lease
		for range 6 {
			l, err := a.Acquire(ctx, "f", []string{"s" + string(rune('a'+len(held)))}, nil)
			if err != nil {
				b.Fatal(err)
			}
			held = append(held, l)
		}
		got := make(chan time.Time, 1)
		go func() {
			l, err := bb.Acquire(ctx, "f", []string{"z"}, nil)
			if err == nil {
				got <- time.Now()
				l.Release()
			}
		}()
		time.Sleep(300 * time.Millisecond) // B's demand is in the engine
		released := time.Now()
		for _, l := range held {
			l.Release()
		}
		at := <-got
		lat = append(lat, at.Sub(released))
		_ = i
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "p50-ms")
	b.ReportMetric(float64(lat[(len(lat)*99)/100].Milliseconds()), "p99-ms")
}
