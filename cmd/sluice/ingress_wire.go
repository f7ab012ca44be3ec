package main

import (
	"context"
	"fmt"
	"slices"

	"github.com/sluicehq/sluice/ingress"
)

// wireIngress builds the HTTP ingress (SPEC §2.3) that the admin API mounts:
// synchronous calls go through the dispatcher, asynchronous ones are
// appended to the function's async_queue by ingress.Queues. It runs after
// wireSources, which connected to the brokers.
func (a *app) wireIngress() error {
	q, err := a.newEnqueuer(context.Background())
	if err != nil {
		return err
	}
	a.ingress = ingress.New(a.disp, ingress.WithEnqueuer(q), ingress.WithLogger(a.log))
	return nil
}

// newEnqueuer opens a writer for every async source some function names as
// its async_queue (config validated that each is an async source of that
// function).
func (a *app) newEnqueuer(ctx context.Context) (*ingress.Queues, error) {
	queues := map[string]*ingress.Queue{}
	bySource := map[string]*ingress.Queue{} // source → its queue, shared by the functions naming it
	names := make([]string, 0, len(a.cfg.Functions))
	for name := range a.cfg.Functions {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, fn := range names {
		src := a.cfg.Functions[fn].AsyncQueue
		if src == "" {
			continue
		}
		if q, ok := bySource[src]; ok {
			queues[fn] = q
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
		q := &ingress.Queue{Source: src, Config: sc, Writer: w, Broker: br}
		bySource[src] = q
		queues[fn] = q
	}
	return ingress.NewQueues(names, queues), nil
}
