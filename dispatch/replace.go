package dispatch

// Replace sets the account limit, every reservation and every rule at once,
// under one lock, and then serves the waiters: no waiter is ever admitted
// against a mix of the old and the new limits. Functions missing from
// reservations share the unreserved pool (account − Σ reservations).
//
// It is the hook of an engine that runs a Limiter on a share of larger
// limits (the cluster engine gives each process its shares this way), so it
// does not apply defaults nor check min_unreserved: an account of 0 admits
// nothing, a pool that the reservations fill admits nothing from the pool.
// Negative values count as 0. Running leases are kept; a limit lowered
// below its usage grants nothing new until usage is under it.
func (l *Limiter) Replace(account int, reservations map[string]int, rules []Rule) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.account = AccountConfig{Concurrency: max(0, account)}
	l.reservedTotal = 0
	for name, f := range l.fns {
		n, ok := reservations[name]
		f.hasReservation, f.reserved = ok, max(0, n)
		if ok {
			l.reservedTotal += f.reserved
		}
	}
	for name, n := range reservations {
		if _, seen := l.fns[name]; !seen {
			f := l.fnLocked(name)
			f.hasReservation, f.reserved = true, max(0, n)
			l.reservedTotal += f.reserved
		}
	}
	clear(l.rules)
	for _, r := range rules {
		r.Concurrency = max(0, r.Concurrency)
		l.rules[r.Pattern] = r
	}
	l.rulesVer++
	if !l.closed {
		l.serveLocked()
	}
}
