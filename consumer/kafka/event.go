package kafka

import (
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// EventSource is the eventSource of the request body sluice sends for a
// batch of Kafka records: Lambda's self-managed Kafka event (SPEC §3).
const EventSource = "SelfManagedKafka"

// ErrEmptyBatch is returned by EncodeEvent and AppendEvent for a batch
// without records: there is nothing to invoke a function with.
var ErrEmptyBatch = errors.New("kafka: empty batch")

// EncodeEvent returns the request body for a batch of Kafka records: the
// self-managed Kafka event of Lambda (SPEC §3), which aws-lambda-go's
// events.KafkaEvent decodes unchanged:
//
//	{"eventSource":"SelfManagedKafka","bootstrapServers":"...",
//	 "records":{"<topic>-<partition>":[{"topic","partition","offset",
//	   "timestamp":<ms>,"timestampType":"CREATE_TIME","key":"<base64>",
//	   "value":"<base64>","headers":[{"<name>":[<signed byte>,...]}]}]}}
//
// Records are grouped under "<topic>-<partition>" in the order their
// partition first appears, each group in batch order (a stream batch holds
// one partition). A nil key or value is left out, as Lambda does for a null
// key or a tombstone; an empty one is "". Header values are arrays of signed
// bytes: 0xff is -1. timestampType is the record's (CREATE_TIME unless the
// broker stamped it: LOG_APPEND_TIME).
//
// It sizes the buffer from the records first, so a batch is encoded with one
// allocation and no reflection; AppendEvent appends to a buffer of the
// caller's (e.g. a pooled one).
func EncodeEvent(bootstrapServers string, recs []event.Record) ([]byte, error) {
	return encodeEvent(bootstrapServers, recs)
}

// Encoder is the event.Encoder of a Kafka stream source: EncodeEvent with
// the brokers the source reads from.
type Encoder struct {
	BootstrapServers string // comma-separated, as the event's bootstrapServers
}

// NewEncoder returns the Encoder of a source reading from broker.
func NewEncoder(broker consumer.KafkaConfig) Encoder {
	return Encoder{BootstrapServers: strings.Join(broker.Seeds, ",")}
}

// Encode is EncodeEvent.
func (e Encoder) Encode(recs []event.Record) ([]byte, error) {
	return encodeEvent(e.BootstrapServers, recs)
}

// AppendEncode is AppendEvent: the stream deliverer encodes into a pooled
// buffer with it.
func (e Encoder) AppendEncode(dst []byte, recs []event.Record) ([]byte, error) {
	return AppendEvent(dst, e.BootstrapServers, recs)
}

var _ event.AppendEncoder = Encoder{}

func encodeEvent(bootstrapServers string, recs []event.Record) ([]byte, error) {
	return AppendEvent(make([]byte, 0, eventSize(bootstrapServers, recs)), bootstrapServers, recs)
}

// AppendEvent appends the event EncodeEvent returns to dst.
func AppendEvent(dst []byte, bootstrapServers string, recs []event.Record) ([]byte, error) {
	if len(recs) == 0 {
		return dst, ErrEmptyBatch
	}
	dst = append(dst, `{"eventSource":"`+EventSource+`","bootstrapServers":`...)
	dst = consumer.AppendJSONString(dst, bootstrapServers)
	dst = append(dst, `,"records":{`...)

	// A batch normally holds one partition: one pass. Otherwise each
	// partition is written once, when it first appears, with all of its
	// records (a JSON object must not repeat a key).
	for i := range recs {
		r := &recs[i]
		if seenBefore(recs[:i], r) {
			continue
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = consumer.AppendJSONStringBody(dst, r.Topic)
		dst = append(dst, '-')
		dst = strconv.AppendInt(dst, int64(r.Partition), 10)
		dst = append(dst, `":[`...)
		// Every record of the group starts with the same topic and
		// partition: the first one escapes them, the others copy its
		// bytes (dst[ps:pe]; appending a part of dst to itself is safe,
		// even when append moves it).
		ps, pe := -1, -1
		for j := i; j < len(recs); j++ {
			if recs[j].Partition != r.Partition || recs[j].Topic != r.Topic {
				continue
			}
			if ps >= 0 {
				dst = append(dst, ',')
				n := len(dst)
				dst = append(dst, dst[ps:pe]...)
				ps, pe = n, len(dst)
			} else {
				ps = len(dst)
				dst = append(dst, `{"topic":`...)
				dst = consumer.AppendJSONString(dst, r.Topic)
				dst = append(dst, `,"partition":`...)
				dst = strconv.AppendInt(dst, int64(r.Partition), 10)
				dst = append(dst, `,"offset":`...)
				pe = len(dst)
			}
			dst = appendRecord(dst, &recs[j])
		}
		dst = append(dst, ']')
	}
	return append(dst, "}}"...), nil
}

// seenBefore reports whether r's partition occurs in earlier; for the usual
// one-partition batch it compares one record (the previous one).
func seenBefore(earlier []event.Record, r *event.Record) bool {
	for k := len(earlier) - 1; k >= 0; k-- {
		if earlier[k].Partition == r.Partition && earlier[k].Topic == r.Topic {
			return true
		}
	}
	return false
}

// appendRecord appends r after its `{"topic":...,"partition":...,"offset":`,
// which the caller wrote.
func appendRecord(dst []byte, r *event.Record) []byte {
	dst = strconv.AppendInt(dst, r.Offset, 10)
	dst = append(dst, `,"timestamp":`...)
	ts := int64(-1) // Kafka's "no timestamp"
	if !r.Timestamp.IsZero() {
		ts = r.Timestamp.UnixMilli()
	}
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"timestampType":"`...)
	dst = append(dst, timestampType(r)...)
	dst = append(dst, '"')
	if r.Key != nil {
		dst = append(dst, `,"key":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, r.Key)
		dst = append(dst, '"')
	}
	if r.Value != nil {
		dst = append(dst, `,"value":"`...)
		dst = base64.StdEncoding.AppendEncode(dst, r.Value)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"headers":[`...)
	for i, h := range r.Headers {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '{')
		dst = consumer.AppendJSONString(dst, h.Key)
		dst = append(dst, ":["...)
		for j, b := range h.Value {
			if j > 0 {
				dst = append(dst, ',')
			}
			dst = strconv.AppendInt(dst, int64(int8(b)), 10) // signed, as Lambda sends them
		}
		dst = append(dst, "]}"...)
	}
	return append(dst, "]}"...)
}

func timestampType(r *event.Record) string { return r.TimestampType.String() }

// eventSize returns an upper bound of the encoded size, so that EncodeEvent
// allocates once. It is tight for the usual topic name (no character to
// escape): a loose bound costs zeroing and collecting the excess on every
// batch.
func eventSize(bootstrapServers string, recs []event.Record) int {
	n := 64 + 6*len(bootstrapServers)
	topic, topicLen := "", 0
	for i := range recs {
		r := &recs[i]
		if i == 0 || r.Topic != topic {
			topic, topicLen = r.Topic, escapedLen(r.Topic)
		}
		// The record's fields with their names and numbers at their
		// longest (185 bytes), its topic twice (the field, and the group's
		// "<topic>-<partition>" should it start one), key and value.
		n += 192 + 2*topicLen + base64.StdEncoding.EncodedLen(len(r.Key)) + base64.StdEncoding.EncodedLen(len(r.Value))
		for _, h := range r.Headers {
			n += 8 + 6*len(h.Key) + 5*len(h.Value) // "-128," is 5 bytes
		}
	}
	return n
}

// escapedLen bounds the length of s as a JSON string body: its own length
// when nothing needs escaping, else six bytes a byte (\u00XX, the longest
// escape; U+FFFD for an invalid byte is three).
func escapedLen(s string) int {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return 6 * len(s)
		}
	}
	return len(s)
}
