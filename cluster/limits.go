package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

// Acquire takes slots from this member's shares, waiting in the inner
// Limiter's fair queues; waiting is demand, which the next round turns into
// a larger share when the cluster has capacity to spare.
func (e *Engine) Acquire(ctx context.Context, fn string, scopes []string, onWait func(dispatch.Reason)) (dispatch.Lease, error) {
	return e.inner.Acquire(ctx, fn, scopes, onWait)
}

// TryAcquire takes slots from this member's shares now, or is refused; a
// refusal counts as demand in the next round.
func (e *Engine) TryAcquire(fn string, scopes []string) (dispatch.Lease, error) {
	l, err := e.inner.TryAcquire(fn, scopes)
	if t, ok := dispatch.AsThrottled(err); ok {
		e.mu.Lock()
		switch t.Reason {
		case dispatch.ReasonScope:
			e.tries[limitKey(kindScope, t.Scope)]++
		default:
			e.tries[e.keyOfFunctionLocked(fn)]++
		}
		e.mu.Unlock()
	}
	return l, err
}

// SetAccount changes the global account limit (refused like the local
// Limiter's when the reservations would leave the pool under the floor).
func (e *Engine) SetAccount(a dispatch.AccountConfig) error {
	a = a.WithDefaults()
	if err := a.Validate(); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	total := e.reservedTotalLocked()
	if left := a.Concurrency - total; left < a.MinUnreserved {
		return fmt.Errorf("%w: account: reservations total %d and would leave the unreserved pool at %d, under min_unreserved (%d)",
			dispatch.ErrInvalid, total, left, a.MinUnreserved)
	}
	e.account = a
	e.applyLocked()
	return nil
}

// PutReservation changes a global reservation.
func (e *Engine) PutReservation(fn string, n int) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if n < 0 || n > e.account.Concurrency {
		return fmt.Errorf("%w: functions.%s.reserved_concurrency: %d is out of range (0..account.concurrency, %d)", dispatch.ErrInvalid, fn, n, e.account.Concurrency)
	}
	total := e.reservedTotalLocked() - e.reserved[fn] + n
	if left := e.account.Concurrency - total; left < e.account.MinUnreserved {
		return fmt.Errorf("%w: reserving %d for function %q would leave the unreserved pool at %d, under min_unreserved (%d)",
			dispatch.ErrInvalid, n, fn, left, e.account.MinUnreserved)
	}
	e.moveFunctionLocked(fn, func() { e.reserved[fn] = n })
	return nil
}

// DeleteReservation makes fn share the pool again.
func (e *Engine) DeleteReservation(fn string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.moveFunctionLocked(fn, func() { delete(e.reserved, fn) })
}

// moveFunctionLocked applies change, which may move fn between its
// reservation and the pool. Slots held stay with the limit they were taken
// from in the inner Limiter; the shares follow at the next rounds.
func (e *Engine) moveFunctionLocked(fn string, change func()) {
	change()
	e.fnNames[fn] = true
	e.applyLocked()
}

// SetFunctionTimeout bounds fn's slot leases.
func (e *Engine) SetFunctionTimeout(fn string, d time.Duration) { e.inner.SetFunctionTimeout(fn, d) }

// SetRule adds or replaces a global rule.
func (e *Engine) SetRule(r dispatch.Rule) error {
	if err := r.Validate("rules." + r.Pattern); err != nil {
		return err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.rules[r.Pattern] = r
	e.applyLocked()
	return nil
}

// DeleteRule removes a global rule.
func (e *Engine) DeleteRule(pattern string) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	_, ok := e.rules[pattern]
	delete(e.rules, pattern)
	e.applyLocked()
	return ok
}

// Account is the global account limit.
func (e *Engine) Account() dispatch.AccountConfig {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.account
}

// Reservation is fn's global reservation.
func (e *Engine) Reservation(fn string) (int, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	n, ok := e.reserved[fn]
	return n, ok
}

// Rules are the global rules, "*" first, then by pattern.
func (e *Engine) Rules() []dispatch.Rule {
	e.mu.Lock()
	out := make([]dispatch.Rule, 0, len(e.rules))
	for _, r := range e.rules {
		out = append(out, r)
	}
	e.mu.Unlock()
	dispatch.SortRules(out)
	return out
}

// Usage is cluster-wide: the global limits, the slots held by this member
// now and by the others as their last member records say (in all and by
// member: ByProcess), and this member's waiters.
func (e *Engine) Usage() dispatch.Usage {
	local := e.inner.Usage()
	e.mu.Lock()
	defer e.mu.Unlock()
	u := dispatch.Usage{
		AccountLimit:     e.account.Concurrency,
		UnreservedLimit:  e.account.Concurrency - e.reservedTotalLocked(),
		ExpiredLeases:    local.ExpiredLeases,
		Functions:        map[string]dispatch.FunctionUsage{},
		WaitingFunctions: local.WaitingFunctions,
	}
	add := func(fn string, inFlight, waiting int) {
		fu := u.Functions[fn]
		fu.InFlight += inFlight
		fu.Waiting += waiting
		u.Functions[fn] = fu
		u.InFlight += inFlight
		if _, ok := e.reserved[fn]; !ok {
			u.UnreservedInUse += inFlight
		}
	}
	u.ByProcess = map[string]int{e.id: 0}
	for fn, fu := range local.Functions {
		add(fn, fu.InFlight, fu.Waiting)
		u.ByProcess[e.id] += fu.InFlight
	}
	for _, m := range e.members {
		if m.ID == e.id {
			continue
		}
		if _, ok := u.ByProcess[m.ID]; !ok {
			u.ByProcess[m.ID] = 0 // a member holding nothing is listed too
		}
		for fn, n := range m.InFlight {
			add(fn, n, 0)
			u.ByProcess[m.ID] += n
		}
	}
	for fn, n := range e.reserved {
		fu := u.Functions[fn]
		r := n
		fu.Reserved = &r
		u.Functions[fn] = fu
	}
	return u
}

// Scopes are cluster-wide: every scope held here or by another member (as
// its record says), and every scope of an exact rule, with the global
// limits and the slots each member holds (ByProcess).
func (e *Engine) Scopes() []dispatch.ScopeUsage {
	local := e.inner.Scopes()
	e.mu.Lock()
	defer e.mu.Unlock()
	use := map[string]int{}
	by := map[string]map[string]int{} // scope → member → slots
	hold := func(sc, id string, n int) {
		use[sc] += n
		if n > 0 {
			if by[sc] == nil {
				by[sc] = map[string]int{}
			}
			by[sc][id] += n
		}
	}
	for _, s := range local {
		hold(s.Scope, e.id, s.InFlight)
	}
	for _, m := range e.members {
		if m.ID == e.id {
			continue
		}
		for sc, n := range m.ScopeInFlight {
			hold(sc, m.ID, n)
		}
	}
	for p := range e.rules {
		if p != "*" {
			if _, ok := use[p]; !ok {
				use[p] = 0
			}
		}
	}
	out := make([]dispatch.ScopeUsage, 0, len(use))
	for name, n := range use {
		su := dispatch.ScopeUsage{Scope: name, InFlight: n, Limit: -1, Available: -1, ByProcess: by[name]}
		if r, ok := e.ruleForLocked(name); ok {
			su.Limit, su.Rule = r.Concurrency, r.Pattern
			su.Available = max(0, r.Concurrency-n)
		}
		out = append(out, su)
	}
	slices.SortFunc(out, func(a, b dispatch.ScopeUsage) int { return strings.Compare(a.Scope, b.Scope) })
	return out
}

// Queues are cluster-wide: this member's waiters now and every other
// member's as its last record says (renewed about every second), each
// with the member's id in Process (each member queues its own).
func (e *Engine) Queues() []dispatch.QueueStatus {
	out := e.inner.Queues()
	e.mu.Lock()
	defer e.mu.Unlock()
	for i := range out {
		out[i].Process = e.id
	}
	for _, m := range e.members {
		if m.ID == e.id {
			continue
		}
		for _, q := range m.Queues {
			q.Process = m.ID
			out = append(out, q)
		}
	}
	slices.SortStableFunc(out, func(a, b dispatch.QueueStatus) int {
		if c := strings.Compare(a.Function, b.Function); c != 0 {
			return c
		}
		if c := slices.Compare(a.Scopes, b.Scopes); c != 0 {
			return c
		}
		return strings.Compare(a.Process, b.Process)
	})
	return out
}

// Close refuses new acquisitions and wakes the waiters (ErrClosed): the
// member begins stopping. What it holds on each limit now is kept claimed
// (and renewed) until Stop, which leaves it to lapse a lease later: a
// stopping process's sources abandon their invocations, which frees their
// slots here while the function may still be running them. It is safe to
// call twice.
func (e *Engine) Close() {
	e.mu.Lock()
	if !e.closed {
		e.closed = true
		e.kept = map[string]int{}
		for key := range e.demandLocked() {
			if n := e.inUseLocked(key); n > 0 {
				e.kept[key] = n
			}
		}
		for _, ls := range e.limits {
			ls.applied = 0
		}
		e.applyLocked()
	}
	e.mu.Unlock()
	e.inner.Close()
}
