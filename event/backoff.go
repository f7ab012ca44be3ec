package event

import (
	"math"
	"time"
)

// Backoff bounds the waits between retries of a batch: Initial, multiplied by
// Multiplier after each retry up to Max, each wait spread by ±Jitter.
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	Jitter     float64
}

// Delay returns the wait before retry number n (1-based): a pure function of
// n and a random draw r in [0,1), so it can be table-tested.
func (b Backoff) Delay(n int, r float64) time.Duration {
	if b.Initial <= 0 {
		b.Initial = time.Second
	}
	if b.Max < b.Initial {
		b.Max = b.Initial
	}
	if b.Multiplier < 1 {
		b.Multiplier = 1
	}
	d := float64(b.Initial) * math.Pow(b.Multiplier, float64(max(0, n-1)))
	d = min(d, float64(b.Max))
	if b.Jitter > 0 {
		d *= 1 + b.Jitter*(2*r-1)
	}
	return time.Duration(d)
}
