// Package event holds the broker-neutral vocabulary every part of sluice
// speaks: a Record (one message of a Kafka partition or a JetStream
// subject, stream or async, with its TimestampType and what its source needs
// to settle it — no broker handle rides along), the Encoder each source
// package provides for a batch's request body, the Result of delivering
// records to a function (Outcome, ErrorInfo with a typed ErrorKind), the
// DeadLetter of a record that could not be delivered with its Condition,
// the DeadLetterer that stores it, and the Backoff settings of retries.
//
// It is the leaf of the dependency graph: it imports only the standard
// library, and every other sluice package may import it. The shard engine
// (package shard), the redelivery policy (package redelivery), the sources
// (consumer/kafka, consumer/nats), the dispatcher and the dead-letter store
// all exchange these types.
package event
