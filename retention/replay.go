package retention

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/event"
)

// Replay targets: where `sluice dlq replay --to` sends a letter.
const (
	ToFunction = "function" // invoke the letter's function again (the default)
	ToSource   = "source"   // append the original record to its source again
)

// Replay defaults.
const (
	// DefaultReplayParallel is how many letters a replay has in flight; the
	// dispatcher's limits (reservations, rules) still apply to each.
	DefaultReplayParallel = 16
	// DefaultReplayGrace is how long deliveries in flight may finish after
	// the replay was interrupted, so that they are recorded and a re-run
	// does not deliver them again.
	DefaultReplayGrace = 15 * time.Second
	// maxThrottles bounds how often one letter is retried while the function
	// throttles it (429/503) before the replay counts it as failed.
	maxThrottles = 10
)

// ReplayOptions configures Replay.
type ReplayOptions struct {
	// Deliver sends one letter (to its function or its source) and reports
	// the outcome like a shard.Deliverer: Delivered, Throttled (retried after
	// RetryAfter, no attempt consumed), anything else is a failure.
	Deliver func(ctx context.Context, e *Envelope) event.Result
	// To is ToFunction or ToSource, recorded in resolution records.
	To string
	// Rate caps deliveries per second; 0 is no cap.
	Rate float64
	// Parallel is how many letters are in flight at most (default
	// DefaultReplayParallel).
	Parallel int
	// Grace is how long deliveries in flight may finish once ctx ended
	// (default DefaultReplayGrace).
	Grace time.Duration
	// Progress, if set, is called after each letter (from one goroutine at
	// a time).
	Progress func(ReplayProgress)
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// ReplayProgress is where a replay stands.
type ReplayProgress struct {
	Total     int // letters to replay
	Succeeded int
	Failed    int
	// Last is the letter just finished and Err why it failed (nil if it
	// succeeded).
	Last *Envelope
	Err  error
}

// ReplaySummary is what a replay did.
type ReplaySummary struct {
	Succeeded, Failed int
	// Interrupted is set when ctx ended before every letter was replayed;
	// the letters not reached are neither succeeded nor failed, and a
	// re-run continues with them.
	Interrupted bool
	// Failures holds up to 20 failures, for the operator.
	Failures []error
}

// Replay delivers letters with opts.Deliver and records each outcome in the
// destination through app, so that running it again continues where it
// stopped and does not deliver again what succeeded:
//
//   - delivered: a resolution record for the letter is appended (see
//     HeaderResolved); Load reports it Resolved from then on;
//   - failed: the envelope is appended again with replays+1 and the new
//     lastError, lastAttemptAt (the newest envelope of an id wins).
//
// When ctx ends no new letter is started; those in flight get opts.Grace to
// finish and be recorded. A letter delivered whose resolution could not be
// written counts as failed (a re-run delivers it again: at-least-once).
func Replay(ctx context.Context, letters []*Letter, app Appender, opts ReplayOptions) ReplaySummary {
	if opts.Parallel <= 0 {
		opts.Parallel = DefaultReplayParallel
	}
	if opts.Grace <= 0 {
		opts.Grace = DefaultReplayGrace
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.To == "" {
		opts.To = ToFunction
	}
	lim := rate.NewLimiter(rate.Inf, 1)
	if opts.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(opts.Rate), 1)
	}

	// work outlives ctx by the grace: in-flight deliveries and their
	// bookkeeping finish after an interrupt; nothing new starts.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopGrace := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(opts.Grace, cancelWork)
		context.AfterFunc(work, func() { t.Stop() })
	})
	defer stopGrace()

	var (
		mu  sync.Mutex // guards sum and progress calls
		sum ReplaySummary
	)
	finish := func(e *Envelope, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err == nil {
			sum.Succeeded++
		} else {
			sum.Failed++
			if len(sum.Failures) < 20 {
				sum.Failures = append(sum.Failures, err)
			}
		}
		if opts.Progress != nil {
			opts.Progress(ReplayProgress{Total: len(letters), Succeeded: sum.Succeeded, Failed: sum.Failed, Last: e, Err: err})
		}
	}

	next := make(chan *Letter) // unbuffered: a letter is handed out only when a worker is free
	var wg sync.WaitGroup
	for range min(opts.Parallel, max(1, len(letters))) {
		wg.Go(func() {
			for l := range next {
				done, err := replayOne(work, ctx, l.Envelope, app, opts)
				if done {
					finish(l.Envelope, err)
				}
			}
		})
	}
feed:
	for _, l := range letters {
		if err := lim.Wait(ctx); err != nil {
			break
		}
		select {
		case next <- l:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	sum.Interrupted = ctx.Err() != nil && sum.Succeeded+sum.Failed < len(letters)
	return sum
}

// replayOne delivers e and records the outcome. done is false when the
// replay was interrupted before e's outcome was known (nothing recorded:
// a re-run tries it again).
func replayOne(work, outer context.Context, e *Envelope, app Appender, opts ReplayOptions) (done bool, err error) {
	var res event.Result
	for throttles := 0; ; throttles++ {
		res = opts.Deliver(work, e)
		if res.Outcome != event.Throttled {
			break
		}
		if work.Err() != nil || outer.Err() != nil {
			return false, nil // cancelled, or throttled while stopping: not attempted as far as we know
		}
		if throttles >= maxThrottles {
			break
		}
		wait := min(max(res.RetryAfter, 100*time.Millisecond<<min(throttles, 8)), 30*time.Second)
		select {
		case <-time.After(wait):
		case <-outer.Done():
			return false, nil
		}
	}
	now := opts.Now()
	if res.Outcome == event.Delivered {
		if err := appendRetried(work, app, resolutionRecord(e, opts.To, now)); err != nil {
			return true, fmt.Errorf("retention: letter %s was delivered but its resolution was not recorded (a re-run delivers it again): %w", e.ID, err)
		}
		return true, nil
	}
	info := res.Error
	if info.Message == "" {
		info.Message = fmt.Sprintf("replay outcome %d", res.Outcome)
	}
	failure := fmt.Errorf("retention: replay of letter %s (source %s, function %s) failed: %s", e.ID, e.Source, e.Function, describe(info))
	again := *e
	again.Replays++
	again.LastError = info
	again.LastAttemptAt = now.UTC()
	rec, err := letterRecord(&again)
	if err == nil {
		err = appendRetried(work, app, rec)
	}
	if err != nil {
		return true, errors.Join(failure, fmt.Errorf("retention: letter %s: write back with replays+1: %w", e.ID, err))
	}
	return true, failure
}

// appendRetried appends rec, trying up to three times: a lost resolution
// means a duplicate delivery on the next run.
func appendRetried(ctx context.Context, app Appender, rec event.Record) error {
	var err error
	for i := range 3 {
		if err = app.Append(ctx, []event.Record{rec}); err == nil || ctx.Err() != nil {
			return err
		}
		select {
		case <-time.After(time.Duration(i+1) * 200 * time.Millisecond):
		case <-ctx.Done():
			return err
		}
	}
	return err
}

func describe(e event.ErrorInfo) string {
	if e.Status != 0 {
		return fmt.Sprintf("%s %d: %s", e.Kind, e.Status, e.Message)
	}
	if e.Kind != "" {
		return string(e.Kind) + ": " + e.Message
	}
	return e.Message
}
