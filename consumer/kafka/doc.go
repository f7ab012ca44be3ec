// Package kafka is sluice's Kafka side, and the only importer of franz-go.
//
// It owns:
//
//   - Source: a stream-mode source. One consumer-group member per source
//     (group "sluice-<source>" by default) that runs one shard.Worker per
//     assigned partition, pauses a partition's fetching while its worker is
//     full or blocked (throttled, retrying, dead-letter store down) so the
//     other partitions keep flowing, and commits only offsets the workers
//     checkpointed (franz-go marks). A shard waits until its checkpoint is
//     committed before its next batch (commits of all shards coalesced), so
//     a crash redelivers only the batches in flight (Options.AsyncCommit
//     trades that for throughput); marks are also flushed at revoke and
//     shutdown, never for lost partitions.
//   - EncodeEvent: the request body of a batch, Lambda's self-managed Kafka
//     event (SPEC §3).
//   - Writer: a synchronous producer to one topic, what the dead-letter store
//     writes Kafka destinations with.
//   - EnsureTopic: creates a topic or reconciles its retention (SPEC §4).
//   - the sources' metrics: sluice_offset_lag, sluice_iterator_age_seconds
//     and sluice_shards, per source, read at scrape time.
//
// It imports consumer (settings) and shard (records, the shard engine); never
// dispatch, retention, config or cmd. franz-go types do not cross its API
// except kgo.Opt for tests and TLS/SASL wiring; errors from the client are
// flattened to text, except the context's and the sentinels declared here.
//
// # Goroutines and locks
//
// A running Source has: Run's goroutine; the poll loop (PollRecords, split by
// partition, Worker.Push, which never blocks); the lag refresher; the
// committer; one goroutine per assigned partition (Worker.Run); and
// franz-go's group goroutine, which calls the assigned/revoked/lost
// callbacks. Source.mu
// guards the partition table and the poll round; part.mu fences a worker's
// hooks (mark, pause) against its revocation. Lock order: Source.mu, then a
// Worker's lock (Push and Status), then part.mu (the Pause hook), then
// franz-go's. No lock is held while waiting for a worker to stop. The
// sequences that make a revoke, a loss and a re-assignment safe without
// BlockRebalanceOnPoll are written out on Source.assigned and Source.revoked.
package kafka
