package nats

import (
	"slices"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/event"
)

// pinHeader is the header nats-server adds to every message it delivers to
// the pinned client of a priority group. It describes the delivery, not the
// message, so it is kept out of records.
const pinHeader = "Nats-Pin-Id"

// newRecord converts a delivered message. Partition, Key and Subject are
// the caller's (stream mode parses them from the partition subject); the
// source settles the message by its stream sequence (Offset).
func newRecord(m jetstream.Msg, md *jetstream.MsgMetadata) event.Record {
	return event.Record{
		Topic:     md.Stream,
		Subject:   m.Subject(),
		Offset:    int64(md.Sequence.Stream),
		Timestamp: md.Timestamp,
		Value:     m.Data(),
		Headers:   recordHeaders(m.Headers()),
	}
}

// recordHeaders flattens NATS headers into record headers, names sorted
// (a map has no order; a record's headers must be stable across
// redeliveries), each name's values in order, without the delivery's pin id.
func recordHeaders(h natsgo.Header) []event.Header {
	if len(h) == 0 {
		return nil
	}
	names := make([]string, 0, len(h))
	n := 0
	for k, vs := range h {
		if k == pinHeader {
			continue
		}
		names = append(names, k)
		n += len(vs)
	}
	if n == 0 {
		return nil
	}
	slices.Sort(names)
	out := make([]event.Header, 0, n)
	for _, k := range names {
		for _, v := range h[k] {
			out = append(out, event.Header{Key: k, Value: []byte(v)})
		}
	}
	return out
}

// natsHeaders is the reverse of recordHeaders, for publishing.
func natsHeaders(hs []event.Header) natsgo.Header {
	if len(hs) == 0 {
		return nil
	}
	h := make(natsgo.Header, len(hs))
	for _, x := range hs {
		h[x.Key] = append(h[x.Key], string(x.Value))
	}
	return h
}
