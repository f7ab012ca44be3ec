package kafka

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
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
//
// A Writer learns the largest record its topic accepts (MaxRecordBytes: the
// topic's max.message.bytes, else the broker's message.max.bytes) before it
// first produces, and sizes its producer's batches to match
// (ProducerBatchMaxBytes), so that what the topic accepts the client does
// not refuse.
type Writer struct {
	broker  consumer.KafkaConfig
	kopts   []kgo.Opt
	topic   string
	timeout time.Duration

	mu      sync.Mutex
	cl      *kgo.Client // the producer, made with ProducerBatchMaxBytes(limit); nil until first needed
	limit   int
	learned bool      // limit came from the cluster, not the fallback
	tried   time.Time // when learning last failed
	closed  bool
	// ceiling (> 0) caps the limit after the topic refused records as too
	// large that were within it (consumer.LowerLimit); it is dropped when
	// the cluster reports a limit other than the one it capped.
	ceiling int
	asked   int // the limit the cluster (or the fallback) last gave
}

// fallbackLimit is the record size limit a Writer assumes when the cluster
// does not tell it (no DescribeConfigs permission): franz-go's default
// batch limit, under Kafka's default message.max.bytes.
const fallbackLimit = 1_000_012

// relearnAfter is how long a Writer that fell back waits before asking the
// cluster again.
const relearnAfter = 30 * time.Second

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
	// Checked now: a bad TLS or SASL setting fails here, not on the first
	// letter.
	if _, err := ClientOpts(broker); err != nil {
		return nil, fmt.Errorf("kafka: writer to %q: %w", topic, err)
	}
	return &Writer{broker: broker, kopts: kopts, topic: topic, timeout: c.timeout}, nil
}

// MaxRecordBytes returns the largest record the topic accepts; the first
// call asks the cluster (see Writer).
func (w *Writer) MaxRecordBytes(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout)
	defer cancel()
	_, limit, err := w.producer(ctx)
	return limit, err
}

// producer returns the producing client, made (or made again, after the
// limit changed) with batches sized to the topic's limit.
func (w *Writer) producer(ctx context.Context) (*kgo.Client, int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, 0, ErrWriterClosed
	}
	if w.cl != nil && (w.learned || time.Since(w.tried) < relearnAfter) {
		return w.cl, w.limit, nil
	}
	limit, err := TopicMaxMessageBytes(ctx, w.broker, w.topic)
	learned := err == nil
	if !learned {
		w.tried = time.Now()
		limit = fallbackLimit
	}
	if w.asked != 0 && limit != w.asked {
		w.ceiling = 0 // the topic's limit changed: what was refused says nothing of it
	}
	w.asked = limit
	if w.ceiling > 0 {
		limit = min(limit, w.ceiling)
	}
	if w.cl != nil && limit == w.limit {
		w.learned = learned
		return w.cl, w.limit, nil
	}
	cl, err := newClient(w.broker, append(slices.Clone(w.kopts), kgo.ProducerBatchMaxBytes(int32(min(limit, math.MaxInt32))))...)
	if err != nil {
		return nil, 0, fmt.Errorf("kafka: writer to %q: %w", w.topic, err)
	}
	if w.cl != nil {
		w.cl.Close() // an Append still on it fails, and its letters are written again
	}
	w.cl, w.limit, w.learned = cl, limit, learned
	return cl, limit, nil
}

// refused lowers the limit after the topic refused records as too large,
// n of them, the biggest of largest bytes (key, value and headers), and makes the next
// producer call ask the cluster again: without DescribeConfigs permission
// the fallback limit may be above the topic's, and a topic's limit may go
// down. Below the lowered limit the store leaves the payload out, so a
// refused letter is not refused again.
func (w *Writer) refused(largest, n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.limit > 0 {
		w.ceiling = consumer.LowerLimit(w.limit, largest, n)
	}
	w.learned, w.tried = false, time.Time{}
}

// TopicMaxMessageBytes returns the largest record batch topic accepts: its
// max.message.bytes (which, when not set on the topic, is the broker's
// message.max.bytes), or the broker's message.max.bytes when the topic's
// configs say nothing.
func TopicMaxMessageBytes(ctx context.Context, broker consumer.KafkaConfig, topic string) (int, error) {
	cl, err := newClient(broker)
	if err != nil {
		return 0, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	if rcs, err := adm.DescribeTopicConfigs(ctx, topic); err == nil {
		if rc, err := rcs.On(topic, nil); err == nil && rc.Err == nil {
			if n, ok := configInt(rc.Configs, "max.message.bytes"); ok {
				return n, nil
			}
		}
	}
	bcs, err := adm.DescribeBrokerConfigs(ctx)
	if err != nil {
		return 0, fmt.Errorf("kafka: describe the configs of topic %q and its broker: %w", topic, opaque(err))
	}
	for _, rc := range bcs {
		if n, ok := configInt(rc.Configs, "message.max.bytes"); ok && rc.Err == nil {
			return n, nil
		}
	}
	return 0, fmt.Errorf("kafka: neither topic %q nor its broker reports a message size limit", topic)
}

func configInt(cs []kadm.Config, key string) (int, bool) {
	for _, c := range cs {
		if c.Key == key && c.Value != nil {
			n, err := strconv.Atoi(*c.Value)
			return n, err == nil && n > 0
		}
	}
	return 0, false
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
	cl, _, err := w.producer(ctx)
	if err != nil {
		return err
	}
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
	results := cl.ProduceSync(ctx, krs...)
	var failed, tooLarge, nTooLarge int
	var first error
	for _, r := range results {
		if r.Err != nil {
			if first == nil {
				first = r.Err
			}
			failed++
			if errors.Is(r.Err, kerr.MessageTooLarge) {
				tooLarge = max(tooLarge, kafkaRecordBytes(r.Record))
				nTooLarge++
			}
		}
	}
	if first == nil {
		return nil
	}
	if tooLarge > 0 {
		w.refused(tooLarge, nTooLarge)
	}
	return fmt.Errorf("kafka: write to %q: %d of %d records not acknowledged: %w", w.topic, failed, len(recs), opaque(first))
}

// kafkaRecordBytes is the bytes of r's key, value and headers.
func kafkaRecordBytes(r *kgo.Record) int {
	n := len(r.Key) + len(r.Value)
	for _, h := range r.Headers {
		n += len(h.Key) + len(h.Value)
	}
	return n
}

// Close waits for nothing: records of an Append still running are failed.
func (w *Writer) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	if w.cl != nil {
		w.cl.Close()
	}
}

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
