package main

import (
	"context"
	"fmt"
	"strings"
	"sync"

	natsgo "github.com/nats-io/nats.go"

	"github.com/sluicehq/sluice/consumer/kafka"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/shard"
)

// The dead-letter destinations as `sluice dlq` and the gauges of `run` see
// them: readers, measurers and writers built from the configuration, next to
// wire's writers (which create and reconcile the destinations).

// recordStream keeps the stream deliverer wire built for source name, so that
// `dlq replay` invokes functions exactly as `run` does (same encoder, scopes
// and item-failure setting, same dispatcher).
func (a *app) recordStream(name string, d *dispatch.StreamDeliverer) {
	if a.streams == nil {
		a.streams = map[string]*dispatch.StreamDeliverer{}
	}
	a.streams[name] = d
}

// measureDeadLetters adds destination name to the dead-letter gauges.
func (a *app) measureDeadLetters(name string, natsConn func(string) (*natsgo.Conn, error), g *retention.Gauges) error {
	dl := a.cfg.DeadLetters[name]
	b := a.cfg.Brokers[dl.Broker]
	if b.Kafka != nil {
		r, err := kafka.NewReader(*b.Kafka, dl.Topic)
		if err != nil {
			return fmt.Errorf("run: dead_letters.%s: %w", name, err)
		}
		g.Add(name, r)
		return nil
	}
	nc, err := natsConn(dl.Broker)
	if err != nil {
		return err
	}
	r, err := natssrc.NewReader(nc, dl.Stream)
	if err != nil {
		return fmt.Errorf("run: dead_letters.%s: %w", name, err)
	}
	g.Add(name, r)
	return nil
}

// dlqDest is one dead-letter destination opened for `sluice dlq`.
type dlqDest struct {
	name   string
	reader retention.Reader
	app    retention.Appender // where replays record their outcomes
}

// openDestinations opens the named dead-letter destinations for reading and
// for appending replay outcomes. It does not create them: a missing one
// reads as empty. Connections are closed with a's closers.
func (a *app) openDestinations(names []string) ([]dlqDest, error) {
	out := make([]dlqDest, 0, len(names))
	for _, name := range names {
		dl := a.cfg.DeadLetters[name]
		b := a.cfg.Brokers[dl.Broker]
		if b.Kafka != nil {
			r, err := kafka.NewReader(*b.Kafka, dl.Topic)
			if err != nil {
				return nil, fmt.Errorf("dlq: dead_letters.%s: %w", name, err)
			}
			w, err := kafka.NewWriter(*b.Kafka, dl.Topic)
			if err != nil {
				return nil, fmt.Errorf("dlq: dead_letters.%s: %w", name, err)
			}
			a.closers = append(a.closers, w.Close)
			out = append(out, dlqDest{name: name, reader: r, app: w})
			continue
		}
		nc, err := a.dlqNATS(dl.Broker)
		if err != nil {
			return nil, err
		}
		r, err := natssrc.NewReader(nc, dl.Stream)
		if err != nil {
			return nil, fmt.Errorf("dlq: dead_letters.%s: %w", name, err)
		}
		prefix, _ := strings.CutSuffix(dl.Subject, ".>")
		w, err := natssrc.NewWriter(nc, dl.Stream, prefix)
		if err != nil {
			return nil, fmt.Errorf("dlq: dead_letters.%s: %w", name, err)
		}
		out = append(out, dlqDest{name: name, reader: r, app: w})
	}
	return out, nil
}

// dlqNATS connects to NATS broker name: the URL wire already uses (the
// embedded server it started, for a replay), else the configured URL, else
// the embedded server, started here on the state directory.
func (a *app) dlqNATS(name string) (*natsgo.Conn, error) {
	if a.natsURL == nil {
		a.natsURL = map[string]string{}
	}
	url, err := a.natsURLOf(name)
	if err != nil {
		nb := a.cfg.Brokers[name].NATS
		url = nb.URL
		if nb.Embedded() {
			e, err := a.startEmbedded(name, *nb)
			if err != nil {
				return nil, fmt.Errorf("dlq: %w (with the embedded NATS, stop 'sluice run' on this state directory first)", err)
			}
			url = e.ClientURL()
			a.natsURL[name] = url
		}
	}
	nc, err := natsgo.Connect(url, natsgo.Name("sluice-dlq"))
	if err != nil {
		return nil, fmt.Errorf("dlq: brokers.%s: connect to %s: %w", name, dispatch.RedactURL(url), err)
	}
	a.closers = append(a.closers, nc.Close)
	return nc, nil
}

// replayTargets sends letters back for `dlq replay`: to their function
// through the app's dispatcher, or to their source's topic or stream.
type replayTargets struct {
	a *app

	mu      sync.Mutex                    // guards writers, broken, and a's closers and NATS URLs while replaying
	writers map[string]retention.Appender // source name → writer to its topic or stream (--to source)
	broken  map[string]error              // source name → why no writer can be had (a missing topic): fail fast
}

// toFunction invokes e's function with the original record: a stream letter
// as a one-record batch encoded as its source encodes batches, an async
// letter as the raw payload, both through the dispatcher's limits.
func (t *replayTargets) toFunction(ctx context.Context, e *retention.Envelope) shard.Result {
	sc, ok := t.a.cfg.Sources[e.Source]
	if !ok {
		return notReplayable("source %q is not in the configuration", e.Source)
	}
	if _, ok := t.a.cfg.Functions[e.Function]; !ok {
		return notReplayable("function %q is not in the configuration", e.Function)
	}
	rec := envelopeRecord(e)
	attempt := e.Attempts + 1
	if e.Mode == "async" {
		// Built here rather than recorded by wire: an async deliverer is
		// fully determined by the dispatcher, the source and its scope.
		d := &dispatch.AsyncDeliverer{D: t.a.disp, Source: e.Source, Function: e.Function}
		if !sc.Scope.IsNone() {
			d.Scope = sc.Scope.Of
		}
		return d.Deliver(ctx, rec, attempt)
	}
	sd, ok := t.a.streams[e.Source]
	if !ok {
		return notReplayable("source %q is not a stream source in the configuration", e.Source)
	}
	d := *sd
	d.Function = e.Function // the function that failed it, even if the source points elsewhere now
	return d.Deliver(ctx, shard.Delivery{Records: []shard.Record{rec}, Attempt: attempt})
}

// toSource appends e's original record (key, value, headers) to its source's
// topic or stream again, for the source to consume as new.
func (t *replayTargets) toSource(ctx context.Context, e *retention.Envelope) shard.Result {
	w, err := t.sourceWriter(ctx, e)
	if err != nil {
		return shard.Result{Outcome: shard.Failed, Error: shard.ErrorInfo{Kind: "connection", Message: err.Error()}}
	}
	rec := envelopeRecord(e)
	rec.Topic, rec.Partition, rec.Offset = "", 0, 0
	if err := w.Append(ctx, []shard.Record{rec}); err != nil {
		return shard.Result{Outcome: shard.Failed, Error: shard.ErrorInfo{Kind: "connection", Message: err.Error()}}
	}
	return shard.Result{Outcome: shard.Delivered}
}

// sourceWriter returns (once per source) a writer to the topic or stream
// of e's source. Replay workers call it concurrently.
func (t *replayTargets) sourceWriter(ctx context.Context, e *retention.Envelope) (retention.Appender, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w, ok := t.writers[e.Source]; ok {
		return w, nil
	}
	if err, ok := t.broken[e.Source]; ok {
		return nil, err
	}
	w, err := t.newSourceWriter(ctx, e)
	if err != nil {
		if t.broken == nil {
			t.broken = map[string]error{}
		}
		t.broken[e.Source] = err
		return nil, err
	}
	if t.writers == nil {
		t.writers = map[string]retention.Appender{}
	}
	t.writers[e.Source] = w
	return w, nil
}

// newSourceWriter opens a writer to e's source; the topic must exist (a
// Writer to a missing one would wait out its timeout for every letter).
func (t *replayTargets) newSourceWriter(ctx context.Context, e *retention.Envelope) (retention.Appender, error) {
	sc, ok := t.a.cfg.Sources[e.Source]
	if !ok {
		return nil, fmt.Errorf("dlq: source %q is not in the configuration", e.Source)
	}
	b := t.a.cfg.Brokers[sc.Broker]
	var w retention.Appender
	if b.Kafka != nil {
		// The source's topic as configured: a letter's record may come from
		// elsewhere (an async source's retry topic).
		topic := sc.Topic
		if topic == "" {
			topic = e.Record.Topic
		}
		r, err := kafka.NewReader(*b.Kafka, topic)
		if err != nil {
			return nil, fmt.Errorf("dlq: sources.%s: %w", e.Source, err)
		}
		switch ok, err := r.Exists(ctx); {
		case err != nil:
			return nil, fmt.Errorf("dlq: sources.%s: %w", e.Source, err)
		case !ok:
			return nil, fmt.Errorf("dlq: sources.%s: topic %q does not exist", e.Source, topic)
		}
		kw, err := kafka.NewWriter(*b.Kafka, topic)
		if err != nil {
			return nil, fmt.Errorf("dlq: sources.%s: %w", e.Source, err)
		}
		t.a.closers = append(t.a.closers, kw.Close)
		w = kw
	} else {
		nc, err := t.a.dlqNATS(sc.Broker)
		if err != nil {
			return nil, err
		}
		// Records keep their original subject; the prefix is never used.
		nw, err := natssrc.NewWriter(nc, sc.Stream, "sluice.replay")
		if err != nil {
			return nil, fmt.Errorf("dlq: sources.%s: %w", e.Source, err)
		}
		w = nw
	}
	return w, nil
}

// envelopeRecord is the original record a letter carries.
func envelopeRecord(e *retention.Envelope) shard.Record {
	r := e.Record
	rec := shard.Record{Topic: r.Topic, Subject: r.Subject, Partition: r.Partition, Offset: r.Offset,
		Timestamp: r.Timestamp, Key: r.Key, Value: r.Value}
	for _, h := range r.Headers {
		rec.Headers = append(rec.Headers, shard.Header{Key: h.Key, Value: h.Value})
	}
	return rec
}

func notReplayable(format string, args ...any) shard.Result {
	return shard.Result{Outcome: shard.Permanent, Error: shard.ErrorInfo{Kind: "replay", Message: fmt.Sprintf(format, args...)}}
}
