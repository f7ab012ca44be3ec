package nats

import (
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// TestStreamShortPauseSendsNoKeepAlive: a partition paused because its
// worker's buffer is full must not send its pin-renewing pull at once, even
// when a stale resume signal wakes its fetch loop. That pull is never cut
// short, and while the server has nothing it may deliver (the partition
// holds MaxAckPending messages, or the stream is drained) it waits out its
// expiry (up to a second), so a resume that comes meanwhile waits for it.
// Sent on every stale wake-up, it cost a busy partition up to a second a
// buffer (the benchmark ran at 0.7-0.8 of a bare Fetch loop; 1.0 since).
// The keep-alive is due only once a pause lasted FetchWait since the last
// pull; until then the server sees no waiting pull of the partition.
func TestStreamShortPauseSendsNoKeepAlive(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	src := streamSource("PAUSES", "pauses", 1)
	release := make(chan struct{})
	d := &fakeDeliverer{answer: func(shard.Delivery) event.Result {
		<-release // the function is busy until the test says
		return event.Result{Outcome: event.Delivered}
	}}
	o := fastStream(d, nil, src)
	o.Worker.Buffer = 2 * src.BatchSize
	o.AckWait, o.PinnedTTL, o.FetchWait = 10*time.Second, 20*time.Second, 4*time.Second
	s, err := NewStream("pauses", nc, src, o)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Exactly a buffer's worth: the worker pauses the partition, and the
	// server has nothing more for it (a keep-alive pull would wait).
	publishKeys(t, js, "pauses", 0, o.Worker.Buffer, 3)
	runSource(t, s.Run)
	unblock := sync.OnceFunc(func() { close(release) })
	t.Cleanup(unblock) // before runSource's stop: a blocked delivery would hold it up
	waitFor(t, 10*time.Second, "the partition paused with a full buffer", func() bool {
		s.mu.Lock()
		parts := s.parts
		s.mu.Unlock()
		return len(parts) == 1 && parts[0].isPaused()
	})
	// A resume signal that is stale by now (the worker resumed and paused
	// again while the fetch loop was busy pulling, so the signal waited in
	// the channel) must not count as a resume, nor send the keep-alive
	// early: well within FetchWait of the pause, no pull request may be
	// waiting.
	s.mu.Lock()
	pt := s.parts[0]
	s.mu.Unlock()
	select {
	case pt.resume <- struct{}{}:
	default:
	}
	pausedAt := time.Now()
	for time.Since(pausedAt) < time.Second {
		if info := consumerInfo(t, js, "PAUSES", s.ConsumerName(0)); info.NumWaiting != 0 {
			t.Fatalf("%s after the pause, %d pull requests wait on the paused partition; want none before FetchWait (%s)",
				time.Since(pausedAt).Round(time.Millisecond), info.NumWaiting, o.FetchWait)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// A resume restarts pulling at once: what is published now is
	// delivered right after the held buffer.
	unblock()
	publishKeys(t, js, "pauses", o.Worker.Buffer, 10, 3)
	waitFor(t, 10*time.Second, "everything delivered", func() bool { return d.count() == o.Worker.Buffer+10 })
	checkOrder(t, d.delivered())
}
