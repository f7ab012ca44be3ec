package dispatch

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Live changes. Each one takes effect at once: queued waiters are
// re-evaluated under the new limits before the call returns.

// SetAccount changes the account limit and the unreserved floor. It is refused
// (ErrInvalid) when the current reservations would leave the unreserved pool
// under the new floor.
func (l *Limiter) SetAccount(a AccountConfig) error {
	a = a.WithDefaults()
	if err := a.Validate(); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if left := a.Concurrency - l.reservedTotal; left < a.MinUnreserved {
		return fmt.Errorf("%w: account: reservations total %d and would leave the unreserved pool at %d, under min_unreserved (%d)",
			ErrInvalid, l.reservedTotal, left, a.MinUnreserved)
	}
	l.account = a
	l.serveLocked()
	return nil
}

// PutReservation reserves n slots of the account for fn: its guarantee and its
// ceiling; 0 throttles every invocation of fn. It is refused (ErrInvalid) when
// it would leave the unreserved pool under min_unreserved.
func (l *Limiter) PutReservation(fn string, n int) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if n < 0 || n > l.account.Concurrency {
		return fmt.Errorf("%w: functions.%s.reserved_concurrency: %d is out of range (0..account.concurrency, %d)", ErrInvalid, fn, n, l.account.Concurrency)
	}
	f := l.fnLocked(fn)
	total := l.reservedTotal + n
	if f.hasReservation {
		total -= f.reserved
	}
	if left := l.account.Concurrency - total; left < l.account.MinUnreserved {
		return fmt.Errorf("%w: reserving %d for function %q would leave the unreserved pool at %d, under min_unreserved (%d)",
			ErrInvalid, n, fn, left, l.account.MinUnreserved)
	}
	l.reservedTotal = total
	f.hasReservation, f.reserved = true, n
	l.serveLocked()
	return nil
}

// DeleteReservation makes fn share the unreserved pool again.
func (l *Limiter) DeleteReservation(fn string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if f := l.fns[fn]; f != nil && f.hasReservation {
		l.reservedTotal -= f.reserved
		f.hasReservation, f.reserved = false, 0
	}
	l.serveLocked()
}

// SetFunctionTimeout sets the timeout that, plus the grace, bounds fn's slot
// leases. Leases already granted keep their lifetime.
func (l *Limiter) SetFunctionTimeout(fn string, d time.Duration) {
	l.mu.Lock()
	l.fnLocked(fn).timeout = d
	l.mu.Unlock()
}

// SetRule adds or replaces the rule of r.Pattern.
func (l *Limiter) SetRule(r Rule) error {
	if err := r.Validate("rules." + r.Pattern); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.rules[r.Pattern] = r
	l.rulesVer++
	l.serveLocked()
	return nil
}

// DeleteRule removes the rule of pattern; it reports whether there was one.
func (l *Limiter) DeleteRule(pattern string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.rules[pattern]
	delete(l.rules, pattern)
	l.rulesVer++
	l.serveLocked()
	return ok
}

// Rules returns the rules, "*" first, then by pattern.
func (l *Limiter) Rules() []Rule {
	l.mu.Lock()
	out := make([]Rule, 0, len(l.rules))
	for _, r := range l.rules {
		out = append(out, r)
	}
	l.mu.Unlock()
	SortRules(out)
	return out
}

// SortRules sorts rules the way Rules lists them: "*" first, then by
// pattern.
func SortRules(rules []Rule) {
	slices.SortFunc(rules, func(a, b Rule) int {
		switch {
		case a.Pattern == b.Pattern:
			return 0
		case a.Pattern == "*":
			return -1
		case b.Pattern == "*":
			return 1
		}
		return strings.Compare(a.Pattern, b.Pattern)
	})
}

// Usage is a consistent snapshot of the limiter.
type Usage struct {
	AccountLimit     int // account concurrency
	UnreservedLimit  int // account limit − all reservations
	InFlight         int // slots held, all functions
	UnreservedInUse  int // slots held from the unreserved pool
	ExpiredLeases    int64
	Functions        map[string]FunctionUsage // functions with a reservation, slots held or waiters
	WaitingFunctions int                      // functions with at least one waiter
	// ByProcess is, in cluster mode, the slots held by each member of the
	// cluster; nil from a local Limiter.
	ByProcess map[string]int
}

// FunctionUsage is one function's share of a Usage.
type FunctionUsage struct {
	Reserved *int // nil without a reservation
	InFlight int
	Waiting  int
}

// Usage returns a snapshot of slots held and waiters queued.
func (l *Limiter) Usage() Usage {
	l.mu.Lock()
	defer l.mu.Unlock()
	u := Usage{
		AccountLimit:     l.account.Concurrency,
		UnreservedLimit:  l.account.Concurrency - l.reservedTotal,
		UnreservedInUse:  l.unreservedUse,
		ExpiredLeases:    l.expired,
		Functions:        make(map[string]FunctionUsage, len(l.fns)),
		WaitingFunctions: l.waitingFns,
	}
	for name, f := range l.fns {
		if !f.hasReservation && f.inUse == 0 && f.waiting == 0 {
			continue
		}
		fu := FunctionUsage{InFlight: f.inUse, Waiting: f.waiting}
		if f.hasReservation {
			r := f.reserved
			fu.Reserved = &r
		}
		u.Functions[name] = fu
		u.InFlight += f.inUse
	}
	return u
}

// ScopeUsage is one scope's line in GET /v1/limits.
type ScopeUsage struct {
	Scope     string `json:"scope"`
	InFlight  int    `json:"usage"`
	Limit     int    `json:"limit"` // -1: no rule limits this scope
	Available int    `json:"available"`
	Rule      string `json:"rule,omitempty"` // the pattern of the matching rule
	// ByProcess is, in cluster mode, the slots of the scope held by each
	// member of the cluster; nil from a local Limiter.
	ByProcess map[string]int `json:"byProcess,omitempty"`
}

// Scopes returns the usage of every scope holding slots, and of every scope
// named by an exact rule, sorted by scope.
func (l *Limiter) Scopes() []ScopeUsage {
	l.mu.Lock()
	defer l.mu.Unlock()
	names := make(map[string]struct{}, len(l.scopes)+len(l.rules))
	for sc := range l.scopes {
		names[sc] = struct{}{}
	}
	for p := range l.rules {
		if p != "*" {
			names[p] = struct{}{}
		}
	}
	out := make([]ScopeUsage, 0, len(names))
	for name := range names {
		u := ScopeUsage{Scope: name, Limit: -1, Available: -1}
		if sc := l.scopes[name]; sc != nil {
			u.InFlight = sc.inUse
		}
		if r, ok := l.ruleForLocked(name); ok {
			u.Limit, u.Rule = r.Concurrency, r.Pattern
			u.Available = max(0, r.Concurrency-u.InFlight)
		}
		out = append(out, u)
	}
	slices.SortFunc(out, func(a, b ScopeUsage) int { return strings.Compare(a.Scope, b.Scope) })
	return out
}
