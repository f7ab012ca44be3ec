// Package shard holds the broker-neutral vocabulary of sluice (shard IDs,
// records, the per-shard state a source reports, the size and age units,
// the brokers' name rules) and the shard engine: the Worker that drives one
// shard of a stream source (batching, retries, bisection, expiry, dead
// letters before the checkpoint) through its Deliverer and DeadLetterer, so
// that Kafka and JetStream share it.
//
// It is the leaf of the dependency graph: it imports only the standard
// library, and every other sluice package may import it.
package shard
