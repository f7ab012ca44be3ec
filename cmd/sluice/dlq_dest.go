package main

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
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

// replayTargets sends letters back for `dlq replay` (retention.Targets):
// to their function through the app's dispatcher, or to their source's
// topic or stream through its broker.
func (a *app) replayTargets() *retention.Targets {
	return &retention.Targets{
		HasSource:   func(name string) bool { _, ok := a.cfg.Sources[name]; return ok },
		HasFunction: func(name string) bool { _, ok := a.cfg.Functions[name]; return ok },
		Stream: func(src, fn string) (shard.Deliverer, bool) {
			sd, ok := a.streams[src]
			if !ok {
				return nil, false
			}
			d := *sd
			d.Function = fn
			return &d, true
		},
		Async: func(src, fn string) retention.AsyncDeliverer {
			// Built here rather than recorded by wire: an async deliverer
			// is fully determined by the dispatcher, the source and its
			// scope.
			d := &dispatch.AsyncDeliverer{D: a.disp, Source: src, Function: fn}
			if sc := a.cfg.Sources[src]; !sc.Scope.IsNone() {
				d.Scope = sc.Scope.Of
			}
			return d
		},
		// Called under the Targets' lock, which also guards a's brokers and
		// closers while replaying. The source's topic or stream as
		// configured: a letter's record may come from elsewhere (an async
		// source's retry topic); it must exist (a Writer to a missing one
		// would wait out its timeout for every letter).
		// A letter stored without its payload: the original from the
		// source's broker, while it retains it.
		Fetch: func(ctx context.Context, src string, at event.Record) (event.Record, error) {
			sc := a.cfg.Sources[src]
			br, err := a.broker(ctx, "dlq", sc.Broker)
			if err != nil {
				return event.Record{}, err
			}
			fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			return br.FetchRecord(fctx, at)
		},
		Writer: func(ctx context.Context, src string) (retention.Appender, error) {
			sc := a.cfg.Sources[src]
			br, err := a.broker(ctx, "dlq", sc.Broker)
			if err != nil {
				return nil, err
			}
			w, err := br.SourceWriter(ctx, sc, true)
			if err != nil {
				return nil, fmt.Errorf("dlq: sources.%s: %w", src, err)
			}
			return w, nil
		},
	}
}
