package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/ingress"
	"github.com/sluicehq/sluice/shard"
)

// wireIngress builds the HTTP ingress (SPEC §2.3) that the admin API mounts:
// synchronous calls go through the dispatcher, asynchronous ones are
// appended to the function's async_queue by a queueEnqueuer. It runs after
// wireSources, which connected to the brokers.
func (a *app) wireIngress() error {
	q, err := a.newEnqueuer(context.Background())
	if err != nil {
		return err
	}
	a.ingress = ingress.New(a.disp, ingress.WithEnqueuer(q), ingress.WithLogger(a.log))
	return nil
}

// appender durably writes records: kafka.Writer and nats.Writer.
type appender interface {
	Append(ctx context.Context, recs []shard.Record) error
}

// eventAddresser is what the enqueuer needs of a broker (consumer.Broker).
type eventAddresser interface {
	AddressEvent(sc consumer.SourceConfig, rec *shard.Record, id string)
	EventsHaveKeys() bool
}

// asyncQueue is where the ingress appends one function's async events: the
// async source named by its async_queue.
type asyncQueue struct {
	source string
	sc     consumer.SourceConfig
	w      appender
	addr   eventAddresser // the source's broker
}

// queueEnqueuer is the ingress.Enqueuer over the async sources: it appends
// an event to the topic or subject its function's async source reads, so
// the event takes the same path (retries, max_event_age, dead letters) as
// one a publisher sent. It returns once the broker acknowledged the write.
type queueEnqueuer struct {
	functions map[string]bool        // every configured function
	queues    map[string]*asyncQueue // function → its async queue
}

var _ ingress.Enqueuer = (*queueEnqueuer)(nil)

// newEnqueuer opens a writer for every async source some function names as
// its async_queue (config validated that each is an async source of that
// function).
func (a *app) newEnqueuer(ctx context.Context) (*queueEnqueuer, error) {
	q := &queueEnqueuer{functions: map[string]bool{}, queues: map[string]*asyncQueue{}}
	writers := map[string]*asyncQueue{} // source → its queue, shared by the functions naming it
	names := make([]string, 0, len(a.cfg.Functions))
	for name := range a.cfg.Functions {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, fn := range names {
		q.functions[fn] = true
		src := a.cfg.Functions[fn].AsyncQueue
		if src == "" {
			continue
		}
		if aq, ok := writers[src]; ok {
			q.queues[fn] = aq
			continue
		}
		sc := a.cfg.Sources[src]
		br, err := a.broker(ctx, "run", sc.Broker) // opened by wireSources
		if err != nil {
			return nil, err
		}
		w, err := br.SourceWriter(ctx, sc, false)
		if err != nil {
			return nil, fmt.Errorf("run: functions.%s.async_queue: %w", fn, err)
		}
		aq := &asyncQueue{source: src, sc: sc, w: w, addr: br}
		writers[src] = aq
		q.queues[fn] = aq
	}
	return q, nil
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
func (q *queueEnqueuer) Enqueue(ctx context.Context, fn, scope string, body []byte, header http.Header) (string, error) {
	if !q.functions[fn] {
		return "", fmt.Errorf("run: %w %q", dispatch.ErrUnknownFunction, fn)
	}
	aq := q.queues[fn]
	if aq == nil {
		return "", fmt.Errorf("%w: functions.%s.async_queue is not set (it names an async source of %s)", ingress.ErrNoQueue, fn, fn)
	}
	id := ingress.NewID()
	rec := shard.Record{Key: []byte(id), Value: body,
		Headers: []shard.Header{{Key: ingress.HeaderInvocationID, Value: []byte(id)}}}
	if aq.sc.Scope.Kind == consumer.ScopeKey {
		// The key is the scope here, so an unscoped event has none:
		// the id as key would make each event a scope of its own.
		rec.Key = nil
	}
	// The header names the async deliverer reads (dispatch.AsyncDeliverer).
	if v := header.Get("Content-Type"); v != "" {
		rec.Headers = append(rec.Headers, shard.Header{Key: "Content-Type", Value: []byte(v)})
	}
	if v := header.Get("Traceparent"); v != "" {
		rec.Headers = append(rec.Headers, shard.Header{Key: "traceparent", Value: []byte(v)})
	}
	if scope != "" {
		s := aq.sc.Scope
		switch {
		case s.Kind == consumer.ScopeHeader:
			rec.Headers = append(rec.Headers, shard.Header{Key: s.Arg, Value: []byte(scope)})
		case s.Kind == consumer.ScopeKey && aq.addr.EventsHaveKeys():
			rec.Key = []byte(scope)
		case s.Kind == consumer.ScopeLiteral && s.Arg == scope:
		default:
			return "", fmt.Errorf("%w: sources.%s has scope %s, which cannot carry scope %q (use scope: header:<name>, e.g. header:Sluice-Scope)",
				ingress.ErrScopeNotCarried, aq.source, s, scope)
		}
	}
	aq.addr.AddressEvent(aq.sc, &rec, id)
	if err := aq.w.Append(ctx, []shard.Record{rec}); err != nil {
		return "", fmt.Errorf("run: async_queue %s: %w", aq.source, err)
	}
	return id, nil
}
