package integration

import (
	"net/http"
	"testing"
)

// TestChaosChainMayStart: the checker's rule for a second retry chain
// accepts only a re-read retry record (or the source record), so it cannot
// explain away attempts that went back to a number no record carried.
func TestChaosChainMayStart(t *testing.T) {
	throttle := func(s int) bool { return s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable }
	calls := func(as ...int) []chaosCall { // attempt, status pairs
		var out []chaosCall
		for i := 0; i+1 < len(as); i += 2 {
			out = append(out, chaosCall{attempt: as[i], status: as[i+1]})
		}
		return out
	}
	for _, c := range []struct {
		name    string
		prior   []chaosCall
		attempt int
		want    bool
	}{
		{"the source record read again", calls(1, 500, 2, 500, 3, 500), 1, true},
		{"the retry record of attempt 2 read again", calls(1, 500, 2, 500, 3, 500), 3, true},
		{"the retry record of a throttled attempt 2 read again", calls(1, 500, 2, 429), 2, true},
		{"a retry record no invocation wrote (attempt 2 was delivered)", calls(1, 500, 2, 200), 3, false},
		{"a retry record no invocation wrote (attempt 2 was permanent)", calls(1, 500, 2, 400), 3, false},
		{"an attempt no retry record carried", calls(1, 500), 3, false},
		{"no earlier invocation", nil, 2, false},
		{"a timeout (no status) writes a retry record", calls(1, 0), 2, true},
	} {
		if got := chainMayStart(c.prior, c.attempt, throttle); got != c.want {
			t.Errorf("%s: chainMayStart(%v, %d) = %v, want %v", c.name, c.prior, c.attempt, got, c.want)
		}
	}
}
