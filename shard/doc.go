// Package shard holds the broker-neutral vocabulary of sluice: shard IDs,
// records, batches and the per-shard state a source reports.
//
// It is the leaf of the dependency graph: it imports only the standard
// library, and every other sluice package may import it. The shard engine
// that drives one shard (batching, retries, bisection, expiry) lives here too
// once the stream sources arrive, so that Kafka and JetStream share it.
package shard
