package retention

import (
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// ErrInvalid is wrapped by every configuration error of this package; each
// message names the full key (`dead_letters.dead.retention: 30s is out of
// range (-1 or 1m or more)`).
var ErrInvalid = errors.New("invalid configuration")

// DefaultRetention is how long dead letters are kept unless the config says
// otherwise: 14 days (SPEC §4).
const DefaultRetention = shard.Age(336 * time.Hour)

// MinRetention is the shortest retention accepted: shorter would expire dead
// letters before anyone could look at them.
const MinRetention = shard.Age(time.Minute)

// Config is one entry of `dead_letters`: a Kafka topic or a JetStream stream
// that sluice creates if missing and whose retention it reconciles at
// start-up. Build one with DefaultConfig.
type Config struct {
	// Broker names an entry of `brokers`; the config loader fills it in when
	// the config has a single broker (or none: the embedded NATS).
	Broker string `koanf:"broker"`
	// Topic is the Kafka topic (Kafka brokers only).
	Topic string `koanf:"topic"`
	// Stream is the JetStream stream and Subject the subjects it holds, e.g.
	// "sluice.dead.>" (NATS brokers only).
	Stream  string `koanf:"stream"`
	Subject string `koanf:"subject"`
	// Retention is how long a dead letter is kept; -1 keeps it forever.
	Retention shard.Age `koanf:"retention"`
	// MaxBytes caps the destination's size, oldest dropped first (Kafka:
	// retention.bytes per partition; JetStream: MaxBytes). 0 is no cap.
	MaxBytes shard.Bytes `koanf:"max_bytes"`
}

// DefaultConfig returns a Config with the defaults applied.
func DefaultConfig() Config { return Config{Retention: DefaultRetention} }

// IsKafka reports whether the destination is a Kafka topic (rather than a
// JetStream stream).
func (c Config) IsKafka() bool { return c.Topic != "" }

// Validate checks a destination on its own; key names it in messages (e.g.
// "dead_letters.dead"). Whether its broker exists and is of the right kind is
// the config loader's to check. It reports every problem, joined.
func (c Config) Validate(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%w: %s.%s: %s", ErrInvalid, key, field, fmt.Sprintf(format, args...)))
	}
	switch {
	case c.Topic == "" && c.Stream == "":
		errs = append(errs, fmt.Errorf("%w: %s: one of topic (Kafka) or stream and subject (NATS JetStream) is required", ErrInvalid, key))
	case c.Topic != "" && c.Stream != "":
		errs = append(errs, fmt.Errorf("%w: %s: topic (Kafka) and stream (NATS JetStream) are both set; use one", ErrInvalid, key))
	case c.Topic != "":
		if !shard.ValidTopic(c.Topic) {
			add("topic", "%q is not a valid Kafka topic name (1..249 of a-z, A-Z, 0-9, \".\", \"_\", \"-\")", c.Topic)
		}
		if c.Subject != "" {
			add("subject", "not allowed with topic (subject goes with stream, on NATS JetStream)")
		}
	default:
		if !shard.ValidStream(c.Stream) {
			add("stream", "%q is not a valid stream name (no spaces, \".\", \"*\", \">\", \"/\" or \"\\\")", c.Stream)
		}
		switch {
		case c.Subject == "":
			add("subject", "required with stream (the subjects the stream holds, e.g. \"sluice.dead.>\")")
		case !shard.ValidSubject(c.Subject):
			add("subject", "%q is not a valid subject (dot-separated tokens without spaces; \"*\" stands for one token, \">\" for the rest and only last)", c.Subject)
		}
	}
	if c.Retention != shard.Infinite && c.Retention < MinRetention {
		add("retention", "%s is out of range (-1 or %s or more)", c.Retention, MinRetention)
	}
	if c.MaxBytes < 0 {
		add("max_bytes", "%s is out of range (0 for no cap, or more)", c.MaxBytes)
	}
	return errors.Join(errs...)
}
