// Package consumer is what every broker kind has in common. Its broker
// packages turn broker streams into ordered batches for a shard.Worker
// (stream mode, delivered through a shard.Deliverer) or single events for an
// AsyncDeliverer (async mode); the dispatcher implements both.
//
// It owns the operator settings of brokers and sources (BrokerConfig,
// SourceConfig: the names, ranges and defaults of Lambda's event source
// mappings, SPEC §2.1 and §2.2), the broker seam (Kind, Broker, Source,
// Destination in broker.go: what cmd/sluice loops over without knowing a
// broker's kind) and the broker-neutral parts of a source: scope
// extraction, the AsyncDeliverer both async sources call, the shared shard
// and async metrics. The broker clients live in consumer/kafka (the only
// franz-go importer) and consumer/nats (the only nats.go importer), which
// import this package and implement Kind and Broker.
//
// It imports shard only: never dispatch, retention, config or cmd. Its config
// structs carry koanf tags but do not import koanf; package config decodes
// them.
package consumer
