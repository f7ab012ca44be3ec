package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// natsDelivery is one successful delivery of a message, as the function saw
// it.
type natsDelivery struct {
	seq     int64
	key     string
	value   string
	attempt int
	at      time.Time
}

// natsThrottlingFunction is an in-process stream function: it answers
// FunctionThrottled for every batch of one partition until its window has
// passed (the window starts at that partition's first delivery), and
// succeeds otherwise.
type natsThrottlingFunction struct {
	partition int32
	window    time.Duration

	mu         sync.Mutex
	start      time.Time
	throttles  int
	deliveries map[int32][]natsDelivery
}

func (f *natsThrottlingFunction) Deliver(_ context.Context, d shard.Delivery) event.Result {
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
		f.deliveries[r.Partition] = append(f.deliveries[r.Partition],
			natsDelivery{r.Offset, string(r.Key), string(r.Value), d.Attempt, now})
	}
	return event.Result{Outcome: event.Delivered}
}

func (f *natsThrottlingFunction) snapshot() (start time.Time, throttles int, out map[int32][]natsDelivery) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out = make(map[int32][]natsDelivery, len(f.deliveries))
	for p, ds := range f.deliveries {
		out[p] = slices.Clone(ds)
	}
	return f.start, f.throttles, out
}

// natsStreamName returns a unique stream name and its subject prefix, and
// deletes the stream (and so its consumers) when the test ends.
func natsStreamName(t *testing.T, js jetstream.JetStream) (stream, prefix string) {
	t.Helper()
	stream = strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "NS"), "_"))
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		if err := js.DeleteStream(ctx, stream); err != nil {
			t.Errorf("delete stream %s: %v", stream, err)
		}
	})
	return stream, strings.ToLower(stream)
}

// natsPartitionCounts returns how many messages each partition subject of a
// partitioned stream holds ("<prefix>.<p>.<key>").
func natsPartitionCounts(t *testing.T, js jetstream.JetStream, stream, prefix string, partitions int) map[int32]int {
	t.Helper()
	st, err := js.Stream(t.Context(), stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(t.Context(), jetstream.WithSubjectFilter(prefix+".>"))
	if err != nil {
		t.Fatal(err)
	}
	out := map[int32]int{}
	for subj, n := range info.State.Subjects {
		var p int32
		if _, err := fmt.Sscanf(strings.TrimPrefix(subj, prefix+"."), "%d.", &p); err != nil || p < 0 || int(p) >= partitions {
			t.Fatalf("stored subject %q is not a partition subject", subj)
		}
		out[p] += int(n)
	}
	return out
}

func natsWaitUntil(ctx context.Context, t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func natsTestLogger() *slog.Logger {
	if os.Getenv("SLUICE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// TestNatsSourceThrottledPartitionBlocksAlone is SPEC §2.1 on a real
// nats-server: publishers publish by key, the server assigns the partition;
// a throttled partition holds its batch (kept with InProgress past several
// AckWaits, never NAKed or redelivered) while every other partition keeps
// flowing; afterwards it is delivered in order, no attempt was consumed, and
// every partition consumer ends with nothing pending.
func TestNatsSourceThrottledPartitionBlocksAlone(t *testing.T) {
	const (
		partitions = 4
		messages   = 2000
		throttled  = int32(2)
		window     = 6 * time.Second
		ackWait    = 2 * time.Second
	)
	nc, js := newJetStream(t)
	stream, prefix := natsStreamName(t, js)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	src := consumer.DefaultSourceConfig(consumer.ModeStream)
	src.Stream, src.Subject, src.Partitions, src.Function = stream, prefix+".*", partitions, "fn"
	wc := src.WorkerConfig("clicks")
	wc.Backoff = event.Backoff{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 2, Jitter: 0.2}
	fn := &natsThrottlingFunction{partition: throttled, window: window, deliveries: map[int32][]natsDelivery{}}
	s, err := natssrc.NewStream("clicks", nc, src, natssrc.StreamOptions{
		Worker:         wc,
		Deliverer:      fn,
		Logger:         natsTestLogger(),
		AckWait:        ackWait,
		ConsumerPrefix: "sluice-" + strings.ToLower(stream),
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(ctx); err != nil {
		t.Fatalf("Ensure: %v", err)
	}

	// 2,000 messages over 97 keys, published as a user would: to
	// <prefix>.<key>, with a header.
	for i := range messages {
		msg := &nats.Msg{
			Subject: fmt.Sprintf("%s.key-%d", prefix, i%97),
			Data:    fmt.Appendf(nil, "%d", i),
			Header:  nats.Header{"tenant": {fmt.Sprintf("t%d", i%5)}},
		}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishing timed out")
	}
	counts := natsPartitionCounts(t, js, stream, prefix, partitions)
	total := 0
	for p := range int32(partitions) {
		if counts[p] == 0 {
			t.Fatalf("partition %d got no messages; counts %v", p, counts)
		}
		total += counts[p]
	}
	if total != messages {
		t.Fatalf("partitions hold %d messages, want %d", total, messages)
	}
	t.Logf("messages per partition: %v", counts)

	runCtx, cancelRun := context.WithCancel(ctx)
	errc := make(chan error, 1) // Run's one result
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
	natsWaitUntil(ctx, t, 60*time.Second, "the other partitions delivered", func() bool {
		_, _, ds := fn.snapshot()
		for p := range int32(partitions) {
			if p != throttled && len(ds[p]) < counts[p] {
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
		t.Fatalf("partition %d delivered %d messages while throttled", throttled, n)
	}
	var st natssrc.ShardStatus
	for _, sh := range s.Shards() {
		if sh.Shard.Partition == throttled {
			st = sh
		}
	}
	if st.State != shard.StateThrottled || st.Reason != "FunctionThrottled" {
		t.Errorf("throttled shard shows %s (%q), want throttled (FunctionThrottled)", st.State, st.Reason)
	}
	t.Logf("others done %v after partition %d's first throttle (%d throttles so far); throttled shard: buffered %d, lag %d, iterator age %v",
		othersDone.Sub(start).Round(time.Millisecond), throttled, throttles, st.Buffered, st.Lag, st.IteratorAge.Round(time.Millisecond))

	// Held past several AckWaits without a redelivery: the paused
	// partition keeps its lease with InProgress and fetches no more than
	// its bound.
	natsWaitUntil(ctx, t, 2*window, "the throttle window to pass two AckWaits", func() bool {
		return time.Since(start) > 2*ackWait+ackWait/2
	})
	c, err := js.Consumer(ctx, stream, s.ConsumerName(int(throttled)))
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.NumRedelivered != 0 {
		t.Errorf("%d redeliveries in the throttled partition: its held batch lost its lease", info.NumRedelivered)
	}
	if info.NumAckPending == 0 || info.AckFloor.Stream != 0 {
		t.Errorf("throttled partition: %d held, acked up to %d; want held and nothing acknowledged", info.NumAckPending, info.AckFloor.Stream)
	}
	for _, g := range info.PriorityGroups {
		if g.PinnedClientID == "" {
			t.Errorf("the throttled partition is not pinned to its process")
		}
	}

	// After the window: the throttled partition is delivered, in order,
	// on the first attempt (throttles consume none).
	natsWaitUntil(ctx, t, 60*time.Second, "the throttled partition delivered", func() bool {
		_, _, ds := fn.snapshot()
		return len(ds[throttled]) >= counts[throttled]
	})
	_, throttles, ds = fn.snapshot()
	firstAt := ds[throttled][0].at
	if firstAt.Sub(start) < window {
		t.Errorf("partition %d delivered %v after its first throttle, inside the %v window", throttled, firstAt.Sub(start), window)
	}
	for p := range int32(partitions) {
		lastByKey := map[string]int{}
		for i, d := range ds[p] {
			if i > 0 && d.seq <= ds[p][i-1].seq {
				t.Fatalf("partition %d: delivery %d is sequence %d after %d (want in order, no duplicates)", p, i, d.seq, ds[p][i-1].seq)
			}
			v, err := strconv.Atoi(d.value)
			if err != nil {
				t.Fatalf("value %q", d.value)
			}
			if last, ok := lastByKey[d.key]; ok && v <= last {
				t.Fatalf("key %s: value %d after %d", d.key, v, last)
			}
			lastByKey[d.key] = v
			if d.attempt != 1 {
				t.Errorf("partition %d sequence %d delivered on attempt %d, want 1 (throttles consume no attempt)", p, d.seq, d.attempt)
			}
		}
		if len(ds[p]) != counts[p] {
			t.Errorf("partition %d: %d deliveries, want %d", p, len(ds[p]), counts[p])
		}
	}
	last := ds[throttled][len(ds[throttled])-1].at
	t.Logf("partition %d: first delivery %v after its first throttle, all %d messages %v after it; %d throttled tries",
		throttled, firstAt.Sub(start).Round(time.Millisecond), counts[throttled], last.Sub(start).Round(time.Millisecond), throttles)

	// Every partition consumer acknowledged everything.
	natsWaitUntil(ctx, t, 30*time.Second, "all partitions acknowledged", func() bool {
		for p := range partitions {
			c, err := js.Consumer(ctx, stream, s.ConsumerName(p))
			if err != nil {
				return false
			}
			info, err := c.Info(ctx)
			if err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
				return false
			}
		}
		return true
	})
	stop()
}

// TestNatsSourceHandover runs the source in two "processes" (two
// connections) on the real server: each partition is delivered by one of
// them; when one stops, the other takes its partitions over at once (the
// stopping one NAKs what it held and unpins), nothing lost, in order.
func TestNatsSourceHandover(t *testing.T) {
	t.Parallel()
	const partitions = 4
	_, js := newJetStream(t)
	stream, prefix := natsStreamName(t, js)
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	src := consumer.DefaultSourceConfig(consumer.ModeStream)
	src.Stream, src.Subject, src.Partitions, src.Function = stream, prefix+".*", partitions, "fn"
	src.BatchSize = 20

	type proc struct {
		fn   *natsThrottlingFunction
		s    *natssrc.Stream
		stop func()
	}
	start := func(name string) *proc {
		nc, _ := newJetStream(t)
		fn := &natsThrottlingFunction{partition: -1, deliveries: map[int32][]natsDelivery{}}
		s, err := natssrc.NewStream("clicks", nc, src, natssrc.StreamOptions{
			Worker: src.WorkerConfig("clicks"), Deliverer: fn, Logger: natsTestLogger().With("proc", name),
			AckWait: 2 * time.Second, ConsumerPrefix: "sluice-" + strings.ToLower(stream),
		})
		if err != nil {
			t.Fatal(err)
		}
		runCtx, cancelRun := context.WithCancel(ctx)
		errc := make(chan error, 1) // Run's one result
		go func() { errc <- s.Run(runCtx) }()
		stop := sync.OnceFunc(func() {
			cancelRun()
			if err := <-errc; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
		t.Cleanup(stop)
		return &proc{fn, s, stop}
	}
	publish := func(from, n int) {
		for i := from; i < from+n; i++ {
			if _, err := js.Publish(ctx, fmt.Sprintf("%s.key-%d", prefix, i%31), fmt.Appendf(nil, "%d", i)); err != nil {
				t.Fatal(err)
			}
		}
	}
	a := start("a")
	natsWaitUntil(ctx, t, 10*time.Second, "a's consumers", func() bool { return len(a.s.Statuses()) == partitions })
	b := start("b")
	publish(0, 1000)
	delivered := func() (n int) {
		for _, p := range []*proc{a, b} {
			_, _, ds := p.fn.snapshot()
			for _, d := range ds {
				n += len(d)
			}
		}
		return n
	}
	natsWaitUntil(ctx, t, 30*time.Second, "1000 delivered", func() bool { return delivered() >= 1000 })

	a.stop()
	stopped := time.Now()
	publish(1000, 1000)
	natsWaitUntil(ctx, t, 30*time.Second, "2000 delivered", func() bool { return delivered() >= 2000 })
	t.Logf("b delivered the rest %v after a stopped", time.Since(stopped).Round(time.Millisecond))

	_, _, da := a.fn.snapshot()
	_, _, db := b.fn.snapshot()
	seen := map[int64]int{}
	for p := range int32(partitions) {
		// Per partition: a's deliveries, then b's, form one ordered run
		// (b may repeat a's abandoned in-flight batch, nothing else).
		run := append(slices.Clone(da[p]), db[p]...)
		lastByKey := map[string]int{}
		for _, d := range run {
			seen[d.seq]++
			v, err := strconv.Atoi(d.value)
			if err != nil {
				t.Fatalf("value %q", d.value)
			}
			if last, ok := lastByKey[d.key]; ok && v < last {
				t.Fatalf("partition %d key %s: value %d after %d", p, d.key, v, last)
			}
			lastByKey[d.key] = v
		}
	}
	dups := 0
	for _, n := range seen {
		dups += n - 1
	}
	if len(seen) != 2000 {
		t.Fatalf("%d distinct messages delivered, want 2000", len(seen))
	}
	t.Logf("duplicates across the handover: %d", dups)
}

// TestNatsWriterAndEnsureStream checks the JetStream dead-letter plumbing on
// the real server: EnsureStream creates and reconciles limits, Writer
// appends with the stream's acknowledgement.
func TestNatsWriterAndEnsureStream(t *testing.T) {
	t.Parallel()
	nc, js := newJetStream(t)
	stream, prefix := natsStreamName(t, js)
	ctx := t.Context()
	created, changed, err := natssrc.EnsureStream(ctx, js, stream, []string{prefix + ".>"}, time.Hour, 1<<20)
	if err != nil || !created || len(changed) != 0 {
		t.Fatalf("create: created %v changed %v err %v", created, changed, err)
	}
	created, changed, err = natssrc.EnsureStream(ctx, js, stream, []string{prefix + ".>"}, 2*time.Hour, 0)
	if err != nil || created || len(changed) != 2 {
		t.Fatalf("reconcile: created %v changed %v err %v", created, changed, err)
	}
	w, err := natssrc.NewWriter(nc, stream, prefix)
	if err != nil {
		t.Fatal(err)
	}
	recs := []event.Record{
		{Key: []byte("id1"), Value: []byte(`{"a":1}`), Headers: []event.Header{{Key: "sluice-condition", Value: []byte("PermanentError")}}},
		{Key: []byte("id2"), Value: []byte(`{"a":2}`)},
	}
	if err := w.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(ctx, stream)
	m, err := st.GetLastMsgForSubject(ctx, prefix+".id1")
	if err != nil {
		t.Fatal(err)
	}
	if string(m.Data) != `{"a":1}` || m.Header.Get("sluice-condition") != "PermanentError" {
		t.Fatalf("stored %s %v", m.Data, m.Header)
	}
}
