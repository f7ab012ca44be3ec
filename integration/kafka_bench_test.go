package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
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
//
// The source commits as `sluice run` does: commit_pipeline_depth at its
// default. Also reported: sluice-allocs/rec and bare-allocs/rec, heap
// allocations per record of each side (the whole process: franz-go's
// decoding is in both).
func BenchmarkKafkaPipeline(b *testing.B) {
	benchPipeline(b, 4, 200000, pipelineOpts{depth: consumer.DefaultCommitPipelineDepth})
}

// BenchmarkKafkaPipelineAsyncCommit is BenchmarkKafkaPipeline with
// kafka.Options.AsyncCommit: no shard waits for a commit (a crash
// redelivers up to about a second of finished batches).
func BenchmarkKafkaPipelineAsyncCommit(b *testing.B) {
	benchPipeline(b, 4, 200000, pipelineOpts{async: true})
}

// BenchmarkKafkaPipelineDepth8 is BenchmarkKafkaPipeline with
// kafka.Options.CommitPipelineDepth 8: a lane runs up to 8 batches ahead of
// its confirmed commit (a crash redelivers up to 9 per lane).
func BenchmarkKafkaPipelineDepth8(b *testing.B) {
	benchPipeline(b, 4, 200000, pipelineOpts{depth: 8})
}

// BenchmarkKafkaPartitions is the pipeline against the bare loop from 1 to
// 64 partitions of the same topic size: sluice runs one shard per
// partition, the bare loop one poll loop for all.
//
//	scripts/brokers/with-brokers.sh go test -run '^$' -bench KafkaPartitions -benchtime 1x ./integration/
func BenchmarkKafkaPartitions(b *testing.B) {
	for _, p := range []int32{1, 4, 16, 64} {
		b.Run(fmt.Sprintf("p=%d", p), func(b *testing.B) {
			benchPipeline(b, p, 100000, pipelineOpts{depth: consumer.DefaultCommitPipelineDepth})
		})
	}
}

// pipelineOpts vary BenchmarkKafkaPipeline.
type pipelineOpts struct {
	async bool // kafka.Options.AsyncCommit
	depth int  // kafka.Options.CommitPipelineDepth
	// url, if set, is an HTTP function to deliver to instead of the
	// in-process one; its handler calls hit with each batch's record count.
	url string
	hit *atomic.Pointer[func(n int)]
	// fromFirst times sluice from its first delivery instead of from the
	// start of the source (the group join left out).
	fromFirst bool
}

// benchPipeline is BenchmarkKafkaPipeline over a topic of partitions
// holding records records.
func benchPipeline(b *testing.B, partitions int32, records int, o pipelineOpts) {
	const batchSize = 500
	addr := kafkaAddr(b) // skips without a broker
	topic := createTopic(b, partitions)
	produce(b, topic, partitions, records, produceOpts{})

	// One untimed read first: on a fresh broker the first consumer group
	// also creates __consumer_offsets, which would be charged to whichever
	// side runs first.
	benchBare(b, addr, topic, records)

	// Besides the wall time, the CPU time the process spent on each side:
	// on a machine shared with other work, wall time measures the share of
	// the CPUs the process got as much as the pipeline, while CPU time per
	// record is what the pipeline costs.
	var (
		sluiceDur, bareDur, sluiceCPU, bareCPU time.Duration
		sluiceAllocs, bareAllocs               uint64
	)
	sluice := func() {
		c, m := cpuTime(), mallocs()
		sluiceDur += benchSluice(b, addr, topic, records, batchSize, o)
		sluiceCPU += cpuTime() - c
		sluiceAllocs += mallocs() - m
	}
	bare := func() {
		c, m := cpuTime(), mallocs()
		bareDur += benchBare(b, addr, topic, records)
		bareCPU += cpuTime() - c
		bareAllocs += mallocs() - m
	}
	decoded.sluice.n.Store(0)
	decoded.bare.n.Store(0)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// Alternate which goes first, so neither always reads a colder
		// page cache.
		if i%2 == 0 {
			bare()
			sluice()
		} else {
			sluice()
			bare()
		}
	}
	b.StopTimer()
	total := float64(records) * float64(b.N)
	sluiceRate, bareRate := total/sluiceDur.Seconds(), total/bareDur.Seconds()
	b.ReportMetric(sluiceRate, "sluice-rec/s")
	b.ReportMetric(bareRate, "bare-rec/s")
	b.ReportMetric(sluiceRate/bareRate, "x-bare")
	b.ReportMetric(float64(sluiceCPU.Nanoseconds())/total, "sluice-cpu-ns/rec")
	b.ReportMetric(float64(bareCPU.Nanoseconds())/total, "bare-cpu-ns/rec")
	b.ReportMetric(bareCPU.Seconds()/sluiceCPU.Seconds(), "x-bare-cpu")
	b.ReportMetric(float64(sluiceAllocs)/total, "sluice-allocs/rec")
	b.ReportMetric(float64(bareAllocs)/total, "bare-allocs/rec")
	b.ReportMetric(float64(decoded.sluice.n.Swap(0))/total, "sluice-decoded/rec")
	b.ReportMetric(float64(decoded.bare.n.Swap(0))/total, "bare-decoded/rec")
}

// decodedCount is a franz-go hook counting the records of every batch a
// client read from a fetch: more than the topic holds when fetched data
// was dropped and fetched again (franz-go drops what it buffered for a
// partition that is paused).
type decodedCount struct{ n atomic.Int64 }

func (d *decodedCount) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	d.n.Add(int64(m.NumRecords))
}

// decoded counts the records the clients of the benchmark read from
// fetches, per side.
var decoded = struct{ sluice, bare decodedCount }{}

// mallocs returns the heap allocations of the process so far.
func mallocs() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.Mallocs
}

// cpuTime returns the user and system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
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
		kgo.WithHooks(&decoded.bare),
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
func benchSluice(b *testing.B, addr, topic string, n, batchSize int, o pipelineOpts) time.Duration {
	b.Helper()
	const fn = "noop"
	d, err := dispatch.New(dispatch.Config{
		Account: dispatch.AccountConfig{}.WithDefaults(),
		// Without a URL: an in-process handler.
		Functions: map[string]dispatch.FunctionConfig{fn: {URL: o.url}},
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
	hit := func(k int) {
		now := time.Now().UnixNano()
		first.CompareAndSwap(0, now)
		if total := got.Add(int64(k)); total >= int64(n) && total-int64(k) < int64(n) {
			last.Store(now)
			close(done)
		}
	}
	if o.url == "" {
		d.Register(fn, dispatch.HandlerFunc(func(_ context.Context, req *dispatch.Request) (*dispatch.Response, error) {
			hit(req.Count)
			return &dispatch.Response{Status: 200}, nil
		}), 0)
	} else {
		o.hit.Store(&hit)
		defer o.hit.Store(nil)
	}

	name := uniqueName(b, "bench")
	broker := consumer.KafkaConfig{Seeds: []string{addr}, ClientID: consumer.DefaultKafkaClientID}
	sc := consumer.DefaultSourceConfig(consumer.ModeStream)
	sc.Topic, sc.Function, sc.BatchSize = topic, fn, batchSize
	deliverer := &dispatch.StreamDeliverer{
		D: d, Source: name, Function: fn,
		Encode: kafka.Encoder{BootstrapServers: addr}, // as `sluice run` (kafka.NewEncoder)
	}
	src, err := kafka.New(name, broker, sc, kafka.Options{
		AsyncCommit:         o.async,
		CommitPipelineDepth: o.depth,
		Worker:              sc.WorkerConfig(name),
		Deliverer:           deliverer,
		Logger:              slog.New(slog.NewTextHandler(io.Discard, nil)),
		ClientOpts:          []kgo.Opt{kgo.WithHooks(&decoded.sluice)},
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
	if o.fromFirst {
		took = time.Duration(last.Load() - first.Load())
	}
	b.Logf("sluice: first record after %s, all %d after %s", time.Duration(first.Load()-start).Round(time.Millisecond), n, took.Round(time.Millisecond))
	return took
}

// BenchmarkKafkaPipelineHTTP measures the pipeline delivering to a local
// no-op HTTP function (it answers 200 with no body) against a bare HTTP
// client loop posting the same number of batches of the same records to it:
// one goroutine per partition, each posting its batches in turn, as sluice's
// shards do. Both are timed from the first request to the last answer (the
// group join left out: the bare loop has none). Reported: sluice-rec/s,
// bare-rec/s and x-bare.
//
//	scripts/brokers/with-brokers.sh go test -run '^$' -bench KafkaPipelineHTTP -benchtime 1x ./integration/
func BenchmarkKafkaPipelineHTTP(b *testing.B) {
	const (
		partitions = 4
		records    = 100000
		batchSize  = 500
	)
	addr := kafkaAddr(b)
	topic := createTopic(b, partitions)
	produce(b, topic, partitions, records, produceOpts{})

	var hit atomic.Pointer[func(n int)]
	offset := []byte(`"offset":`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		if h := hit.Load(); h != nil {
			(*h)(bytes.Count(body, offset))
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer srv.Close()

	// The bare loop's batches: the same records as the topic's, encoded
	// the same way, by partition.
	bodies := make([][][]byte, partitions)
	for p := range bodies {
		var recs []event.Record
		for seq := p; seq < records; seq += partitions {
			recs = append(recs, event.Record{Topic: topic, Partition: int32(p), Offset: int64(len(recs)),
				Timestamp: time.Now(), Key: fmt.Appendf(nil, "key-%d", seq%101), Value: fmt.Appendf(nil, "seq-%07d", seq)})
		}
		for len(recs) > 0 {
			k := min(batchSize, len(recs))
			body, err := kafka.EncodeEvent(addr, recs[:k])
			if err != nil {
				b.Fatal(err)
			}
			bodies[p] = append(bodies[p], body)
			recs = recs[k:]
		}
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	defer client.CloseIdleConnections()
	bare := func() time.Duration {
		start := time.Now()
		var wg sync.WaitGroup
		for p := range bodies {
			wg.Go(func() {
				for _, body := range bodies[p] {
					resp, err := client.Post(srv.URL, "application/json", bytes.NewReader(body))
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
			})
		}
		wg.Wait()
		return time.Since(start)
	}
	o := pipelineOpts{url: srv.URL, hit: &hit, fromFirst: true}
	bare() // warm up the connections and the server
	var sluiceDur, bareDur time.Duration
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		bareDur += bare()
		sluiceDur += benchSluice(b, addr, topic, records, batchSize, o)
	}
	b.StopTimer()
	total := float64(records) * float64(b.N)
	sluiceRate, bareRate := total/sluiceDur.Seconds(), total/bareDur.Seconds()
	b.ReportMetric(sluiceRate, "sluice-rec/s")
	b.ReportMetric(bareRate, "bare-rec/s")
	b.ReportMetric(sluiceRate/bareRate, "x-bare")
}
