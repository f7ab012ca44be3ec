package consumer

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// The broker seam. A broker kind (Kafka, JetStream) is a package that
// implements Kind and Broker; cmd/sluice registers each Kind under its name
// once and from then on loops over the brokers of the configuration without
// knowing their kind: it builds sources, dead-letter destinations, the
// ingress's async queues, replay writers and readiness checks through these
// interfaces. The broker-neutral logic (which deliverer a source gets, how
// an ingress event carries its scope, how letters are replayed) lives with
// its owners, never in a broker package.

// Kind opens the brokers of one kind.
type Kind interface {
	// Open connects to broker name (the key under brokers) with its
	// settings, which are of this kind (BrokerConfig.Kind). It may start
	// helpers (the embedded nats-server); Broker.Close stops them. ctx
	// bounds the start-up work only.
	Open(ctx context.Context, name string, cfg BrokerConfig, env Env) (Broker, error)
}

// Env is what a broker gets from the process that opens it.
type Env struct {
	// StateDir is the state directory (an embedded server stores under it).
	StateDir string
	// ClientName names the connections in the broker's own views.
	ClientName string
	// Logger is the process logger.
	Logger *slog.Logger
}

// Broker is one opened broker: everything sluice does with a broker.
// Its methods may be called from several goroutines.
type Broker interface {
	// NewSource builds source name of this broker, a stream or an async
	// source by sc.Mode. It does not contact the broker; Run does (and
	// Ensure, when the source implements Ensurer).
	NewSource(name string, sc SourceConfig, deps SourceDeps) (Source, error)
	// Encoder returns how a stream batch of sc becomes the body of an
	// invocation (Lambda's event of this kind).
	Encoder(sc SourceConfig) event.Encoder

	// EnsureDestination creates dead-letter destination d, or reconciles
	// its retention and size limits; it reports what it did: created, or
	// the settings it changed.
	EnsureDestination(ctx context.Context, d Destination) (created bool, changed []string, err error)
	// DeadLetterWriter appends dead letters (and replay outcomes) to d.
	DeadLetterWriter(d Destination) (Appender, error)
	// DeadLetterReader reads and measures d.
	DeadLetterReader(d Destination) (DeadLetterReader, error)
	// Where names d in logs: its topic or stream, and which of the two.
	Where(d Destination) (kind, name string)

	// SourceWriter appends records to the topic or stream source sc reads
	// (the ingress's async queue; `dlq replay --to source`). With mustExist
	// it fails at once when the topic or stream does not exist, rather than
	// for every record.
	SourceWriter(ctx context.Context, sc SourceConfig, mustExist bool) (Appender, error)
	// AddressEvent makes rec, a new event for async source sc with id, one
	// that sc reads and the broker stores once (a JetStream subject and
	// message id); a no-op where the topic is the address.
	AddressEvent(sc SourceConfig, rec *event.Record, id string)
	// FetchRecord reads the record at at's coordinates (Kafka: topic,
	// partition and offset; JetStream: stream and sequence) from the
	// broker, for the replay of a dead letter stored without its payload.
	// An error wraps ErrRecordGone when the broker no longer retains it.
	FetchRecord(ctx context.Context, at event.Record) (event.Record, error)
	// EventsHaveKeys reports whether the broker's async events carry a
	// record key (Kafka does; JetStream messages have none).
	EventsHaveKeys() bool

	// Ping returns nil when the broker answers, for /readyz.
	Ping(ctx context.Context) error
	// Close closes what Open and the other methods opened (connections,
	// writers, readers, the embedded server), newest first.
	Close()
}

// SourceDeps are what a source gets from the rest of sluice.
type SourceDeps struct {
	// Stream invokes the function with a batch (stream mode).
	Stream shard.Deliverer
	// Async invokes the function with an event (async mode).
	Async AsyncDeliverer
	// DeadLetterer stores what cannot be delivered; nil drops it (counted
	// and logged), as a source without on_failure.
	DeadLetterer event.DeadLetterer
	// KeepFor is how long a source that deletes settled records keeps a
	// copy of one whose dead letter omits its payload (the destination's
	// retention; ≤ 0: forever).
	KeepFor    time.Duration
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Source is a built source: Run consumes until ctx ends; Statuses are its
// shards for the admin API (none for async sources).
type Source interface {
	Run(ctx context.Context) error
	Statuses() []shard.Status
}

// Ensurer is a Source that creates what it reads from (a JetStream stream,
// Kafka retry topics) before sluice says it is running, so that what
// publishers send from then on is kept.
type Ensurer interface {
	Ensure(ctx context.Context) error
}

// ErrRecordGone is returned when the record asked for is no longer
// retained by its topic or stream (retention, compaction, an acknowledged
// work-queue message).
var ErrRecordGone = errors.New("the source no longer retains the record")

// Destination is a dead-letter destination as a broker sees it.
type Destination struct {
	Name    string // its key under dead_letters, for errors
	Topic   string // Kafka
	Stream  string // JetStream
	Subject string // JetStream: "<prefix>.>"
	// MaxAge is how long letters are kept; negative keeps them forever.
	MaxAge time.Duration
	// MaxBytes bounds the destination's size; 0 for no bound.
	MaxBytes int64
}

// Appender writes records durably: Append returns nil only once every
// record is acknowledged by the broker (retention.Appender).
type Appender interface {
	Append(ctx context.Context, recs []event.Record) error
}

// DeadLetterReader reads every record of a dead-letter destination and
// measures it (retention.Reader and retention.Measurer).
type DeadLetterReader interface {
	Scan(ctx context.Context, fn func(event.Record) error) error
	Measure(ctx context.Context) (bytes int64, oldest time.Time, err error)
}

// Kind names the kind of broker b, the key of its settings ("kafka",
// "nats"), or "" when none is set. A new kind adds its settings field to
// BrokerConfig and its case here.
func (b BrokerConfig) Kind() string {
	switch {
	case b.Kafka != nil:
		return "kafka"
	case b.NATS != nil:
		return "nats"
	default:
		return ""
	}
}

// Closers closes what a Broker opened, newest first (writers and
// connections before the server they use). Its zero value is ready; it is
// safe for concurrent use.
type Closers struct {
	mu sync.Mutex // guards fs
	fs []func()
}

// Add registers f to run at Close.
func (c *Closers) Add(f func()) {
	c.mu.Lock()
	c.fs = append(c.fs, f)
	c.mu.Unlock()
}

// Close runs every registered function once, newest first.
func (c *Closers) Close() {
	c.mu.Lock()
	fs := c.fs
	c.fs = nil
	c.mu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}
