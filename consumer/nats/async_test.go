package nats

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// asyncCall is one invocation an asyncRecorder saw.
type asyncCall struct {
	value   string
	attempt int
	at      time.Time
}

// asyncRecorder is an AsyncDeliverer that records its calls and answers
// with answer(value, n) where n counts the calls for that value.
type asyncRecorder struct {
	mu     sync.Mutex
	calls  []asyncCall
	n      map[string]int
	answer func(value string, n int) event.Result
	active atomic.Int32
	peak   atomic.Int32
	hold   time.Duration
}

func (r *asyncRecorder) Deliver(ctx context.Context, rec event.Record, attempt int, _ time.Time) event.Result {
	cur := r.active.Add(1)
	defer r.active.Add(-1)
	for {
		p := r.peak.Load()
		if cur <= p || r.peak.CompareAndSwap(p, cur) {
			break
		}
	}
	r.mu.Lock()
	if r.n == nil {
		r.n = map[string]int{}
	}
	v := string(rec.Value)
	r.n[v]++
	n := r.n[v]
	r.calls = append(r.calls, asyncCall{value: v, attempt: attempt, at: time.Now()})
	answer := r.answer
	r.mu.Unlock()
	if r.hold > 0 {
		sleep(ctx, r.hold)
	}
	if answer == nil {
		return event.Result{Outcome: event.Delivered}
	}
	return answer(v, n)
}

func (r *asyncRecorder) callsOf(v string) []asyncCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []asyncCall
	for _, c := range r.calls {
		if c.value == v {
			out = append(out, c)
		}
	}
	return out
}

func asyncSource(maxAttempts int, maxAge time.Duration) consumer.SourceConfig {
	c := consumer.DefaultSourceConfig(consumer.ModeAsync)
	c.Stream, c.Subject, c.Function = "SIGNUPS", "signups.>", "fn"
	c.MaxRetryAttempts, c.MaxEventAge = maxAttempts, maxAge
	c.RetryBackoff = consumer.Backoff{Initial: 100 * time.Millisecond, Max: time.Second, Multiplier: 2}
	return c
}

func fastAsync(d consumer.AsyncDeliverer, dlq event.DeadLetterer) AsyncOptions {
	o := AsyncOptions{Deliverer: d, Logger: testLogger(), AckWait: 2 * time.Second, FetchWait: 300 * time.Millisecond, Concurrency: 8}
	if dlq != nil {
		o.DeadLetterer = dlq
	}
	return o
}

func newAsync(t testing.TB, url string, src consumer.SourceConfig, opts AsyncOptions) *Async {
	t.Helper()
	nc, _ := connect(t, url)
	a, err := NewAsync("signups", nc, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	return a
}

func publish(t testing.TB, js jetstream.JetStream, subject string, values ...string) {
	t.Helper()
	for _, v := range values {
		if _, err := js.Publish(context.Background(), subject, []byte(v)); err != nil {
			t.Fatal(err)
		}
	}
}

// settled waits until the async consumer has nothing pending.
func settled(t testing.TB, js jetstream.JetStream) {
	t.Helper()
	waitFor(t, 10*time.Second, "the async consumer settled", func() bool {
		info := consumerInfo(t, js, "SIGNUPS", "sluice-signups")
		return info.NumPending == 0 && info.NumAckPending == 0
	})
}

var failed500 = event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"}}

func TestAsyncDeliversWithBoundedConcurrency(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{hold: 50 * time.Millisecond}
	opts := fastAsync(r, nil)
	opts.Concurrency = 5
	a := newAsync(t, e.ClientURL(), asyncSource(2, time.Minute), opts)
	for i := range 60 {
		publish(t, js, "signups.u"+strconv.Itoa(i), "e"+strconv.Itoa(i))
	}
	runSource(t, a.Run)
	waitFor(t, 20*time.Second, "60 events", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.calls) == 60
	})
	settled(t, js)
	if p := r.peak.Load(); p > 5 || p < 2 {
		t.Fatalf("peak concurrency %d, want 2..5 (Concurrency 5)", p)
	}
	for _, c := range r.calls {
		if c.attempt != 1 {
			t.Fatalf("attempt %d for a first delivery", c.attempt)
		}
	}
}

func TestAsyncRetriesThenDeadLetters(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{answer: func(string, int) event.Result { return failed500 }}
	dlq := &fakeDLQ{}
	a := newAsync(t, e.ClientURL(), asyncSource(2, time.Minute), fastAsync(r, dlq))
	publish(t, js, "signups.eu.u1", "e1")
	runSource(t, a.Run)
	waitFor(t, 10*time.Second, "a dead letter", func() bool { return len(dlq.get()) == 1 })
	calls := r.callsOf("e1")
	if len(calls) != 3 {
		t.Fatalf("invoked %d times, want 3 (1 + max_retry_attempts 2)", len(calls))
	}
	for i, c := range calls {
		if c.attempt != i+1 {
			t.Fatalf("call %d has attempt %d", i, c.attempt)
		}
	}
	// Backoff 100ms then 200ms (no jitter): growing delays.
	d1, d2 := calls[1].at.Sub(calls[0].at), calls[2].at.Sub(calls[1].at)
	if d1 < 90*time.Millisecond || d2 < 190*time.Millisecond || d2 <= d1 {
		t.Fatalf("delays %s then %s, want about 100ms then 200ms", d1, d2)
	}
	dl := dlq.get()[0]
	if dl.Condition != event.RetryAttemptsExhausted || dl.Attempts != 3 || dl.LastError.Status != 500 ||
		dl.Mode != "async" || dl.Source != "signups" || dl.Function != "fn" || string(dl.Record.Value) != "e1" ||
		dl.Record.Subject != "signups.eu.u1" || dl.Record.Topic != "SIGNUPS" || dl.FirstAttemptAt.After(dl.LastAttemptAt) {
		t.Fatalf("dead letter %+v", dl)
	}
	if got := dl.LastAttemptAt.Sub(dl.FirstAttemptAt); got < 250*time.Millisecond {
		t.Fatalf("first to last attempt %s, want the whole retry window", got)
	}
	// Settled: nothing pending, nothing unacknowledged; no invocation can
	// follow (a message not terminated would be pending or redelivered).
	settled(t, js)
	if n := len(r.callsOf("e1")); n != 3 {
		t.Fatalf("invoked %d times after the dead letter: the event was not terminated", n)
	}
	// The retry state is gone with the event.
	kv, err := js.KeyValue(t.Context(), "sluice-async-signups")
	if err != nil {
		t.Fatal(err)
	}
	if keys, _ := kv.ListKeys(t.Context()); keys != nil {
		var left []string
		for k := range keys.Keys() {
			left = append(left, k)
		}
		if len(left) != 0 {
			t.Fatalf("retry state left: %v", left)
		}
	}
}

func TestAsyncThrottlesDoNotConsumeAttempts(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{answer: func(_ string, n int) event.Result {
		if n <= 4 {
			return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: 50 * time.Millisecond,
				Error: event.ErrorInfo{Kind: "throttled", Status: 429}}
		}
		return failed500
	}}
	dlq := &fakeDLQ{}
	src := asyncSource(2, time.Minute)
	src.RetryBackoff.Max = 200 * time.Millisecond
	a := newAsync(t, e.ClientURL(), src, fastAsync(r, dlq))
	publish(t, js, "signups.u1", "e1")
	runSource(t, a.Run)
	waitFor(t, 15*time.Second, "a dead letter", func() bool { return len(dlq.get()) == 1 })
	var attempts []int
	for _, c := range r.callsOf("e1") {
		attempts = append(attempts, c.attempt)
	}
	want := []int{1, 1, 1, 1, 1, 2, 3}
	if len(attempts) != len(want) {
		t.Fatalf("attempts %v, want %v (4 throttles, then 3 function errors)", attempts, want)
	}
	for i := range want {
		if attempts[i] != want[i] {
			t.Fatalf("attempts %v, want %v", attempts, want)
		}
	}
	if dl := dlq.get()[0]; dl.Attempts != 3 || dl.Condition != event.RetryAttemptsExhausted {
		t.Fatalf("dead letter %+v, want 3 attempts RetryAttemptsExhausted", dl)
	}
}

// TestAsyncRestartKeepsAttempts: the throttles and the failure before a
// restart are remembered after it (the server's delivery count and the
// recorded throttles).
func TestAsyncRestartKeepsAttempts(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	var calls atomic.Int32
	before := &asyncRecorder{answer: func(_ string, n int) event.Result {
		calls.Add(1)
		if n <= 2 {
			return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled"}
		}
		return failed500
	}}
	src := asyncSource(3, time.Minute)
	// Before the restart, the retry after the failure waits 3 s, so that
	// the process is surely stopped before a second attempt can start (with
	// a shorter wait, a loaded machine could run attempt 2 between the
	// third call and stop, and the premise — one attempt before the
	// restart — would not hold).
	src.RetryBackoff = consumer.Backoff{Initial: 3 * time.Second, Max: 3 * time.Second, Multiplier: 1}
	a := newAsync(t, e.ClientURL(), src, fastAsync(before, nil))
	publish(t, js, "signups.u1", "e1")
	stop := runSource(t, a.Run)
	waitFor(t, 10*time.Second, "2 throttles and a failure", func() bool { return calls.Load() == 3 })
	stop()
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d calls before the restart, want 3 (2 throttles and a failure)", n)
	}

	after := &asyncRecorder{answer: func(string, int) event.Result { return failed500 }}
	dlq := &fakeDLQ{}
	src.RetryBackoff = consumer.Backoff{Initial: 100 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 1}
	b := newAsync(t, e.ClientURL(), src, fastAsync(after, dlq))
	runSource(t, b.Run)
	waitFor(t, 20*time.Second, "a dead letter", func() bool { return len(dlq.get()) == 1 })
	var attempts []int
	for _, c := range after.callsOf("e1") {
		attempts = append(attempts, c.attempt)
	}
	if len(attempts) != 3 || attempts[0] != 2 || attempts[2] != 4 {
		t.Fatalf("attempts after the restart %v, want [2 3 4]", attempts)
	}
	if dl := dlq.get()[0]; dl.Attempts != 4 || dl.Condition != event.RetryAttemptsExhausted {
		t.Fatalf("dead letter %+v, want 4 attempts", dl)
	}
}

func TestAsyncEventAgeExceeded(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{answer: func(string, int) event.Result {
		return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", Error: event.ErrorInfo{Kind: "throttled", Status: 429}}
	}}
	dlq := &fakeDLQ{}
	src := asyncSource(2, 1500*time.Millisecond)
	a := newAsync(t, e.ClientURL(), src, fastAsync(r, dlq))
	start := time.Now()
	publish(t, js, "signups.u1", "e1")
	runSource(t, a.Run)
	waitFor(t, 10*time.Second, "a dead letter", func() bool { return len(dlq.get()) == 1 })
	el := time.Since(start)
	dl := dlq.get()[0]
	if dl.Condition != event.EventAgeExceeded || dl.Attempts != 0 || dl.LastError.Status != 429 {
		t.Fatalf("dead letter %+v, want EventAgeExceeded with 0 attempts and the 429", dl)
	}
	if el < 1500*time.Millisecond || el > 3*time.Second {
		t.Fatalf("dead-lettered after %s, want just after max_event_age (1.5s)", el)
	}
	if n := len(r.callsOf("e1")); n < 3 {
		t.Fatalf("throttled %d times, want several tries within the window", n)
	}
}

func TestAsyncPermanentError(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{answer: func(v string, _ int) event.Result {
		if v == "bad" {
			return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 400}}
		}
		return event.Result{Outcome: event.Delivered}
	}}
	dlq := &fakeDLQ{}
	a := newAsync(t, e.ClientURL(), asyncSource(2, time.Minute), fastAsync(r, dlq))
	publish(t, js, "signups.u1", "bad", "good")
	runSource(t, a.Run)
	waitFor(t, 10*time.Second, "a dead letter", func() bool { return len(dlq.get()) == 1 })
	settled(t, js)
	if dl := dlq.get()[0]; dl.Condition != event.PermanentError || dl.Attempts != 1 || string(dl.Record.Value) != "bad" {
		t.Fatalf("dead letter %+v", dl)
	}
	if n := len(r.callsOf("bad")); n != 1 {
		t.Fatalf("bad invoked %d times, want 1", n)
	}
	// sluice created the stream as a work queue: done events are gone.
	st, _ := js.Stream(t.Context(), "SIGNUPS")
	waitFor(t, 5*time.Second, "an empty work queue", func() bool {
		info, err := st.Info(t.Context())
		return err == nil && info.Config.Retention == jetstream.WorkQueuePolicy && info.State.Msgs == 0
	})
}

// TestAsyncDeadLetterStoreDown: the event is held (not terminated, not
// redelivered) until the dead letter is stored.
func TestAsyncDeadLetterStoreDown(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{answer: func(string, int) event.Result {
		return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 422}}
	}}
	dlq := &fakeDLQ{fail: true}
	opts := fastAsync(r, dlq)
	opts.AckWait = time.Second
	a := newAsync(t, e.ClientURL(), asyncSource(2, time.Minute), opts)
	publish(t, js, "signups.u1", "e1")
	runSource(t, a.Run)
	time.Sleep(2500 * time.Millisecond) // longer than AckWait
	info := consumerInfo(t, js, "SIGNUPS", "sluice-signups")
	if info.NumAckPending != 1 || info.NumRedelivered != 0 {
		t.Fatalf("ack pending %d, redelivered %d while the dead-letter store is down; want the event held", info.NumAckPending, info.NumRedelivered)
	}
	dlq.mu.Lock()
	dlq.fail = false
	dlq.mu.Unlock()
	waitFor(t, 10*time.Second, "a dead letter", func() bool { return len(dlq.get()) == 1 })
	settled(t, js)
	if n := len(r.callsOf("e1")); n != 1 {
		t.Fatalf("invoked %d times, want 1", n)
	}
}

// TestAsyncKeepsEventWhoseLetterOmitsPayload: on a work queue (Term
// deletes the event), an event whose dead letter cannot carry it is kept
// in the kept-records bucket before the letter is written, and FetchRecord
// reads it from there; an event whose letter carries it is not kept.
func TestAsyncKeepsEventWhoseLetterOmitsPayload(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	ctx := t.Context()
	st, store := smallDeadLetters(t, nc, js, 6000)
	r := &asyncRecorder{answer: func(string, int) event.Result {
		return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 400}}
	}}
	opts := fastAsync(r, store)
	opts.KeepFor = time.Hour
	a := newAsync(t, e.ClientURL(), asyncSource(2, time.Minute), opts)
	big := "big-" + strings.Repeat("x", 5000) // 6.7 KB of base64 in the envelope: over 6000
	publish(t, js, "signups.u1", "small")
	if _, err := js.PublishMsg(ctx, &natsgo.Msg{Subject: "signups.u2", Data: []byte(big), Header: natsgo.Header{"Tenant": []string{"t1"}}}); err != nil {
		t.Fatal(err)
	}
	runSource(t, a.Run)
	settled(t, js)
	src, _ := js.Stream(ctx, "SIGNUPS")
	waitFor(t, 5*time.Second, "an empty work queue", func() bool {
		info, err := src.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 2 {
		t.Fatalf("dead-letter stream: %+v, %v; want 2 letters", info, err)
	}
	// The small event's letter carries it: it is not kept (the stream no
	// longer has it either).
	if _, err := FetchRecord(ctx, nc, "SIGNUPS", 1); !errors.Is(err, consumer.ErrRecordGone) {
		t.Fatalf("FetchRecord(1) = %v; want ErrRecordGone", err)
	}
	rec, err := FetchRecord(ctx, nc, "SIGNUPS", 2)
	if err != nil {
		t.Fatalf("FetchRecord(2): %v", err)
	}
	if string(rec.Value) != big || rec.Subject != "signups.u2" || rec.Offset != 2 || rec.Timestamp.IsZero() ||
		len(rec.Headers) != 1 || rec.Headers[0].Key != "Tenant" || string(rec.Headers[0].Value) != "t1" {
		t.Fatalf("kept record: subject %q offset %d time %v headers %v value %d bytes", rec.Subject, rec.Offset, rec.Timestamp, rec.Headers, len(rec.Value))
	}
	obs, err := js.ObjectStore(ctx, keptBucket("SIGNUPS"))
	if err != nil {
		t.Fatal(err)
	}
	if oc, err := obs.Status(ctx); err != nil || oc.TTL() != time.Hour {
		t.Fatalf("kept bucket TTL: %v, %v; want 1h (KeepFor)", oc, err)
	}
}

// flakyKV fails the next fails reads of the retry state, as a JetStream
// restart does ("no responders").
type flakyKV struct {
	jetstream.KeyValue
	fails atomic.Int32
}

func (k *flakyKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	if k.fails.Add(-1) >= 0 {
		return nil, natsgo.ErrNoResponders
	}
	return k.KeyValue.Get(ctx, key)
}

// TestAsyncStateReadFailureIsNotAnAttempt: an event throttled four times
// whose retry state cannot be read for a while is held and read again, not
// taken to have failed four times (with max_retry_attempts 2 that guess
// dead-lettered it as exhausted although the function never failed it).
func TestAsyncStateReadFailureIsNotAnAttempt(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	var kv *flakyKV
	r := &asyncRecorder{answer: func(_ string, n int) event.Result {
		if n <= 4 {
			if n == 4 {
				kv.fails.Store(3) // the next delivery's reads fail three times
			}
			return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: 50 * time.Millisecond,
				Error: event.ErrorInfo{Kind: "throttled", Status: 429}}
		}
		return event.Result{Outcome: event.Delivered}
	}}
	dlq := &fakeDLQ{}
	src := asyncSource(2, time.Minute)
	src.RetryBackoff.Max = 200 * time.Millisecond
	a := newAsync(t, e.ClientURL(), src, fastAsync(r, dlq))
	kv = &flakyKV{KeyValue: a.kv}
	a.kv = kv
	publish(t, js, "signups.u1", "e1")
	runSource(t, a.Run)
	settled(t, js)
	if got := len(r.callsOf("e1")); got != 5 || kv.fails.Load() > 0 {
		t.Fatalf("%d calls, %d reads still to fail; want 5 calls (4 throttles, then delivered) after the failed reads", got, kv.fails.Load())
	}
	if dls := dlq.get(); len(dls) != 0 {
		t.Fatalf("dead-lettered %+v; the function never failed the event", dls[0])
	}
}

// A crash between recording an event's retry state and its NAK loses the
// NAK: the server brings the event back after AckWait, sooner than the
// backoff. The recorded due time still holds: the early delivery is handed
// back without an invocation, and it is not counted as an attempt.
func TestAsyncLostNakStillWaitsTheBackoff(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	r := &asyncRecorder{answer: func(_ string, n int) event.Result {
		if n == 1 {
			return failed500
		}
		return event.Result{Outcome: event.Delivered}
	}}
	src := asyncSource(3, time.Minute)
	const backoff = 4 * time.Second // twice fastAsync's AckWait
	src.RetryBackoff = consumer.Backoff{Initial: backoff, Max: backoff, Multiplier: 1}
	a := newAsync(t, e.ClientURL(), src, fastAsync(r, nil))
	var naks atomic.Int32
	a.nakWithDelay = func(m jetstream.Msg, d time.Duration) error {
		if naks.Add(1) == 1 {
			return nil // lost, as in a crash
		}
		return m.NakWithDelay(d)
	}
	publish(t, js, "signups.u1", "e1")
	runSource(t, a.Run)
	settled(t, js)
	cs := r.callsOf("e1")
	if len(cs) != 2 {
		t.Fatalf("%d calls, want 2 (a failure, then delivered)", len(cs))
	}
	if gap := cs[1].at.Sub(cs[0].at); gap < backoff {
		t.Errorf("second attempt %v after the first, want at least the backoff %v", gap, backoff)
	}
	if cs[1].attempt != 2 {
		t.Errorf("second call was attempt %d, want 2 (the early delivery is no attempt)", cs[1].attempt)
	}
	// The lost NAK, then at least one early delivery handed back (more if
	// the server's timer fires a hair before sluice's clock says due).
	if n := naks.Load(); n < 2 {
		t.Errorf("%d delayed NAKs, want at least 2 (the lost one, then the early delivery handed back)", n)
	}
}
