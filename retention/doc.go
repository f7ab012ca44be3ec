// Package retention is the dead-letter store: it writes one JSON envelope per
// record or event that could not be delivered (SPEC §4) to a Kafka topic or a
// JetStream stream, creates that destination if missing, reconciles its
// retention at start-up, and reads dead letters back for `sluice dlq list`,
// `show` and `replay`.
//
// It owns the operator settings of a destination (Config) and implements the
// dispatcher's DeadLetterer. It builds on shard and must not import consumer,
// dispatch, config or cmd. Its Config carries koanf tags but does not import
// koanf.
package retention
