package kafka

import (
	"context"
	"fmt"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
)

// Pinger checks that a Kafka cluster answers, for sluice's /readyz. It
// keeps one client, so a check costs a metadata request, not a connection.
type Pinger struct {
	cl    *kgo.Client
	seeds string
}

// NewPinger returns a Pinger of broker. It does not connect until Ping.
func NewPinger(broker consumer.KafkaConfig, opts ...kgo.Opt) (*Pinger, error) {
	cl, err := newClient(broker, opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka: ping client: %w", err)
	}
	return &Pinger{cl: cl, seeds: bootstrapServers(broker)}, nil
}

// Ping returns nil when a broker of the cluster answered a metadata request
// before ctx ended.
func (p *Pinger) Ping(ctx context.Context) error {
	if err := p.cl.Ping(ctx); err != nil {
		return fmt.Errorf("kafka: no broker of %s answers: %w", p.seeds, err)
	}
	return nil
}

// Close closes the client.
func (p *Pinger) Close() { p.cl.Close() }
