package redelivery

import (
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/sluicehq/sluice/event"
)

// norm applies the defaults of a Backoff: Initial 1s, Max at least Initial,
// Multiplier at least 1.
func norm(b event.Backoff) event.Backoff {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Multiplier < 1 {
		b.Multiplier = 1
	}
	return b
}

// exponential returns b as backoff's ExponentialBackOff, jittered by
// ±Jitter and never giving up on its own (the caller's ctx ends it).
func exponential(b event.Backoff) *backoff.ExponentialBackOff {
	b = norm(b)
	eb := &backoff.ExponentialBackOff{
		InitialInterval:     b.Initial,
		RandomizationFactor: max(0, min(b.Jitter, 1)),
		Multiplier:          b.Multiplier,
		MaxInterval:         b.Max,
		MaxElapsedTime:      0, // bounded by attempts and ages, not by the schedule
		Stop:                backoff.Stop,
		Clock:               backoff.SystemClock,
	}
	eb.Reset()
	return eb
}

func (p *Policy) exponential() *backoff.ExponentialBackOff { return exponential(p.Backoff) }

// Delay returns the wait before retry number n (1-based; 0 counts as 1):
// Initial × Multiplier^(n−1), at most Max — the schedule of backoff's
// ExponentialBackOff — spread by ±Jitter with the random draw r in [0,1).
// It is a pure function of its arguments, so it can be table-tested.
func Delay(b event.Backoff, n int, r float64) time.Duration {
	b = norm(b)
	eb := exponential(event.Backoff{Initial: b.Initial, Max: b.Max, Multiplier: b.Multiplier}) // no jitter: r applies it
	d := eb.NextBackOff()
	for i := 1; i < n && d < b.Max; i++ {
		d = eb.NextBackOff()
	}
	if b.Jitter > 0 {
		d = time.Duration(float64(d) * (1 + b.Jitter*(2*r-1)))
	}
	return d
}
