package nats

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// BenchmarkStreamVsBareFetch measures messages/s through a Stream (4
// partition consumers, one shard.Worker each, every batch encoded with
// EncodeEvent and handed to a no-op function, acknowledged after it) against
// bare jetstream loops (the same partition consumers, one goroutine each,
// Fetch + Ack of every message) reading the same pre-published stream in the
// same run, on the embedded server (STYLE 21: a ratio, not absolute times). Reported: sluice-msg/s,
// bare-msg/s and x-bare = sluice ÷ bare, with acknowledgements confirmed per
// batch (StreamOptions.AckPipelineDepth 0); piped-msg/s and x-bare-piped with
// AckPipelineDepth consumer.DefaultCommitPipelineDepth (what `sluice run`
// uses). Each iteration runs the three once, in an order that rotates, and
// the ratios are also reported as the median of the iterations' own ratios
// (med-x-bare, med-x-bare-piped): a read of 50,000 messages takes a few
// hundred milliseconds, and on a shared machine one slow moment moves a sum.
// Also reported: the process's CPU time per message during each side
// (sluice-, piped- and bare-cpu-ns/msg; the embedded server's work is in
// all three).
//
//	go test -run '^$' -bench StreamVsBareFetch -benchtime 3x ./consumer/nats/
func BenchmarkStreamVsBareFetch(b *testing.B) { benchStreamVsBare(b, 4) }

// BenchmarkStreamVsBareFetch1P is BenchmarkStreamVsBareFetch on one
// partition: one lane and one bare loop, so the time a lane waits for the
// confirmation of its acknowledgements is not covered by other partitions'
// work (with four partitions on a 2-core machine the CPU is the limit).
func BenchmarkStreamVsBareFetch1P(b *testing.B) { benchStreamVsBare(b, 1) }

func benchStreamVsBare(b *testing.B, partitions int) {
	const (
		messages  = 50000
		batchSize = 500
	)
	e := startServer(b)
	nc, js := connect(b, e.ClientURL())
	src := streamSource("BENCH", "bench", partitions)
	src.BatchSize = batchSize
	// Create the partitioned stream and publish once; each round reads it
	// all with fresh consumers.
	s0, err := NewStream("setup", nc, src, StreamOptions{Deliverer: &noopDeliverer{}, Logger: testLogger()})
	if err != nil {
		b.Fatal(err)
	}
	if err := s0.Ensure(b.Context()); err != nil {
		b.Fatal(err)
	}
	payload := make([]byte, 200)
	for i := range messages {
		if _, err := js.PublishAsync("bench.k"+strconv.Itoa(i%1000), payload); err != nil {
			b.Fatal(err)
		}
		if i%1000 == 999 {
			// Stay under the client's bound of outstanding async
			// publishes (4,000), which fails PublishAsync when reached.
			<-js.PublishAsyncComplete()
		}
	}
	<-js.PublishAsyncComplete()

	// Each side's wall time and the process's CPU time during it (the
	// embedded server's work is in both).
	type side struct{ dur, cpu time.Duration }
	timed := func(f func() time.Duration) side {
		c := cpuTime()
		d := f()
		return side{d, cpuTime() - c}
	}
	var sluice, piped, bare side
	var ratios, pipedRatios []float64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var s, p, br side
		runs := []func(){
			func() {
				br = timed(func() time.Duration { return benchBareFetch(b, js, s0.pt, messages, batchSize, i) })
			},
			func() { s = timed(func() time.Duration { return benchStream(b, nc, src, messages, 2*i, 0) }) },
			func() {
				p = timed(func() time.Duration {
					return benchStream(b, nc, src, messages, 2*i+1, consumer.DefaultCommitPipelineDepth)
				})
			},
		}
		for k := range runs {
			runs[(i+k)%len(runs)]()
		}
		b.Logf("round %d: bare %s, sluice %s (x %.3f), piped %s (x %.3f); CPU bare %s, sluice %s, piped %s",
			i, br.dur, s.dur, br.dur.Seconds()/s.dur.Seconds(), p.dur, br.dur.Seconds()/p.dur.Seconds(), br.cpu, s.cpu, p.cpu)
		sluice = side{sluice.dur + s.dur, sluice.cpu + s.cpu}
		piped = side{piped.dur + p.dur, piped.cpu + p.cpu}
		bare = side{bare.dur + br.dur, bare.cpu + br.cpu}
		ratios = append(ratios, br.dur.Seconds()/s.dur.Seconds())
		pipedRatios = append(pipedRatios, br.dur.Seconds()/p.dur.Seconds())
	}
	b.StopTimer()
	total := float64(messages) * float64(b.N)
	sr, pr, br := total/sluice.dur.Seconds(), total/piped.dur.Seconds(), total/bare.dur.Seconds()
	b.ReportMetric(sr, "sluice-msg/s")
	b.ReportMetric(pr, "piped-msg/s")
	b.ReportMetric(br, "bare-msg/s")
	b.ReportMetric(sr/br, "x-bare")
	b.ReportMetric(pr/br, "x-bare-piped")
	b.ReportMetric(median(ratios), "med-x-bare")
	b.ReportMetric(median(pipedRatios), "med-x-bare-piped")
	b.ReportMetric(float64(sluice.cpu.Nanoseconds())/total, "sluice-cpu-ns/msg")
	b.ReportMetric(float64(piped.cpu.Nanoseconds())/total, "piped-cpu-ns/msg")
	b.ReportMetric(float64(bare.cpu.Nanoseconds())/total, "bare-cpu-ns/msg")
}

// cpuTime is the process's CPU time (user + system).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func median(xs []float64) float64 {
	xs = slices.Clone(xs)
	slices.Sort(xs)
	n := len(xs)
	if n%2 == 1 {
		return xs[n/2]
	}
	return (xs[n/2-1] + xs[n/2]) / 2
}

// noopDeliverer encodes each batch (as the dispatcher would) and counts it
// delivered.
type noopDeliverer struct {
	got  atomic.Int64
	want int64
	done chan struct{}
}

func (d *noopDeliverer) Deliver(_ context.Context, dl shard.Delivery) event.Result {
	if _, err := EncodeEvent("BENCH", dl.Records); err != nil {
		return event.Result{Outcome: event.Permanent}
	}
	n := int64(len(dl.Records))
	if total := d.got.Add(n); d.done != nil && total >= d.want && total-n < d.want {
		close(d.done)
	}
	return event.Result{Outcome: event.Delivered}
}

// benchBareFetch reads the stream with a plain loop per partition (the same
// filtered consumers a Stream has, no pinning): Fetch, then Ack each message.
func benchBareFetch(b *testing.B, js jetstream.JetStream, pt partitioning, n, batch, round int) time.Duration {
	b.Helper()
	ctx := b.Context()
	var got atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for p := range pt.partitions {
		c, err := js.CreateConsumer(ctx, "BENCH", jetstream.ConsumerConfig{
			Durable: "bare-" + strconv.Itoa(round) + "-" + strconv.Itoa(p), FilterSubject: pt.filter(p),
			AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 2 * batch,
		})
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			for got.Load() < int64(n) {
				mb, err := c.Fetch(batch, jetstream.FetchMaxWait(200*time.Millisecond))
				if err != nil {
					b.Error(err)
					return
				}
				for m := range mb.Messages() {
					_ = m.Ack()
					got.Add(1)
				}
			}
		})
	}
	wg.Wait()
	return time.Since(start)
}

func benchStream(b *testing.B, nc *natsgo.Conn, src consumer.SourceConfig, n, round, depth int) time.Duration {
	b.Helper()
	d := &noopDeliverer{want: int64(n), done: make(chan struct{})}
	name := "bench" + strconv.Itoa(round)
	// FetchWait 1 s: a stop waits for the pulls in progress (untimed).
	s, err := NewStream(name, nc, src, StreamOptions{Worker: src.WorkerConfig(name), Deliverer: d, Logger: testLogger(),
		AckPipelineDepth: depth, FetchWait: time.Second})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(b.Context())
	errc := make(chan error, 1) // Run's one result
	start := time.Now()
	go func() { errc <- s.Run(ctx) }()
	select {
	case <-d.done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("sluice delivered %d of %d", d.got.Load(), n)
	}
	el := time.Since(start)
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	return el
}
