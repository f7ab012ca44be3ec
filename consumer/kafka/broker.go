package kafka

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// Kind is the Kafka broker kind (brokers.<name>.kafka).
type Kind struct{}

var _ consumer.Kind = Kind{}

// Open returns the Broker of cfg.Kafka; its clients connect when they are
// first used. Open tries the broker's security settings once (Check), so that a wrong
// password, a wrong CA or a missing tls fails start-up with a message that
// names the cause instead of leaving the clients retrying forever. A broker
// that is merely unreachable opens all the same: its clients keep trying,
// as they always do.
func (Kind) Open(ctx context.Context, name string, cfg consumer.BrokerConfig, env consumer.Env) (consumer.Broker, error) {
	if cfg.Kafka == nil {
		return nil, fmt.Errorf("kafka: broker %s has no kafka settings", name)
	}
	cctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if err := Check(cctx, *cfg.Kafka); err != nil {
		return nil, err
	}
	return &Broker{cfg: *cfg.Kafka, log: env.Logger}, nil
}

// checkTimeout bounds Open's check of the security settings.
const checkTimeout = 15 * time.Second

// Broker is one Kafka cluster as sluice uses it (consumer.Broker).
type Broker struct {
	cfg consumer.KafkaConfig
	log *slog.Logger // may be nil

	closers consumer.Closers
	mu      sync.Mutex // guards pinger
	pinger  *Pinger
}

var _ consumer.Broker = (*Broker)(nil)

// NewSource returns a stream Source or an Async source, by sc.Mode.
func (b *Broker) NewSource(name string, sc consumer.SourceConfig, deps consumer.SourceDeps) (consumer.Source, error) {
	if sc.Mode == consumer.ModeStream {
		return New(name, b.cfg, sc, Options{Worker: sc.WorkerConfig(name), Deliverer: deps.Stream,
			CommitPipelineDepth: sc.CommitPipelineDepth,
			DeadLetterer:        deps.DeadLetterer, Logger: deps.Logger, Registerer: deps.Registerer})
	}
	return NewAsync(name, b.cfg, sc, AsyncOptions{Deliverer: deps.Async,
		DeadLetterer: deps.DeadLetterer, Logger: deps.Logger, Registerer: deps.Registerer})
}

// Encoder encodes batches as Lambda's self-managed Kafka event.
func (b *Broker) Encoder(consumer.SourceConfig) event.Encoder { return NewEncoder(b.cfg) }

// EnsureDestination creates or reconciles d's topic (one partition).
func (b *Broker) EnsureDestination(ctx context.Context, d consumer.Destination) (bool, []string, error) {
	created, changed, err := EnsureTopic(ctx, b.cfg, d.Topic, 1, d.MaxAge, d.MaxBytes)
	if err != nil {
		return false, nil, fmt.Errorf("topic %s: %w", d.Topic, err)
	}
	return created, changed, nil
}

// DeadLetterWriter returns a Writer to d's topic; Close closes it.
func (b *Broker) DeadLetterWriter(d consumer.Destination) (consumer.Appender, error) {
	return b.writer(d.Topic)
}

func (b *Broker) writer(topic string) (*Writer, error) {
	w, err := NewWriter(b.cfg, topic)
	if err != nil {
		return nil, err
	}
	b.closers.Add(w.Close)
	return w, nil
}

// DeadLetterReader returns a Reader of d's topic.
func (b *Broker) DeadLetterReader(d consumer.Destination) (consumer.DeadLetterReader, error) {
	return NewReader(b.cfg, d.Topic)
}

// Where names d's topic.
func (b *Broker) Where(d consumer.Destination) (string, string) { return "topic", d.Topic }

// SourceWriter returns a Writer to sc's topic.
func (b *Broker) SourceWriter(ctx context.Context, sc consumer.SourceConfig, mustExist bool) (consumer.Appender, error) {
	if mustExist {
		r, err := NewReader(b.cfg, sc.Topic)
		if err != nil {
			return nil, err
		}
		switch ok, err := r.Exists(ctx); {
		case err != nil:
			return nil, err
		case !ok:
			return nil, fmt.Errorf("topic %q does not exist", sc.Topic)
		}
	}
	return b.writer(sc.Topic)
}

// AddressEvent does nothing: the topic is the address.
func (b *Broker) AddressEvent(consumer.SourceConfig, *event.Record, string) {}

// EventsHaveKeys is true: Kafka records have keys.
func (b *Broker) EventsHaveKeys() bool { return true }

// Ping asks the cluster for its metadata, over one client kept for it.
func (b *Broker) Ping(ctx context.Context) error {
	b.mu.Lock()
	if b.pinger == nil {
		p, err := NewPinger(b.cfg)
		if err != nil {
			b.mu.Unlock()
			return err
		}
		b.pinger = p
		b.closers.Add(p.Close)
	}
	p := b.pinger
	b.mu.Unlock()
	return p.Ping(ctx)
}

// Close closes every client the Broker opened, newest first.
func (b *Broker) Close() { b.closers.Close() }
