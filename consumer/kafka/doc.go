// Package kafka is sluice's Kafka side, and the only importer of franz-go.
//
// It owns:
//
//   - Source: a stream-mode source. One consumer-group member per source
//     (group "sluice-<source>" by default) that runs one shard.Worker per
//     assigned partition, pauses a partition's fetching while its worker is
//     blocked (throttled, retrying, dead-letter store down) or holds its
//     whole buffer, so the other partitions keep flowing, and commits only
//     offsets the workers checkpointed (franz-go marks). franz-go drops what
//     it fetched for a paused partition and fetches it again after the
//     resume, so flowing shards are not held back by pausing: the poll loop
//     polls only while some shard holds less than a quarter of its buffer
//     (shard.Hooks.Full), which also holds franz-go's next fetch, and a
//     partition's share of a fetch is sized by what it decodes to
//     (fetchSizer: compressed batches decode to many times their bytes), a
//     quarter of a shard's buffer. What is fetched is then delivered once.
//     Commits are off the critical path with
//     a bound: a lane marks a finished batch and goes on to its next while
//     the commit is on the wire, and waits (holding no lock, so the other
//     lanes of its shard go on) only for the commit of the checkpoint
//     Options.CommitPipelineDepth back (commit_pipeline_depth, default 8 in
//     the configuration, consumer.DefaultCommitPipelineDepth). One committer
//     per client coalesces the marks of every partition into each commit
//     request; a lane asks for a round once half its depth of checkpoints
//     waits for one (rounds after every batch cost the broker more CPU than
//     they saved), and a round asked for starts after a pause as long as the
//     last round took (at most 50 ms), at once when a lane waits for it. A
//     kill -9
//     therefore delivers again at most (depth + 1) × batch_size records per
//     partition with parallelization_factor 1 (the batch in flight and depth
//     batches whose commits were on the wire); with N lanes the shard
//     leaves N × depth checkpoints unconfirmed, each covering at most what
//     the shard held (its Buffer), plus the batches in flight. (A commit
//     round that fails, typically during
//     a rebalance, releases its waiters too; the marks stay and the next
//     round, the periodic one or the revoke commits them, so the bound can be
//     exceeded by what is marked during the failure.) Marks move only forward, in offset order, and
//     only past a finished prefix. Every commit of the client goes through
//     the committer, which reads the marks and commits them under one lock
//     (franz-go's own auto-commit is left idle): a commit never carries
//     older marks than the one before it, so the committed offset never
//     moves back, not even when a round races a revoke's commit. Options.AsyncCommit leaves commits to the
//     next round (about a second); marks are also flushed at revoke and
//     shutdown, never for lost partitions.
//   - Async: an async-mode source (SPEC §2.2), see "Async sources" below.
//   - EncodeEvent: the request body of a batch, Lambda's self-managed Kafka
//     event (SPEC §3); Encoder is it as the stream deliverer's
//     event.Encoder. Records carry their timestamp type and leader epoch,
//     so a checkpoint is marked from the record itself.
//   - Writer: a synchronous producer to one topic, what the dead-letter store
//     writes Kafka destinations with.
//   - EnsureTopic: creates a topic or reconciles its retention (SPEC §4).
//   - KV (kv.go, kvleader.go): the cluster mode's key-value engine
//     (consumer.KV, Broker.OpenKV) over three single-partition topics per
//     bucket: a compacted state topic with a single transactional writer,
//     the leader elected by a consumer group over the requests topic and
//     fenced by a transactional id shared by every leader; revisions are
//     state offsets. kv.go's top comment has the design.
//   - ClientOpts: the options every client of a broker starts from (seeds,
//     client id, TLS, SASL with franz-go's pkg/sasl: PLAIN, SCRAM,
//     OAUTHBEARER with a fixed token or OAuth 2 client credentials,
//     AWS_MSK_IAM over the AWS SDK's credential chain). Every kgo.Client of
//     this package is built on it; Check tries it once at start-up and
//     names the cause when it cannot work (client.go).
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
// callbacks. The group-member lifecycle (start once, fence the poll loop on
// assign, revoke, loss, the commit loop, shutdown) is written once, in
// member.go, for the Source and the Async source alike. member.mu (Source.mu)
// guards the partition table and the poll round; part.mu fences a worker's
// hooks (mark, pause) against its revocation. Lock order: Source.mu, then a
// Worker's lock (Push and Status), then part.mu (the Pause hook), then
// franz-go's; committer.mu guards only its round counters and is taken
// alone; committer.commitMu serializes the commits (rounds, revoke, final)
// and is taken with no other lock of this package held. No lock is held while waiting for a worker to stop or for a commit
// round (the Commit hook returns the wait; the lane runs it lock-free). The
// sequences that make a revoke, a loss and a re-assignment safe without
// BlockRebalanceOnPoll are written out on member and Source.assigned.
//
// # Async sources
//
// An Async source invokes each event on its own, unordered, and never lets
// an event that must wait hold the source's offset or memory: it moves the
// event to a durable retry topic.
//
//   - Topics. Per source, one retry topic per tier of DefaultRetryTiers
//     (1s, 5s, 30s, 2m, 10m): "<topic>.sluice-retry.<source>.<tier>",
//     created at start-up (Ensure) with the source topic's partition count,
//     DefaultRetryRetention (7 days, reconciled at each start) and the
//     source topic's max.message.bytes plus room for the retry headers
//     (retryHeadroom), so that whatever the source took a retry topic
//     takes; the retry producer's batches are sized to it. An event a
//     retry topic still refuses as too large (MESSAGE_TOO_LARGE) is not
//     retried forever: it is dead-lettered with RetryTooLarge. The
//     source topic and its retry topics are read by one consumer group,
//     "sluice-<source>", so processes share all of them.
//   - Waiting. What follows each delivery is the redelivery policy's
//     decision (package redelivery, shared with the shard engine and the
//     JetStream source): a throttled event waits retry_backoff (by
//     throttles so far) but at least the function's Retry-After (capped at
//     15 min); a failed one waits retry_backoff by attempts. The wait is
//     capped at the event's expiry (its original record timestamp +
//     max_event_age), so an event that cannot be delivered in time is
//     dead-lettered on time; the expiry bounds only the wait for a
//     concurrency slot, never an invocation that started. This package
//     keeps the mechanics: the event is written to the tier of the longest delay not above its wait,
//     with its due time. Its key, value and headers are the original's;
//     headers "sluice-retry-*" carry the original topic, partition, offset
//     and timestamp (the event time max_event_age counts from, as Lambda's
//     event age), attempts (function errors only; throttles never count),
//     throttles, first and last attempt times, the last error and the due
//     time. So restarts and rebalances keep them, and a dead letter carries
//     the original coordinates. The function and dead letters never see the
//     sluice-retry-* headers.
//   - Retry partitions. A retry record is started only once it is due: when
//     the head record of a retry partition is not due, the partition is
//     paused (PauseFetchPartitions) and a timer resumes work at the head's
//     due time. Records behind a head that is due later wait for it (head of
//     line): a tier holds waits from its delay up to the next tier's, so a
//     record may be tried up to about that difference late (up to ~5 s in
//     the 1s tier, which also takes waits under 1 s; with the default
//     retry_backoff max of 5m, up to ~3 min in the 2m tier). Waits beyond
//     the last tier go to it and hold its partition until due.
//   - Commits. Each partition keeps its fetched records in offset order and
//     marks (AutoCommitMarks) the last of the finished prefix; a record is
//     finished once it was delivered, its retry record was acknowledged by
//     all in-sync replicas, or its dead letter was stored. A record not yet
//     due is never finished, so nothing is committed past it. As in Source,
//     a finished event waits for its mark's commit (coalesced across
//     partitions), so a crash repeats little finished work.
//   - Memory. The poll loop fetches only while fewer than Concurrency
//     (default 64) events are being handled, at most as many records as
//     there are free slots, and only while fewer than 64 × Concurrency
//     started records wait behind their partition's mark (an event that
//     stays unsettled, e.g. a long wait for a concurrency slot, holds the
//     mark; the events behind it that finish stay in memory until it
//     settles). Records of a paused retry partition that are held until
//     due are at most one poll's worth per retry partition. The
//     dispatcher's limits bound the invocations on top.
//   - Stopping, revoke, loss. As Source: the partition's events are
//     cancelled and waited for (an event cut short is not marked and is read
//     again by the next owner), marks are fenced, and marked offsets are
//     committed except for lost partitions. At-least-once: after a crash an
//     event whose outcome was not yet recorded (its retry record written,
//     its offset not yet committed; or its invocation in flight) is handled
//     again, with the attempt count of its last durable record.
//   - Start. starting_position applies to the source topic only: a retry
//     partition without a commit starts at its first record
//     (AdjustFetchOffsetsFn), since its records are events whose source
//     offsets were committed when they were written.
package kafka
