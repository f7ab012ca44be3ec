package redelivery

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/event"
)

// Moved from package shard with the schedule: the same cases.
func TestBackoffDelay(t *testing.T) {
	b := event.Backoff{Initial: time.Second, Max: 10 * time.Second, Multiplier: 2, Jitter: 0.5}
	cases := []struct {
		n    int
		r    float64
		want time.Duration
	}{
		{1, 0.5, time.Second},
		{2, 0.5, 2 * time.Second},
		{4, 0.5, 8 * time.Second},
		{5, 0.5, 10 * time.Second}, // capped
		{50, 0.5, 10 * time.Second},
		{1, 0, 500 * time.Millisecond}, // -50%
		{1, 1, 1500 * time.Millisecond},
		{0, 0.5, time.Second},
	}
	for _, c := range cases {
		if got := Delay(b, c.n, c.r); got != c.want {
			t.Errorf("Delay(%d, %v) = %s, want %s", c.n, c.r, got, c.want)
		}
	}
}

// After is a pure function of the outcome, the state, the age and whether
// the caller is stopping: one table for every broker and mode.
func TestPolicyAfter(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	stream := Policy{MaxAttempts: 2, MaxAge: time.Minute, AgeCondition: event.RecordAgeExceeded,
		Backoff: event.Backoff{Initial: time.Second, Max: 8 * time.Second, Multiplier: 2}, Rand: func() float64 { return 0.5 }}
	bisect := stream
	bisect.Bisect = true
	async := stream
	async.AgeCondition = event.EventAgeExceeded
	infinite := stream
	infinite.MaxAttempts, infinite.MaxAge = -1, -1

	fail := event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: event.KindStatus, Status: 500, Message: "boom"}}
	throttle := func(ra time.Duration) event.Result {
		return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: ra,
			Error: event.ErrorInfo{Kind: event.KindThrottled, Status: 429, Message: "slow down"}}
	}
	cancelled := event.Result{Outcome: event.Throttled, Error: event.ErrorInfo{Kind: event.KindCancelled, Message: "context canceled"}}
	earlier := event.ErrorInfo{Kind: event.KindStatus, Status: 500, Message: "earlier"}

	cases := []struct {
		name     string
		p        Policy
		st       State
		res      event.Result
		n        int
		age      time.Duration // of the oldest record at the decision
		stopping bool
		want     Decision
		wantSt   State // Attempts, Throttles, LastError checked
	}{
		{"delivered", stream, State{}, event.Result{Outcome: event.Delivered}, 3, 0, false,
			Decision{Action: Done}, State{}},
		{"delivered while stopping counts", stream, State{}, event.Result{Outcome: event.Delivered}, 3, 0, true,
			Decision{Action: Done}, State{}},
		{"failure while stopping is abandoned", stream, State{}, fail, 3, 0, true,
			Decision{Action: Abandon}, State{}},
		{"throttle while stopping is abandoned", stream, State{}, cancelled, 3, 0, true,
			Decision{Action: Abandon}, State{}},
		{"first failure retries after the backoff", stream, State{}, fail, 3, 10 * time.Second, false,
			Decision{Action: Retry, Delay: time.Second}, State{Attempts: 1, LastError: fail.Error}},
		{"second failure backs off longer", stream, State{Attempts: 1}, fail, 3, 10 * time.Second, false,
			Decision{Action: Retry, Delay: 2 * time.Second}, State{Attempts: 2, LastError: fail.Error}},
		{"retries exhausted", stream, State{Attempts: 2}, fail, 3, 10 * time.Second, false,
			Decision{Action: DeadLetter, Condition: event.RetryAttemptsExhausted}, State{Attempts: 3, LastError: fail.Error}},
		{"exhausted wins over age", stream, State{Attempts: 2}, fail, 3, 2 * time.Minute, false,
			Decision{Action: DeadLetter, Condition: event.RetryAttemptsExhausted}, State{Attempts: 3, LastError: fail.Error}},
		{"failed past the age: no retry", stream, State{}, fail, 3, 61 * time.Second, false,
			Decision{Action: DeadLetter, Condition: event.RecordAgeExceeded}, State{Attempts: 1, LastError: fail.Error}},
		{"async failed past the age", async, State{}, fail, 1, 61 * time.Second, false,
			Decision{Action: DeadLetter, Condition: event.EventAgeExceeded}, State{Attempts: 1, LastError: fail.Error}},
		{"retry cut at the expiry", stream, State{Attempts: 1}, fail, 3, 59500 * time.Millisecond, false,
			Decision{Action: Retry, Delay: 500 * time.Millisecond}, State{Attempts: 2, LastError: fail.Error}},
		{"infinite attempts and age", infinite, State{Attempts: 1000}, fail, 3, 1000 * time.Hour, false,
			Decision{Action: Retry, Delay: 8 * time.Second}, State{Attempts: 1001, LastError: fail.Error}},
		{"partial consumes an attempt and never bisects", bisect, State{}, event.Result{Outcome: event.Partial, Error: event.ErrorInfo{Kind: event.KindPartial}}, 5, 0, false,
			Decision{Action: Retry, Delay: time.Second}, State{Attempts: 1, LastError: event.ErrorInfo{Kind: event.KindPartial}}},
		{"bisect a failed batch: free", bisect, State{Attempts: 1}, fail, 2, 0, false,
			Decision{Action: Split}, State{Attempts: 1, LastError: fail.Error}},
		{"bisect a permanent failure too", bisect, State{}, event.Result{Outcome: event.Permanent}, 4, 0, false,
			Decision{Action: Split}, State{}},
		{"a single record is not bisected", bisect, State{}, fail, 1, 0, false,
			Decision{Action: Retry, Delay: time.Second}, State{Attempts: 1, LastError: fail.Error}},
		{"permanent dead-letters at once", stream, State{}, event.Result{Outcome: event.Permanent, Error: earlier}, 3, 0, false,
			Decision{Action: DeadLetter, Condition: event.PermanentError}, State{Attempts: 1, LastError: earlier}},
		{"throttle: no attempt, at least Retry-After", stream, State{Attempts: 1}, throttle(5 * time.Second), 3, 0, false,
			Decision{Action: Retry, Delay: 5 * time.Second, Throttled: true}, State{Attempts: 1, Throttles: 1, LastError: throttle(0).Error}},
		{"throttle: the backoff when longer", stream, State{Throttles: 3}, throttle(time.Second), 3, 0, false,
			Decision{Action: Retry, Delay: 8 * time.Second, Throttled: true}, State{Throttles: 4, LastError: throttle(0).Error}},
		{"throttle: Retry-After capped", infinite, State{}, throttle(time.Hour), 3, 0, false,
			Decision{Action: Retry, Delay: MaxRetryAfter, Throttled: true}, State{Throttles: 1, LastError: throttle(0).Error}},
		{"throttle: cut at the expiry", stream, State{}, throttle(30 * time.Second), 3, 50 * time.Second, false,
			Decision{Action: Retry, Delay: 10 * time.Second, Throttled: true}, State{Throttles: 1, LastError: throttle(0).Error}},
		{"throttled past the age", async, State{}, throttle(0), 1, time.Minute, false,
			Decision{Action: DeadLetter, Condition: event.EventAgeExceeded}, State{Throttles: 1, LastError: throttle(0).Error}},
		{"a cut wait keeps the earlier error", async, State{LastError: earlier}, cancelled, 1, time.Minute, false,
			Decision{Action: DeadLetter, Condition: event.EventAgeExceeded}, State{Throttles: 1, LastError: earlier}},
		{"a cut wait is the error when there is none", async, State{}, cancelled, 1, 30 * time.Second, false,
			Decision{Action: Retry, Delay: time.Second, Throttled: true}, State{Throttles: 1, LastError: cancelled.Error}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := c.st
			now := t0.Add(c.age)
			got := c.p.After(&st, c.res, c.n, t0, now, c.stopping)
			if got != c.want {
				t.Errorf("After = %+v, want %+v", got, c.want)
			}
			if st.Attempts != c.wantSt.Attempts || st.Throttles != c.wantSt.Throttles || st.LastError != c.wantSt.LastError {
				t.Errorf("state attempts %d throttles %d last error %+v, want %d %d %+v",
					st.Attempts, st.Throttles, st.LastError, c.wantSt.Attempts, c.wantSt.Throttles, c.wantSt.LastError)
			}
			if !st.Last.Equal(now) {
				t.Errorf("state Last = %s, want the decision's time", st.Last)
			}
		})
	}
}

func TestPolicyBefore(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := Policy{MaxAttempts: 2, MaxAge: time.Minute, AgeCondition: event.EventAgeExceeded}
	cases := []struct {
		name     string
		attempts int
		age      time.Duration
		want     event.Condition
		giveUp   bool
	}{
		{"young, attempts left", 2, 59 * time.Second, "", false},
		{"at its age", 0, time.Minute, event.EventAgeExceeded, true},
		{"age wins over attempts", 5, 2 * time.Minute, event.EventAgeExceeded, true},
		{"attempts past the limit (lowered, or an outcome lost)", 3, 0, event.RetryAttemptsExhausted, true},
	}
	for _, c := range cases {
		cond, ok := p.Before(&State{Attempts: c.attempts}, t0, t0.Add(c.age))
		if cond != c.want || ok != c.giveUp {
			t.Errorf("%s: Before = %q, %v; want %q, %v", c.name, cond, ok, c.want, c.giveUp)
		}
	}
	inf := Policy{MaxAttempts: -1, MaxAge: -1}
	if _, ok := inf.Before(&State{Attempts: 1 << 20}, t0, t0.Add(1<<20*time.Hour)); ok {
		t.Error("infinite policy gave up")
	}
	if !inf.Expiry(t0).IsZero() || !p.Expiry(t0).Equal(t0.Add(time.Minute)) {
		t.Errorf("Expiry: %s, %s", inf.Expiry(t0), p.Expiry(t0))
	}
}

// dlStore fails its first fail writes; hang makes a write wait for its ctx.
type dlStore struct {
	mu      sync.Mutex
	fail    int
	hang    bool
	tries   int
	stored  []event.DeadLetter
	ctxErrs []error // the write ctx's error as each try returned
}

func (s *dlStore) DeadLetter(ctx context.Context, ls []event.DeadLetter) error {
	s.mu.Lock()
	s.tries++
	hang, fail := s.hang, s.tries <= s.fail
	s.mu.Unlock()
	var err error
	switch {
	case hang:
		<-ctx.Done()
		err = ctx.Err()
	case fail:
		err = errors.New("store down")
	default:
		s.mu.Lock()
		s.stored = append(s.stored, ls...)
		s.mu.Unlock()
	}
	s.mu.Lock()
	s.ctxErrs = append(s.ctxErrs, ctx.Err())
	s.mu.Unlock()
	return err
}

// Store retries a failing write with the backoff until it is stored, and
// reports each failed try.
func TestStoreRetriesUntilStored(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := Policy{Backoff: event.Backoff{Initial: time.Second, Max: 4 * time.Second, Multiplier: 2}}
		s := &dlStore{fail: 3}
		var tries []int
		start := time.Now()
		err := p.Store(context.Background(), s, []event.DeadLetter{{Source: "s"}}, func(try int, _ error) { tries = append(tries, try) })
		if err != nil || len(s.stored) != 1 || s.tries != 4 {
			t.Fatalf("err %v, stored %d after %d tries; want stored on the 4th", err, len(s.stored), s.tries)
		}
		if len(tries) != 3 || tries[2] != 3 {
			t.Errorf("onFail heard tries %v, want [1 2 3]", tries)
		}
		if took := time.Since(start); took != 7*time.Second {
			t.Errorf("took %s, want the backoff 1s + 2s + 4s", took)
		}
	})
}

// A write hung in the store is bounded by DeadLetterTimeout; a caller that
// stops never cuts a write in progress (it runs on a detached ctx), and
// retrying ends with the caller's ctx.
func TestStoreBoundsEachWriteAndStopsWithCtx(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := Policy{Backoff: event.Backoff{Initial: time.Second, Max: time.Second}}
		s := &dlStore{hang: true}
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(time.Second, cancel) // the caller stops during the first write
		start := time.Now()
		err := p.Store(ctx, s, []event.DeadLetter{{Source: "s"}}, nil)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("err = %v, want the caller's context.Canceled", err)
		}
		if took := time.Since(start); took != DeadLetterTimeout {
			t.Errorf("returned after %s, want after the first write's timeout %s (not cut by the caller)", took, DeadLetterTimeout)
		}
		if s.tries != 1 || !errors.Is(s.ctxErrs[0], context.DeadlineExceeded) {
			t.Errorf("%d tries, write ctx ended with %v; want 1 try ended by its own timeout", s.tries, s.ctxErrs)
		}
	})
}

// An invocation that cannot be built is dead-lettered with InvalidRecord,
// after bisecting a batch down to the record.
func TestInvalidIsInvalidRecord(t *testing.T) {
	p := &Policy{MaxAttempts: -1, Bisect: true}
	now := time.Now()
	res := event.Result{Outcome: event.Invalid, Error: event.ErrorInfo{Kind: event.KindInvalid, Message: "header"}}
	if d := p.After(&State{}, res, 4, now, now, false); d.Action != Split {
		t.Fatalf("batch of 4: %+v, want Split", d)
	}
	var st State
	if d := p.After(&st, res, 1, now, now, false); d.Action != DeadLetter || d.Condition != event.InvalidRecord {
		t.Fatalf("one record: %+v, want DeadLetter InvalidRecord", d)
	}
	if st.Attempts != 1 || st.LastError.Kind != event.KindInvalid {
		t.Fatalf("state %+v", st)
	}
}

// Persist stops at an error wrapped by Permanent and returns it.
func TestPersistStopsAtPermanent(t *testing.T) {
	p := &Policy{Backoff: event.Backoff{Initial: time.Millisecond, Max: time.Millisecond, Multiplier: 1}}
	tooLarge := errors.New("too large")
	tries := 0
	err := p.Persist(context.Background(), 0, func(context.Context) error {
		tries++
		return Permanent(tooLarge)
	}, nil)
	if !errors.Is(err, tooLarge) || tries != 1 {
		t.Fatalf("Persist = %v after %d tries, want the error after 1", err, tries)
	}
}
