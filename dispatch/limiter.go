package dispatch

import (
	"container/list"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultLeaseGrace is added to a function's timeout to get the lifetime of a
// slot lease: a holder that neither finished nor released by then has crashed
// or hung, and its slot is taken back.
const DefaultLeaseGrace = 10 * time.Second

// Limiter is the local, single-process implementation of Limits: it hands
// out concurrency slots from books kept in memory. An invocation runs only while it holds,
// at once, a slot of its function (its reserved slice, or the unreserved pool)
// and a slot in the matching rule of each of its scopes. It takes all of them
// together or none, so a waiter never holds a slot while it waits for another.
//
// Waiters are queued per (function, scopes) and served round-robin across
// queues, FIFO within one: a busy scope cannot starve the others, and within a
// scope the oldest waiter goes first.
//
// Limits are enforced when a slot is granted. A live change (SetAccount,
// PutReservation, SetRule, ...) re-evaluates every queued waiter at once, and
// a lowered limit lets running invocations finish but grants nothing new until
// usage is back under it.
type Limiter struct {
	now   func() time.Time
	grace time.Duration

	// mu guards every field below and the mutable fields of the states,
	// leases and waiters they point to. It is never held while calling out of
	// the package (no handler, no callback, no channel send that can block:
	// waiter channels have room for their one signal).
	mu            sync.Mutex
	closed        bool
	account       AccountConfig
	reservedTotal int                    // sum of all reservations
	unreservedUse int                    // slots held from the unreserved pool
	fns           map[string]*fnState    // every function seen; bounded by the config and the API
	rules         map[string]Rule        // pattern → rule
	rulesVer      uint64                 // bumped on every rule change, to invalidate scopeState.rule
	scopes        map[string]*scopeState // scopes holding slots; deleted at zero, so memory follows activity, not history
	waitingFns    int                    // functions with at least one waiter
	queues        map[string]*queue      // queue key → waiters of one (function, scopes)
	ring          []*queue               // non-empty queues in round-robin order
	next          int                    // ring position served first in the next round
	leases        lease                  // sentinel of the circular list of live leases
	nleases       int
	expiry        *time.Timer // fires at expiryAt to take back stale leases
	expiryAt      time.Time
	expired       int64 // leases taken back after their lifetime, for metrics
}

// fnState is the limiter's book for one function.
type fnState struct {
	name           string
	hasReservation bool
	reserved       int
	timeout        time.Duration
	inUse          int // slots held, from either pool
	waiting        int // waiters queued
}

// scopeState is the limiter's book for one scope with slots held.
type scopeState struct {
	name    string
	inUse   int
	rule    Rule // cached match, valid while ruleVer == Limiter.rulesVer
	limited bool
	ruleVer uint64
}

// LimiterOption configures a Limiter.
type LimiterOption func(*Limiter)

// WithLeaseGrace sets how long after a function's timeout its slot is taken
// back from a holder that vanished.
func WithLeaseGrace(d time.Duration) LimiterOption { return func(l *Limiter) { l.grace = d } }

// NewLimiter returns a Limiter for cfg, refusing an invalid cfg
// (Config.Validate).
func NewLimiter(cfg Config, opts ...LimiterOption) (*Limiter, error) {
	cfg.Account = cfg.Account.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	l := &Limiter{
		now:     time.Now,
		grace:   DefaultLeaseGrace,
		account: cfg.Account,
		fns:     make(map[string]*fnState, len(cfg.Functions)),
		rules:   make(map[string]Rule, len(cfg.Rules)),
		scopes:  make(map[string]*scopeState),
		queues:  make(map[string]*queue),
	}
	l.leases.prev, l.leases.next = &l.leases, &l.leases
	for _, o := range opts {
		o(l)
	}
	for name, f := range cfg.Functions {
		st := l.fnLocked(name)
		st.timeout = f.Timeout
		if f.ReservedConcurrency != nil {
			st.hasReservation, st.reserved = true, *f.ReservedConcurrency
			l.reservedTotal += st.reserved
		}
	}
	for _, r := range cfg.Rules {
		l.rules[r.Pattern] = r
	}
	return l, nil
}

// fnLocked returns the book of function name, creating it.
func (l *Limiter) fnLocked(name string) *fnState {
	f := l.fns[name]
	if f == nil {
		f = &fnState{name: name}
		l.fns[name] = f
	}
	return f
}

// lease is the local Limiter's Lease: the slots it took, and its place in
// the list of live leases that the expiry timer walks.
type lease struct {
	l          *Limiter
	fn         *fnState
	scopes     []*scopeState
	pooled     bool // took its function slot from the unreserved pool
	expires    time.Time
	done       bool   // released or expired; guarded by l.mu
	prev, next *lease // the limiter's list of live leases; guarded by l.mu
}

// Release gives the slots back. It is safe to call more than once and after
// the lease expired.
func (s *lease) Release() {
	l := s.l
	l.mu.Lock()
	if !s.done {
		l.freeLocked(s)
		if len(l.ring) > 0 {
			l.serveLocked()
		}
	}
	l.mu.Unlock()
}

// Expires reports when the slots are taken back if not released.
func (s *lease) Expires() time.Time { return s.expires }

// waiter is one blocked Acquire.
type waiter struct {
	fn     string
	scopes []string
	ready  chan *lease // capacity 1: the one grant never blocks the granter
	reason Reason      // why it waits now; guarded by Limiter.mu
	scope  string      // the full scope, for ReasonScope; guarded by Limiter.mu
	since  time.Time   // when it started waiting, for Queues (oldest wait)
	q      *queue
	elem   *list.Element
}

// queue holds the waiters of one (function, scopes), oldest first.
type queue struct {
	key     string
	waiters list.List // of *waiter
}

// TryAcquire takes the slots of fn and scopes if all are free now, and
// otherwise returns a *ThrottledError saying which limit is full. It never
// waits: synchronous ingress answers 429 with the reason.
func (l *Limiter) TryAcquire(fn string, scopes []string) (Lease, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, ErrClosed
	}
	scopes = normScopes(scopes)
	if t := l.admitLocked(fn, scopes); t != nil {
		return nil, t
	}
	return l.grantLocked(fn, scopes), nil
}

// Acquire takes the slots of fn and scopes, waiting in line until all are
// free at once. While it waits it holds nothing. If it has to wait, onWait (if
// not nil) is called once with the reason, outside the lock, before waiting.
//
// When ctx ends first, Acquire returns an error that matches both ctx.Err()
// (errors.Is) and *ThrottledError with the last reason it waited for
// (AsThrottled), so a stream shard can tell "expired while throttled".
func (l *Limiter) Acquire(ctx context.Context, fn string, scopes []string, onWait func(Reason)) (Lease, error) {
	scopes = normScopes(scopes)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	t := l.admitLocked(fn, scopes)
	if t == nil {
		s := l.grantLocked(fn, scopes)
		l.mu.Unlock()
		return s, nil
	}
	if err := ctx.Err(); err != nil {
		l.mu.Unlock()
		return nil, fmt.Errorf("%w: %w", err, t)
	}
	w := &waiter{fn: fn, scopes: scopes, ready: make(chan *lease, 1), reason: t.Reason, scope: t.Scope, since: l.now()}
	l.enqueueLocked(w)
	l.mu.Unlock()
	if onWait != nil {
		onWait(t.Reason)
	}

	select {
	case s := <-w.ready:
		if s == nil {
			return nil, ErrClosed
		}
		return s, nil
	case <-ctx.Done():
	}
	l.mu.Lock()
	if w.elem == nil {
		// Granted (or closed) between ctx.Done and taking the lock: the grant
		// is in the channel. Give it back; the caller is gone.
		l.mu.Unlock()
		if s := <-w.ready; s != nil {
			s.Release()
		}
	} else {
		l.dequeueLocked(w)
		l.mu.Unlock()
	}
	return nil, fmt.Errorf("%w: %w", ctx.Err(), &ThrottledError{Reason: w.reason, Scope: w.scope})
}

// Close wakes every waiter with ErrClosed and refuses new acquisitions.
// Leases already granted stay valid until released.
func (l *Limiter) Close() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	l.closed = true
	for _, q := range l.ring {
		for e := q.waiters.Front(); e != nil; e = e.Next() {
			w := e.Value.(*waiter)
			w.elem = nil
			w.ready <- nil
		}
	}
	l.ring, l.queues, l.waitingFns = nil, map[string]*queue{}, 0
	for _, f := range l.fns {
		f.waiting = 0
	}
	if l.expiry != nil {
		l.expiry.Stop()
	}
}

// admitLocked checks whether fn and scopes have free slots now. It returns
// nil or the throttle that stands in the way; the function is checked before
// the scopes.
func (l *Limiter) admitLocked(fn string, scopes []string) *ThrottledError {
	f := l.fns[fn]
	if f != nil && f.hasReservation {
		if f.inUse >= f.reserved {
			return &ThrottledError{Reason: ReasonReserved}
		}
	} else if l.unreservedUse >= l.account.Concurrency-l.reservedTotal {
		return &ThrottledError{Reason: ReasonAccount}
	}
	for _, name := range scopes {
		var inUse int
		r, limited := Rule{}, false
		if sc := l.scopes[name]; sc != nil {
			inUse = sc.inUse
			r, limited = l.scopeRuleLocked(sc)
		} else {
			r, limited = l.ruleForLocked(name)
		}
		if limited && inUse >= r.Concurrency {
			return &ThrottledError{Reason: ReasonScope, Scope: name}
		}
	}
	return nil
}

// scopeRuleLocked returns the rule limiting sc, from its cache when the rules
// have not changed since.
func (l *Limiter) scopeRuleLocked(sc *scopeState) (Rule, bool) {
	if sc.ruleVer != l.rulesVer+1 {
		sc.rule, sc.limited = l.ruleForLocked(sc.name)
		sc.ruleVer = l.rulesVer + 1 // +1 so the zero value means "not cached"
	}
	return sc.rule, sc.limited
}

// ruleForLocked returns the rule that limits scope: its enabled exact rule,
// else the enabled "*" rule, else none.
func (l *Limiter) ruleForLocked(scope string) (Rule, bool) {
	if r, ok := l.rules[scope]; ok && !r.Disabled {
		return r, true
	}
	if r, ok := l.rules["*"]; ok && !r.Disabled {
		return r, true
	}
	return Rule{}, false
}

func (l *Limiter) grantLocked(fn string, scopes []string) *lease {
	f := l.fnLocked(fn)
	timeout := f.timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	s := &lease{l: l, fn: f, pooled: !f.hasReservation, expires: l.now().Add(timeout + l.grace)}
	f.inUse++
	if s.pooled {
		l.unreservedUse++
	}
	if len(scopes) > 0 {
		s.scopes = make([]*scopeState, len(scopes))
		for i, name := range scopes {
			sc := l.scopes[name]
			if sc == nil {
				sc = &scopeState{name: name}
				l.scopes[name] = sc
			}
			sc.inUse++
			s.scopes[i] = sc
		}
	}
	// Append to the list of live leases.
	s.prev, s.next = l.leases.prev, &l.leases
	l.leases.prev.next = s
	l.leases.prev = s
	l.nleases++
	l.armExpiryLocked(s.expires)
	return s
}

func (l *Limiter) freeLocked(s *lease) {
	s.done = true
	s.prev.next, s.next.prev = s.next, s.prev
	s.prev, s.next = nil, nil
	l.nleases--
	s.fn.inUse--
	if s.pooled {
		l.unreservedUse--
	}
	for _, sc := range s.scopes {
		if sc.inUse--; sc.inUse == 0 {
			delete(l.scopes, sc.name)
		}
	}
}

func queueKey(fn string, scopes []string) string {
	if len(scopes) == 0 {
		return fn
	}
	return fn + "\x00" + strings.Join(scopes, "\x00")
}

func (l *Limiter) enqueueLocked(w *waiter) {
	key := queueKey(w.fn, w.scopes)
	q := l.queues[key]
	if q == nil {
		q = &queue{key: key}
		l.queues[key] = q
		// A new queue goes to the back of the line: just before l.next, so
		// that it is served after every queue already waiting, the last one
		// served included. Appending instead would put it ahead of the
		// queues in ring[:l.next], and first of all when l.next is
		// len(l.ring) (the last queue was served and emptied): a scope with
		// one waiter re-joins as a new queue each time it is served, and
		// took that place again and again while scopes with several
		// waiters, whose queues stay in the ring, starved.
		i := min(l.next, len(l.ring))
		l.ring = slices.Insert(l.ring, i, q)
		l.next = i + 1 // the same queue as before, one place further
	}
	w.q = q
	w.elem = q.waiters.PushBack(w)
	f := l.fnLocked(w.fn)
	if f.waiting++; f.waiting == 1 {
		l.waitingFns++
	}
}

// dequeueLocked removes w from its queue, and the queue from the ring when it
// empties.
func (l *Limiter) dequeueLocked(w *waiter) {
	q := w.q
	q.waiters.Remove(w.elem)
	w.elem = nil
	if f := l.fns[w.fn]; f != nil {
		f.waiting--
		if f.waiting == 0 {
			l.waitingFns--
		}
	}
	if q.waiters.Len() > 0 {
		return
	}
	delete(l.queues, q.key)
	i := slices.Index(l.ring, q)
	l.ring = slices.Delete(l.ring, i, i+1)
	if l.next > i {
		l.next--
	}
}

// serveLocked grants slots to queued waiters, round-robin across queues and
// FIFO within each, until a whole round grants nothing. It runs after every
// release and every live change of limits.
//
// l.next is the queue served first in the next round: it moves only past a
// queue that was granted a slot, never past one that was skipped, so a
// release serves the queue after the last one served. New queues are
// inserted just before it (enqueueLocked), at the end of the round.
func (l *Limiter) serveLocked() {
	for granted := true; granted && len(l.ring) > 0; {
		granted = false
		// full remembers the functions found full in this round, so that
		// thousands of queues waiting on one busy function cost a map lookup
		// each.
		var full map[string]Reason
		if l.next >= len(l.ring) {
			l.next = 0
		}
		i := l.next
		for n := len(l.ring); n > 0; n-- {
			q := l.ring[i]
			w := q.waiters.Front().Value.(*waiter)
			if r, ok := full[w.fn]; ok {
				w.reason, w.scope = r, ""
			} else if t := l.admitLocked(w.fn, w.scopes); t != nil {
				w.reason, w.scope = t.Reason, t.Scope
				if t.Reason != ReasonScope {
					if full == nil {
						full = make(map[string]Reason)
					}
					full[w.fn] = t.Reason
				}
			} else {
				s := l.grantLocked(w.fn, w.scopes)
				l.next = i + 1
				l.dequeueLocked(w) // keeps l.next on the following queue if q went away
				w.ready <- s
				granted = true
				if len(l.ring) == 0 {
					return
				}
				if q.waiters.Len() == 0 {
					i-- // q left the ring: the following queue moved into slot i
				}
			}
			if i++; i >= len(l.ring) {
				i = 0
			}
		}
	}
}

// armExpiryLocked makes sure the expiry timer fires no later than at.
func (l *Limiter) armExpiryLocked(at time.Time) {
	if l.expiry != nil && !l.expiryAt.IsZero() && !at.Before(l.expiryAt) {
		return
	}
	d := at.Sub(l.now())
	l.expiryAt = at
	if l.expiry == nil {
		l.expiry = time.AfterFunc(d, l.expire)
		return
	}
	l.expiry.Reset(d)
}

// expire takes back the slots of leases whose lifetime is over, then re-arms
// the timer for the earliest remaining lease.
func (l *Limiter) expire() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return
	}
	now := l.now()
	var earliest time.Time
	freed := false
	for s := l.leases.next; s != &l.leases; {
		next := s.next
		if !s.expires.After(now) {
			l.freeLocked(s)
			l.expired++
			freed = true
		} else if earliest.IsZero() || s.expires.Before(earliest) {
			earliest = s.expires
		}
		s = next
	}
	l.expiryAt = time.Time{}
	if !earliest.IsZero() {
		l.armExpiryLocked(earliest)
	}
	if freed {
		l.serveLocked()
	}
}

// normScopes drops empty and repeated scopes and sorts the rest, so a batch
// takes one slot per distinct scope and equal sets share a queue.
func normScopes(scopes []string) []string {
	if len(scopes) == 0 {
		return nil
	}
	if len(scopes) == 1 {
		if scopes[0] == "" {
			return nil
		}
		return scopes
	}
	out := slices.Clone(scopes)
	slices.Sort(out)
	out = slices.Compact(out)
	if out[0] == "" {
		out = out[1:]
	}
	return out
}
