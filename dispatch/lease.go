package dispatch

import (
	"context"
	"time"
)

// Lease is a set of slots held by one invocation. Release it when the
// invocation ends; if it is never released, the slots come back when the
// lease expires (the function's timeout plus a grace).
//
// A Lease of a shared (cluster-wide) engine is a grant of a remote book: its
// Release must not block the caller on the network for long (it may hand the
// release to a background sender), and Expires is the engine's own lifetime
// of the grant, after which the slots are back whatever happened to this
// process.
type Lease interface {
	// Release gives the slots back. It is safe to call more than once and
	// after the lease expired, and never frees a slot that now belongs to
	// someone else.
	Release()
	// Expires reports when the slots are taken back if not released.
	Expires() time.Time
}

// Limits is the limit engine the Dispatcher, the admin API and the metrics
// use: taking and giving back slots, live changes of the limits, and
// snapshots of what is held and waiting. Limiter is the single-process
// implementation; a cluster-wide one (limits shared by several sluice
// processes) implements the same methods over a shared book, so callers
// cannot tell which one they hold.
//
// The contract every implementation keeps:
//   - all or nothing: a grant holds the function slot and every scope slot
//     together, a waiter holds nothing;
//   - Acquire waits in line (fairly across queues) until ctx ends; when ctx
//     ends first the error matches ctx.Err() and *ThrottledError with the
//     last reason;
//   - TryAcquire never waits: it answers with the Lease or a
//     *ThrottledError naming the limit that is full;
//   - waiters are served again on every release, every live change and every
//     lease expiry, and at no other time;
//   - a refused live change wraps ErrInvalid and changes nothing;
//   - after Close, acquisitions fail with ErrClosed.
type Limits interface {
	Acquire(ctx context.Context, fn string, scopes []string, onWait func(Reason)) (Lease, error)
	TryAcquire(fn string, scopes []string) (Lease, error)

	// Live changes; each takes effect before it returns.
	SetAccount(a AccountConfig) error
	PutReservation(fn string, n int) error
	DeleteReservation(fn string)
	SetFunctionTimeout(fn string, d time.Duration)
	SetRule(r Rule) error
	DeleteRule(pattern string) bool

	// Snapshots.
	Account() AccountConfig
	Reservation(fn string) (int, bool)
	Rules() []Rule
	Usage() Usage
	Scopes() []ScopeUsage
	Queues() []QueueStatus

	// Close wakes every waiter with ErrClosed and refuses new acquisitions.
	Close()
}

var _ Limits = (*Limiter)(nil)
