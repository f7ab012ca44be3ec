package cluster

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

func ptr(n int) *int { return &n }

// testBase is the acceptance setup: one function with a reservation of 6
// and a "*" rule of 2 per scope.
func testBase() dispatch.Config {
	return dispatch.Config{
		Account:   dispatch.AccountConfig{Concurrency: 1000, MinUnreserved: 100},
		Functions: map[string]dispatch.FunctionConfig{"fn": {Timeout: 5 * time.Second, ReservedConcurrency: ptr(6)}},
		Rules:     []dispatch.Rule{{Pattern: "*", Concurrency: 2}},
	}
}

func startEngines(t *testing.T, kv *memKV, n int) []*Engine {
	t.Helper()
	var out []*Engine
	for i := range n {
		e, err := New(Config{Name: "t", Broker: "bus", Lease: 2 * time.Second}, testBase())
		if err != nil {
			t.Fatal(err)
		}
		e.id = fmt.Sprintf("m%d", i)
		e.Start(kv)
		t.Cleanup(func() { e.Stop(); e.Close() })
		out = append(out, e)
	}
	return out
}

// counter counts concurrent holders across engines, overall and per scope,
// and keeps the maxima.
type counter struct {
	mu       sync.Mutex
	cur, max int
	scope    map[string]int
	scopeMax int
	busyNs   int64 // time-weighted sum of cur, for the average
	last     time.Time
}

func (c *counter) add(scope string, d int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	if !c.last.IsZero() {
		c.busyNs += int64(c.cur) * int64(now.Sub(c.last))
	}
	c.last = now
	c.cur += d
	c.scope[scope] += d
	c.max = max(c.max, c.cur)
	c.scopeMax = max(c.scopeMax, c.scope[scope])
}

// TestEnginesNeverOverAdmit runs three members over one KV with steady
// demand from 5 scopes on each: across them, at most 6 run at once and at
// most 2 per scope, and the capacity is used.
func TestEnginesNeverOverAdmit(t *testing.T) {
	kv := newMemKV()
	engines := startEngines(t, kv, 3)
	c := &counter{scope: map[string]int{}}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var done atomic.Int64
	start := time.Now()
	for i, e := range engines {
		for w := range 4 {
			wg.Go(func() {
				scope := fmt.Sprintf("tenant-%d", (i*4+w)%5)
				for ctx.Err() == nil {
					l, err := e.Acquire(ctx, "fn", []string{scope}, nil)
					if err != nil {
						return
					}
					c.add(scope, 1)
					time.Sleep(5 * time.Millisecond)
					c.add(scope, -1)
					l.Release()
					done.Add(1)
				}
			})
		}
	}
	wg.Wait()
	c.mu.Lock()
	defer c.mu.Unlock()
	avg := float64(c.busyNs) / float64(time.Since(start))
	t.Logf("invocations %d, max concurrent %d, max per scope %d, time-weighted average %.2f", done.Load(), c.max, c.scopeMax, avg)
	if c.max > 6 || c.scopeMax > 2 {
		t.Fatalf("over-admitted: max %d (limit 6), max per scope %d (limit 2)", c.max, c.scopeMax)
	}
	if done.Load() == 0 || avg < 2 {
		t.Fatalf("capacity not used: %d invocations, average concurrency %.2f", done.Load(), avg)
	}
}

// TestEngineOutageKeepsNothingBeyondLease cuts the engine: a member stops
// granting before its lease ends, and after the engine returns it grants
// again without a restart.
func TestEngineOutageKeepsNothingBeyondLease(t *testing.T) {
	kv := newMemKV()
	e := startEngines(t, kv, 1)[0]
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := e.Acquire(ctx, "fn", []string{"a"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	kv.setDown(true)
	cut := time.Now()
	// Within lease (2s) the member must stop granting.
	for {
		l, err := e.TryAcquire("fn", []string{"a"})
		if err != nil {
			break
		}
		l.Release()
		if time.Since(cut) > e.cfg.Lease {
			t.Fatalf("still granting %s after the engine became unreachable (lease %s)", time.Since(cut), e.cfg.Lease)
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("stopped granting %s after the engine became unreachable (lease %s)", time.Since(cut).Round(time.Millisecond), e.cfg.Lease)
	kv.setDown(false)
	back := time.Now()
	l, err = e.Acquire(ctx, "fn", []string{"a"}, nil)
	if err != nil {
		t.Fatalf("no grant after the engine came back: %v", err)
	}
	l.Release()
	t.Logf("granting again %s after the engine came back", time.Since(back).Round(time.Millisecond))
}

// TestHandOff: one member holds everything while it alone has demand; when
// another member gets demand it receives its fair part within about a
// second.
func TestHandOff(t *testing.T) {
	kv := newMemKV()
	es := startEngines(t, kv, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Member 0 holds 2 slots of each of 3 scopes (6).
	var held []dispatch.Lease
	for i := range 3 {
		for range 2 {
			l, err := es[0].Acquire(ctx, "fn", []string{fmt.Sprintf("s%d", i)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			held = append(held, l)
		}
	}
	// Member 1 wants scope s4: the reservation is full until member 0
	// releases.
	got := make(chan time.Duration, 1)
	go func() {
		t0 := time.Now()
		l, err := es[1].Acquire(ctx, "fn", []string{"s4"}, nil)
		if err == nil {
			got <- time.Since(t0)
			l.Release()
		}
	}()
	time.Sleep(500 * time.Millisecond)
	select {
	case <-got:
		t.Fatal("member 1 was admitted while member 0 held the whole reservation")
	default:
	}
	released := time.Now()
	for _, l := range held[:3] {
		l.Release()
	}
	select {
	case <-got:
		t.Logf("hand-off %s after member 0 released", time.Since(released).Round(time.Millisecond))
		if d := time.Since(released); d > 3*time.Second {
			t.Fatalf("hand-off took %s, want about a second (3s allowed on a loaded machine)", d)
		}
	case <-ctx.Done():
		t.Fatal("member 1 never got a share")
	}
	for _, l := range held[3:] {
		l.Release()
	}
}

func TestFair(t *testing.T) {
	for _, tc := range []struct {
		capacity int
		demand   map[string]int
		want     map[string]int
	}{
		{6, map[string]int{"a": 10, "b": 10, "c": 10}, map[string]int{"a": 2, "b": 2, "c": 2}},
		{6, map[string]int{"a": 1, "b": 10, "c": 10}, map[string]int{"a": 1, "b": 3, "c": 2}},
		{6, map[string]int{"a": 1, "b": 0}, map[string]int{"a": 6, "b": 0}},
		{6, map[string]int{"a": 2, "b": 1}, map[string]int{"a": 4, "b": 2}},
		{0, map[string]int{"a": 2}, map[string]int{"a": 0}},
	} {
		got := fair(tc.capacity, tc.demand)
		total := 0
		for id, n := range got {
			total += n
			if n != tc.want[id] {
				t.Errorf("fair(%d, %v) = %v, want %v", tc.capacity, tc.demand, got, tc.want)
				break
			}
		}
		if total > tc.capacity {
			t.Errorf("fair(%d, %v) hands out %d", tc.capacity, tc.demand, total)
		}
	}
}

// holdReservation takes the whole reservation of fn (6) on e, two slots
// in each of three scopes.
func holdReservation(ctx context.Context, t *testing.T, e *Engine) []dispatch.Lease {
	t.Helper()
	var held []dispatch.Lease
	for i := range 6 {
		l, err := e.Acquire(ctx, "fn", []string{fmt.Sprintf("s%d", i%3)}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	return held
}

// TestKilledMemberCapacityComesBackAfterLease: a member that vanishes
// without giving its shares back (kill -9) keeps them until its lease
// ends, not longer and not shorter, as the others see it.
func TestKilledMemberCapacityComesBackAfterLease(t *testing.T) {
	kv := newMemKV()
	es := startEngines(t, kv, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := es[0], es[1]
	held := holdReservation(ctx, t, a)
	// "kill -9": the loop stops, nothing is given back.
	a.mu.Lock()
	stop, done := a.cancel, a.done
	a.cancel = nil
	a.mu.Unlock()
	stop()
	<-done
	killed := time.Now()
	a.mu.Lock()
	validUntil := time.Time{}
	for _, ls := range a.limits {
		if ls.validUntil.After(validUntil) {
			validUntil = ls.validUntil
		}
	}
	a.mu.Unlock()
	l, err := b.Acquire(ctx, "fn", []string{"z"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := time.Now()
	l.Release()
	t.Logf("capacity of the killed member granted elsewhere %s after the kill (its claims ran until %s after the kill; lease %s)",
		got.Sub(killed).Round(time.Millisecond), validUntil.Sub(killed).Round(time.Millisecond), a.cfg.Lease)
	if got.Before(validUntil) {
		t.Fatalf("granted %s before the killed member's claim lapsed", validUntil.Sub(got))
	}
	if d := got.Sub(killed); d > a.cfg.Lease+2*time.Second {
		t.Fatalf("granted %s after the kill, want within lease (%s) + a round or two (2s allowed)", d, a.cfg.Lease)
	}
	for _, l := range held {
		l.Release()
	}
}

// TestLoweredRuleHoldsAtOnce: two members each hold one slot of a scope
// whose rule allows 2; the rule drops to 1 on both: from then on the two
// together never hold more than 1, before any rebalance round ran.
func TestLoweredRuleHoldsAtOnce(t *testing.T) {
	kv := newMemKV()
	es := startEngines(t, kv, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held []dispatch.Lease
	for _, e := range es {
		l, err := e.Acquire(ctx, "fn", []string{"t"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	for _, e := range es {
		if err := e.SetRule(dispatch.Rule{Pattern: "t", Concurrency: 1}); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range held {
		l.Release()
	}
	// Both try at once, again and again, for three seconds (the shares
	// settle within a few rounds; the machine may be slow).
	deadline := time.Now().Add(3 * time.Second)
	both, granted := 0, 0
	for time.Now().Before(deadline) {
		a, errA := es[0].TryAcquire("fn", []string{"t"})
		b, errB := es[1].TryAcquire("fn", []string{"t"})
		if errA == nil && errB == nil {
			both++
		}
		if errA == nil {
			granted++
			a.Release()
		}
		if errB == nil {
			granted++
			b.Release()
		}
		time.Sleep(5 * time.Millisecond)
	}
	if both > 0 {
		t.Fatalf("both members granted scope t at once %d times under a rule of 1", both)
	}
	if granted == 0 {
		t.Fatal("nobody was granted scope t within three seconds")
	}
}

// TestStoppingMemberKeepsClaimOnAbandoned: a member that stops while it
// holds slots (its sources abandon their invocations, which frees the
// slots at once while the function may still be running them) grants
// nothing from its close on, and the others get that capacity only a full
// lease after it stopped, not as soon as the slots were freed.
func TestStoppingMemberKeepsClaimOnAbandoned(t *testing.T) {
	kv := newMemKV()
	es := startEngines(t, kv, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	a, b := es[0], es[1]
	held := holdReservation(ctx, t, a)
	got := make(chan time.Time, 1)
	go func() {
		l, err := b.Acquire(ctx, "fn", []string{"z"}, nil)
		if err == nil {
			got <- time.Now()
			l.Release()
		}
	}()
	time.Sleep(300 * time.Millisecond) // b's demand is in the engine
	// The stop as cmd/sluice runs it: close (no more grants), the sources
	// abandon their invocations (slots freed), the engine stops.
	a.Close()
	for _, l := range held {
		l.Release()
	}
	if l, err := a.TryAcquire("fn", []string{"s0"}); err == nil {
		l.Release()
		t.Fatal("a closed member granted a slot")
	}
	stopped := time.Now()
	a.Stop()
	select {
	case at := <-got:
		t.Logf("the stopped member's capacity granted elsewhere %s after it stopped (lease %s)",
			at.Sub(stopped).Round(time.Millisecond), a.cfg.Lease)
		if at.Sub(stopped) < a.cfg.Lease {
			t.Fatalf("granted %s after the stop, before a lease (%s): the abandoned invocations may still run", at.Sub(stopped), a.cfg.Lease)
		}
		if d := at.Sub(stopped); d > a.cfg.Lease+2*time.Second {
			t.Fatalf("granted %s after the stop, want within lease (%s) + a round or two (2s allowed)", d, a.cfg.Lease)
		}
	case <-ctx.Done():
		t.Fatal("the stopped member's capacity never came back")
	}
}

// TestQueuesAreClusterWide: the invocations waiting on one member are in
// every member's Queues, with the member that queues them.
func TestQueuesAreClusterWide(t *testing.T) {
	kv := newMemKV()
	es := startEngines(t, kv, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var held []dispatch.Lease
	for range 2 {
		l, err := es[0].Acquire(ctx, "fn", []string{"t"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, l)
	}
	defer func() {
		for _, l := range held {
			l.Release()
		}
	}()
	// Scope t's rule is 2, both held by member 0: member 1's call waits.
	wctx, stopWait := context.WithCancel(ctx)
	defer stopWait()
	go func() {
		if l, err := es[1].Acquire(wctx, "fn", []string{"t"}, nil); err == nil {
			l.Release()
		}
	}()
	for {
		qs := es[0].Queues()
		if len(qs) == 1 {
			q := qs[0]
			if q.Process != es[1].ID() || q.Function != "fn" || q.Waiting != 1 || len(q.Scopes) != 1 || q.Scopes[0] != "t" {
				t.Fatalf("member 0 lists %+v, want member 1's one waiter for fn, scope t", q)
			}
			own := es[1].Queues()
			if len(own) != 1 || own[0].Process != es[1].ID() {
				t.Fatalf("member 1 lists %+v, want its own waiter with its id", own)
			}
			return
		}
		if len(qs) > 1 {
			t.Fatalf("member 0 lists %+v, want one queue", qs)
		}
		select {
		case <-ctx.Done():
			t.Fatal("member 0 never listed member 1's waiter")
		case <-time.After(50 * time.Millisecond):
		}
	}
}
