package dispatch

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// WaitUntil (a record's or an event's expiry) bounds the wait for a slot
// and nothing else: a wait past it ends as a plain throttle, an invocation
// that got its slot runs to its answer even past it.
func TestInvokeWaitUntilBoundsOnlyTheWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d, _ := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1},
			Functions: map[string]FunctionConfig{"f": {ReservedConcurrency: ptr(1)}}})
		d.Register("f", HandlerFunc(func(ctx context.Context, _ *Request) (*Response, error) {
			select {
			case <-time.After(20 * time.Second):
				return &Response{Status: 200}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}), 30*time.Second)

		start := time.Now()
		first := make(chan error, 1)
		go func() {
			_, err := d.Invoke(context.Background(), &Request{Function: "f", WaitUntil: start.Add(5 * time.Second)}, nil)
			first <- err
		}()
		synctest.Wait() // the first invocation holds the only slot

		_, err := d.Invoke(context.Background(), &Request{Function: "f", WaitUntil: start.Add(5 * time.Second)}, nil)
		if waited := time.Since(start); waited != 5*time.Second {
			t.Errorf("the second invocation waited %s, want until WaitUntil (5s)", waited)
		}
		if th, ok := AsThrottled(err); !ok || th.Reason != ReasonReserved || errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("err = %v, want a plain *ThrottledError with %s", err, ReasonReserved)
		}
		if err := <-first; err != nil {
			t.Errorf("the invocation that ran past its WaitUntil: err = %v, want success", err)
		}
		if took := time.Since(start); took != 20*time.Second {
			t.Errorf("the first invocation ended after %s, want its full 20s", took)
		}
	})
}

// The stream and async deliverers hand the expiry over as WaitUntil, not as
// the invocation's deadline.
func TestDeliverersInvocationOutlivesExpiry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d, _ := newTestDispatcher(t, Config{Account: AccountConfig{Concurrency: 10, MinUnreserved: 1}})
		d.Register("f", HandlerFunc(func(ctx context.Context, _ *Request) (*Response, error) {
			select {
			case <-time.After(20 * time.Second):
				return &Response{Status: 200}, nil
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}), 30*time.Second)
		expiry := time.Now().Add(time.Second)
		rec := event.Record{Topic: "t", Offset: 7, Timestamp: time.Now(), Value: []byte("v")}

		s := &StreamDeliverer{D: d, Source: "s", Function: "f", Encode: event.EncoderFunc(func([]event.Record) ([]byte, error) { return []byte("{}"), nil })}
		if r := s.Deliver(context.Background(), shard.Delivery{Records: []event.Record{rec}, Attempt: 1, WaitUntil: expiry}); r.Outcome != event.Delivered {
			t.Errorf("stream: %+v, want Delivered", r)
		}
		a := &AsyncDeliverer{D: d, Source: "s", Function: "f", MaxSlotWait: time.Second}
		if r := a.Deliver(context.Background(), rec, 1, expiry); r.Outcome != event.Delivered {
			t.Errorf("async: %+v, want Delivered", r)
		}
	})
}
