// Package nats is sluice's NATS JetStream side, and the only importer of
// nats.go (imported as natsgo) and nats-server.
//
// It owns:
//
//   - Stream: a stream-mode source. The stream's subject transform
//     partitions by key on the server; one durable pull consumer and one
//     shard.Worker per partition; a message is acknowledged only once its
//     worker checkpointed it (delivered or dead-lettered).
//   - Async: an async-mode source (SPEC §2.2): one durable consumer shared
//     by every process, each event invoked on its own, retries left to the
//     server (NakWithDelay), attempts counted across restarts.
//   - EncodeEvent: the request body of a stream batch (SPEC §3); Encoder is
//     it as the stream deliverer's event.Encoder.
//   - Writer and EnsureStream: a JetStream dead-letter destination (SPEC §4);
//     Writer implements retention.Appender.
//   - ConnectOptions and Connect: TLS and the one way to authenticate of a
//     broker (creds file, nkey seed file, token, user and password), used
//     for every connection sluice makes; errors name the cause and redact
//     URL passwords (connect.go).
//   - Embedded: the in-process nats-server sluice starts when the config
//     names no broker.
//   - the sources' metrics, per source: sluice_offset_lag,
//     sluice_iterator_age_seconds, sluice_shards (stream);
//     sluice_async_events_received_total, sluice_async_event_age_seconds,
//     sluice_async_events_dropped_total (async).
//
// It imports consumer (settings) and shard (records, the shard engine); never
// dispatch, retention, config or cmd. nats.go types do not cross its API
// except the connection handed in and jetstream.JetStream for EnsureStream.
//
// # Stream mode: partitions
//
// A source names a stream, a subject with one "*" token (the key) and N
// partitions. sluice creates the stream (or adds the subject and sets the
// transform on an existing one) with the subject transform
//
//	clicks.*  ->  clicks.{{partition(N,1)}}.{{wildcard(1)}}
//
// so publishers publish to clicks.<key> and the server stores
// clicks.<p>.<key>, p a hash of the key. Partition p is the durable consumer
// "sluice-<source>-<p>" filtering clicks.<p>.*: AckExplicit, MaxDeliver -1
// (the shard engine counts attempts), MaxAckPending = the worker's buffer +
// one pull. A record's Subject is the subject as published (clicks.<key>),
// so a replay to the source republishes it unchanged; Key is the key token,
// Offset the stream sequence, Timestamp the time the stream stored it.
// Changing N re-partitions new messages only; consumers left over from a
// larger N are reported at start-up. A stream sluice creates has Limits
// retention and no limits: sluice never deletes source data, and never
// changes the limits an operator set (nats stream edit). An async source's
// stream, when sluice creates it, is a work queue instead: an event is
// removed once acknowledged or dead-lettered.
//
// # Stream mode: pausing, leases, acknowledgements
//
// The fetch loop pulls (Fetch, FetchWait at most) and pushes each message to
// the worker as it arrives. When the worker asks to pause (its buffer is full,
// or its batch is throttled, retrying or blocked), the loop stops pulling;
// a pull in progress is never cancelled (messages already on their way would
// be lost to this process and come back only after AckWait, behind newer
// ones). Every message the partition holds (buffered, in flight, throttled)
// gets InProgress every AckWait/3, so AckWait (brokers.<name>.nats.ack_wait,
// 30 s by default, 5 s..1 h) bounds only how long a dead process's messages
// stay invisible, not how long a batch may be held or a function may run;
// nothing is NAKed while held.
//
// Commit(last) acknowledges each held message up to last, in order, and
// waits for the server to confirm the last one (the consumer processes acks
// in order): a kill -9 redelivers at most the batch in flight. The Go option
// StreamOptions.AckPipelineDepth d instead hands the acknowledgements to the
// partition's ack goroutine (it sends what is queued, in order, with one
// confirmation request at the end) and lets a lane wait only for the
// confirmation of the checkpoint d back, as Kafka's commit_pipeline_depth
// does; the configuration leaves it at 0, since it did not raise throughput
// in BenchmarkStreamVsBareFetch (BENCHMARKS.md). AckAll was rejected: an AckAll of last also acknowledges
// messages below it that the server still counts as pending for a previous
// owner that died, before they were ever redelivered, which would lose them.
//
// # Stream mode: one puller per partition (pinned priority groups)
//
// Every partition consumer has PriorityPolicy pinned_client with priority
// group "sluice" (nats-server 2.11+; older servers are refused at start-up,
// since on them every process would pull every partition). The server
// delivers a partition to one client at a time, the pinned one; the other
// processes' pull requests wait. A pull carrying the pin renews it; a
// partition whose owner stops pulling for PinnedTTL (default 2 × AckWait) is
// pinned to the next client that pulls. Three things keep that sound:
//
//  1. A paused partition keeps its pin: the fetch loop sends a pull request
//     limited to 1 byte every FetchWait or so. It renews the pin and can
//     never be given a message (the server answers "409 Message Size
//     Exceeds MaxBytes" and keeps the message). Otherwise a shard throttled
//     for longer than PinnedTTL would lose its partition to a standby,
//     which would deliver the messages after the held batch.
//  2. At shutdown a process NAKs what it holds, in order (confirmed), and
//     unpins the partitions it owns (UnpinConsumer): the next owner starts
//     at once, with those messages first. A process that dies (kill -9)
//     keeps its pin for PinnedTTL; by then its messages' AckWait ran out
//     (PinnedTTL ≥ 4/3 AckWait is enforced: the last pin renewal is at most
//     PinnedTTL/4 before the death), so they are all up for redelivery when
//     the next owner pulls.
//  3. The server does not always redeliver in sequence order: a redelivery
//     that no waiting request may take (the others' requests wait while the
//     partition is pinned elsewhere) goes to the back of its queue. So each
//     worker generation (at start and after a reset) begins in recovery: at
//     its first message it reads the consumer's pending count and delivered
//     high-water mark H, gathers every pending message up to H whatever
//     order they come in, and pushes them sorted (or after AckWait + 2 ×
//     FetchWait, when some never come back). After that, a message below
//     the highest one pushed that the worker does not hold is out of order:
//     the partition resets (stops the worker, NAKs what it holds, sorted,
//     starts a new generation in recovery). A pull answered "pin id
//     mismatch" (the partition was pinned elsewhere) and a message stamped
//     with a new pin id reset it too.
//
// Limits: a process cut off from the server (not dead) for longer than
// PinnedTTL loses its partitions while it may still be invoking a batch: the
// next owner redelivers that batch (a duplicate, as after a crash), and
// acknowledgements the old owner sends after it reconnects are for messages
// the new owner may have delivered too. A pending message that does not come
// back within recovery's wait (acknowledged late by such an old owner,
// or still leased by it) is delivered out of order when it does, after a
// reset, and logged. Failover after a crash takes PinnedTTL (2 × ack_wait,
// 60 s by default). Every process of a source should use the same ack_wait:
// the consumers carry the one of the process that started last, and a
// process still on a longer one (a rolling change lowering it) sends its
// InProgress too rarely, so its held messages' leases may lapse (stream mode
// ignores the redelivery of a message it holds; in async mode another
// process may invoke the event a second time). Each process enforces the
// dispatcher's limits on its own.
//
// # Async mode: attempts across restarts
//
// The redelivery policy (package redelivery, shared with the shard engine
// and the Kafka source) decides what follows each delivery; this package
// keeps the mechanics. Throttled and failed events go back to the server
// with NakWithDelay (retry_backoff by attempt, or by throttle count for
// throttles, at least Retry-After capped at 15 min, cut at the event's
// expiry, which bounds only the wait for a slot, never an invocation that
// started); an event whose delivery was cut short by a shutdown is recorded
// as a throttle and handed back. The server's delivery count
// (NumDelivered) survives restarts, but counts every delivery, throttles
// included, and a message cannot be changed to carry a count. So each event
// that failed or was throttled has a retry state in the KV bucket
// "sluice-async-<source>", keyed by stream sequence: throttles, failures,
// first and last attempt times, last error, and when the next attempt is due.
// It is written before the NAK and
// removed when the event is acknowledged or terminated (the bucket's TTL,
// max_event_age + 1h, removes what a crash leaves). A delivery before the
// due time (the NAK was lost to a crash, so the event came back after
// AckWait, or the server's clock ran ahead) is handed back until then without
// an invocation and recorded as early. At each delivery
//
//	attempts made = max(failures, NumDelivered − 1 − throttles − early)
//
// so a delivery whose outcome was never recorded (a crash or lost connection
// mid-invocation: the function may have run) counts as an attempt, and a
// recorded throttle or early delivery never does. A restart keeps both counts and the dead
// letter keeps the first attempt time and the last error. A state that
// cannot be read (KV unavailable) is read again, the event held in progress
// meanwhile, never guessed (a guess would take its recorded throttles for
// attempts). Limits: a throttle or an early delivery whose state write
// failed counts as an attempt once; a
// first delivery costs nothing extra, each retry one KV write and one delete.
// Exhausted (attempts > max_retry_attempts), expired (older than
// max_event_age, throttles and errors alike) or permanently failed events are
// dead-lettered first (retried until stored, the event held meanwhile; each
// write bounded by 10 s and not cut short by a shutdown), then terminated
// with TermWithReason. Async has no per-partition order. On a stream that
// deletes terminated events (a work queue, as sluice creates it, or interest
// retention), an event whose dead letter must omit its payload (too large
// for the destination) is first copied to the object store bucket
// "sluice-kept-<stream>" (keep.go; the destination's retention as its TTL),
// where FetchRecord finds it for `dlq replay`: nothing is lost. A stream
// source over such a stream (a user's work queue) does the same for its
// letters.
// MaxAckPending (MaxWaiting, default 10000) bounds events delivered and not
// acknowledged, which includes every event waiting out a NAK delay on the
// server; sluice itself holds at most Concurrency events.
//
// # Goroutines and locks
//
// A running Stream has: Run's goroutine; per partition a fetch loop (the
// only goroutine that receives, pushes to the worker, and starts, resets or
// stops it) and the worker's goroutine (Worker.Run, which calls the Commit
// and Pause hooks); one InProgress loop and one consumer-info loop for all
// partitions. Stream.mu guards the partition table; partition.mu guards a
// partition's generation, held messages, recovery inbox and pin. No lock is
// held while calling out: Push may call the Pause hook, which takes
// partition.mu, so the fetch loop releases it before Push. The hooks of an
// older generation are ignored (epoch). A running Async has Run's goroutine
// (the pull loop), one goroutine per event being handled (at most
// Concurrency, counted by a channel of tokens), and the InProgress loop;
// Async.mu guards the in-flight table.
package nats
