package nats

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
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
// bare-msg/s and x-bare = sluice ÷ bare.
//
//	go test -run '^$' -bench StreamVsBareFetch -benchtime 3x ./consumer/nats/
func BenchmarkStreamVsBareFetch(b *testing.B) {
	const (
		partitions = 4
		messages   = 50000
		batchSize  = 500
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

	var sluiceDur, bareDur time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bareDur += benchBareFetch(b, js, s0.pt, messages, batchSize, i)
		sluiceDur += benchStream(b, nc, src, messages, i)
	}
	b.StopTimer()
	total := float64(messages) * float64(b.N)
	sr, br := total/sluiceDur.Seconds(), total/bareDur.Seconds()
	b.ReportMetric(sr, "sluice-msg/s")
	b.ReportMetric(br, "bare-msg/s")
	b.ReportMetric(sr/br, "x-bare")
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

func benchStream(b *testing.B, nc *natsgo.Conn, src consumer.SourceConfig, n, round int) time.Duration {
	b.Helper()
	d := &noopDeliverer{want: int64(n), done: make(chan struct{})}
	name := "bench" + strconv.Itoa(round)
	s, err := NewStream(name, nc, src, StreamOptions{Worker: src.WorkerConfig(name), Deliverer: d, Logger: testLogger()})
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
