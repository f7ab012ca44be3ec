package nats

import (
	"context"
	"errors"
	"fmt"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// FetchRecord reads the message of stream at sequence seq, or its kept copy
// (keep.go) once the stream deleted it. An error wraps
// consumer.ErrRecordGone when neither holds it (limits, an acknowledged
// work-queue message, a deletion). The record's Partition
// is the caller's (a stream source's partition is not in the message).
func FetchRecord(ctx context.Context, nc *natsgo.Conn, stream string, seq uint64) (event.Record, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d: %w", stream, seq, err)
	}
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return fetchKept(ctx, js, stream, seq)
	}
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d: %w", stream, seq, err)
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Deleted (a terminated work-queue event): kept if its letter
		// omitted it (keep.go).
		return fetchKept(ctx, js, stream, seq)
	}
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d: %w", stream, seq, err)
	}
	return event.Record{Topic: stream, Subject: m.Subject, Offset: int64(m.Sequence), Timestamp: m.Time,
		Value: m.Data, Headers: recordHeaders(m.Header)}, nil
}

// FetchRecord reads the message at at's stream (Topic) and sequence
// (Offset); the partition, key and subject are at's.
func (b *Broker) FetchRecord(ctx context.Context, at event.Record) (event.Record, error) {
	if at.Offset <= 0 {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d: %w", at.Topic, at.Offset, consumer.ErrRecordGone)
	}
	rec, err := FetchRecord(ctx, b.nc, at.Topic, uint64(at.Offset))
	if err != nil {
		return rec, err
	}
	// A stream source's record has the key and the subject as published
	// (the stored subject has the partition in it): the letter's.
	rec.Partition, rec.Key = at.Partition, at.Key
	if at.Subject != "" {
		rec.Subject = at.Subject
	}
	return rec, nil
}
