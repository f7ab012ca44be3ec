package shard

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/event"
)

// ctxDeliverer is a Deliverer that, like a real one, runs its invocation
// under the ctx it is given: an invocation taking run(d) is cut short if
// ctx ends first (and then reports a timeout, as the dispatcher would).
type ctxDeliverer struct {
	run func(d Delivery, call int) (time.Duration, event.Result)

	mu    sync.Mutex
	calls []expiryCall
}

type expiryCall struct {
	at        time.Time
	offsets   []int64
	stamps    []time.Time
	attempt   int
	waitUntil time.Time
	cut       bool // ctx ended while the invocation ran
}

func (c *ctxDeliverer) Deliver(ctx context.Context, d Delivery) event.Result {
	call := expiryCall{at: time.Now(), attempt: d.Attempt, waitUntil: d.WaitUntil}
	for _, r := range d.Records {
		call.offsets = append(call.offsets, r.Offset)
		call.stamps = append(call.stamps, r.Timestamp)
	}
	c.mu.Lock()
	n := len(c.calls) + 1
	c.mu.Unlock()
	took, res := c.run(d, n)
	t := time.NewTimer(took)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		call.cut = true
		res = event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "timeout", Message: "cut short"}}
	}
	c.mu.Lock()
	c.calls = append(c.calls, call)
	c.mu.Unlock()
	return res
}

func (c *ctxDeliverer) get() []expiryCall {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.calls)
}

func startExpiryWorker(t *testing.T, maxAttempts int, d *ctxDeliverer) (*Worker, *fakeDLQ, func() int64) {
	t.Helper()
	dlq := &fakeDLQ{}
	var (
		mu   sync.Mutex
		last int64 = -1
	)
	w := NewWorker(ID{Source: "orders", Partition: 2}, WorkerConfig{
		Source: "orders", Function: "fn", BatchSize: 10, MaxRecordAge: time.Minute, MaxRetryAttempts: maxAttempts,
		Backoff: event.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2},
	}, Hooks{
		Deliverer: d, DeadLetterer: dlq, Logger: slog.New(slog.DiscardHandler),
		Commit: func(r event.Record) func() { mu.Lock(); last = r.Offset; mu.Unlock(); return nil },
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return w, dlq, func() int64 { mu.Lock(); defer mu.Unlock(); return last }
}

// An invocation that runs past its records' max_record_age is not cut
// short: it completes and counts as delivered (Lambda never stops a running
// invocation because a record aged). The age bounds only the wait for a
// slot, which the Delivery carries on its own.
func TestWorkerInvocationOutlivesRecordAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		stamp := start.Add(-50 * time.Second) // 10 s left
		d := &ctxDeliverer{run: func(Delivery, int) (time.Duration, event.Result) {
			return 20 * time.Second, event.Result{Outcome: event.Delivered}
		}}
		w, dlq, last := startExpiryWorker(t, 2, d)
		w.Push(records(0, 3, 1, stamp))
		waitUntil(t, time.Hour, func() bool { return last() == 2 })
		calls := d.get()
		if len(calls) != 1 || calls[0].cut || calls[0].attempt != 1 {
			t.Fatalf("calls %+v, want one attempt that ran to its end", calls)
		}
		if want := stamp.Add(time.Minute); !calls[0].waitUntil.Equal(want) {
			t.Errorf("Delivery.WaitUntil = %s, want the oldest record's expiry %s", calls[0].waitUntil, want)
		}
		if dl := dlq.get(); len(dl) != 0 {
			t.Errorf("%d dead letters (first %s), want none: the function answered", len(dl), dl[0].Condition)
		}
		if s := w.Status(); s.Delivered != 3 || s.DeadLetters != 0 {
			t.Errorf("status delivered %d, dead letters %d; want 3, 0", s.Delivered, s.DeadLetters)
		}
	})
}

// After a failed attempt, records that passed max_record_age meanwhile are
// dead-lettered before the next attempt and never sent again; the records
// still young enough are retried alone.
func TestWorkerNoRetryPastRecordAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		old, young := start.Add(-50*time.Second), start.Add(-30*time.Second)
		d := &ctxDeliverer{run: func(_ Delivery, call int) (time.Duration, event.Result) {
			if call == 1 {
				return 20 * time.Second, event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"}}
			}
			return time.Second, event.Result{Outcome: event.Delivered}
		}}
		w, dlq, last := startExpiryWorker(t, 2, d)
		w.Push(append(records(0, 3, 1, old), records(3, 2, 1, young)...))
		waitUntil(t, time.Hour, func() bool { return last() == 4 })

		calls := d.get()
		if len(calls) != 2 {
			t.Fatalf("%d calls %+v, want 2 (the failed one, then the young records' retry)", len(calls), calls)
		}
		for i, c := range calls {
			if c.cut {
				t.Errorf("call %d was cut short", i+1)
			}
			for j, s := range c.stamps {
				if !c.at.Before(s.Add(time.Minute)) {
					t.Errorf("call %d (attempt %d) sent record %d at age %s, past max_record_age", i+1, c.attempt, c.offsets[j], c.at.Sub(s))
				}
			}
		}
		if got := calls[1]; !slices.Equal(got.offsets, []int64{3, 4}) || got.attempt != 2 {
			t.Errorf("retry %v as attempt %d, want [3 4] as attempt 2", got.offsets, got.attempt)
		}
		dl := dlq.get()
		if len(dl) != 3 {
			t.Fatalf("%d dead letters, want the 3 old records", len(dl))
		}
		for _, l := range dl {
			if l.Condition != event.RecordAgeExceeded || l.Attempts != 1 || l.LastError.Status != 500 || l.Record.Offset > 2 {
				t.Errorf("dead letter of %d: %s after %d attempts, last error %+v; want RecordAgeExceeded after 1, the 500",
					l.Record.Offset, l.Condition, l.Attempts, l.LastError)
			}
		}
		if at := dlq.at.Sub(start); at != 20*time.Second {
			t.Errorf("dead-lettered %s after the start, want at once after the failed attempt (20s)", at)
		}
	})
}
