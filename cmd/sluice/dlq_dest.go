package main

import (
	"context"
	"fmt"
	"sync"

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
func (a *app) measureDeadLetters(ctx context.Context, name string, g *retention.Gauges) error {
	br, err := a.broker(ctx, "run", a.cfg.DeadLetters[name].Broker)
	if err != nil {
		return err
	}
	r, err := br.DeadLetterReader(a.destination(name))
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
// for appending replay outcomes, over the brokers wire opened (for a
// replay) or opening them (the embedded nats-server is started on the state
// directory when `sluice run` does not hold it). It does not create them: a
// missing one reads as empty. Connections are closed with a's closers.
func (a *app) openDestinations(ctx context.Context, names []string) ([]dlqDest, error) {
	out := make([]dlqDest, 0, len(names))
	for _, name := range names {
		br, err := a.broker(ctx, "dlq", a.cfg.DeadLetters[name].Broker)
		if err != nil {
			return nil, err
		}
		d := a.destination(name)
		r, err := br.DeadLetterReader(d)
		if err != nil {
			return nil, fmt.Errorf("dlq: dead_letters.%s: %w", name, err)
		}
		w, err := br.DeadLetterWriter(d)
		if err != nil {
			return nil, fmt.Errorf("dlq: dead_letters.%s: %w", name, err)
		}
		out = append(out, dlqDest{name: name, reader: r, app: w})
	}
	return out, nil
}

// replayTargets sends letters back for `dlq replay`: to their function
// through the app's dispatcher, or to their source's topic or stream.
type replayTargets struct {
	a *app

	mu      sync.Mutex                    // guards writers, broken, and a's closers and brokers while replaying
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
	rec := e.Original()
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
	rec := e.Original()
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
// The source's topic or stream as configured: a letter's record may come
// from elsewhere (an async source's retry topic).
func (t *replayTargets) newSourceWriter(ctx context.Context, e *retention.Envelope) (retention.Appender, error) {
	sc, ok := t.a.cfg.Sources[e.Source]
	if !ok {
		return nil, fmt.Errorf("dlq: source %q is not in the configuration", e.Source)
	}
	br, err := t.a.broker(ctx, "dlq", sc.Broker)
	if err != nil {
		return nil, err
	}
	w, err := br.SourceWriter(ctx, sc, true)
	if err != nil {
		return nil, fmt.Errorf("dlq: sources.%s: %w", e.Source, err)
	}
	return w, nil
}

func notReplayable(format string, args ...any) shard.Result {
	return shard.Result{Outcome: shard.Permanent, Error: shard.ErrorInfo{Kind: "replay", Message: fmt.Sprintf(format, args...)}}
}
