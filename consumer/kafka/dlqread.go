package kafka

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// Reader reads a whole topic, a dead-letter topic for `sluice dlq`, by direct
// partition consumption (no consumer group, nothing committed), and measures
// it for the dead-letter gauges. It implements retention.Reader and
// retention.Measurer. Each call opens its own short-lived client: both are
// rare (a command, a scrape every DefaultGaugeTTL), and a Reader then holds no
// connections between them.
type Reader struct {
	broker consumer.KafkaConfig
	topic  string
	opts   []kgo.Opt
}

// NewReader returns a Reader of topic on the cluster broker reaches; opts are
// added to its clients (tests, TLS, SASL). It does not contact the cluster.
func NewReader(broker consumer.KafkaConfig, topic string, opts ...kgo.Opt) (*Reader, error) {
	if topic == "" {
		return nil, errors.New("kafka: reader needs a topic")
	}
	if len(broker.Seeds) == 0 {
		return nil, fmt.Errorf("kafka: reader of %q: no seed brokers", topic)
	}
	return &Reader{broker: broker, topic: topic, opts: opts}, nil
}

func (r *Reader) client(extra ...kgo.Opt) (*kgo.Client, error) {
	cl, err := newClient(r.broker, append(slices.Clip(r.opts), extra...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka: reader of %q: %w", r.topic, err)
	}
	return cl, nil
}

// bounds returns, per partition that holds records, its start offset and end
// offset (the offset after the last record) now. A missing topic holds
// nothing.
func (r *Reader) bounds(ctx context.Context, adm *kadm.Client) (start, end map[int32]int64, err error) {
	starts, err := adm.ListStartOffsets(ctx, r.topic)
	if err == nil {
		err = starts.Error()
	}
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: list start offsets of %q: %w", r.topic, opaque(err))
	}
	ends, err := adm.ListEndOffsets(ctx, r.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kafka: list end offsets of %q: %w", r.topic, opaque(err))
	}
	start, end = map[int32]int64{}, map[int32]int64{}
	starts.Each(func(o kadm.ListedOffset) {
		e, ok := ends.Lookup(o.Topic, o.Partition)
		if ok && e.Offset > o.Offset {
			start[o.Partition], end[o.Partition] = o.Offset, e.Offset
		}
	})
	return start, end, nil
}

// Scan calls fn with every record of the topic, in offset order per
// partition, from the first record kept to the last one present when Scan
// began (records written meanwhile are not read). A missing topic has no
// records.
func (r *Reader) Scan(ctx context.Context, fn func(event.Record) error) error {
	return r.scan(ctx, false, fn)
}

// scan reads as Scan does; with firstOnly it stops each partition after its
// first record.
func (r *Reader) scan(ctx context.Context, firstOnly bool, fn func(event.Record) error) error {
	meta, err := r.client()
	if err != nil {
		return err
	}
	start, end, err := r.bounds(ctx, kadm.NewClient(meta))
	meta.Close()
	if err != nil || len(start) == 0 {
		return err
	}
	parts := make(map[int32]kgo.Offset, len(start))
	for p, off := range start {
		parts[p] = kgo.NewOffset().At(off)
	}
	cl, err := r.client(
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{r.topic: parts}),
		// Records removed by retention between listing and fetching: go on
		// from the new start rather than fail.
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchMaxWait(500*time.Millisecond),
	)
	if err != nil {
		return err
	}
	defer cl.Close()
	for len(end) > 0 {
		pctx, cancel := context.WithTimeout(ctx, scanIdle)
		fs := cl.PollFetches(pctx)
		idle := pctx.Err() != nil
		cancel()
		if err := ctx.Err(); err != nil {
			return err
		}
		if idle && fs.NumRecords() == 0 {
			// Nothing came: the records still expected may have been
			// removed (retention, DeleteRecords) since the bounds were
			// listed, and a fetch never says so for a partition it has
			// nothing to return from.
			if err := r.dropGone(ctx, kadm.NewClient(cl), end); err != nil {
				return err
			}
			continue
		}
		var ferr error
		fs.EachError(func(_ string, p int32, err error) {
			if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return // the idle bound of this poll
			}
			if ferr == nil {
				ferr = fmt.Errorf("kafka: read %s/%d: %w", r.topic, p, opaque(err))
			}
		})
		if ferr != nil {
			return ferr
		}
		var stop error
		fs.EachPartition(func(fp kgo.FetchTopicPartition) {
			for _, kr := range fp.Records {
				if stop != nil {
					return
				}
				want, ok := end[kr.Partition]
				if !ok || kr.Offset >= want {
					delete(end, kr.Partition) // written after Scan began
					continue
				}
				if err := fn(recordOf(kr)); err != nil {
					stop = err
					return
				}
				if firstOnly || kr.Offset+1 >= want {
					delete(end, kr.Partition)
				}
			}
			// The high watermark can end below what was listed only if the
			// partition was truncated; and a partition whose remaining
			// records were all removed by retention has nothing more to give.
			if want, ok := end[fp.Partition]; ok && fp.HighWatermark >= 0 && fp.HighWatermark < want {
				end[fp.Partition] = fp.HighWatermark
				if fp.LogStartOffset >= fp.HighWatermark {
					delete(end, fp.Partition)
				}
			}
		})
		if stop != nil {
			return stop
		}
	}
	return nil
}

// scanIdle is how long a Scan waits for records before it checks whether
// the ones it still expects exist.
const scanIdle = 2 * time.Second

// dropGone lists the topic's bounds again and updates end, the offsets a
// scan still reads up to: a partition whose records up to its end were all
// removed is done, and one truncated below its end now ends lower.
func (r *Reader) dropGone(ctx context.Context, adm *kadm.Client, end map[int32]int64) error {
	start, now, err := r.bounds(ctx, adm)
	if err != nil {
		return err
	}
	for p, want := range end {
		s, ok := start[p]
		switch {
		case !ok || s >= want:
			delete(end, p)
		case now[p] < want:
			end[p] = now[p]
		}
	}
	return nil
}

// Measure returns the bytes the topic takes in the brokers' log directories
// (all replicas) and the timestamp of its oldest record (zero when empty).
func (r *Reader) Measure(ctx context.Context) (int64, time.Time, error) {
	cl, err := r.client()
	if err != nil {
		return 0, time.Time{}, err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	start, _, err := r.bounds(ctx, adm)
	if err != nil {
		return 0, time.Time{}, err
	}
	var set kadm.TopicsSet
	starts, err := adm.ListStartOffsets(ctx, r.topic)
	if err != nil {
		return 0, time.Time{}, fmt.Errorf("kafka: list partitions of %q: %w", r.topic, opaque(err))
	}
	starts.Each(func(o kadm.ListedOffset) { set.Add(o.Topic, o.Partition) })
	var size int64
	if len(set) > 0 {
		dirs, err := adm.DescribeAllLogDirs(ctx, set)
		if err != nil {
			return 0, time.Time{}, fmt.Errorf("kafka: describe log dirs of %q: %w", r.topic, opaque(err))
		}
		dirs.Each(func(d kadm.DescribedLogDir) {
			if d.Err == nil {
				size += d.Size()
			}
		})
	}
	if len(start) == 0 {
		return size, time.Time{}, nil
	}
	var oldest time.Time
	err = r.scan(ctx, true, func(rec event.Record) error {
		if oldest.IsZero() || rec.Timestamp.Before(oldest) {
			oldest = rec.Timestamp
		}
		return nil
	})
	if err != nil {
		return 0, time.Time{}, err
	}
	return size, oldest, nil
}

// recordOf converts a fetched record, without keeping a reference to it.
func recordOf(kr *kgo.Record) event.Record {
	rec := event.Record{Topic: kr.Topic, Partition: kr.Partition, Offset: kr.Offset, Timestamp: kr.Timestamp,
		Key: kr.Key, Value: kr.Value}
	for _, h := range kr.Headers {
		rec.Headers = append(rec.Headers, event.Header{Key: h.Key, Value: h.Value})
	}
	return rec
}

// Exists reports whether the topic exists, so that a caller can refuse at
// once to write to a missing topic (a Writer would retry until its timeout).
func (r *Reader) Exists(ctx context.Context) (bool, error) {
	cl, err := r.client()
	if err != nil {
		return false, err
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(ctx, r.topic)
	if err == nil {
		err = ends.Error()
	}
	switch {
	case errors.Is(err, kerr.UnknownTopicOrPartition):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("kafka: topic %q: %w", r.topic, opaque(err))
	}
	return true, nil
}
