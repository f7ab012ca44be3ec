// Package shard is the shard engine of sluice: a Worker per shard (a Kafka
// partition, a JetStream partition subject) batches the records its source
// pushes, delivers them in order through a Deliverer, retries, bisects and
// expires them, dead-letters what cannot be delivered, and moves the
// checkpoint only past records delivered or durably dead-lettered. It also
// holds shard IDs, the shard states of GET /v1/shards, and the size and age
// units of the configuration (Bytes, Age), and the brokers' name rules
// (ValidTopic, ValidStream, ValidSubject).
//
// The records, results and dead letters it works with are package event's;
// shard imports only event, redelivery and the standard library, so that Kafka and
// JetStream sources share it.
package shard
