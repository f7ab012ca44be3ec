// Package redelivery is sluice's one redelivery policy: given the outcome of
// a delivery and the retry state of what was delivered (a stream batch, an
// async event), it decides what follows — done, redeliver after a delay,
// split the batch (bisect), dead-letter with a condition, or abandon (the
// caller is stopping) — and it owns the bounded, retried dead-letter write.
//
// Its callers keep only their mechanics: the shard engine holds a batch in
// memory and sleeps (package shard), the Kafka async source writes the event
// to a retry topic and settles its offset (consumer/kafka), the JetStream
// async source records the retry state in a KV bucket and NAKs with a delay
// (consumer/nats). None of them decides on its own when to retry, how long
// to wait, how to cap a function's Retry-After, when an event or record is
// too old, or how a dead-letter write is retried and bounded.
//
// The schedule of retry delays is github.com/cenkalti/backoff/v4's
// exponential backoff; Delay exposes it as a pure function of the retry
// number and a random draw so that it can be table-tested. Package
// redelivery imports only event, the backoff library and the standard
// library.
package redelivery
