// Package consumer turns broker streams into ordered batches (stream mode) or
// single events (async mode) and hands them to a Sink, which the dispatcher
// implements.
//
// It owns the operator settings of brokers and sources (BrokerConfig,
// SourceConfig: the names, ranges and defaults of Lambda's event source
// mappings, SPEC §2.1 and §2.2) and the broker-neutral parts of a source:
// scope extraction, the AsyncDeliverer both async sources call, the shared
// shard and async metrics. The
// broker clients live in consumer/kafka (the only franz-go importer) and
// consumer/nats (the only nats.go importer), which import this package.
//
// It imports shard only: never dispatch, retention, config or cmd. Its config
// structs carry koanf tags but do not import koanf; package config decodes
// them.
package consumer
