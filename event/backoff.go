package event

import "time"

// Backoff bounds the waits between retries: Initial, multiplied by
// Multiplier after each retry up to Max, each wait spread by ±Jitter
// (retry_backoff in the configuration). The schedule itself is the
// redelivery policy's (redelivery.Delay).
type Backoff struct {
	Initial    time.Duration
	Max        time.Duration
	Multiplier float64
	Jitter     float64
}
