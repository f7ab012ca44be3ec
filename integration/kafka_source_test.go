package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// kafkaDelivery is one successful delivery of a record, as the function saw it.
type kafkaDelivery struct {
	offset  int64
	attempt int
	at      time.Time
}

// kafkaThrottlingFunction is an in-process stream function: it answers
// FunctionThrottled for every batch of one partition until its window has
// passed (the window starts at that partition's first delivery), and
// succeeds otherwise.
type kafkaThrottlingFunction struct {
	partition int32
	window    time.Duration

	mu         sync.Mutex
	start      time.Time // first delivery attempt of partition
	throttles  int
	deliveries map[int32][]kafkaDelivery
}

func (f *kafkaThrottlingFunction) Deliver(ctx context.Context, d shard.Delivery) event.Result {
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if d.Shard.Partition == f.partition {
		if f.start.IsZero() {
			f.start = now
		}
		if now.Sub(f.start) < f.window {
			f.throttles++
			return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled",
				Error: event.ErrorInfo{Kind: "throttled", Status: 429, Message: "429 Too Many Requests"}}
		}
	}
	for _, r := range d.Records {
		f.deliveries[r.Partition] = append(f.deliveries[r.Partition], kafkaDelivery{r.Offset, d.Attempt, now})
	}
	return event.Result{Outcome: event.Delivered}
}

func (f *kafkaThrottlingFunction) snapshot() (start time.Time, throttles int, out map[int32][]kafkaDelivery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out = make(map[int32][]kafkaDelivery, len(f.deliveries))
	for p, ds := range f.deliveries {
		out[p] = slices.Clone(ds)
	}
	return f.start, f.throttles, out
}

// TestKafkaSourceThrottledPartitionBlocksAlone is SPEC §2.1 on a real broker:
// a throttled shard stops and retries its batch while every other shard keeps
// flowing; afterwards it is delivered in order, no attempt was consumed, and
// the group's commits end at the high watermarks.
func TestKafkaSourceThrottledPartitionBlocksAlone(t *testing.T) {
	const (
		partitions = 4
		records    = 2000
		throttled  = int32(2)
		window     = 3 * time.Second
	)
	addr := kafkaAddr(t)
	topic := createTopic(t, partitions)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	// 2,000 keyed records; the key decides the partition (murmur2, as the
	// Java client), so every partition gets some.
	producer := newKafkaClient(t)
	recs := make([]*kgo.Record, records)
	for i := range recs {
		recs[i] = &kgo.Record{Topic: topic, Key: fmt.Appendf(nil, "key-%d", i%97), Value: fmt.Appendf(nil, "%d", i)}
	}
	if err := producer.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	hwm := kafkaEndOffsets(t, topic)
	for p := range int32(partitions) {
		if hwm[p] == 0 {
			t.Fatalf("partition %d got no records; high watermarks %v", p, hwm)
		}
	}
	t.Logf("high watermarks: %v", hwm)

	fn := &kafkaThrottlingFunction{partition: throttled, window: window, deliveries: map[int32][]kafkaDelivery{}}
	src := consumer.DefaultSourceConfig(consumer.ModeStream)
	src.Topic, src.Function = topic, "fn"
	wc := src.WorkerConfig("orders")
	// Faster than the 1s..5m default, so the test does not wait for a
	// backoff step past the window; the behaviour is the same.
	wc.Backoff = event.Backoff{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 2, Jitter: 0.2}
	group := uniqueName(t, "sluice-it")
	s, err := kafka.New("orders", consumer.KafkaConfig{Seeds: []string{addr}, ClientID: "sluice-it"}, src, kafka.Options{
		Group:     group,
		Worker:    wc,
		Deliverer: fn,
		Logger:    kafkaTestLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	runCtx, cancelRun := context.WithCancel(ctx)
	errc := make(chan error, 1)
	go func() { errc <- s.Run(runCtx) }()
	stop := sync.OnceFunc(func() {
		cancelRun()
		if err := <-errc; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	defer stop()

	// During the window: the other partitions are delivered completely,
	// the throttled one not at all, and it shows as throttled.
	kafkaWaitUntil(ctx, t, 60*time.Second, "the other partitions delivered", func() bool {
		_, _, ds := fn.snapshot()
		for p := range int32(partitions) {
			if p != throttled && kafkaDistinctOffsets(ds[p]) < int(hwm[p]) {
				return false
			}
		}
		return true
	})
	start, throttles, ds := fn.snapshot()
	othersDone := time.Now()
	if start.IsZero() {
		t.Fatal("the throttled partition was never tried")
	}
	if othersDone.Sub(start) >= window {
		t.Errorf("the other partitions took %v after the throttle began, want them done within its %v window", othersDone.Sub(start), window)
	}
	if n := len(ds[throttled]); n != 0 {
		t.Fatalf("partition %d delivered %d records while throttled", throttled, n)
	}
	var st kafka.ShardStatus
	for _, sh := range s.Shards() {
		if sh.Shard.Partition == throttled {
			st = sh
		}
	}
	if st.State != shard.StateThrottled || st.Reason != "FunctionThrottled" {
		t.Errorf("throttled shard shows %s (%q), want throttled (FunctionThrottled)", st.State, st.Reason)
	}
	if st.Lag != hwm[throttled] {
		t.Errorf("throttled shard lag %d, want %d", st.Lag, hwm[throttled])
	}
	t.Logf("others done %v after partition %d's first throttle (%d throttles so far); throttled shard: buffered %d, lag %d, iterator age %v",
		othersDone.Sub(start).Round(time.Millisecond), throttled, throttles, st.Buffered, st.Lag, st.IteratorAge.Round(time.Millisecond))

	// After the window: the throttled partition is delivered, in order,
	// on the first attempt (throttles consume none).
	kafkaWaitUntil(ctx, t, 60*time.Second, "the throttled partition delivered", func() bool {
		_, _, ds := fn.snapshot()
		return kafkaDistinctOffsets(ds[throttled]) >= int(hwm[throttled])
	})
	_, throttles, ds = fn.snapshot()
	firstAt := ds[throttled][0].at
	if firstAt.Sub(start) < window {
		t.Errorf("partition %d delivered %v after its first throttle, inside the %v window", throttled, firstAt.Sub(start), window)
	}
	for p := range int32(partitions) {
		for i, d := range ds[p] {
			if d.offset != int64(i) {
				t.Fatalf("partition %d: delivery %d is offset %d, want %d (in order, no duplicates)", p, i, d.offset, i)
			}
			if d.attempt != 1 {
				t.Errorf("partition %d offset %d delivered on attempt %d, want 1 (throttles consume no attempt)", p, d.offset, d.attempt)
			}
		}
		if len(ds[p]) != int(hwm[p]) {
			t.Errorf("partition %d: %d deliveries, want %d", p, len(ds[p]), hwm[p])
		}
	}
	last := ds[throttled][len(ds[throttled])-1].at
	t.Logf("partition %d: first delivery %v after its first throttle, all %d records %v after it; %d throttled tries",
		throttled, firstAt.Sub(start).Round(time.Millisecond), hwm[throttled], last.Sub(start).Round(time.Millisecond), throttles)

	// The commits reach the high watermarks (auto-commit of marks, ~1s).
	kafkaWaitUntil(ctx, t, 30*time.Second, "commits at the high watermarks", func() bool {
		c := kafkaCommittedOffsets(t, group, topic)
		for p, h := range hwm {
			if c[p] != h {
				return false
			}
		}
		return true
	})

	// A clean shutdown keeps them there.
	stop()
	if c := kafkaCommittedOffsets(t, group, topic); !kafkaOffsetsEqual(c, hwm) {
		t.Errorf("after shutdown: committed %v, want %v", c, hwm)
	}
}

// TestKafkaWriterAndEnsureTopic checks the dead-letter plumbing against the
// real broker: EnsureTopic creates and reconciles retention, Writer appends
// with every replica's acknowledgement, and a missing topic fails in time.
func TestKafkaWriterAndEnsureTopic(t *testing.T) {
	addr := kafkaAddr(t)
	broker := consumer.KafkaConfig{Seeds: []string{addr}, ClientID: "sluice-it"}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	topic := uniqueName(t, "sluice-dead")
	t.Cleanup(func() {
		cctx, cancel := cleanupCtx()
		defer cancel()
		_, _ = kadm.NewClient(newKafkaClient(t)).DeleteTopic(cctx, topic)
	})

	created, changed, err := kafka.EnsureTopic(ctx, broker, topic, 2, 336*time.Hour, 0)
	if err != nil || !created || len(changed) != 0 {
		t.Fatalf("EnsureTopic (new) = %v, %q, %v; want created", created, changed, err)
	}
	created, changed, err = kafka.EnsureTopic(ctx, broker, topic, 2, 24*time.Hour, 1<<30)
	if err != nil || created || len(changed) != 2 {
		t.Fatalf("EnsureTopic (reconcile) = %v, %q, %v; want two changes", created, changed, err)
	}
	t.Logf("reconciled: %q", changed)

	w, err := kafka.NewWriter(broker, topic)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	letters := []event.Record{
		{Key: []byte("k"), Value: []byte(`{"version":1}`), Headers: []event.Header{{Key: "sluice-condition", Value: []byte("PermanentError")}}},
		{Key: []byte("k"), Value: []byte(`{"version":1,"n":2}`)},
	}
	start := time.Now()
	if err := w.Append(ctx, letters); err != nil {
		t.Fatalf("Append: %v", err)
	}
	t.Logf("Append of %d records acknowledged in %v", len(letters), time.Since(start).Round(time.Millisecond))
	var n int64
	for _, o := range kafkaEndOffsets(t, topic) {
		n += o
	}
	if n != int64(len(letters)) {
		t.Errorf("topic holds %d records, want %d", n, len(letters))
	}

	missing, err := kafka.NewWriter(broker, uniqueName(t, "sluice-missing"))
	if err != nil {
		t.Fatal(err)
	}
	defer missing.Close()
	start = time.Now()
	err = missing.Append(ctx, letters[:1])
	took := time.Since(start)
	if err == nil {
		t.Fatal("Append to a missing topic succeeded (auto-created?)")
	}
	if took > kafka.DefaultWriteTimeout+2*time.Second {
		t.Errorf("Append to a missing topic took %v, want about %v at most", took, kafka.DefaultWriteTimeout)
	}
	t.Logf("missing topic: failed after %v: %v", took.Round(time.Millisecond), err)
}

func kafkaEndOffsets(t *testing.T, topic string) map[int32]int64 {
	t.Helper()
	offs, err := kadm.NewClient(newKafkaClient(t)).ListEndOffsets(t.Context(), topic)
	if err == nil {
		err = offs.Error()
	}
	if err != nil {
		t.Fatalf("list end offsets of %s: %v", topic, err)
	}
	out := map[int32]int64{}
	offs.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

func kafkaCommittedOffsets(t *testing.T, group, topic string) map[int32]int64 {
	t.Helper()
	offs, err := kadm.NewClient(newKafkaClient(t)).FetchOffsets(t.Context(), group)
	if err == nil {
		err = offs.Error()
	}
	if err != nil {
		t.Fatalf("fetch offsets of %s: %v", group, err)
	}
	out := map[int32]int64{}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic {
			out[o.Partition] = o.At
		}
	})
	return out
}

func kafkaDistinctOffsets(ds []kafkaDelivery) int {
	seen := map[int64]bool{}
	for _, d := range ds {
		seen[d.offset] = true
	}
	return len(seen)
}

func kafkaOffsetsEqual(a, b map[int32]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// kafkaWaitUntil polls cond every 50ms until it holds, timeout passes or ctx ends.
func kafkaWaitUntil(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kafkaTestLogger discards logs unless SLUICE_TEST_LOG is set.
func kafkaTestLogger() *slog.Logger {
	if os.Getenv("SLUICE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}
