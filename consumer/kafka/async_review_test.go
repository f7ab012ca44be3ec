package kafka

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// With starting_position latest, a retry partition that never had a commit
// (its first record is not due yet when the process stops) is still read
// from its start after a restart: its records are events whose source
// offsets were already committed, so starting it at its end would lose them.
func TestAsyncLatestKeepsUncommittedRetryRecords(t *testing.T) {
	seeds := newCluster(t, 1, "orders")
	cfg := asyncSourceConfig("orders", 2, time.Hour)
	cfg.StartingPosition = consumer.Latest
	cfg.RetryBackoff = consumer.Backoff{Initial: 2 * time.Second, Max: 2 * time.Second, Multiplier: 1}
	f := newAsyncFake(func(event.Record, int) event.Result { return fail500 })
	opts := testAsyncOpts(f, "g")
	opts.RetryTiers = []time.Duration{100 * time.Millisecond}
	a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, a)
	// latest: records written before the group found its start are
	// skipped, so write until one arrives.
	produced := 0
	waitFor(t, 20*time.Second, "a first event", func() bool {
		produce(t, seeds, "orders", 1, 1)
		produced++
		time.Sleep(100 * time.Millisecond)
		f.mu.Lock()
		defer f.mu.Unlock()
		return len(f.calls) > 0
	})
	waitFor(t, 10*time.Second, "source topic committed", func() bool {
		return committed(t, seeds, "g", "orders")[0] == int64(produced)
	})
	stop() // before any retry record is due: the retry partition has no commit
	f.mu.Lock()
	seen := map[int64]bool{} // offsets of the events invoked before the restart
	for off := range f.calls {
		seen[off] = true
	}
	f.mu.Unlock()

	b, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, b)
	waitFor(t, 20*time.Second, "every event seen before the restart dead-lettered", func() bool {
		return len(f.deadLetters()) >= len(seen)
	})
	// Exactly those events, once each, after all their attempts (the one
	// before the restart counts).
	dead := map[int64]bool{}
	for _, dl := range f.deadLetters() {
		off := dl.Record.Offset
		switch {
		case !seen[off]:
			t.Errorf("dead letter for offset %d, an event not invoked before the restart (invoked: %v)", off, seen)
		case dead[off]:
			t.Errorf("offset %d dead-lettered twice", off)
		case dl.Condition != event.RetryAttemptsExhausted || dl.Attempts != 3:
			t.Errorf("offset %d dead-lettered with %s after %d attempts, want RetryAttemptsExhausted after 3", off, dl.Condition, dl.Attempts)
		}
		dead[off] = true
	}
}

// While the first event of a partition is stuck (here: its invocation
// hangs), the events behind it finish but cannot be committed past it; the
// source must stop fetching once a bounded number of them is held, instead
// of reading the whole partition into memory.
func TestAsyncBoundsRecordsHeldBehindAStuckEvent(t *testing.T) {
	const n = 3000
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, n)
	release := make(chan struct{})
	f := newAsyncFake(func(rec event.Record, _ int) event.Result {
		if rec.Offset == 0 {
			<-release
		}
		return event.Result{Outcome: event.Delivered}
	})
	opts := testAsyncOpts(f, "g")
	opts.Concurrency = 4
	a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, asyncSourceConfig("orders", 2, time.Hour), opts)
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, a)
	waitFor(t, 10*time.Second, "events behind the stuck one handled", func() bool { return f.deliveredCount() > 10 })
	time.Sleep(2 * time.Second) // time to read much more, if nothing holds it back
	limit := unsettledPerSlot*opts.Concurrency + opts.Concurrency
	if got := f.deliveredCount(); got > limit {
		t.Errorf("%d events handled behind a stuck one, want at most %d (the rest must stay in Kafka)", got, limit)
	}
	close(release)
	waitFor(t, 20*time.Second, "source topic committed to its end", func() bool {
		return committed(t, seeds, "g", "orders")[0] == n
	})
	if got := f.deliveredCount(); got != n {
		t.Errorf("%d events delivered, want %d", got, n)
	}
}
