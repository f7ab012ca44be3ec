package kafka

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
)

// The topic configs EnsureTopic creates and reconciles.
const (
	configRetentionMs    = "retention.ms"
	configRetentionBytes = "retention.bytes"
)

// EnsureTopic makes topic exist with the given retention: it creates it with
// partitions partitions (≤ 0: the broker's default) and the broker's default
// replication factor when it is missing, and otherwise sets retention.ms and
// retention.bytes to what is asked where they differ (IncrementalAlterConfigs;
// other configs and the partition count are left alone).
//
// retention < 0 keeps records forever (retention.ms -1); it must not be 0.
// maxBytes ≤ 0 means no size limit (retention.bytes -1; Kafka applies it per
// partition). created reports a new topic; changed lists each reconciled
// config as "name: old -> new", for the caller to log (SPEC §4). A topic
// created concurrently by another process is reconciled like an existing one.
func EnsureTopic(ctx context.Context, broker consumer.KafkaConfig, topic string, partitions int32,
	retention time.Duration, maxBytes int64, opts ...kgo.Opt,
) (created bool, changed []string, err error) {
	return ensureTopic(ctx, broker, topic, partitions, retention, maxBytes, nil, opts...)
}

// ensureTopic is EnsureTopic that also sets (at creation) and reconciles
// the topic configs of extra (a retry topic's max.message.bytes).
func ensureTopic(ctx context.Context, broker consumer.KafkaConfig, topic string, partitions int32,
	retention time.Duration, maxBytes int64, extra map[string]string, opts ...kgo.Opt,
) (created bool, changed []string, err error) {
	if topic == "" {
		return false, nil, errors.New("kafka: ensure topic: empty topic name")
	}
	if retention == 0 {
		return false, nil, fmt.Errorf("kafka: ensure topic %q: retention 0 would delete every record at once (want > 0, or < 0 for forever)", topic)
	}
	want := map[string]string{
		configRetentionMs:    retentionMs(retention),
		configRetentionBytes: "-1",
	}
	if maxBytes > 0 {
		want[configRetentionBytes] = strconv.FormatInt(maxBytes, 10)
	}
	keys := []string{configRetentionMs, configRetentionBytes} // stable order for the log
	for _, k := range slices.Sorted(maps.Keys(extra)) {
		want[k] = extra[k]
		keys = append(keys, k)
	}

	cl, err := newClient(broker, opts...)
	if err != nil {
		return false, nil, fmt.Errorf("kafka: ensure topic %q: %w", topic, err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	if partitions <= 0 {
		partitions = -1
	}
	configs := make(map[string]*string, len(want))
	for k, v := range want {
		configs[k] = &v
	}
	resp, err := adm.CreateTopic(ctx, partitions, -1, configs, topic)
	if err == nil {
		err = resp.Err
	}
	switch {
	case err == nil:
		return true, nil, nil
	case !errors.Is(err, kerr.TopicAlreadyExists):
		return false, nil, fmt.Errorf("kafka: create topic %q: %w", topic, opaque(err))
	}

	rc, err := describeTopicConfigs(ctx, adm, topic)
	if err != nil {
		return false, nil, fmt.Errorf("kafka: describe topic %q: %w", topic, opaque(err))
	}
	have := make(map[string]string, len(rc.Configs))
	for _, c := range rc.Configs {
		if c.Value != nil {
			have[c.Key] = *c.Value
		}
	}
	var alter []kadm.AlterConfig
	for _, k := range keys {
		if have[k] == want[k] {
			continue
		}
		v := want[k]
		alter = append(alter, kadm.AlterConfig{Op: kadm.SetConfig, Name: k, Value: &v})
		old := have[k]
		if old == "" {
			old = "unset"
		}
		changed = append(changed, fmt.Sprintf("%s: %s -> %s", k, old, v))
	}
	if len(alter) == 0 {
		return false, nil, nil
	}
	ars, err := adm.AlterTopicConfigs(ctx, alter, topic)
	if err == nil {
		var ar kadm.AlterConfigsResponse
		if ar, err = ars.On(topic, nil); err == nil {
			err = ar.Err
		}
	}
	if err != nil {
		return false, nil, fmt.Errorf("kafka: set %v of topic %q: %w", changed, topic, opaque(err))
	}
	return false, changed, nil
}

// describeTopicConfigs reads topic's configs. A topic that was just created
// (by us a moment ago, or by another process: CreateTopic said it exists)
// can be unknown to the broker that answers for a short while, until the
// controller's metadata reaches it: UNKNOWN_TOPIC_OR_PARTITION is retried
// for up to topicVisibleWait, then reported.
func describeTopicConfigs(ctx context.Context, adm *kadm.Client, topic string) (kadm.ResourceConfig, error) {
	deadline := time.Now().Add(topicVisibleWait)
	for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
		rcs, err := adm.DescribeTopicConfigs(ctx, topic)
		var rc kadm.ResourceConfig
		if err == nil {
			if rc, err = rcs.On(topic, nil); err == nil {
				err = rc.Err
			}
		}
		if err == nil || !errors.Is(err, kerr.UnknownTopicOrPartition) || time.Now().After(deadline) {
			return rc, err
		}
		select {
		case <-ctx.Done():
			return rc, fmt.Errorf("%w (after %w)", ctx.Err(), err)
		case <-time.After(wait):
		}
	}
}

// topicVisibleWait bounds how long EnsureTopic waits for an existing topic
// to become visible to the broker it asks.
const topicVisibleWait = 10 * time.Second

func retentionMs(d time.Duration) string {
	if d < 0 {
		return "-1"
	}
	return strconv.FormatInt(max(1, d.Milliseconds()), 10)
}
