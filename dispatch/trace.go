package dispatch

import (
	"context"
	"net/http"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// WithTracer makes the Dispatcher open one span per invocation with t
// (default: none, and then tracing costs nothing). The span covers the wait
// for slots and the call: it continues the W3C traceparent of the request
// (the record's) when there is one, records each throttled wait as an event,
// and its own traceparent and tracestate are what the function receives.
func WithTracer(t trace.Tracer) Option { return func(o *options) { o.tracer = t } }

// Span attributes of an invocation.
const (
	attrFunction  = attribute.Key("sluice.function")
	attrSource    = attribute.Key("sluice.source")
	attrShard     = attribute.Key("sluice.shard")
	attrBatchSize = attribute.Key("sluice.batch_size")
	attrAttempt   = attribute.Key("sluice.attempt")
	attrOutcome   = attribute.Key("sluice.outcome")
	attrInvID     = attribute.Key("sluice.invocation_id")
	attrReason    = attribute.Key("sluice.throttle_reason")
)

var traceContext = propagation.TraceContext{}

// startSpan opens req's span as a child of req.TraceParent (and
// req.TraceState) when they parse, and puts the span's own context in their
// place, so that the function sees sluice's span as its parent. Without a
// tracer it returns ctx and nil.
func (d *Dispatcher) startSpan(ctx context.Context, req *Request) (context.Context, trace.Span) {
	if d.tracer == nil {
		return ctx, nil
	}
	if req.TraceParent != "" {
		carrier := propagation.HeaderCarrier(http.Header{})
		carrier.Set("traceparent", req.TraceParent)
		if req.TraceState != "" {
			carrier.Set("tracestate", req.TraceState)
		}
		ctx = traceContext.Extract(ctx, carrier)
	}
	batch := max(1, req.Count, len(req.Items))
	attrs := []attribute.KeyValue{
		attrFunction.String(req.Function),
		attrBatchSize.Int(batch),
		attrAttempt.Int(req.Attempt),
		attrInvID.String(req.InvocationID),
	}
	if src := req.Header.Get("Sluice-Source"); src != "" {
		attrs = append(attrs, attrSource.String(src))
	}
	if req.Shard != "" {
		attrs = append(attrs, attrShard.String(req.Shard))
	}
	ctx, span := d.tracer.Start(ctx, "invoke "+req.Function, trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attrs...))
	out := propagation.HeaderCarrier(http.Header{})
	traceContext.Inject(ctx, out)
	if tp := out.Get("traceparent"); tp != "" {
		req.TraceParent, req.TraceState = tp, out.Get("tracestate")
	}
	return ctx, span
}

// throttleEvent records on span that the invocation waits for a slot.
func throttleEvent(span trace.Span, r Reason) {
	if span != nil {
		span.AddEvent("throttled", trace.WithAttributes(attrReason.String(string(r))))
	}
}

// endSpan records the outcome of err on span and ends it.
func endSpan(span trace.Span, err error) {
	if span == nil {
		return
	}
	o := OutcomeOf(err)
	span.SetAttributes(attrOutcome.String(string(o)))
	// A wait for sluice's own slots was recorded as it began (onWait); a
	// throttle answered by the function is recorded here.
	if t, ok := AsThrottled(err); ok && t.Reason == ReasonFunction {
		throttleEvent(span, t.Reason)
		if t.Status != 0 {
			span.SetAttributes(attribute.Int("http.response.status_code", t.Status))
		}
	}
	switch o {
	case OutcomeError, OutcomeTimeout, OutcomePermanent, OutcomePartial:
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
