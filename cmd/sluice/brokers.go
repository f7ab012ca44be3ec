package main

import (
	"context"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
)

// brokerKinds are the broker kinds sluice knows, by the key of their
// settings under brokers.<name> (consumer.BrokerConfig.Kind). Everything
// else in cmd loops over the opened brokers without knowing their kind; a
// new kind is one line here (ARCHITECTURE.md, "Adding a broker").
var brokerKinds = map[string]consumer.Kind{
	"kafka": kafka.Kind{},
	"nats":  natssrc.Kind{},
}

// broker returns broker name of the configuration, opening it on first use
// (connecting, or starting the embedded nats-server); a's close closes it.
// what prefixes errors ("run", "dlq").
func (a *app) broker(ctx context.Context, what, name string) (consumer.Broker, error) {
	if b, ok := a.brokers[name]; ok {
		return b, nil
	}
	bc, ok := a.cfg.Brokers[name]
	if !ok {
		return nil, fmt.Errorf("%s: broker %s is not in the configuration", what, name)
	}
	kind, ok := brokerKinds[bc.Kind()]
	if !ok {
		return nil, fmt.Errorf("%s: brokers.%s: unknown broker kind %q", what, name, bc.Kind())
	}
	if bc.NATS != nil && bc.NATS.Embedded() && a.lock == nil {
		// `sluice dlq list/show`: the embedded server's store under
		// state_dir is about to be opened (run and replay hold the lock
		// already, from wire).
		lock, err := lockStateDir(a.cfg.StateDir)
		if err != nil {
			return nil, err
		}
		a.lock = lock
		a.closers = append(a.closers, func() { lock.release(); a.lock = nil })
	}
	client := "sluice"
	if what != "run" {
		client = "sluice-" + what
	}
	b, err := kind.Open(ctx, name, bc, consumer.Env{StateDir: a.cfg.StateDir, ClientName: client, Logger: a.log})
	if err != nil {
		return nil, fmt.Errorf("%s: brokers.%s: %w", what, name, err)
	}
	if a.brokers == nil {
		a.brokers = map[string]consumer.Broker{}
	}
	a.brokers[name] = b
	a.closers = append(a.closers, b.Close)
	return b, nil
}

// destination is dead-letter destination name as its broker sees it.
func (a *app) destination(name string) consumer.Destination {
	dl := a.cfg.DeadLetters[name]
	age := time.Duration(-1)
	if !dl.Retention.IsInfinite() {
		age = dl.Retention.Duration()
	}
	return consumer.Destination{Name: name, Topic: dl.Topic, Stream: dl.Stream, Subject: dl.Subject,
		MaxAge: age, MaxBytes: int64(dl.MaxBytes)}
}
