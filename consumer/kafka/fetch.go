package kafka

import (
	"context"
	"errors"
	"fmt"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// FetchRecord reads the record at topic/partition/offset, by direct
// partition consumption (no group). An error wraps consumer.ErrRecordGone
// when the offset is below the partition's start (retention) or was
// compacted away, or is not written yet.
func FetchRecord(ctx context.Context, broker consumer.KafkaConfig, topic string, partition int32, offset int64) (event.Record, error) {
	where := fmt.Sprintf("%s/%d@%d", topic, partition, offset)
	cl, err := newClient(broker, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{
		topic: {partition: kgo.NewOffset().At(offset)},
	}), kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()))
	if err != nil {
		return event.Record{}, fmt.Errorf("kafka: fetch %s: %w", where, err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	starts, err := adm.ListStartOffsets(ctx, topic)
	if err == nil {
		err = starts.Error()
	}
	var ends kadm.ListedOffsets
	if err == nil {
		ends, err = adm.ListEndOffsets(ctx, topic)
		if err == nil {
			err = ends.Error()
		}
	}
	if err != nil {
		return event.Record{}, fmt.Errorf("kafka: fetch %s: %w", where, opaque(err))
	}
	s, okS := starts.Lookup(topic, partition)
	e, okE := ends.Lookup(topic, partition)
	if !okS || !okE || offset < s.Offset || offset >= e.Offset {
		return event.Record{}, fmt.Errorf("kafka: fetch %s: %w (the partition holds offsets %d..%d)", where, consumer.ErrRecordGone, s.Offset, e.Offset-1)
	}
	for {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return event.Record{}, fmt.Errorf("kafka: fetch %s: %w", where, err)
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = err })
		if ferr != nil && !errors.Is(ferr, context.Canceled) {
			return event.Record{}, fmt.Errorf("kafka: fetch %s: %w", where, opaque(ferr))
		}
		for _, kr := range fs.Records() {
			switch {
			case kr.Offset == offset:
				return recordOf(kr), nil
			case kr.Offset > offset:
				return event.Record{}, fmt.Errorf("kafka: fetch %s: %w (compacted away)", where, consumer.ErrRecordGone)
			}
		}
	}
}

// FetchRecord reads the record at at's topic, partition and offset.
func (b *Broker) FetchRecord(ctx context.Context, at event.Record) (event.Record, error) {
	return FetchRecord(ctx, b.cfg, at.Topic, at.Partition, at.Offset)
}
