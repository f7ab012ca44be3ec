package integration

import (
	"testing"
	"time"

	"github.com/sluicehq/sluice/consumer"
)

// kafkaBackend runs the stream contract on the real Kafka broker: a topic
// per test, the consumer group "sluice-<source>", dead letters in a topic.
type kafkaBackend struct{}

func (kafkaBackend) Name() string { return "kafka" }

func (kafkaBackend) Setup(t *testing.T, partitions int) streamEnv {
	t.Helper()
	return &kafkaEnv{topic: createTopic(t, int32(partitions)), partitions: int32(partitions), dlq: deadLetterTopic(t)}
}

type kafkaEnv struct {
	topic      string
	partitions int32
	dlq        string
	broker     map[string]any // further brokers.main.kafka settings
}

func (e *kafkaEnv) ShortenFailover() time.Duration {
	e.broker = kafkaFastFailover
	return kafkaFastFailoverTime
}

func (e *kafkaEnv) Topic() string     { return e.topic }
func (e *kafkaEnv) CanBackdate() bool { return true }

// RedeliveryBound: the batch in flight plus commit_pipeline_depth batches
// whose commits were on the wire (consumer/kafka/doc.go).
func (e *kafkaEnv) RedeliveryBound(batchSize int) int {
	return (consumer.DefaultCommitPipelineDepth + 1) * batchSize
}

func (e *kafkaEnv) Produce(t *testing.T, n int, o produceOpts) []produced {
	t.Helper()
	return produce(t, e.topic, e.partitions, n, o)
}

func (e *kafkaEnv) Config(t *testing.T, source, fnURL string, settings map[string]any) string {
	t.Helper()
	return writeConfig(t, runConfig{Source: source, Topic: e.topic, FunctionURL: fnURL, DeadLetters: e.dlq, Settings: settings, Broker: e.broker})
}

func (e *kafkaEnv) DeadLetters(t *testing.T) []deadLetter {
	t.Helper()
	return readDeadLetters(t, e.dlq)
}

// Committed is the group's committed offsets: the next offset to consume.
func (e *kafkaEnv) Committed(t *testing.T, source string) map[int32]int64 {
	t.Helper()
	return committedOffsets(t, "sluice-"+source, e.topic)
}

func (e *kafkaEnv) AllCommitted(t *testing.T, source string) error {
	t.Helper()
	return allCommitted(t, "sluice-"+source, e.topic)
}
