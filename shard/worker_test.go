package shard

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/event"
)

// fakeDeliverer records every delivery and answers with its script.
type fakeDeliverer struct {
	mu     sync.Mutex
	calls  []Delivery
	answer func(d Delivery, call int) event.Result
	got    []int64 // offsets delivered successfully, in order
}

func (f *fakeDeliverer) Deliver(ctx context.Context, d Delivery) event.Result {
	f.mu.Lock()
	f.calls = append(f.calls, Delivery{Records: slices.Clone(d.Records), Attempt: d.Attempt})
	n := len(f.calls)
	f.mu.Unlock()
	res := event.Result{Outcome: event.Delivered}
	if f.answer != nil {
		res = f.answer(d, n)
	}
	f.mu.Lock()
	switch res.Outcome {
	case event.Delivered:
		for _, r := range d.Records {
			f.got = append(f.got, r.Offset)
		}
	case event.Partial:
		for _, r := range d.Records[:res.FailedFrom] {
			f.got = append(f.got, r.Offset)
		}
	}
	f.mu.Unlock()
	return res
}

func (f *fakeDeliverer) delivered() []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.got)
}

// fakeDLQ stores dead letters, failing while fail is set.
type fakeDLQ struct {
	mu      sync.Mutex
	fail    bool
	tries   int
	letters []event.DeadLetter
	at      time.Time // when the last letters were stored
}

func (f *fakeDLQ) DeadLetter(_ context.Context, ls []event.DeadLetter) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tries++
	if f.fail {
		return errors.New("dead-letter topic unreachable")
	}
	f.letters = append(f.letters, ls...)
	f.at = time.Now()
	return nil
}

func (f *fakeDLQ) get() []event.DeadLetter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.letters)
}

// harness runs a Worker and records its commits and pauses.
type harness struct {
	w       *Worker
	d       *fakeDeliverer
	dlq     *fakeDLQ
	mu      sync.Mutex
	commits []int64
	pauses  []bool
	fulls   []bool
	cancel  context.CancelFunc
	done    chan struct{}
}

func startWorker(t *testing.T, cfg WorkerConfig, answer func(Delivery, int) event.Result) *harness {
	t.Helper()
	h := &harness{d: &fakeDeliverer{answer: answer}, dlq: &fakeDLQ{}, done: make(chan struct{})}
	if cfg.Backoff == (event.Backoff{}) {
		cfg.Backoff = event.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2}
	}
	if cfg.MaxRecordAge == 0 {
		cfg.MaxRecordAge = -1
	}
	if cfg.MaxRetryAttempts == 0 {
		cfg.MaxRetryAttempts = -1
	}
	cfg.Source, cfg.Function = "orders", "fn"
	h.w = NewWorker(ID{Source: "orders", Partition: 2}, cfg, Hooks{
		Deliverer: h.d, DeadLetterer: h.dlq, Logger: slog.New(slog.DiscardHandler),
		Commit: func(last event.Record) func() {
			h.mu.Lock()
			h.commits = append(h.commits, last.Offset)
			h.mu.Unlock()
			return nil
		},
		Pause: func(p bool) {
			h.mu.Lock()
			h.pauses = append(h.pauses, p)
			h.mu.Unlock()
		},
		Full: func(f bool) {
			h.mu.Lock()
			h.fulls = append(h.fulls, f)
			h.mu.Unlock()
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.w.Run(ctx); close(h.done) }()
	t.Cleanup(h.stop)
	return h
}

func (h *harness) stop() {
	h.cancel()
	<-h.done
}

func (h *harness) lastCommit() int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.commits) == 0 {
		return -1
	}
	return h.commits[len(h.commits)-1]
}

// records returns n records with offsets from, keys k0..k(keys-1).
func records(from, n, keys int, ts time.Time) []event.Record {
	out := make([]event.Record, n)
	for i := range out {
		off := int64(from + i)
		out[i] = event.Record{Topic: "orders", Partition: 2, Offset: off, Timestamp: ts,
			Key: fmt.Appendf(nil, "k%d", int(off)%max(keys, 1)), Value: fmt.Appendf(nil, "v%d", off)}
	}
	return out
}

func offsets(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(i)
	}
	return out
}

// waitUntil polls cond inside a synctest bubble, advancing fake time.
func waitUntil(t *testing.T, limit time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s", limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestWorkerDeliversInOrderAndCommits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 7}, nil)
		all := records(0, 100, 5, time.Now())
		for i := 0; i < len(all); i += 13 {
			h.w.Push(all[i:min(i+13, len(all))])
		}
		waitUntil(t, time.Minute, func() bool { return h.lastCommit() == 99 })
		if got := h.d.delivered(); !slices.Equal(got, offsets(100)) {
			t.Fatalf("delivered %v", got)
		}
		for _, c := range h.d.calls {
			if len(c.Records) > 7 {
				t.Fatalf("batch of %d > batch_size 7", len(c.Records))
			}
		}
		if !slices.IsSorted(h.commits) {
			t.Fatalf("commits out of order: %v", h.commits)
		}
		synctest.Wait()
		if st := h.w.Status(); st.State != StateIdle || st.Position != 100 || st.Delivered != 100 {
			t.Fatalf("status %+v", st)
		}
	})
}

func TestWorkerBatchingWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 10, BatchingWindow: 5 * time.Second}, nil)
		h.w.Push(records(0, 3, 1, time.Now()))
		time.Sleep(4 * time.Second)
		synctest.Wait()
		if n := len(h.d.calls); n != 0 {
			t.Fatalf("%d deliveries before the window closed", n)
		}
		h.w.Push(records(3, 2, 1, time.Now()))
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if len(h.d.calls) != 1 || len(h.d.calls[0].Records) != 5 {
			t.Fatalf("calls %+v, want one batch of 5 after the window", h.d.calls)
		}
		h.w.Push(records(5, 10, 1, time.Now())) // a full batch goes at once
		synctest.Wait()
		if len(h.d.calls) != 2 || len(h.d.calls[1].Records) != 10 {
			t.Fatalf("full batch not delivered at once: %d calls", len(h.d.calls))
		}
	})
}

func TestWorkerMaxBatchBytes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		recs := records(0, 20, 1, time.Now())
		for i := range recs {
			recs[i].Value = make([]byte, 3000)
		}
		recs[10].Value = make([]byte, 60000) // too large on its own
		h := startWorker(t, WorkerConfig{BatchSize: 100, MaxBatchBytes: 20000}, nil)
		h.w.Push(recs)
		waitUntil(t, time.Minute, func() bool { return h.lastCommit() == 19 })
		for _, c := range h.d.calls {
			var size int64
			for _, r := range c.Records {
				size += r.Size()
			}
			if size > 20000 {
				t.Fatalf("batch of %d bytes > 20000", size)
			}
		}
		dl := h.dlq.get()
		if len(dl) != 1 || dl[0].Condition != event.RecordTooLarge || dl[0].Record.Offset != 10 {
			t.Fatalf("dead letters %+v, want offset 10 RecordTooLarge", dl)
		}
		want := slices.DeleteFunc(offsets(20), func(o int64) bool { return o == 10 })
		if got := h.d.delivered(); !slices.Equal(got, want) {
			t.Fatalf("delivered %v", got)
		}
	})
}

func TestWorkerThrottleHoldsBatchWithoutAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		throttleUntil := time.Now().Add(5 * time.Second)
		h := startWorker(t, WorkerConfig{BatchSize: 10, MaxRetryAttempts: 0 + 1}, func(d Delivery, _ int) event.Result {
			if time.Now().Before(throttleUntil) {
				return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: time.Second}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 10, 1, time.Now()))
		time.Sleep(2 * time.Second)
		synctest.Wait()
		st := h.w.Status()
		if st.State != StateThrottled || st.Reason != "FunctionThrottled" {
			t.Fatalf("state %s (%s), want throttled", st.State, st.Reason)
		}
		h.mu.Lock()
		paused := slices.Clone(h.pauses)
		h.mu.Unlock()
		if !slices.Equal(paused, []bool{true}) {
			t.Fatalf("pauses %v, want the source paused while throttled", paused)
		}
		waitUntil(t, time.Minute, func() bool { return h.lastCommit() == 9 })
		for _, c := range h.d.calls {
			if c.Attempt != 1 {
				t.Fatalf("a throttled retry consumed an attempt: %+v", c.Attempt)
			}
			if c.Records[0].Offset != 0 {
				t.Fatal("a throttled batch was not retried whole")
			}
		}
		if len(h.d.calls) < 3 || len(h.dlq.get()) != 0 {
			t.Fatalf("%d calls, %d dead letters", len(h.d.calls), len(h.dlq.get()))
		}
		h.mu.Lock()
		defer h.mu.Unlock()
		if !slices.Equal(h.pauses, []bool{true, false}) {
			t.Fatalf("pauses %v, want resumed after the batch went through", h.pauses)
		}
	})
}

func TestWorkerPoisonRecordBisect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const poison = 37
		h := startWorker(t, WorkerConfig{BatchSize: 100, BisectOnError: true, MaxRetryAttempts: 2}, func(d Delivery, _ int) event.Result {
			for _, r := range d.Records {
				if r.Offset == poison {
					return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"}}
				}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 100, 3, time.Now()))
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 99 })
		dl := h.dlq.get()
		if len(dl) != 1 || dl[0].Record.Offset != poison || dl[0].Condition != event.RetryAttemptsExhausted {
			t.Fatalf("dead letters %+v, want only offset %d RetryAttemptsExhausted", dl, poison)
		}
		if dl[0].Attempts != 3 || dl[0].LastError.Status != 500 {
			t.Fatalf("dead letter attempts %d lastError %+v, want 3 attempts (1 + 2 retries), status 500", dl[0].Attempts, dl[0].LastError)
		}
		want := slices.DeleteFunc(offsets(100), func(o int64) bool { return o == poison })
		if got := h.d.delivered(); !slices.Equal(got, want) {
			t.Fatalf("delivered %v", got)
		}
		alone := 0
		for _, c := range h.d.calls {
			if len(c.Records) == 1 && c.Records[0].Offset == poison {
				alone++
			}
		}
		if alone != 3 {
			t.Fatalf("poison record invoked alone %d times, want 3", alone)
		}
	})
}

func TestWorkerRetryExhaustedWithoutBisect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 5, MaxRetryAttempts: 2}, func(d Delivery, _ int) event.Result {
			if d.Records[0].Offset < 5 {
				return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "timeout"}}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 10, 1, time.Now()))
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 9 })
		if got := len(h.dlq.get()); got != 5 {
			t.Fatalf("%d dead letters, want the 5 records of the failing batch", got)
		}
		attempts := []int{}
		for _, c := range h.d.calls {
			if c.Records[0].Offset == 0 {
				attempts = append(attempts, c.Attempt)
			}
		}
		if !slices.Equal(attempts, []int{1, 2, 3}) {
			t.Fatalf("attempts %v, want 1,2,3", attempts)
		}
	})
}

func TestWorkerPermanentError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 5}, func(d Delivery, _ int) event.Result {
			if d.Records[0].Offset == 0 {
				return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 400}}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 10, 1, time.Now()))
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 9 })
		dl := h.dlq.get()
		if len(dl) != 5 || dl[0].Condition != event.PermanentError || len(h.d.calls) != 2 {
			t.Fatalf("%d dead letters (%v), %d calls; want 5 PermanentError without retries", len(dl), dl[0].Condition, len(h.d.calls))
		}
	})
}

func TestWorkerMaxRecordAge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		start := time.Now()
		h := startWorker(t, WorkerConfig{BatchSize: 10, MaxRecordAge: time.Minute}, func(d Delivery, _ int) event.Result {
			if d.Records[0].Offset < 10 {
				return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled"}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 10, 1, start))
		h.w.Push(records(10, 5, 1, start.Add(50*time.Second)))
		time.Sleep(59 * time.Second)
		synctest.Wait()
		if n := len(h.dlq.get()); n != 0 || h.lastCommit() != -1 {
			t.Fatalf("before max age: %d dead letters, commit %d", n, h.lastCommit())
		}
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 14 })
		dl := h.dlq.get()
		if len(dl) != 10 || dl[0].Condition != event.RecordAgeExceeded || dl[0].Attempts != 0 {
			t.Fatalf("dead letters: %d, first %+v; want 10 RecordAgeExceeded with 0 attempts", len(dl), dl[0])
		}
		if since := h.dlq.at.Sub(start); since < time.Minute || since > 62*time.Second {
			t.Fatalf("dead-lettered %s after the records' time, want just after 60s", since)
		}
		if last := dl[0].LastAttemptAt.Sub(start); last > time.Minute {
			t.Fatalf("lastAttemptAt %s after the records' time, want the last throttled try before 60s", last)
		}
		if got := h.d.delivered(); !slices.Equal(got, []int64{10, 11, 12, 13, 14}) {
			t.Fatalf("delivered %v, want the shard to move on", got)
		}
	})
}

func TestWorkerPartialBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 10}, func(d Delivery, call int) event.Result {
			if call == 1 {
				return event.Result{Outcome: event.Partial, FailedFrom: 6, Error: event.ErrorInfo{Kind: "partial"}}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 10, 1, time.Now()))
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 9 })
		if len(h.d.calls) != 2 {
			t.Fatalf("%d calls, want 2", len(h.d.calls))
		}
		retry := h.d.calls[1]
		if retry.Records[0].Offset != 6 || len(retry.Records) != 4 || retry.Attempt != 2 {
			t.Fatalf("retry %+v, want offsets 6..9 as attempt 2", retry)
		}
		if got := h.d.delivered(); !slices.Equal(got, offsets(10)) {
			t.Fatalf("delivered %v", got)
		}
	})
}

func TestWorkerDeadLetterFailureBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 5}, func(d Delivery, _ int) event.Result {
			if d.Records[0].Offset == 5 {
				return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 422}}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.dlq.fail = true
		h.w.Push(records(0, 15, 1, time.Now()))
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if c := h.lastCommit(); c != 4 {
			t.Fatalf("commit %d while the dead-letter store is down, want 4", c)
		}
		st := h.w.Status()
		if st.State != StateBlocked || h.dlq.tries < 3 {
			t.Fatalf("state %s after %d tries, want blocked and retrying", st.State, h.dlq.tries)
		}
		if got := h.d.delivered(); !slices.Equal(got, offsets(5)) {
			t.Fatalf("delivered %v past the blocked batch", got)
		}
		h.dlq.mu.Lock()
		h.dlq.fail = false
		h.dlq.mu.Unlock()
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 14 })
		if len(h.dlq.get()) != 5 {
			t.Fatalf("%d dead letters, want 5", len(h.dlq.get()))
		}
	})
}

func TestWorkerParallelizationKeepsKeyOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var slowOnce sync.Once
		h := startWorker(t, WorkerConfig{BatchSize: 4, ParallelizationFactor: 4}, func(d Delivery, _ int) event.Result {
			for _, r := range d.Records {
				if string(r.Key) == "k0" {
					slowOnce.Do(func() { time.Sleep(10 * time.Second) })
				}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 200, 7, time.Now()))
		time.Sleep(5 * time.Second)
		synctest.Wait()
		// k0's lane is stuck on offset 0: nothing may be committed yet.
		if c := h.lastCommit(); c != -1 {
			t.Fatalf("committed %d past an unfinished record", c)
		}
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 199 })
		byKey := map[string][]int64{}
		for _, off := range h.d.delivered() {
			k := fmt.Sprintf("k%d", off%7)
			byKey[k] = append(byKey[k], off)
		}
		for k, offs := range byKey {
			if !slices.IsSorted(offs) {
				t.Fatalf("key %s out of order: %v", k, offs)
			}
		}
		if n := len(h.d.delivered()); n != 200 {
			t.Fatalf("delivered %d, want 200", n)
		}
		if !slices.IsSorted(h.commits) {
			t.Fatalf("commits out of order: %v", h.commits)
		}
	})
}

func TestWorkerBufferPausesSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		h := startWorker(t, WorkerConfig{BatchSize: 10, Buffer: 50}, func(Delivery, int) event.Result {
			<-release
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 30, 1, time.Now()))
		synctest.Wait()
		h.mu.Lock()
		if len(h.pauses) != 0 {
			t.Fatalf("paused at 30 buffered records: %v", h.pauses)
		}
		h.mu.Unlock()
		h.w.Push(records(30, 30, 1, time.Now()))
		synctest.Wait()
		h.mu.Lock()
		if !slices.Equal(h.pauses, []bool{true}) {
			t.Fatalf("pauses %v, want paused at 60 buffered", h.pauses)
		}
		h.mu.Unlock()
		close(release)
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 59 })
		h.mu.Lock()
		defer h.mu.Unlock()
		if !slices.Equal(h.pauses, []bool{true, false}) {
			t.Fatalf("pauses %v, want resumed", h.pauses)
		}
	})
}

func TestWorkerStopsWithoutCommittingInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 5}, func(d Delivery, _ int) event.Result {
			if d.Records[0].Offset >= 5 {
				return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 503}}
			}
			return event.Result{Outcome: event.Delivered}
		})
		h.w.Push(records(0, 10, 1, time.Now()))
		time.Sleep(10 * time.Second)
		h.stop()
		if c := h.lastCommit(); c != 4 {
			t.Fatalf("commit %d, want 4: the failing batch must stay uncommitted", c)
		}
	})
}

// A shard bounded by BufferBytes pauses on the estimated size of what it
// holds, whatever the count, and resumes only once it drained to half.
func TestWorkerBufferBytesPausesWithHysteresis(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		recSize := records(0, 1, 1, time.Now())[0].Size()
		gate := make(chan struct{})
		h := startWorker(t, WorkerConfig{BatchSize: 10, Buffer: 1 << 20, BufferBytes: 40 * recSize},
			func(Delivery, int) event.Result {
				<-gate
				return event.Result{Outcome: event.Delivered}
			})
		pauses := func() []bool {
			h.mu.Lock()
			defer h.mu.Unlock()
			return slices.Clone(h.pauses)
		}
		h.w.Push(records(0, 39, 1, time.Now()))
		synctest.Wait()
		if p := pauses(); len(p) != 0 {
			t.Fatalf("paused below BufferBytes: %v", p)
		}
		h.w.Push(records(39, 1, 1, time.Now()))
		synctest.Wait()
		if p := pauses(); !slices.Equal(p, []bool{true}) {
			t.Fatalf("pauses %v, want paused at BufferBytes", p)
		}
		// 40 held; each batch of 10 that finishes frees 10. At 30 and 30
		// (one batch delivered, the next in flight) the shard is below the
		// bound but above half: still paused.
		gate <- struct{}{}
		synctest.Wait()
		if p := pauses(); !slices.Equal(p, []bool{true}) {
			t.Fatalf("pauses %v after draining to 30 of 40: want still paused (resume at half)", p)
		}
		gate <- struct{}{} // 20 held: half
		synctest.Wait()
		if p := pauses(); !slices.Equal(p, []bool{true, false}) {
			t.Fatalf("pauses %v after draining to half: want resumed", p)
		}
		close(gate)
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 39 })
	})
}

// A shard is full (Hooks.Full) at a quarter of its bounds and not full
// again only once it drained to an eighth, and Full asks for no pause: a
// Kafka source stops polling while every shard is full, and pausing (which
// drops what was fetched) stays at the whole bound.
func TestWorkerFullAtAQuarterWithHysteresis(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		recSize := records(0, 1, 1, time.Now())[0].Size()
		gate := make(chan struct{})
		h := startWorker(t, WorkerConfig{BatchSize: 10, Buffer: 1 << 20, BufferBytes: 160 * recSize},
			func(Delivery, int) event.Result {
				<-gate
				return event.Result{Outcome: event.Delivered}
			})
		hooks := func() (fulls, pauses []bool) {
			h.mu.Lock()
			defer h.mu.Unlock()
			return slices.Clone(h.fulls), slices.Clone(h.pauses)
		}
		h.w.Push(records(0, 39, 1, time.Now()))
		synctest.Wait()
		if f, _ := hooks(); len(f) != 0 {
			t.Fatalf("full below a quarter of BufferBytes: %v", f)
		}
		h.w.Push(records(39, 1, 1, time.Now()))
		synctest.Wait()
		if f, p := hooks(); !slices.Equal(f, []bool{true}) || len(p) != 0 {
			t.Fatalf("at a quarter: fulls %v, pauses %v; want full, no pause", f, p)
		}
		gate <- struct{}{} // 30 held (one batch in flight): above an eighth
		synctest.Wait()
		if f, _ := hooks(); !slices.Equal(f, []bool{true}) {
			t.Fatalf("fulls %v after draining to 30 of 160: want still full", f)
		}
		gate <- struct{}{} // 20 held: an eighth
		synctest.Wait()
		if f, _ := hooks(); !slices.Equal(f, []bool{true, false}) {
			t.Fatalf("fulls %v after draining to an eighth: want not full", f)
		}
		// Over the whole bound it is full and paused.
		h.w.Push(records(40, 140, 1, time.Now()))
		synctest.Wait()
		if f, p := hooks(); !slices.Equal(f, []bool{true, false, true}) || !slices.Equal(p, []bool{true}) {
			t.Fatalf("at 160 of 160: fulls %v, pauses %v; want full and paused", f, p)
		}
		close(gate)
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == 179 })
		if f, p := hooks(); !slices.Equal(f, []bool{true, false, true, false}) || !slices.Equal(p, []bool{true, false}) {
			t.Fatalf("drained: fulls %v, pauses %v; want neither", f, p)
		}
	})
}

// Batches taken from pushes of every shape keep offset order and content,
// and a Deliverer that appends to its batch cannot overwrite the records
// after it (take hands out sub-slices of what was pushed).
func TestWorkerTakeAcrossPushes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 7}, func(d Delivery, _ int) event.Result {
			_ = append(d.Records, event.Record{Offset: -1}) // a careless Deliverer
			return event.Result{Outcome: event.Delivered}
		})
		off := 0
		for _, n := range []int{1, 1, 3, 20, 2, 1, 50, 6} {
			h.w.Push(records(off, n, 3, time.Now()))
			off += n
		}
		waitUntil(t, time.Hour, func() bool { return h.lastCommit() == int64(off-1) })
		got := h.d.delivered()
		if len(got) != off {
			t.Fatalf("delivered %d records, want %d", len(got), off)
		}
		for i, o := range got {
			if o != int64(i) {
				t.Fatalf("delivery %d has offset %d: %v", i, o, got)
			}
		}
		h.d.mu.Lock()
		defer h.d.mu.Unlock()
		for _, c := range h.d.calls {
			if len(c.Records) > 7 {
				t.Fatalf("batch of %d records, BatchSize 7", len(c.Records))
			}
		}
		if st := h.w.Status(); st.Buffered != 0 {
			t.Fatalf("status buffered %d after all committed", st.Buffered)
		}
	})
}

// TestCommitWaitDoesNotBlockOtherLanes: a lane waiting on its commit (the
// Commit hook's wait) holds no lock of the worker, so the shard's other
// lane keeps delivering and checkpointing meanwhile, in offset order.
func TestCommitWaitDoesNotBlockOtherLanes(t *testing.T) {
	// Two keys on different lanes: record 0 has key a, the others key b.
	a, b := []byte("a"), []byte("b")
	for laneOf(b, 2) == laneOf(a, 2) {
		b = append(b, 'b')
	}
	recs := records(0, 20, 1, time.Now())
	recs[0].Key = a
	for i := range recs[1:] {
		recs[i+1].Key = b
	}
	var (
		mu      sync.Mutex
		commits []int64
		held    = make(chan struct{})
		release = make(chan struct{})
	)
	d := &fakeDeliverer{}
	w := NewWorker(ID{Source: "orders", Partition: 2}, WorkerConfig{
		Source: "orders", Function: "fn", BatchSize: 1, ParallelizationFactor: 2, MaxRetryAttempts: -1,
	}, Hooks{
		Deliverer: d, Logger: slog.New(slog.DiscardHandler),
		Commit: func(last event.Record) func() {
			mu.Lock()
			commits = append(commits, last.Offset)
			first := len(commits) == 1
			mu.Unlock()
			if !first {
				return nil
			}
			return func() { close(held); <-release }
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	defer close(release)

	w.Push(recs)
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("no commit")
	}
	// The first checkpoint's lane waits on its commit; the other lane
	// delivers the rest and checkpoints it to the end meanwhile.
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		got := slices.Clone(commits)
		mu.Unlock()
		if got[len(got)-1] == 19 {
			if !slices.IsSorted(got) {
				t.Errorf("checkpoints not in offset order: %v", got)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("one lane waits on its commit and the other is stuck: checkpoints %v, delivered %v", got, d.delivered())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRouterKeepsFullBatches: with records waiting, lanes get batches of
// batch_size, not the remainders of splitting each take by key.
func TestRouterKeepsFullBatches(t *testing.T) {
	h := startWorker(t, WorkerConfig{BatchSize: 100, ParallelizationFactor: 2}, nil)
	const n = 2000
	h.w.Push(records(0, n, 37, time.Now()))
	deadline := time.Now().Add(20 * time.Second)
	for len(h.d.delivered()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("delivered %d of %d", len(h.d.delivered()), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	h.d.mu.Lock()
	calls := len(h.d.calls)
	h.d.mu.Unlock()
	// 2000 records in batches of 100: 20 calls, plus at most one short
	// batch per lane at the end.
	if calls > n/100+2 {
		t.Errorf("%d calls for %d records in batches of 100, want at most %d", calls, n, n/100+2)
	}
}

// TestLaneOfIsFNV1a: the inline hash spreads keys over lanes exactly as
// hash/fnv's 32-bit FNV-1a did, so a key keeps its lane across versions.
func TestLaneOfIsFNV1a(t *testing.T) {
	for _, key := range [][]byte{nil, {}, []byte("a"), []byte("tenant-42"), {0, 0xff, '\n'}, bytes.Repeat([]byte("k"), 300)} {
		h := fnv.New32a()
		_, _ = h.Write(key)
		for _, n := range []int{1, 2, 3, 10} {
			if got, want := laneOf(key, n), int(h.Sum32()%uint32(n)); got != want {
				t.Errorf("laneOf(%q, %d) = %d, want %d", key, n, got, want)
			}
		}
	}
}

// TestRouterDoesNotQueueShortBatches: records that trickle in while a lane
// delivers wait for that lane to be free and go in one batch, as with one
// lane; a short batch is never queued behind a busy lane (which sent the
// few records of each small push as their own call).
func TestRouterDoesNotQueueShortBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := startWorker(t, WorkerConfig{BatchSize: 100, ParallelizationFactor: 2}, func(Delivery, int) event.Result {
			time.Sleep(time.Second)
			return event.Result{Outcome: event.Delivered}
		})
		const pushes, each = 10, 10
		for i := range pushes {
			h.w.Push(records(i*each, each, 10, time.Now()))
			time.Sleep(100 * time.Millisecond)
			synctest.Wait()
		}
		waitUntil(t, time.Hour, func() bool { return len(h.d.delivered()) == pushes*each })
		h.d.mu.Lock()
		defer h.d.mu.Unlock()
		// The first push goes to both lanes at once (they are idle); the
		// other nine pushes arrive while both deliver, and go when each
		// lane is free: one call more per lane.
		if len(h.d.calls) > 4 {
			var sizes []int
			for _, c := range h.d.calls {
				sizes = append(sizes, len(c.Records))
			}
			t.Errorf("%d calls of %v records, want at most 4 (a lane's records wait for it while it is busy)", len(h.d.calls), sizes)
		}
	})
}
