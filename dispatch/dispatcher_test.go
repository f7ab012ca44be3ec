package dispatch

import (
	"context"
	"errors"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/event"
)

func newTestDispatcher(t *testing.T, cfg Config, opts ...Option) (*Dispatcher, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewRegistry()
	d, err := New(cfg, append([]Option{WithRegisterer(reg)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(d.Close)
	return d, reg
}

func TestDispatcherOutcomes(t *testing.T) {
	boom := errors.New("boom")
	items := []string{"10", "11", "12"}
	cases := []struct {
		name    string
		h       HandlerFunc
		report  bool
		timeout time.Duration
		check   func(t *testing.T, err error)
		outcome Outcome
	}{
		{"success", func(context.Context, *Request) (*Response, error) { return &Response{Status: 200}, nil }, false, 0,
			func(t *testing.T, err error) {
				if err != nil {
					t.Fatal(err)
				}
			}, OutcomeSuccess},
		{"plain error is a function error", func(context.Context, *Request) (*Response, error) { return nil, boom }, false, 0,
			func(t *testing.T, err error) {
				var fe *FunctionError
				if !errors.As(err, &fe) || fe.Kind != KindHandler || !errors.Is(err, boom) {
					t.Fatalf("err = %v, want KindHandler wrapping boom", err)
				}
			}, OutcomeError},
		{"timeout", func(ctx context.Context, _ *Request) (*Response, error) { <-ctx.Done(); return nil, ctx.Err() }, false, 20 * time.Millisecond,
			func(t *testing.T, err error) {
				var fe *FunctionError
				if !errors.As(err, &fe) || fe.Kind != KindTimeout {
					t.Fatalf("err = %v, want KindTimeout", err)
				}
			}, OutcomeTimeout},
		{"throttled by the function", func(context.Context, *Request) (*Response, error) {
			return nil, &ThrottledError{Reason: ReasonFunction, RetryAfter: time.Second}
		}, false, 0,
			func(t *testing.T, err error) {
				if th, ok := AsThrottled(err); !ok || th.Reason != ReasonFunction || th.RetryAfter != time.Second {
					t.Fatalf("err = %v", err)
				}
			}, OutcomeThrottled},
		{"permanent", func(context.Context, *Request) (*Response, error) { return nil, &PermanentError{Status: 400} }, false, 0,
			func(t *testing.T, err error) {
				if !IsPermanent(err) {
					t.Fatalf("err = %v", err)
				}
			}, OutcomePermanent},
		{"partial, reordered to batch order", func(context.Context, *Request) (*Response, error) {
			return nil, &PartialBatchError{Failed: []string{"12", "11"}}
		}, true, 0,
			func(t *testing.T, err error) {
				var pb *PartialBatchError
				if !errors.As(err, &pb) || strings.Join(pb.Failed, ",") != "11,12" {
					t.Fatalf("err = %v, want items 11,12", err)
				}
			}, OutcomePartial},
		{"partial with an unknown item fails the batch", func(context.Context, *Request) (*Response, error) {
			return nil, &PartialBatchError{Failed: []string{"99"}}
		}, true, 0,
			func(t *testing.T, err error) {
				var fe *FunctionError
				if !errors.As(err, &fe) || fe.Kind != KindResponse {
					t.Fatalf("err = %v, want whole batch failed", err)
				}
			}, OutcomeError},
		{"partial without report_batch_item_failures fails the batch", func(context.Context, *Request) (*Response, error) {
			return nil, &PartialBatchError{Failed: []string{"11"}}
		}, false, 0,
			func(t *testing.T, err error) {
				var fe *FunctionError
				if !errors.As(err, &fe) || fe.Kind != KindResponse {
					t.Fatalf("err = %v, want whole batch failed", err)
				}
			}, OutcomeError},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			d, reg := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1}})
			var got *Request
			d.Register("fn", HandlerFunc(func(ctx context.Context, r *Request) (*Response, error) {
				got = r
				return tc.h(ctx, r)
			}), tc.timeout)
			_, err := d.Invoke(context.Background(), &Request{Function: "fn", Items: items, ReportItemFailures: tc.report}, nil)
			tc.check(t, err)
			if got.Deadline.IsZero() {
				t.Error("handler saw no Deadline")
			}
			if n := testutil.ToFloat64(d.metrics.invocations.WithLabelValues("fn", string(tc.outcome))); n != 1 {
				t.Errorf("sluice_invocations_total{outcome=%q} = %v, want 1", tc.outcome, n)
			}
			// Every outcome's series exists from the start (at zero); only
			// this one counted the invocation.
			if n, err := testutil.GatherAndCount(reg, "sluice_invocations_total"); err != nil || n != len(outcomes) {
				t.Errorf("sluice_invocations_total series = %d (%v), want %d (one per outcome)", n, err, len(outcomes))
			}
			for _, o := range outcomes {
				if n := testutil.ToFloat64(d.metrics.invocations.WithLabelValues("fn", string(o))); o != tc.outcome && n != 0 {
					t.Errorf("sluice_invocations_total{outcome=%q} = %v, want 0", o, n)
				}
			}
		})
	}
}

func TestDispatcherTryInvokeThrottles(t *testing.T) {
	d, reg := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"slow": {ReservedConcurrency: ptr(1)}},
	})
	release := make(chan struct{})
	running := make(chan struct{})
	d.Register("slow", HandlerFunc(func(context.Context, *Request) (*Response, error) {
		close(running)
		<-release
		return &Response{Status: 200}, nil
	}), 0)
	done := make(chan error, 1)
	go func() {
		_, err := d.TryInvoke(context.Background(), &Request{Function: "slow"})
		done <- err
	}()
	<-running
	_, err := d.TryInvoke(context.Background(), &Request{Function: "slow"})
	if th, ok := AsThrottled(err); !ok || th.Reason != ReasonReserved {
		t.Fatalf("second call = %v, want %s", err, ReasonReserved)
	}
	if v := testutil.ToFloat64(d.metrics.throttles.WithLabelValues("slow", string(ReasonReserved))); v != 1 {
		t.Fatalf("throttles = %v, want 1", v)
	}
	// The concurrency gauges show the running call.
	want := `
# HELP sluice_function_concurrent_executions Invocations running now, by function.
# TYPE sluice_function_concurrent_executions gauge
sluice_function_concurrent_executions{function="slow"} 1
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sluice_function_concurrent_executions"); err != nil {
		t.Fatal(err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestDispatcherInvokeWaitsAndReports(t *testing.T) {
	d, _ := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Rules: []Rule{{Pattern: "*", Concurrency: 1}}})
	release := make(chan struct{})
	d.Register("fn", HandlerFunc(func(context.Context, *Request) (*Response, error) {
		<-release
		return nil, nil
	}), 0)
	first := make(chan error, 1)
	go func() {
		_, err := d.Invoke(context.Background(), &Request{Function: "fn", Scope: "t1"}, nil)
		first <- err
	}()
	waitFor(t, func() bool { return d.Limiter().Usage().InFlight == 1 })
	waited := make(chan Reason, 1)
	second := make(chan error, 1)
	go func() {
		_, err := d.Invoke(context.Background(), &Request{Function: "fn", Scope: "t1"}, func(r Reason) { waited <- r })
		second <- err
	}()
	if r := <-waited; r != ReasonScope {
		t.Fatalf("waited for %s, want %s", r, ReasonScope)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
}

func TestDispatcherUnknownFunction(t *testing.T) {
	d, _ := newTestDispatcher(t, Config{})
	_, err := d.Invoke(context.Background(), &Request{Function: "nope"}, nil)
	if !errors.Is(err, ErrUnknownFunction) {
		t.Fatalf("err = %v, want ErrUnknownFunction", err)
	}
}

// An async event waits at most MaxWait for a slot and then reports a plain
// throttle (not a cancellation), so its source hands it back to the broker;
// the caller's own ctx still ends a wait as before.
func TestInvokeMaxWaitReturnsThrottle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d, _ := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1},
			Functions: map[string]FunctionConfig{"f": {ReservedConcurrency: ptr(1)}}})
		release := make(chan struct{})
		d.Register("f", HandlerFunc(func(ctx context.Context, _ *Request) (*Response, error) {
			<-release
			return &Response{Status: 200}, nil
		}), 0)
		go func() { _, _ = d.Invoke(context.Background(), &Request{Function: "f"}, nil) }()
		synctest.Wait() // the first invocation holds the only slot

		start := time.Now()
		_, err := d.Invoke(context.Background(), &Request{Function: "f", MaxWait: 5 * time.Second}, nil)
		if waited := time.Since(start); waited != 5*time.Second {
			t.Errorf("waited %s, want MaxWait 5s", waited)
		}
		th, ok := AsThrottled(err)
		if !ok || th.Reason != ReasonReserved {
			t.Fatalf("err = %v, want a *ThrottledError with %s", err, ReasonReserved)
		}
		if errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v matches DeadlineExceeded; a MaxWait throttle must not look like a cancelled caller", err)
		}
		if r := resultOf(err, nil); r.Outcome != event.Throttled || r.Reason != string(ReasonReserved) {
			t.Errorf("resultOf = %+v, want Throttled with %s", r, ReasonReserved)
		}

		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, err = d.Invoke(ctx, &Request{Function: "f", MaxWait: 5 * time.Second}, nil)
		if !errors.Is(err, context.DeadlineExceeded) || !IsThrottled(err) {
			t.Errorf("caller's ctx ended the wait: err = %v, want DeadlineExceeded and a throttle", err)
		}
		close(release)
	})
}

// TestDispatcherAbandonedInvocationKeepsSlot: an invocation its caller gave
// up on while in flight (a revoke, a shutdown) keeps its slot until its
// deadline, since the function may still be running it; one that failed or
// ended frees it at once.
func TestDispatcherAbandonedInvocationKeepsSlot(t *testing.T) {
	d, _ := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"fn": {ReservedConcurrency: ptr(1)}},
	})
	const timeout = 400 * time.Millisecond
	running := make(chan struct{}, 1)
	d.Register("fn", HandlerFunc(func(ctx context.Context, _ *Request) (*Response, error) {
		running <- struct{}{}
		<-ctx.Done()
		return nil, ctx.Err()
	}), timeout)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		_, err := d.Invoke(ctx, &Request{Function: "fn"}, nil)
		done <- err
	}()
	<-running
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("abandoned invocation: %v, want context.Canceled", err)
	}
	if _, err := d.TryInvoke(context.Background(), &Request{Function: "fn"}); err == nil {
		t.Fatal("the abandoned invocation's slot was granted again before its deadline")
	} else if _, ok := AsThrottled(err); !ok {
		t.Fatalf("TryInvoke: %v, want a throttle", err)
	}
	waitFor(t, func() bool { return d.Limiter().Usage().InFlight == 0 })
	if since := time.Since(start); since < timeout-50*time.Millisecond {
		t.Fatalf("slot freed after %s, before the invocation's deadline (%s)", since, timeout)
	}
	// Past its deadline the slot is free again: the next call runs (and
	// times out, which frees its slot at once).
	if _, err := d.TryInvoke(context.Background(), &Request{Function: "fn"}); err == nil {
		t.Fatal("want the function's timeout")
	} else if _, ok := AsThrottled(err); ok {
		t.Fatalf("still throttled after the deadline: %v", err)
	}
	<-running
	if n := d.Limiter().Usage().InFlight; n != 0 {
		t.Fatalf("a timed-out invocation still holds %d slots", n)
	}
}
