package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/redelivery"
	"github.com/sluicehq/sluice/shard"
)

// This file holds what the async source (async.go) keeps in Kafka for an
// event that must wait: the tiered retry topics and the headers that carry
// the event's retry state from one try to the next (see doc.go, "Async
// sources").

// DefaultRetryTiers are the delays of an async source's retry topics. A wait
// of d goes to the longest tier not above d (the first tier for shorter
// waits), so the records of one tier partition become due in nearly the
// order they were written: a record waits at most about the gap to the next
// tier behind an earlier one that is due later (head of line).
var DefaultRetryTiers = []time.Duration{time.Second, 5 * time.Second, 30 * time.Second, 2 * time.Minute, 10 * time.Minute}

// DefaultRetryRetention is the retention of the retry topics: a waiting
// event must outlive any plausible downtime of sluice (max_event_age is at
// most 6h; an event found expired is dead-lettered when it is read).
const DefaultRetryRetention = 7 * 24 * time.Hour

// maxTopicName is Kafka's limit on topic names.
const maxTopicName = 249

// The headers of a retry record. Every one starts with retryHeaderPrefix;
// they are removed before the event reaches the function or a dead letter,
// so the function sees the original headers only.
const (
	retryHeaderPrefix  = "sluice-retry-"
	hdrSource          = retryHeaderPrefix + "source"        // the sluice source the event belongs to
	hdrTopic           = retryHeaderPrefix + "topic"         // original topic
	hdrPartition       = retryHeaderPrefix + "partition"     // original partition
	hdrOffset          = retryHeaderPrefix + "offset"        // original offset
	hdrEventTime       = retryHeaderPrefix + "event-time"    // original record timestamp, Unix ms (max_event_age counts from it)
	hdrAttempts        = retryHeaderPrefix + "attempts"      // function attempts made (throttles not counted)
	hdrThrottles       = retryHeaderPrefix + "throttles"     // throttled tries (they grow the throttle backoff)
	hdrFirstAttempt    = retryHeaderPrefix + "first-attempt" // Unix ms
	hdrLastAttempt     = retryHeaderPrefix + "last-attempt"  // Unix ms
	hdrDue             = retryHeaderPrefix + "due"           // Unix ms: not to be tried before
	hdrLastError       = retryHeaderPrefix + "last-error"    // JSON event.ErrorInfo
	retryTopicInfix    = ".sluice-retry."
	retryProduceTimout = 10 * time.Second
)

// retryTier is one retry topic of a source.
type retryTier struct {
	delay time.Duration
	topic string
}

// retryTopics returns the retry topics of source name over topic, one per
// tier: "<topic>.sluice-retry.<source>.<tier>", e.g.
// "orders.sluice-retry.orders.30s".
func retryTopics(topic, name string, tiers []time.Duration) ([]retryTier, error) {
	if len(tiers) == 0 {
		return nil, errors.New("no retry tiers")
	}
	out := make([]retryTier, len(tiers))
	for i, d := range tiers {
		if d <= 0 || (i > 0 && d <= tiers[i-1]) {
			return nil, fmt.Errorf("retry tiers %v must be positive and increasing", tiers)
		}
		t := topic + retryTopicInfix + topicToken(name) + "." + shard.FormatDuration(d)
		if len(t) > maxTopicName {
			return nil, fmt.Errorf("retry topic name %q is longer than Kafka allows (%d); use a shorter topic or source name", t, maxTopicName)
		}
		out[i] = retryTier{delay: d, topic: t}
	}
	return out, nil
}

// topicToken keeps the characters Kafka allows in a topic name and replaces
// the others with '_'.
func topicToken(s string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '.', r == '_', r == '-':
			return r
		}
		return '_'
	}, s)
}

// tierFor returns the index of the tier a wait of d goes to: the longest
// tier not above d, or the first.
func tierFor(tiers []retryTier, d time.Duration) int {
	i := 0
	for j, t := range tiers {
		if t.delay <= d {
			i = j
		}
	}
	return i
}

// retryEvent is one async event as the source handles it: the original
// record (coordinates, timestamp, key, value, headers) and its retry state,
// which retry records carry in their headers.
type retryEvent struct {
	rec       event.Record // the original record: what the function and a dead letter see
	attempts  int
	throttles int
	first     time.Time // zero before the first try
	last      time.Time
	due       time.Time // zero for a record of the source topic
	lastError event.ErrorInfo
}

// state returns ev's retry state, as the redelivery policy sees it.
func (ev *retryEvent) state() redelivery.State {
	return redelivery.State{Attempts: ev.attempts, Throttles: ev.throttles, First: ev.first, Last: ev.last, LastError: ev.lastError}
}

// setState takes back the retry state the policy updated.
func (ev *retryEvent) setState(st redelivery.State) {
	ev.attempts, ev.throttles, ev.first, ev.last, ev.lastError = st.Attempts, st.Throttles, st.First, st.Last, st.LastError
}

// eventOf reads kr: a record of the source topic is a fresh event; a record
// of a retry topic carries the original coordinates and the retry state in
// its headers. A retry record whose headers are unreadable is taken as a
// fresh event at its own coordinates (err says why), so it is still
// delivered rather than lost.
func eventOf(kr *kgo.Record, source string) (retryEvent, error) {
	ev := retryEvent{rec: event.Record{
		Topic: kr.Topic, Partition: kr.Partition, Offset: kr.Offset, Timestamp: kr.Timestamp,
		Key: kr.Key, Value: kr.Value, TimestampType: timestampTypeOf(kr),
	}}
	var retry map[string]string
	for _, h := range kr.Headers {
		if strings.HasPrefix(h.Key, retryHeaderPrefix) {
			if retry == nil {
				retry = map[string]string{}
			}
			retry[h.Key] = string(h.Value)
			continue
		}
		ev.rec.Headers = append(ev.rec.Headers, event.Header{Key: h.Key, Value: h.Value})
	}
	if retry == nil {
		return ev, nil
	}
	if s := retry[hdrSource]; s != source {
		return ev, fmt.Errorf("retry record of source %q, not %q", s, source)
	}
	var errs []error
	num := func(k string) int64 {
		v, err := strconv.ParseInt(retry[k], 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("header %s: %q is not an integer", k, retry[k]))
		}
		return v
	}
	at := func(k string) time.Time {
		ms := num(k)
		if ms == 0 {
			return time.Time{}
		}
		return time.UnixMilli(ms)
	}
	orig := event.Record{
		Topic: retry[hdrTopic], Partition: int32(num(hdrPartition)), Offset: num(hdrOffset),
		Timestamp: at(hdrEventTime), Key: kr.Key, Value: kr.Value, Headers: ev.rec.Headers,
	}
	out := retryEvent{
		rec: orig, attempts: int(num(hdrAttempts)), throttles: int(num(hdrThrottles)),
		first: at(hdrFirstAttempt), last: at(hdrLastAttempt), due: at(hdrDue),
	}
	if e := retry[hdrLastError]; e != "" {
		if err := json.Unmarshal([]byte(e), &out.lastError); err != nil {
			errs = append(errs, fmt.Errorf("header %s: %w", hdrLastError, err))
		}
	}
	if orig.Topic == "" || orig.Timestamp.IsZero() {
		errs = append(errs, errors.New("no original topic or event time"))
	}
	if err := errors.Join(errs...); err != nil {
		return ev, fmt.Errorf("unreadable retry headers: %w", err)
	}
	return out, nil
}

// retryRecord returns the record that carries ev to topic: the original
// key, value and headers, plus the retry state.
func retryRecord(ev *retryEvent, source, topic string) *kgo.Record {
	ms := func(t time.Time) []byte {
		if t.IsZero() {
			return []byte("0")
		}
		return []byte(strconv.FormatInt(t.UnixMilli(), 10))
	}
	r := &ev.rec
	kr := &kgo.Record{Topic: topic, Key: r.Key, Value: r.Value}
	kr.Headers = make([]kgo.RecordHeader, 0, len(r.Headers)+11)
	for _, h := range r.Headers {
		kr.Headers = append(kr.Headers, kgo.RecordHeader{Key: h.Key, Value: h.Value})
	}
	le, _ := json.Marshal(ev.lastError) // a struct of strings and an int: cannot fail
	kr.Headers = append(kr.Headers,
		kgo.RecordHeader{Key: hdrSource, Value: []byte(source)},
		kgo.RecordHeader{Key: hdrTopic, Value: []byte(r.Topic)},
		kgo.RecordHeader{Key: hdrPartition, Value: []byte(strconv.Itoa(int(r.Partition)))},
		kgo.RecordHeader{Key: hdrOffset, Value: []byte(strconv.FormatInt(r.Offset, 10))},
		kgo.RecordHeader{Key: hdrEventTime, Value: ms(r.Timestamp)},
		kgo.RecordHeader{Key: hdrAttempts, Value: []byte(strconv.Itoa(ev.attempts))},
		kgo.RecordHeader{Key: hdrThrottles, Value: []byte(strconv.Itoa(ev.throttles))},
		kgo.RecordHeader{Key: hdrFirstAttempt, Value: ms(ev.first)},
		kgo.RecordHeader{Key: hdrLastAttempt, Value: ms(ev.last)},
		kgo.RecordHeader{Key: hdrDue, Value: ms(ev.due)},
		kgo.RecordHeader{Key: hdrLastError, Value: le},
	)
	return kr
}

// retryHeadroom is what a retry record may add to its event (the retry
// headers), on top of the source topic's max.message.bytes.
const retryHeadroom = 16 << 10

// errRetryTooLarge: a retry topic (or the producer sized to it) refused a
// retry record as too large; retrying the write cannot help.
var errRetryTooLarge = errors.New("kafka: the event is too large for its retry topic")

// newRetryProducer returns the client that writes retry records: every
// record acknowledged by all in-sync replicas before it counts (the offset
// of the record it replaces is committed only then), and a write that cannot
// complete fails after retryProduceTimout instead of hanging (as Writer).
//
// maxBytes (≤ 0: franz-go's default) sizes its batches to the retry topics'
// max.message.bytes.
func newRetryProducer(broker consumer.KafkaConfig, maxBytes int, extra []kgo.Opt) (*kgo.Client, error) {
	opts := []kgo.Opt{
		kgo.RecordPartitioner(kgo.StickyKeyPartitioner(nil)),
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.DisableIdempotentWrite(), // see NewWriter: a write must be able to fail on time
		kgo.ProducerLinger(0),
		kgo.RecordDeliveryTimeout(retryProduceTimout),
		kgo.ProduceRequestTimeout(retryProduceTimout),
	}
	if maxBytes > 0 {
		opts = append(opts, kgo.ProducerBatchMaxBytes(int32(min(maxBytes, math.MaxInt32))))
	}
	return newClient(broker, append(opts, extra...)...)
}

// produceRetry writes kr and returns nil once it was acknowledged.
func produceRetry(ctx context.Context, cl *kgo.Client, kr *kgo.Record) error {
	ctx, cancel := context.WithTimeout(ctx, retryProduceTimout)
	defer cancel()
	if err := cl.ProduceSync(ctx, kr).FirstErr(); err != nil {
		if errors.Is(err, kerr.MessageTooLarge) {
			return fmt.Errorf("%w %q (%d bytes): %w", errRetryTooLarge, kr.Topic, len(kr.Key)+len(kr.Value), opaque(err))
		}
		return fmt.Errorf("kafka: write retry record to %q: %w", kr.Topic, opaque(err))
	}
	return nil
}

// ensureRetryTopics creates the retry topics that are missing, with as many
// partitions as the source topic (so the retry work spreads over the group
// like the source's), and reconciles their retention. It returns what it
// created or changed, for the log.
func ensureRetryTopics(ctx context.Context, broker consumer.KafkaConfig, topic string, tiers []retryTier,
	retention time.Duration, opts []kgo.Opt,
) (created []string, changed []string, err error) {
	cl, err := newClient(broker, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: retry topics: %w", err)
	}
	partitions := int32(-1) // the broker's default when the source topic does not exist yet
	tds, err := kadm.NewClient(cl).ListTopics(ctx, topic)
	cl.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: describe topic %q: %w", topic, opaque(err))
	}
	if td, ok := tds[topic]; ok && td.Err == nil && len(td.Partitions) > 0 {
		partitions = int32(len(td.Partitions))
	}
	// A retry record is its event with a few headers more: its topic takes
	// whatever the source topic takes, with room for them.
	var extra map[string]string
	if n, err := TopicMaxMessageBytes(ctx, broker, topic); err == nil && n > 0 {
		extra = map[string]string{"max.message.bytes": strconv.Itoa(n + retryHeadroom)}
	}
	for _, t := range tiers {
		c, ch, err := ensureTopic(ctx, broker, t.topic, partitions, retention, 0, extra, opts...)
		if err != nil {
			return created, changed, err
		}
		if c {
			created = append(created, t.topic)
		}
		for _, s := range ch {
			changed = append(changed, t.topic+" "+s)
		}
	}
	return created, changed, nil
}
