package nats

import (
	"context"
	"errors"
	"fmt"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/event"
)

// readBatch is how many messages one Fetch of a Reader asks for.
const readBatch = 500

// Reader reads a whole stream, a dead-letter stream for `sluice dlq`, with
// an ordered consumer (ephemeral, nothing acknowledged), and measures it for
// the dead-letter gauges. It implements retention.Reader and
// retention.Measurer.
type Reader struct {
	js     jetstream.JetStream
	stream string
}

// NewReader returns a Reader of stream over nc. It does not contact the
// server.
func NewReader(nc *natsgo.Conn, stream string) (*Reader, error) {
	if nc == nil {
		return nil, errors.New("nats: reader: no connection")
	}
	if stream == "" {
		return nil, errors.New("nats: reader: empty stream name")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats: reader: %w", err)
	}
	return &Reader{js: js, stream: stream}, nil
}

// Scan calls fn with every message of the stream in sequence order, from the
// first kept to the last one present when Scan began (messages stored
// meanwhile are not read). A missing stream has no messages. Records carry
// the subject, the stream sequence as Offset and the stored time as
// Timestamp; Key is left empty (a stream has no keys).
func (r *Reader) Scan(ctx context.Context, fn func(event.Record) error) error {
	st, err := r.js.Stream(ctx, r.stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nats: stream %s: %w", r.stream, err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		return nil
	}
	last := state.LastSeq
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		InactiveThreshold: time.Minute, // the server removes it if this process dies mid-read
	})
	if err != nil {
		return fmt.Errorf("nats: read stream %s: %w", r.stream, err)
	}
	for {
		// FetchMaxWait bounds each fetch (it excludes FetchContext); ctx is
		// checked between fetches.
		batch, err := cons.Fetch(readBatch, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			return fmt.Errorf("nats: read stream %s: %w", r.stream, err)
		}
		got := 0
		for m := range batch.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("nats: read stream %s: %w", r.stream, err)
			}
			if md.Sequence.Stream > last {
				return nil // stored after Scan began
			}
			rec := newRecord(m, md)
			if err := fn(rec); err != nil {
				return err
			}
			if md.Sequence.Stream >= last {
				return nil
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, natsgo.ErrTimeout) {
			return fmt.Errorf("nats: read stream %s: %w", r.stream, err)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if got == 0 {
			// Nothing came: the messages up to last may all have been
			// removed (retention, purge) since Scan began.
			info, err := cons.Info(ctx)
			if err != nil {
				return fmt.Errorf("nats: read stream %s: %w", r.stream, err)
			}
			if info.NumPending == 0 {
				return nil
			}
		}
	}
}

// Measure returns the stream's stored bytes and the time of its first
// message (zero when empty).
func (r *Reader) Measure(ctx context.Context) (int64, time.Time, error) {
	st, err := r.js.Stream(ctx, r.stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return 0, time.Time{}, nil
	}
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("nats: stream %s: %w", r.stream, err)
	}
	state := st.CachedInfo().State
	if state.Msgs == 0 {
		return int64(state.Bytes), time.Time{}, nil
	}
	return int64(state.Bytes), state.FirstTime, nil
}
