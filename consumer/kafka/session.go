package kafka

import (
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
)

// sessionOpts sets the group session timeout and heartbeat interval of
// broker (brokers.<name>.kafka.session_timeout): how long the group waits
// for a member that died (kill -9) before its partitions move to another.
// A zero SessionTimeout (a KafkaConfig built in code) keeps franz-go's
// defaults, 45 s and 3 s, which are also the config's defaults.
func sessionOpts(broker consumer.KafkaConfig) []kgo.Opt {
	if broker.SessionTimeout <= 0 {
		return nil
	}
	return []kgo.Opt{
		kgo.SessionTimeout(broker.SessionTimeout),
		kgo.HeartbeatInterval(broker.HeartbeatInterval()),
	}
}
