package nats

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// startServer starts an embedded nats-server on a free port with its store
// in a temporary directory, stopped when the test ends.
func startServer(t testing.TB) *Embedded {
	t.Helper()
	e, err := StartEmbedded(t.TempDir(), WithPort(-1), WithEmbeddedLogger(testLogger()))
	if err != nil {
		t.Fatalf("StartEmbedded: %v", err)
	}
	t.Cleanup(e.Shutdown)
	return e
}

// connect opens a connection to url, closed when the test ends.
func connect(t testing.TB, url string) (*natsgo.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := natsgo.Connect(url, natsgo.Name("sluice-test"))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return nc, js
}

func testLogger() *slog.Logger {
	if os.Getenv("SLUICE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// waitFor polls cond every 20ms until it holds or limit passes.
func waitFor(t testing.TB, limit time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", limit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// runSource runs src.Run in the background; the returned stop cancels it
// and waits for Run to return (also at the end of the test).
func runSource(t testing.TB, run func(context.Context) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1) // Run's one result
	go func() { done <- run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// fakeDeliverer records stream deliveries and answers with answer (nil:
// Delivered).
type fakeDeliverer struct {
	mu     sync.Mutex
	answer func(d shard.Delivery) event.Result
	calls  []shard.Delivery
	got    map[int32][]event.Record // delivered records by partition, in delivery order
}

func (f *fakeDeliverer) Deliver(ctx context.Context, d shard.Delivery) event.Result {
	f.mu.Lock()
	f.calls = append(f.calls, shard.Delivery{Shard: d.Shard, Records: slices.Clone(d.Records), Attempt: d.Attempt})
	answer := f.answer
	f.mu.Unlock()
	res := event.Result{Outcome: event.Delivered}
	if answer != nil {
		res = answer(d)
	}
	if res.Outcome == event.Delivered {
		f.mu.Lock()
		if f.got == nil {
			f.got = map[int32][]event.Record{}
		}
		f.got[d.Shard.Partition] = append(f.got[d.Shard.Partition], d.Records...)
		f.mu.Unlock()
	}
	return res
}

func (f *fakeDeliverer) delivered() map[int32][]event.Record {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[int32][]event.Record, len(f.got))
	for p, rs := range f.got {
		out[p] = slices.Clone(rs)
	}
	return out
}

func (f *fakeDeliverer) count() int {
	n := 0
	for _, rs := range f.delivered() {
		n += len(rs)
	}
	return n
}

// fakeDLQ stores dead letters, failing while fail is set.
type fakeDLQ struct {
	mu      sync.Mutex
	fail    bool
	letters []event.DeadLetter
}

func (f *fakeDLQ) DeadLetter(_ context.Context, ls []event.DeadLetter) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail {
		return errors.New("dead-letter store down")
	}
	f.letters = append(f.letters, ls...)
	return nil
}

func (f *fakeDLQ) get() []event.DeadLetter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.letters)
}

// streamSource returns a stream-mode source config over "<prefix>.*".
func streamSource(stream, prefix string, partitions int) consumer.SourceConfig {
	c := consumer.DefaultSourceConfig(consumer.ModeStream)
	c.Stream, c.Subject, c.Partitions, c.Function = stream, prefix+".*", partitions, "fn"
	c.BatchSize = 10
	c.RetryBackoff = consumer.Backoff{Initial: 50 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 2}
	return c
}

// fastStream is StreamOptions with short timings for tests.
func fastStream(d shard.Deliverer, dlq event.DeadLetterer, src consumer.SourceConfig) StreamOptions {
	o := StreamOptions{
		Worker:      src.WorkerConfig("clicks"),
		Deliverer:   d,
		Logger:      testLogger(),
		AckWait:     2 * time.Second,
		PinnedTTL:   4 * time.Second,
		FetchWait:   500 * time.Millisecond,
		InfoRefresh: 200 * time.Millisecond,
	}
	if dlq != nil {
		o.DeadLetterer = dlq
	}
	return o
}

// publishKeys publishes n messages "<prefix>.<key>" with keys k0..k(keys-1)
// round robin and values "v<i>", waiting for each ack.
func publishKeys(t testing.TB, js jetstream.JetStream, prefix string, from, n, keys int) {
	t.Helper()
	ctx := context.Background()
	for i := from; i < from+n; i++ {
		msg := &natsgo.Msg{
			Subject: prefix + ".k" + itoa(i%keys),
			Data:    []byte("v" + itoa(i)),
			Header:  natsgo.Header{"tenant": {"t" + itoa(i%keys)}},
		}
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish: %v", err)
		}
	}
}

func itoa(i int) string { return string(appendInt(nil, i)) }

func appendInt(b []byte, i int) []byte {
	if i >= 10 {
		b = appendInt(b, i/10)
	}
	return append(b, byte('0'+i%10))
}

// consumerInfo returns the info of a stream's consumer.
func consumerInfo(t testing.TB, js jetstream.JetStream, stream, name string) *jetstream.ConsumerInfo {
	t.Helper()
	c, err := js.Consumer(context.Background(), stream, name)
	if err != nil {
		t.Fatalf("consumer %s: %v", name, err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatalf("consumer %s info: %v", name, err)
	}
	return info
}

func natsgoConnect(url string) (*natsgo.Conn, error) {
	return natsgo.Connect(url, natsgo.Name("sluice-test"), natsgo.NoReconnect())
}
