package integration

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/shard"
)

// BenchmarkKafkaPipeline measures records/s through sluice in process — a
// kafka.Source (consumer group, one shard.Worker per partition) delivering
// through dispatch.StreamDeliverer (encoding each batch as Lambda's Kafka
// event, taking a concurrency slot) to an in-process no-op function — against
// a bare franz-go consumer-group poll loop reading the same pre-produced topic
// in the same run (STYLE 21: ratios, not absolute times).
//
// Both are timed from creating the consumer to receiving the last record, the
// group join included: it is the same franz-go join for both, and counting
// from the first record instead would time the bare loop on almost nothing
// (one fetch brings most of 200k small records). Reported: sluice-rec/s,
// bare-rec/s and x-bare = sluice ÷ bare (the target is ≥ 0.9); -v
// logs each run's time to the first record and to the last.
//
//	scripts/brokers/with-brokers.sh go test -run '^$' -bench KafkaPipeline -benchtime 1x ./integration/
func BenchmarkKafkaPipeline(b *testing.B) {
	const (
		partitions = 4
		records    = 200000
		batchSize  = 500
	)
	addr := kafkaAddr(b) // skips without a broker
	topic := createTopic(b, partitions)
	produce(b, topic, partitions, records, produceOpts{})

	// One untimed read first: on a fresh broker the first consumer group
	// also creates __consumer_offsets, which would be charged to whichever
	// side runs first.
	benchBare(b, addr, topic, records)

	var sluiceDur, bareDur time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternate which goes first, so neither always reads a colder
		// page cache.
		if i%2 == 0 {
			bareDur += benchBare(b, addr, topic, records)
			sluiceDur += benchSluice(b, addr, topic, records, batchSize)
		} else {
			sluiceDur += benchSluice(b, addr, topic, records, batchSize)
			bareDur += benchBare(b, addr, topic, records)
		}
	}
	b.StopTimer()
	total := float64(records) * float64(b.N)
	sluiceRate, bareRate := total/sluiceDur.Seconds(), total/bareDur.Seconds()
	b.ReportMetric(sluiceRate, "sluice-rec/s")
	b.ReportMetric(bareRate, "bare-rec/s")
	b.ReportMetric(sluiceRate/bareRate, "x-bare")
}

// benchBare reads n records of topic in a new consumer group with a plain
// franz-go poll loop and returns the time from creating the client to the
// n-th record.
func benchBare(b *testing.B, addr, topic string, n int) time.Duration {
	b.Helper()
	cl, err := kgo.NewClient(
		kgo.SeedBrokers(addr),
		kgo.ConsumerGroup(uniqueName(b, "bench-bare")),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		// The same fetch bounds as a kafka.Source, for a like-for-like read.
		kgo.FetchMaxBytes(kafka.DefaultFetchMaxBytes),
		kgo.FetchMaxPartitionBytes(kafka.DefaultFetchMaxPartitionBytes),
	)
	if err != nil {
		b.Fatal(err)
	}
	defer cl.Close()
	start := time.Now()
	ctx, cancel := context.WithTimeout(b.Context(), 5*time.Minute)
	defer cancel()
	var first time.Time
	got := 0
	for got < n {
		fs := cl.PollRecords(ctx, 10000)
		if err := ctx.Err(); err != nil {
			b.Fatalf("bare loop: %d of %d records: %v", got, n, err)
		}
		fs.EachError(func(_ string, p int32, err error) { b.Fatalf("bare loop: fetch %d: %v", p, err) })
		if k := fs.NumRecords(); k > 0 {
			if first.IsZero() {
				first = time.Now()
			}
			got += k
		}
	}
	took := time.Since(start)
	b.Logf("bare:   first record after %s, all %d after %s", first.Sub(start).Round(time.Millisecond), n, took.Round(time.Millisecond))
	return took
}

// benchSluice reads n records of topic through a kafka.Source in a new group,
// delivering each batch to a no-op in-process function through the
// dispatcher, and returns the time from starting the source to the n-th
// record delivered.
func benchSluice(b *testing.B, addr, topic string, n, batchSize int) time.Duration {
	b.Helper()
	const fn = "noop"
	d, err := dispatch.New(dispatch.Config{
		Account:   dispatch.AccountConfig{}.WithDefaults(),
		Functions: map[string]dispatch.FunctionConfig{fn: {}}, // no URL: an in-process handler
	})
	if err != nil {
		b.Fatal(err)
	}
	defer d.Close()
	var (
		got   atomic.Int64
		first atomic.Int64 // unix nanos of the first delivery
		last  atomic.Int64 // unix nanos when the n-th record was delivered
		start int64        // unix nanos when the source was started
		done  = make(chan struct{})
	)
	d.Register(fn, dispatch.HandlerFunc(func(_ context.Context, req *dispatch.Request) (*dispatch.Response, error) {
		now := time.Now().UnixNano()
		first.CompareAndSwap(0, now)
		if total := got.Add(int64(len(req.Items))); total >= int64(n) && total-int64(len(req.Items)) < int64(n) {
			last.Store(now)
			close(done)
		}
		return &dispatch.Response{Status: 200}, nil
	}), 0)

	name := uniqueName(b, "bench")
	broker := consumer.KafkaConfig{Seeds: []string{addr}, ClientID: consumer.DefaultKafkaClientID}
	sc := consumer.DefaultSourceConfig(consumer.ModeStream)
	sc.Topic, sc.Function, sc.BatchSize = topic, fn, batchSize
	deliverer := &dispatch.StreamDeliverer{
		D: d, Source: name, Function: fn,
		Encode: func(recs []shard.Record) ([]byte, error) { return kafka.EncodeEvent(addr, recs) },
	}
	src, err := kafka.New(name, broker, sc, kafka.Options{
		Worker:    sc.WorkerConfig(name),
		Deliverer: deliverer,
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	start = time.Now().UnixNano()
	ctx, cancel := context.WithCancel(b.Context())
	ran := make(chan error, 1) // Run's one result; buffered so it never blocks
	go func() { ran <- src.Run(ctx) }()
	select {
	case <-done:
	case err := <-ran:
		cancel()
		b.Fatalf("sluice: the source's Run returned after %d of %d records: %v", got.Load(), n, err)
	case <-time.After(5 * time.Minute):
		cancel()
		b.Fatalf("sluice: %d of %d records in 5 minutes", got.Load(), n)
	}
	cancel()
	if err := <-ran; err != nil {
		b.Fatalf("sluice source: %v", err)
	}
	if g := got.Load(); g != int64(n) {
		b.Logf("sluice delivered %d records, %d more than the topic holds (duplicates)", g, g-int64(n))
	}
	took := time.Duration(last.Load() - start)
	b.Logf("sluice: first record after %s, all %d after %s", time.Duration(first.Load()-start).Round(time.Millisecond), n, took.Round(time.Millisecond))
	return took
}
