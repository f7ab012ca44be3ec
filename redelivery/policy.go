package redelivery

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/sluicehq/sluice/event"
)

const (
	// MaxRetryAfter caps the Retry-After a function may ask for with a
	// throttle (HTTP functions already cap it when they parse the header;
	// in-process handlers may not).
	MaxRetryAfter = 15 * time.Minute
	// DeadLetterTimeout bounds one dead-letter write (the broker writers
	// have their own, shorter, timeouts), so a hung store cannot hold a
	// stopping shard or partition for longer.
	DeadLetterTimeout = 10 * time.Second
)

// Policy is how one source redelivers: its max_retry_attempts, its age
// limit (max_record_age or max_event_age), bisection and backoff. The zero
// value of a field means: no attempt limit is 0 attempts (use -1 for
// infinite), no age limit when MaxAge <= 0.
type Policy struct {
	// MaxAttempts is max_retry_attempts: the retries after the first
	// attempt; < 0 is infinite.
	MaxAttempts int
	// MaxAge is max_record_age (stream) or max_event_age (async); <= 0 is
	// infinite.
	MaxAge time.Duration
	// AgeCondition is the condition of what passes MaxAge:
	// RecordAgeExceeded (stream) or EventAgeExceeded (async).
	AgeCondition event.Condition
	// Bisect splits a failed batch of more than one record in halves that
	// start afresh (bisect_batch_on_error; stream only).
	Bisect  bool
	Backoff event.Backoff
	// Rand draws the jitter of a delay in [0,1); default math/rand/v2.
	Rand func() float64
}

// State is the retry history of a batch or an event.
type State struct {
	Attempts  int // function attempts made that failed (throttles are not attempts)
	Throttles int // deliveries that ended throttled
	First     time.Time
	Last      time.Time
	LastError event.ErrorInfo
}

// Action is what the caller does next.
type Action int

// The actions of a Decision.
const (
	// Done: every record was handled; settle (commit, ack).
	Done Action = iota
	// Retry: deliver the same records again after Decision.Delay (already
	// cut at their expiry).
	Retry
	// DeadLetter: store the records with Decision.Condition, then settle.
	DeadLetter
	// Split: deliver each half of the batch on its own, in order, each
	// with a fresh State (bisecting consumes no attempt).
	Split
	// Abandon: the caller is stopping; the outcome does not count and the
	// records stay unsettled, for the broker to deliver again.
	Abandon
)

// Decision is the policy's answer after a delivery.
type Decision struct {
	Action    Action
	Delay     time.Duration   // Retry
	Condition event.Condition // DeadLetter
	Throttled bool            // Retry after a throttle (no attempt consumed)
}

// Expiry returns when something stamped at stamp passes MaxAge; zero
// without an age limit.
func (p *Policy) Expiry(stamp time.Time) time.Time {
	if p.MaxAge <= 0 {
		return time.Time{}
	}
	return stamp.Add(p.MaxAge)
}

// Expired reports whether something stamped at stamp is past MaxAge at now.
func (p *Policy) Expired(stamp, now time.Time) bool {
	return p.MaxAge > 0 && !now.Before(stamp.Add(p.MaxAge))
}

// Begin marks the start of an attempt (the first sets st.First).
func (p *Policy) Begin(st *State, now time.Time) {
	if st.First.IsZero() {
		st.First = now
	}
}

// Before decides, before an attempt of an event stamped at stamp, whether
// it must be dead-lettered instead: past MaxAge, or with its attempts
// already past MaxAttempts (max_retry_attempts lowered since, or an
// attempt whose outcome was lost).
func (p *Policy) Before(st *State, stamp, now time.Time) (event.Condition, bool) {
	switch {
	case p.Expired(stamp, now):
		return p.AgeCondition, true
	case p.exhausted(st):
		return event.RetryAttemptsExhausted, true
	}
	return "", false
}

// After folds res, the outcome of delivering n records (the oldest stamped
// at oldest) at now, into st and decides what follows. stopping reports
// that the caller's context ended: an outcome other than Delivered then
// does not count (Abandon).
//
//   - Delivered: Done.
//   - Throttled: no attempt consumed; Retry after at least the backoff of
//     the throttles and the function's Retry-After (capped at
//     MaxRetryAfter) — or, once the oldest record is past MaxAge,
//     DeadLetter with AgeCondition. A wait cut short (KindCancelled) does
//     not hide the last real error.
//   - Failed, Permanent, Invalid: Split when bisecting a batch of more than one.
//   - Permanent: one attempt consumed; DeadLetter with PermanentError.
//   - Invalid: one attempt consumed; DeadLetter with InvalidRecord (the
//     invocation could not even be built: not a connection error).
//   - Failed, Partial (the n records from the first failed one): one
//     attempt consumed; DeadLetter with RetryAttemptsExhausted past
//     MaxAttempts, else with AgeCondition once the oldest record is past
//     MaxAge, else Retry after the backoff of the attempts.
//
// A Retry's delay is cut at the oldest record's expiry, so that it is
// dead-lettered on time, before any further attempt.
func (p *Policy) After(st *State, res event.Result, n int, oldest, now time.Time, stopping bool) Decision {
	st.Last = now
	if res.Outcome != event.Delivered && stopping {
		return Decision{Action: Abandon}
	}
	switch res.Outcome {
	case event.Delivered:
		return Decision{Action: Done}

	case event.Throttled:
		st.Throttles++
		if st.LastError.Message == "" || res.Error.Kind != event.KindCancelled {
			st.LastError = res.Error
		}
		if p.Expired(oldest, now) {
			return Decision{Action: DeadLetter, Condition: p.AgeCondition}
		}
		d := max(p.delay(st.Throttles), min(res.RetryAfter, MaxRetryAfter))
		return Decision{Action: Retry, Delay: p.cut(d, oldest, now), Throttled: true}

	case event.Failed, event.Permanent, event.Partial, event.Invalid:
		st.LastError = res.Error
		if res.Outcome != event.Partial && p.Bisect && n > 1 {
			return Decision{Action: Split}
		}
		st.Attempts++
		switch {
		case res.Outcome == event.Permanent:
			return Decision{Action: DeadLetter, Condition: event.PermanentError}
		case res.Outcome == event.Invalid:
			return Decision{Action: DeadLetter, Condition: event.InvalidRecord}
		case p.exhausted(st):
			return Decision{Action: DeadLetter, Condition: event.RetryAttemptsExhausted}
		case p.Expired(oldest, now):
			return Decision{Action: DeadLetter, Condition: p.AgeCondition}
		}
		return Decision{Action: Retry, Delay: p.cut(p.delay(st.Attempts), oldest, now)}
	}
	// An outcome this policy does not know: treat it as a failure.
	return p.After(st, event.Result{Outcome: event.Failed, Error: res.Error}, n, oldest, now, stopping)
}

func (p *Policy) exhausted(st *State) bool {
	return p.MaxAttempts >= 0 && st.Attempts > p.MaxAttempts
}

// cut shortens d to end at the expiry of oldest (never below 0).
func (p *Policy) cut(d time.Duration, oldest, now time.Time) time.Duration {
	if exp := p.Expiry(oldest); !exp.IsZero() {
		d = min(d, max(exp.Sub(now), 0))
	}
	return d
}

// Delay returns the backoff before retry number n, jittered.
func (p *Policy) Delay(n int) time.Duration { return p.delay(n) }

func (p *Policy) delay(n int) time.Duration {
	r := rand.Float64
	if p.Rand != nil {
		r = p.Rand
	}
	return Delay(p.Backoff, n, r())
}

// Letters builds the dead letters of recs with cond from st, stamped with
// the first and last attempt times (now when none was made).
func Letters(source, function, mode string, cond event.Condition, st *State, now time.Time, recs []event.Record) []event.DeadLetter {
	first, last := st.First, st.Last
	if first.IsZero() {
		first = now
	}
	if last.IsZero() {
		last = now
	}
	out := make([]event.DeadLetter, len(recs))
	for i, r := range recs {
		out[i] = event.DeadLetter{
			Source: source, Function: function, Mode: mode,
			Condition: cond, Attempts: st.Attempts, FirstAttemptAt: first, LastAttemptAt: last,
			LastError: st.LastError, Record: r,
		}
	}
	return out
}

// Store writes letters to dl, retrying a failed write with the policy's
// backoff until it succeeds or ctx ends; onFail, if not nil, hears each
// failed try (to log it, to show the shard blocked). Each write runs on a
// context detached from ctx and bounded by DeadLetterTimeout: stopping
// never cuts a write in progress (a letter written but reported failed
// would be written twice), and a hung store cannot hold the caller longer.
// It returns nil once stored, else ctx's error.
func (p *Policy) Store(ctx context.Context, dl event.DeadLetterer, letters []event.DeadLetter, onFail func(try int, err error)) error {
	return p.Persist(ctx, DeadLetterTimeout, func(wctx context.Context) error {
		return dl.DeadLetter(wctx, letters)
	}, onFail)
}

// Permanent wraps err so that Persist stops at it: a write no try can make
// succeed (a record over its destination's size limit). Persist returns
// err itself.
func Permanent(err error) error { return backoff.Permanent(err) }

// Persist runs write until it succeeds or ctx ends, as Store does for dead
// letters: each try on a context detached from ctx, bounded by timeout (no
// bound when timeout <= 0), tries spaced by the policy's backoff. An error
// of write wrapped by Permanent ends it at once, with that error.
func (p *Policy) Persist(ctx context.Context, timeout time.Duration, write func(context.Context) error, onFail func(try int, err error)) error {
	try := 0
	return backoff.RetryNotify(func() error {
		try++
		wctx, cancel := context.WithoutCancel(ctx), context.CancelFunc(func() {})
		if timeout > 0 {
			wctx, cancel = context.WithTimeout(wctx, timeout)
		}
		defer cancel()
		return write(wctx)
	}, backoff.WithContext(p.exponential(), ctx), func(err error, _ time.Duration) {
		if onFail != nil {
			onFail(try, err)
		}
	})
}
