package dispatch

import (
	"context"
	"sync/atomic"
	"testing"
)

// countingLimits is a Limits of another kind: it forwards to a local
// Limiter and counts what reaches it, so a test can tell the Dispatcher
// went through the engine it was given.
type countingLimits struct {
	*Limiter
	acquired, released atomic.Int32
}

type countedLease struct {
	Lease
	c *countingLimits
}

func (l countedLease) Release() { l.c.released.Add(1); l.Lease.Release() }

func (c *countingLimits) Acquire(ctx context.Context, fn string, scopes []string, onWait func(Reason)) (Lease, error) {
	s, err := c.Limiter.Acquire(ctx, fn, scopes, onWait)
	if err != nil {
		return nil, err
	}
	c.acquired.Add(1)
	return countedLease{s, c}, nil
}

func (c *countingLimits) TryAcquire(fn string, scopes []string) (Lease, error) {
	s, err := c.Limiter.TryAcquire(fn, scopes)
	if err != nil {
		return nil, err
	}
	c.acquired.Add(1)
	return countedLease{s, c}, nil
}

// WithLimits plugs another engine into the Dispatcher: every invocation
// takes and gives back its slots there, and its snapshots are the ones
// Limiter() shows.
func TestDispatcherWithLimits(t *testing.T) {
	cfg := Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1}}
	local, err := NewLimiter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	eng := &countingLimits{Limiter: local}
	d, _ := newTestDispatcher(t, cfg, WithLimits(eng))
	d.Register("fn", HandlerFunc(func(context.Context, *Request) (*Response, error) { return &Response{Status: 200}, nil }), 0)
	if _, err := d.Invoke(context.Background(), &Request{Function: "fn"}, nil); err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	if _, err := d.TryInvoke(context.Background(), &Request{Function: "fn"}); err != nil {
		t.Fatalf("TryInvoke: %v", err)
	}
	if a, r := eng.acquired.Load(), eng.released.Load(); a != 2 || r != 2 {
		t.Fatalf("engine saw %d acquisitions and %d releases, want 2 and 2", a, r)
	}
	if got := d.Limiter(); got != Limits(eng) {
		t.Fatalf("Limiter() = %T, want the engine given by WithLimits", got)
	}
	if _, err := New(Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 20}}, WithLimits(eng)); err == nil {
		t.Fatal("New with WithLimits accepted an invalid Config")
	}
}
