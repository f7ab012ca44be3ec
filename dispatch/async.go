package dispatch

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/sluicehq/sluice/event"
)

// AsyncDeliverer invokes a source's function with one async event: the
// payload unchanged as the body, with Sluice-Source and Sluice-Event-Time
// headers (SPEC §3), through the Dispatcher's limits.
type AsyncDeliverer struct {
	D        *Dispatcher
	Source   string
	Function string
	// Scope returns an event's scope, "" for none; nil means no scopes.
	Scope func(r *event.Record) string
	// MaxSlotWait bounds how long an event waits in line for a concurrency
	// slot before it counts as throttled and goes back to its source, which
	// redelivers it after retry_backoff without consuming an attempt (SPEC
	// §2.2: waiting events must not hold the offset or memory). 0 waits as
	// long as the caller's ctx allows.
	MaxSlotWait time.Duration
}

// Deliver invokes the function with rec as attempt number attempt, waiting
// for a slot at most MaxSlotWait and until waitUntil (if not zero; the
// event's expiry). Neither bounds the invocation once it started.
func (a *AsyncDeliverer) Deliver(ctx context.Context, rec event.Record, attempt int, waitUntil time.Time) event.Result {
	traceParent, traceState := traceHeaders(&rec)
	req := &Request{
		Function:       a.Function,
		InvocationID:   newID(),
		Attempt:        attempt,
		IdempotencyKey: asyncIdempotencyKey(a.Source, &rec),
		TraceParent:    traceParent,
		TraceState:     traceState,
		Header: http.Header{
			"Sluice-Source":     {a.Source},
			"Sluice-Event-Time": {rec.Timestamp.UTC().Format(time.RFC3339Nano)},
		},
		ContentType: "application/octet-stream",
		Body:        rec.Value,
		MaxWait:     a.MaxSlotWait,
		WaitUntil:   waitUntil,
	}
	// A Content-Type HTTP cannot carry is not the event's fault: the body
	// goes as octets.
	if ct := header(&rec, "Content-Type"); ct != "" && plainHeaderValue(ct) {
		req.ContentType = ct
	}
	if a.Scope != nil {
		req.Scope = a.Scope(&rec)
	}
	_, err := a.D.Invoke(ctx, req, nil)
	return resultOf(err, nil)
}

// asyncIdempotencyKey names an event the same way on every attempt: a
// JetStream event by its stream sequence (unique in the stream), a Kafka
// event by its original partition and offset (an offset is unique only
// within its partition; a Kafka async source hands the original coordinates
// on every retry).
func asyncIdempotencyKey(source string, rec *event.Record) string {
	if rec.Subject != "" {
		return fmt.Sprintf("%s-%s-%d", source, rec.Topic, rec.Offset)
	}
	return fmt.Sprintf("%s-%s-%d-%d", source, rec.Topic, rec.Partition, rec.Offset)
}
