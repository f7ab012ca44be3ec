package dispatch

import (
	"slices"
	"strings"
	"time"
)

// QueueStatus is one queue of waiters in GET /v1/queues: the invocations of
// one function with one set of scopes that wait for slots.
type QueueStatus struct {
	Function string    `json:"function"`
	Scopes   []string  `json:"scopes,omitempty"`
	Waiting  int       `json:"waiting"`
	Oldest   time.Time `json:"oldestSince"` // when the oldest waiter began to wait
	Reason   Reason    `json:"reason"`      // why the oldest waiter waits now
	// Process is the cluster member whose waiters these are, in cluster
	// mode (each process queues its own); "" from a local Limiter.
	Process string `json:"process,omitempty"`
}

// Queues returns every non-empty queue of waiters, by function then scopes.
// It is a snapshot: the queues move on as soon as it returns.
func (l *Limiter) Queues() []QueueStatus {
	l.mu.Lock()
	out := make([]QueueStatus, 0, len(l.ring))
	for _, q := range l.ring {
		front := q.waiters.Front()
		if front == nil {
			continue
		}
		w := front.Value.(*waiter)
		out = append(out, QueueStatus{Function: w.fn, Scopes: slices.Clone(w.scopes), Waiting: q.waiters.Len(),
			Oldest: w.since, Reason: w.reason})
	}
	l.mu.Unlock()
	slices.SortFunc(out, func(a, b QueueStatus) int {
		if c := strings.Compare(a.Function, b.Function); c != 0 {
			return c
		}
		return slices.Compare(a.Scopes, b.Scopes)
	})
	return out
}

// Account returns the account limits in force (after defaults).
func (l *Limiter) Account() AccountConfig {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.account
}

// Reservation returns fn's reservation, and false when it has none.
func (l *Limiter) Reservation(fn string) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.fns[fn]; f != nil && f.hasReservation {
		return f.reserved, true
	}
	return 0, false
}
