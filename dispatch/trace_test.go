package dispatch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func attrOf(s sdktrace.ReadOnlySpan, key string) string {
	for _, a := range s.Attributes() {
		if string(a.Key) == key {
			return a.Value.String()
		}
	}
	return ""
}

// An invocation's span continues the record's traceparent, carries the
// invocation's attributes and outcome, records the wait for a slot as an
// event, and is the parent the function hears of in its headers.
func TestDispatcherSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })

	release := make(chan struct{})
	heard := make(chan http.Header, 2)
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		heard <- r.Header.Clone()
		<-release
	}))
	t.Cleanup(fn.Close)
	d, _ := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"fn": {URL: fn.URL, ReservedConcurrency: ptr(1)}},
	}, WithTracer(tp.Tracer("test")))

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	req := func() *Request {
		return &Request{Function: "fn", InvocationID: "inv", Attempt: 1, Items: []string{"1", "2", "3"},
			TraceParent: parent, TraceState: "vendor=x", Shard: "orders/2",
			Header: http.Header{"Sluice-Source": {"orders"}}}
	}
	first := make(chan error, 1)
	go func() { _, err := d.Invoke(context.Background(), req(), nil); first <- err }()
	h1 := <-heard
	// The second waits for the reservation of 1: a throttle event.
	second := make(chan error, 1)
	waited := make(chan struct{})
	go func() {
		_, err := d.Invoke(context.Background(), req(), func(Reason) { close(waited) })
		second <- err
	}()
	<-waited
	close(release)
	for _, ch := range []chan error{first, second} {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	<-heard

	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans ended, want 2", len(spans))
	}
	var throttled int
	for _, s := range spans {
		if got := s.SpanContext().TraceID().String(); got != "4bf92f3577b34da6a3ce929d0e0e4736" {
			t.Errorf("span trace id %s, want the record's", got)
		}
		if got := s.Parent().SpanID().String(); got != "00f067aa0ba902b7" || !s.Parent().IsRemote() {
			t.Errorf("span parent %s (remote %v), want the record's span 00f067aa0ba902b7", got, s.Parent().IsRemote())
		}
		if s.Name() != "invoke fn" {
			t.Errorf("span name %q", s.Name())
		}
		for k, want := range map[string]string{"sluice.function": "fn", "sluice.source": "orders", "sluice.shard": "orders/2",
			"sluice.batch_size": "3", "sluice.outcome": "success", "sluice.attempt": "1"} {
			if got := attrOf(s, k); got != want {
				t.Errorf("span attribute %s = %q, want %q", k, got, want)
			}
		}
		for _, e := range s.Events() {
			if e.Name == "throttled" {
				throttled++
				if len(e.Attributes) != 1 || e.Attributes[0].Value.AsString() != string(ReasonReserved) {
					t.Errorf("throttle event attributes %v, want the reason %s", e.Attributes, ReasonReserved)
				}
			}
		}
	}
	if throttled != 1 {
		t.Errorf("%d throttle events, want 1 (the second invocation's wait)", throttled)
	}
	// The function hears sluice's span as its parent, in the same trace,
	// with the record's tracestate.
	tp1 := h1.Get("Traceparent")
	ids := map[string]bool{}
	for _, s := range spans {
		ids[s.SpanContext().SpanID().String()] = true
	}
	parts := strings.Split(tp1, "-")
	if len(parts) != 4 || parts[1] != "4bf92f3577b34da6a3ce929d0e0e4736" || !ids[parts[2]] || parts[3] != "01" {
		t.Errorf("function heard traceparent %q, want one of the spans %v in the record's trace", tp1, ids)
	}
	if ts := h1.Get("Tracestate"); ts != "vendor=x" {
		t.Errorf("function heard tracestate %q, want the record's", ts)
	}
}

// Without a tracer, the record's traceparent and tracestate pass through
// unchanged.
func TestDispatcherNoTracerPassesTraceContext(t *testing.T) {
	heard := make(chan http.Header, 1)
	fn := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { heard <- r.Header.Clone() }))
	t.Cleanup(fn.Close)
	d, _ := newTestDispatcher(t, Config{Functions: map[string]FunctionConfig{"fn": {URL: fn.URL}}})
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if _, err := d.Invoke(context.Background(), &Request{Function: "fn", TraceParent: parent, TraceState: "a=b"}, nil); err != nil {
		t.Fatal(err)
	}
	h := <-heard
	if h.Get("Traceparent") != parent || h.Get("Tracestate") != "a=b" {
		t.Errorf("function heard %q / %q, want the record's trace context unchanged", h.Get("Traceparent"), h.Get("Tracestate"))
	}
}

// A synchronous call refused at once (TryInvoke) ends its span throttled,
// with the reason as an event.
func TestDispatcherTryInvokeSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	d, _ := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 10, MinUnreserved: 1},
		Functions: map[string]FunctionConfig{"fn": {URL: "http://127.0.0.1:1", ReservedConcurrency: ptr(0)}},
	}, WithTracer(tp.Tracer("test")))
	if _, err := d.TryInvoke(context.Background(), &Request{Function: "fn"}); !IsThrottled(err) {
		t.Fatalf("TryInvoke = %v, want throttled", err)
	}
	spans := rec.Ended()
	if len(spans) != 1 || attrOf(spans[0], "sluice.outcome") != "throttled" || len(spans[0].Events()) != 1 ||
		spans[0].Events()[0].Attributes[0].Value.AsString() != string(ReasonReserved) {
		t.Fatalf("spans %+v, want one, throttled, with a %s event", spans, ReasonReserved)
	}
}

// Tracing off costs nothing per invocation: no span, no allocation.
func TestNoTracerNoCost(t *testing.T) {
	d, _ := newTestDispatcher(t, Config{})
	req := &Request{Function: "fn", TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
	ctx := context.Background()
	if n := testing.AllocsPerRun(100, func() {
		c, span := d.startSpan(ctx, req)
		throttleEvent(span, ReasonScope)
		endSpan(span, nil)
		_ = c
	}); n != 0 {
		t.Errorf("%v allocations per invocation with tracing off, want 0", n)
	}
}
