package kafka

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// DefaultWriteTimeout bounds one Writer.Append: a topic that is missing or a
// cluster that is unreachable fails the call after this long instead of
// hanging (franz-go retries UNKNOWN_TOPIC_OR_PARTITION and dials forever by
// default).
const DefaultWriteTimeout = 10 * time.Second

// ErrWriterClosed is returned by Append after Close.
var ErrWriterClosed = errors.New("kafka: writer closed")

// Writer produces records to one topic and waits for every one of them to be
// acknowledged by all in-sync replicas. The dead-letter store writes through
// it: a letter counts as stored only once Append returned nil.
type Writer struct {
	cl      *kgo.Client
	topic   string
	timeout time.Duration
}

// WriterOption configures a Writer.
type WriterOption func(*writerConfig)

type writerConfig struct {
	timeout time.Duration
}

// WithWriteTimeout sets how long one Append may take (default
// DefaultWriteTimeout).
func WithWriteTimeout(d time.Duration) WriterOption {
	return func(c *writerConfig) { c.timeout = d }
}

// NewWriter returns a Writer to topic on the cluster broker reaches. It does
// not contact the cluster: a missing topic or an unreachable cluster shows up
// as an Append error.
func NewWriter(broker consumer.KafkaConfig, topic string, opts ...WriterOption) (*Writer, error) {
	if topic == "" {
		return nil, errors.New("kafka: writer needs a topic")
	}
	if len(broker.Seeds) == 0 {
		return nil, fmt.Errorf("kafka: writer to %q: no seed brokers", topic)
	}
	c := writerConfig{timeout: DefaultWriteTimeout}
	for _, o := range opts {
		o(&c)
	}
	if c.timeout <= 0 {
		c.timeout = DefaultWriteTimeout
	}
	kopts := []kgo.Opt{
		kgo.DefaultProduceTopic(topic),
		// The same key lands in the same partition, so letters of one key
		// stay in order; keyless records stick to a partition per batch.
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		// Without idempotence franz-go may fail a record whose request is
		// already on the wire when the deadline passes; with it, such a
		// record cannot be failed until the broker answers, and Append
		// could hang on an unreachable cluster. A retried Append may write
		// a letter twice (it carries its id; replay skips what succeeded).
		kgo.DisableIdempotentWrite(),
		// Append waits for its records anyway: do not linger.
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(c.timeout),
		kgo.ProduceRequestTimeout(min(c.timeout, 10*time.Second)),
	}
	cl, err := newClient(broker, kopts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: writer to %q: %w", topic, err)
	}
	return &Writer{cl: cl, topic: topic, timeout: c.timeout}, nil
}

// Topic returns the topic the Writer produces to.
func (w *Writer) Topic() string { return w.topic }

// Append produces recs (their Key, Value and Headers; Topic, Partition and
// Offset are ignored, and the timestamp is the time of writing, so that the
// topic's retention counts from then) and returns nil only once every one of
// them was acknowledged. It gives up after the Writer's timeout or when ctx
// ends; records may then have been written or not (at-least-once).
func (w *Writer) Append(ctx context.Context, recs []event.Record) error {
	if len(recs) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	krs := make([]*kgo.Record, len(recs))
	for i := range recs {
		r := &recs[i]
		kr := &kgo.Record{Topic: w.topic, Key: r.Key, Value: r.Value}
		if len(r.Headers) > 0 {
			kr.Headers = make([]kgo.RecordHeader, len(r.Headers))
			for j, h := range r.Headers {
				kr.Headers[j] = kgo.RecordHeader{Key: h.Key, Value: h.Value}
			}
		}
		krs[i] = kr
	}
	results := w.cl.ProduceSync(ctx, krs...)
	var failed int
	var first error
	for _, r := range results {
		if r.Err != nil {
			if first == nil {
				first = r.Err
			}
			failed++
		}
	}
	if first == nil {
		return nil
	}
	return fmt.Errorf("kafka: write to %q: %d of %d records not acknowledged: %w", w.topic, failed, len(recs), opaque(first))
}

// Close waits for nothing: records of an Append still running are failed.
func (w *Writer) Close() { w.cl.Close() }

// opaque keeps franz-go's error types inside this package (STYLE 9): callers
// can still tell a closed client and an ended context apart.
func opaque(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, kgo.ErrClientClosed):
		return ErrWriterClosed
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	default:
		return errors.New(err.Error())
	}
}

func clientID(b consumer.KafkaConfig) string {
	if b.ClientID != "" {
		return b.ClientID
	}
	return consumer.DefaultKafkaClientID
}

func bootstrapServers(b consumer.KafkaConfig) string { return strings.Join(b.Seeds, ",") }
