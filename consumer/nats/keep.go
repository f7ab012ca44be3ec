package nats

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// Kept records. A source's stream that deletes what sluice settles (a work
// queue, as sluice creates it for an async source, or interest retention)
// would lose an event whose dead letter had to leave its payload out (the envelope did not
// fit the destination): terminating it deletes the only copy. Before such a
// letter is written, the event is copied into the object store bucket
// keptBucket(stream), named by its stream sequence; an object is chunked,
// so an event that fit its stream always fits there. FetchRecord (and so
// `sluice dlq replay`) reads it from there once the stream no longer has it.
// The bucket's objects live as long as the dead letters (the destination's
// retention).

// keptBucket is the object store bucket of the kept records of stream.
func keptBucket(stream string) string { return "sluice-kept-" + nameToken(stream) }

// Object metadata of a kept record.
const (
	keptSubject   = "subject"
	keptTimestamp = "timestamp"
)

// keeper copies records of one stream into its kept bucket.
type keeper struct {
	js     jetstream.JetStream
	stream string
	ttl    time.Duration // ≤ 0: forever

	mu  sync.Mutex
	obs jetstream.ObjectStore // nil until first needed
}

// keep stores rec (its value, headers, subject and timestamp) as object
// rec.Offset of the kept bucket, creating the bucket if needed.
func (k *keeper) keep(ctx context.Context, rec event.Record) error {
	obs, err := k.store(ctx)
	if err != nil {
		return err
	}
	_, err = obs.Put(ctx, jetstream.ObjectMeta{
		Name:        strconv.FormatInt(rec.Offset, 10),
		Description: "sluice: a dead-lettered event whose letter omits its payload",
		Headers:     natsHeaders(rec.Headers),
		Metadata: map[string]string{
			keptSubject:   rec.Subject,
			keptTimestamp: rec.Timestamp.UTC().Format(time.RFC3339Nano),
		},
	}, bytes.NewReader(rec.Value))
	if err != nil {
		return fmt.Errorf("nats: keep %s#%d in %s: %w", k.stream, rec.Offset, keptBucket(k.stream), err)
	}
	return nil
}

func (k *keeper) store(ctx context.Context) (jetstream.ObjectStore, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.obs != nil {
		return k.obs, nil
	}
	obs, err := k.js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket:      keptBucket(k.stream),
		Description: "sluice: events of stream " + k.stream + " whose dead letters omit their payload",
		TTL:         max(k.ttl, 0),
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("nats: kept-records bucket %s: %w", keptBucket(k.stream), err)
	}
	k.obs = obs
	return obs, nil
}

// keepingLetterer gives every letter a Keep of its record (a stream
// source over a stream that deletes what is acknowledged).
type keepingLetterer struct {
	next event.DeadLetterer
	k    *keeper
}

func (d keepingLetterer) DeadLetter(ctx context.Context, letters []event.DeadLetter) error {
	out := slices.Clone(letters)
	for i := range out {
		rec := out[i].Record
		out[i].Keep = func(ctx context.Context) error { return d.k.keep(ctx, rec) }
	}
	return d.next.DeadLetter(ctx, out)
}

// fetchKept reads the kept record of stream at seq; an error wraps
// consumer.ErrRecordGone when there is none.
func fetchKept(ctx context.Context, js jetstream.JetStream, stream string, seq uint64) (event.Record, error) {
	gone := func() (event.Record, error) {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d: %w", stream, seq, consumer.ErrRecordGone)
	}
	obs, err := js.ObjectStore(ctx, keptBucket(stream))
	if errors.Is(err, jetstream.ErrBucketNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return gone()
	}
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d from %s: %w", stream, seq, keptBucket(stream), err)
	}
	name := strconv.FormatUint(seq, 10)
	res, err := obs.Get(ctx, name)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return gone()
	}
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d from %s: %w", stream, seq, keptBucket(stream), err)
	}
	defer func() { _ = res.Close() }()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(res); err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d from %s: %w", stream, seq, keptBucket(stream), err)
	}
	info, err := res.Info()
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d from %s: %w", stream, seq, keptBucket(stream), err)
	}
	ts, err := time.Parse(time.RFC3339Nano, info.Metadata[keptTimestamp])
	if err != nil {
		return event.Record{}, fmt.Errorf("nats: fetch %s#%d from %s: timestamp: %w", stream, seq, keptBucket(stream), err)
	}
	return event.Record{Topic: stream, Subject: info.Metadata[keptSubject], Offset: int64(seq), Timestamp: ts,
		Value: buf.Bytes(), Headers: recordHeaders(info.Headers)}, nil
}
