package ingress

import (
	"context"
	"fmt"
	"net/http"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
)

// EventAddresser is what Queues needs of a queue's broker
// (consumer.Broker implements it).
type EventAddresser interface {
	AddressEvent(sc consumer.SourceConfig, rec *event.Record, id string)
	EventsHaveKeys() bool
}

// Queue is one async source the ingress appends a function's events to: the
// source its async_queue names.
type Queue struct {
	Source string                // the source's name, for errors
	Config consumer.SourceConfig // its settings: subject, scope
	Writer consumer.Appender     // appends to its topic or stream
	Broker EventAddresser        // its broker
}

// Queues is the Enqueuer over the async sources: it appends an event to the
// topic or subject its function's async source reads, so the event takes
// the same path (retries, max_event_age, dead letters) as one a publisher
// sent. It returns once the broker acknowledged the write.
type Queues struct {
	functions map[string]bool   // every configured function
	queues    map[string]*Queue // function → its async queue
}

var _ Enqueuer = (*Queues)(nil)

// NewQueues returns the Queues of functions (every configured function),
// of which those in byFunction have an async queue.
func NewQueues(functions []string, byFunction map[string]*Queue) *Queues {
	q := &Queues{functions: make(map[string]bool, len(functions)), queues: byFunction}
	for _, fn := range functions {
		q.functions[fn] = true
	}
	return q
}

// Enqueue appends body as an event of fn's async source and returns its id.
//
// The id is the event's Sluice-Invocation-Id header; on Kafka also its
// record key (unless the source's scope is the key); the broker may address
// the event with it too (consumer.Broker.AddressEvent: on JetStream the
// subject's wildcard tokens and the Nats-Msg-Id, so a publish retried within
// the stream's duplicate window is stored once). The caller's Content-Type and
// traceparent become the event's headers, which the function receives as
// with any async event. A scope is carried the way the source reads it
// (its `scope` setting): header:<name> gets the scope as that header;
// key (Kafka only) gets it as the record key instead of the id; a
// literal:<value> source accepts only its own scope. Any other setting
// cannot carry a scope, and a scoped event is refused (ErrScopeNotCarried)
// rather than run without the scope's limits.
func (q *Queues) Enqueue(ctx context.Context, fn, scope string, body []byte, header http.Header) (string, error) {
	if !q.functions[fn] {
		return "", fmt.Errorf("ingress: %w %q", dispatch.ErrUnknownFunction, fn)
	}
	aq := q.queues[fn]
	if aq == nil {
		return "", fmt.Errorf("%w: functions.%s.async_queue is not set (it names an async source of %s)", ErrNoQueue, fn, fn)
	}
	id := NewID()
	rec := event.Record{Key: []byte(id), Value: body,
		Headers: []event.Header{{Key: HeaderInvocationID, Value: []byte(id)}}}
	if aq.Config.Scope.Kind == consumer.ScopeKey {
		// The key is the scope here, so an unscoped event has none:
		// the id as key would make each event a scope of its own.
		rec.Key = nil
	}
	// The header names the async deliverer reads (dispatch.AsyncDeliverer).
	if v := header.Get("Content-Type"); v != "" {
		rec.Headers = append(rec.Headers, event.Header{Key: "Content-Type", Value: []byte(v)})
	}
	if v := header.Get("Traceparent"); v != "" {
		rec.Headers = append(rec.Headers, event.Header{Key: "traceparent", Value: []byte(v)})
	}
	if scope != "" {
		s := aq.Config.Scope
		switch {
		case s.Kind == consumer.ScopeHeader:
			rec.Headers = append(rec.Headers, event.Header{Key: s.Arg, Value: []byte(scope)})
		case s.Kind == consumer.ScopeKey && aq.Broker.EventsHaveKeys():
			rec.Key = []byte(scope)
		case s.Kind == consumer.ScopeLiteral && s.Arg == scope:
		default:
			return "", fmt.Errorf("%w: sources.%s has scope %s, which cannot carry scope %q (use scope: header:<name>, e.g. header:Sluice-Scope)",
				ErrScopeNotCarried, aq.Source, s, scope)
		}
	}
	aq.Broker.AddressEvent(aq.Config, &rec, id)
	if err := aq.Writer.Append(ctx, []event.Record{rec}); err != nil {
		return "", fmt.Errorf("ingress: async_queue %s: %w", aq.Source, err)
	}
	return id, nil
}
