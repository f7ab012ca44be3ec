// Package retention is the dead-letter store: it writes one JSON envelope per
// record or event that could not be delivered (SPEC §4) to a Kafka topic or a
// JetStream stream through an Appender, and reads dead letters back for
// `sluice dlq list`, `show` and `replay`. Creating a destination and
// reconciling its retention at start-up is its broker's
// (consumer.Broker.EnsureDestination, called by cmd/sluice).
//
// It owns the operator settings of a destination (Config) and implements the
// shard engine's DeadLetterer (Store). It builds on shard and must not import consumer,
// dispatch, config or cmd. Its Config carries koanf tags but does not import
// koanf.
//
// # Reading and replaying
//
// A destination is read through a Reader (consumer/kafka.Reader,
// consumer/nats.Reader: the whole topic or stream, up to its end when the read
// began) and folded by Load into one Letter per envelope id. Replays keep
// their books in the destination itself, so that they need no local state and
// work from any machine:
//
//   - a letter delivered by a replay gets a resolution record: the same key
//     (its id, so the same Kafka partition or JetStream subject), the header
//     sluice-resolved: <id>, and a small JSON body. A resolution is final:
//     Load reports the letter Resolved, and list and replay skip it.
//   - a letter whose replay failed is appended again with replays+1 and the
//     new lastError and lastAttemptAt; the newest envelope of an id wins.
//
// Replay stops starting letters when its context ends and gives those in
// flight a grace period to finish and be recorded, so an interrupted replay
// run again continues where it stopped. Targets decides where a letter goes
// back to (its function, as a one-record batch or the raw event, or its
// source's topic or stream) over lookups the wiring in cmd passes in (the
// dispatcher's deliverers, the brokers' writers), so this package does not
// depend on dispatch or a broker.
//
// A letter always fits its destination: when the Appender says how large a
// record its destination takes (Limited), Store writes an envelope that
// would be larger without the record's value and headers (and key, when
// the key alone does not fit; payloadOmitted, originalSize, the
// coordinates kept), calling the letter's Keep first when the source would
// delete the record (a JetStream work queue), and Targets has such a
// record fetched from its source for a replay (Targets.Fetch), checked
// against the letter's originalSize and timestamp, or fails the letter
// with the reason. A writer lowers its limit after a too-large refusal, so
// the retried write leaves the payload out. Store logs each letter at Warn,
// rate-limited per shard.
//
// Gauges measures each destination (Measurer) for
// sluice_dead_letter_stored_bytes and sluice_dead_letter_oldest_age_seconds,
// at most once per DefaultGaugeTTL.
package retention
