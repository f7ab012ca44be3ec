package nats

import (
	"encoding/base64"
	"errors"
	"strconv"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// EventSource is the eventSource of the request body sluice sends for a
// batch of JetStream messages (SPEC §3).
const EventSource = "sluice:nats"

// ErrEmptyBatch is returned by EncodeEvent and AppendEvent for a batch
// without records: there is nothing to invoke a function with.
var ErrEmptyBatch = errors.New("nats: empty batch")

// EncodeEvent returns the request body for a batch of JetStream records
// (SPEC §3): the shape of the Kafka event, with
//
//	{"eventSource":"sluice:nats",
//	 "records":{"<stream>-<partition>":[{"subject":"clicks.user42",
//	   "stream":"CLICKS","sequence":17,"timestamp":<ms>,"data":"<base64>",
//	   "headers":{"<name>":["v1","v2"]}}]}}
//
// subject is the subject the message was published to (without the
// partition token sluice's transform inserts), timestamp the time the
// stream stored it in Unix milliseconds, as the Kafka event has it. Records
// are grouped under "<stream>-<partition>" (stream is the record's Topic,
// else the stream argument) in the order their partition first appears,
// each group in batch order. headers is always present ({} without any);
// a name's values keep their order.
func EncodeEvent(stream string, recs []event.Record) ([]byte, error) {
	return encodeEvent(stream, recs)
}

// Encoder is the event.Encoder of a JetStream stream source: EncodeEvent
// with the source's stream.
type Encoder struct {
	Stream string
}

// Encode is EncodeEvent.
func (e Encoder) Encode(recs []event.Record) ([]byte, error) { return encodeEvent(e.Stream, recs) }

// AppendEncode is AppendEvent: the stream deliverer encodes into a pooled
// buffer with it.
func (e Encoder) AppendEncode(dst []byte, recs []event.Record) ([]byte, error) {
	return AppendEvent(dst, e.Stream, recs)
}

var _ event.AppendEncoder = Encoder{}

func encodeEvent(stream string, recs []event.Record) ([]byte, error) {
	return AppendEvent(make([]byte, 0, eventSize(stream, recs)), stream, recs)
}

// AppendEvent appends the event EncodeEvent returns to dst.
func AppendEvent(dst []byte, stream string, recs []event.Record) ([]byte, error) {
	if len(recs) == 0 {
		return dst, ErrEmptyBatch
	}
	dst = append(dst, `{"eventSource":"`+EventSource+`","records":{`...)
	for i := range recs {
		r := &recs[i]
		if seenBefore(recs[:i], r) {
			continue
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, '"')
		dst = consumer.AppendJSONStringBody(dst, streamOf(r, stream))
		dst = append(dst, '-')
		dst = strconv.AppendInt(dst, int64(r.Partition), 10)
		dst = append(dst, `":[`...)
		first := true
		for j := i; j < len(recs); j++ {
			if !samePartition(&recs[j], r) {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = appendRecord(dst, &recs[j], stream)
		}
		dst = append(dst, ']')
	}
	return append(dst, "}}"...), nil
}

func streamOf(r *event.Record, stream string) string {
	if r.Topic != "" {
		return r.Topic
	}
	return stream
}

func samePartition(a, b *event.Record) bool { return a.Partition == b.Partition && a.Topic == b.Topic }

// seenBefore reports whether r's partition occurs in earlier; for the usual
// one-partition batch it compares one record (the previous one).
func seenBefore(earlier []event.Record, r *event.Record) bool {
	for k := len(earlier) - 1; k >= 0; k-- {
		if samePartition(&earlier[k], r) {
			return true
		}
	}
	return false
}

func appendRecord(dst []byte, r *event.Record, stream string) []byte {
	dst = append(dst, `{"subject":`...)
	dst = consumer.AppendJSONString(dst, r.Subject)
	dst = append(dst, `,"stream":`...)
	dst = consumer.AppendJSONString(dst, streamOf(r, stream))
	dst = append(dst, `,"sequence":`...)
	dst = strconv.AppendInt(dst, r.Offset, 10)
	dst = append(dst, `,"timestamp":`...)
	ts := int64(-1)
	if !r.Timestamp.IsZero() {
		ts = r.Timestamp.UnixMilli()
	}
	dst = strconv.AppendInt(dst, ts, 10)
	dst = append(dst, `,"data":"`...)
	dst = base64.StdEncoding.AppendEncode(dst, r.Value)
	dst = append(dst, `","headers":{`...)
	// Headers arrive grouped by name (recordHeaders sorts them); a name
	// that comes back later is still written once, with all its values.
	for i := range r.Headers {
		h := &r.Headers[i]
		dup := false
		for k := range i {
			if r.Headers[k].Key == h.Key {
				dup = true
				break
			}
		}
		if dup {
			continue
		}
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = consumer.AppendJSONString(dst, h.Key)
		dst = append(dst, ":["...)
		first := true
		for j := i; j < len(r.Headers); j++ {
			if r.Headers[j].Key != h.Key {
				continue
			}
			if !first {
				dst = append(dst, ',')
			}
			first = false
			dst = consumer.AppendJSONString(dst, string(r.Headers[j].Value))
		}
		dst = append(dst, ']')
	}
	return append(dst, "}}"...)
}

// eventSize is an upper bound of the encoded size, so that EncodeEvent
// allocates once.
func eventSize(stream string, recs []event.Record) int {
	n := 48
	for i := range recs {
		r := &recs[i]
		n += 96 + 12*(len(r.Topic)+len(stream)) + 6*len(r.Subject) + base64.StdEncoding.EncodedLen(len(r.Value))
		for _, h := range r.Headers {
			n += 8 + 6*(len(h.Key)+len(h.Value))
		}
	}
	return n
}
