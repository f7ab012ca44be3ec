package main

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/ingress"
)

// wireIngress builds the HTTP ingress (SPEC §2.3) that the admin API mounts:
// synchronous calls go through the dispatcher, asynchronous ones are
// appended to the function's async_queue by a queueEnqueuer. It runs after
// wireSources, which connected to the brokers.
func (a *app) wireIngress() error {
	q, err := a.newEnqueuer()
	if err != nil {
		return err
	}
	a.ingress = ingress.New(a.disp, ingress.WithEnqueuer(q), ingress.WithLogger(a.log))
	return nil
}

// appender durably writes records: kafka.Writer and nats.Writer.
type appender interface {
	Append(ctx context.Context, recs []event.Record) error
}

// asyncQueue is where the ingress appends one function's async events: the
// async source named by its async_queue.
type asyncQueue struct {
	source string
	sc     consumer.SourceConfig
	w      appender
	nats   bool
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
func (a *app) newEnqueuer() (*queueEnqueuer, error) {
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
		b := a.cfg.Brokers[sc.Broker]
		aq := &asyncQueue{source: src, sc: sc}
		if b.Kafka != nil {
			w, err := kafka.NewWriter(*b.Kafka, sc.Topic)
			if err != nil {
				return nil, fmt.Errorf("run: functions.%s.async_queue: %w", fn, err)
			}
			a.closers = append(a.closers, w.Close)
			aq.w = w
		} else {
			nc := a.natsConns[sc.Broker]
			if nc == nil { // wireSources connected to every broker a source uses
				return nil, fmt.Errorf("run: functions.%s.async_queue: no connection to broker %s", fn, sc.Broker)
			}
			// The prefix is unused: every record carries its subject.
			w, err := natssrc.NewWriter(nc, sc.Stream, "sluice.ingress")
			if err != nil {
				return nil, fmt.Errorf("run: functions.%s.async_queue: %w", fn, err)
			}
			aq.w, aq.nats = w, true
		}
		writers[src] = aq
		q.queues[fn] = aq
	}
	return q, nil
}

// Enqueue appends body as an event of fn's async source and returns its id.
//
// The id is the event's Sluice-Invocation-Id header; on Kafka also its
// record key (unless the source's scope is the key), on JetStream the
// subject's wildcard tokens and the Nats-Msg-Id (so a publish retried within
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
	rec := event.Record{Key: []byte(id), Value: body,
		Headers: []event.Header{{Key: ingress.HeaderInvocationID, Value: []byte(id)}}}
	if aq.sc.Scope.Kind == consumer.ScopeKey {
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
		s := aq.sc.Scope
		switch {
		case s.Kind == consumer.ScopeHeader:
			rec.Headers = append(rec.Headers, event.Header{Key: s.Arg, Value: []byte(scope)})
		case s.Kind == consumer.ScopeKey && !aq.nats: // JetStream async records have no key
			rec.Key = []byte(scope)
		case s.Kind == consumer.ScopeLiteral && s.Arg == scope:
		default:
			return "", fmt.Errorf("%w: sources.%s has scope %s, which cannot carry scope %q (use scope: header:<name>, e.g. header:Sluice-Scope)",
				ingress.ErrScopeNotCarried, aq.source, s, scope)
		}
	}
	if aq.nats {
		rec.Subject = concreteSubject(aq.sc.Subject, id)
		rec.Headers = append(rec.Headers, event.Header{Key: "Nats-Msg-Id", Value: []byte(id)})
	}
	if err := aq.w.Append(ctx, []event.Record{rec}); err != nil {
		return "", fmt.Errorf("run: async_queue %s: %w", aq.source, err)
	}
	return id, nil
}

// concreteSubject turns an async source's subject (which may hold "*" and
// ">" wildcards) into one it matches, with token in place of each wildcard.
func concreteSubject(subject, token string) string {
	parts := strings.Split(subject, ".")
	for i, p := range parts {
		if p == "*" || p == ">" {
			parts[i] = token
		}
	}
	return strings.Join(parts, ".")
}
