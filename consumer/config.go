package consumer

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// ErrInvalid is wrapped by every configuration error of this package; each
// message names the full key (`sources.orders.batch_size: 0 is out of range
// (1..10000)`).
var ErrInvalid = errors.New("invalid configuration")

// Mode is how a source delivers: ordered batches per shard, or single events.
type Mode string

// The source modes of SPEC §2.
const (
	ModeStream Mode = "stream" // ordered batches per shard; a throttled shard blocks
	ModeAsync  Mode = "async"  // one event per invocation, retried in bounded windows
)

// StartingPosition is where a source starts reading when it has no committed
// position yet (first start, or a new consumer group / durable consumer).
type StartingPosition string

// The starting positions, with Lambda's names.
const (
	TrimHorizon StartingPosition = "trim_horizon" // the oldest record still kept
	Latest      StartingPosition = "latest"       // only records published from now on
	AtTimestamp StartingPosition = "at_timestamp" // the first record at or after StartingTimestamp
)

// Source settings: SPEC §2.1 (stream) and §2.2 (async), with Lambda's ranges
// and defaults where it has them.
const (
	DefaultBatchSize         = shard.DefaultBatchSize
	MaxBatchSize             = 10000
	MaxBatchingWindow        = 300 * time.Second
	DefaultMaxBatchBytes     = shard.Bytes(shard.DefaultMaxBatchBytes)
	MinMaxBatchBytes         = 1 * shard.KiB   // a smaller body could not hold one record with its envelope
	MaxMaxBatchBytes         = 256 * shard.MiB // beyond this an HTTP body is almost surely a typo
	MaxParallelizationFactor = 10
	// DefaultCommitPipelineDepth is how many checkpoints a Kafka stream
	// lane may run ahead of the last confirmed offset commit
	// (commit_pipeline_depth): chosen by measurement (BENCHMARKS.md; 8
	// since a lane asks for a round at half its depth, which halved the
	// broker's CPU for commits against 4).
	DefaultCommitPipelineDepth = 8
	MaxCommitPipelineDepth     = 64
	MaxStreamRetryAttempts     = 10000
	MinRecordAge               = shard.Age(60 * time.Second)
	MaxRecordAge               = shard.Age(168 * time.Hour)
	MaxPartitions              = 1024 // JetStream partition subjects, each one pull consumer per process
	DefaultStreamRetryAttempts = -1   // infinite, as Lambda
	DefaultAsyncRetryAttempts  = 2
	MaxAsyncRetryAttempts      = 10
	MinEventAge                = 60 * time.Second
	MaxEventAge                = 6 * time.Hour
	DefaultMaxEventAge         = MaxEventAge
	DefaultBackoffInitial      = time.Second
	DefaultBackoffMax          = 5 * time.Minute
	DefaultBackoffMultiplier   = 2.0
	DefaultBackoffJitter       = 0.2
	DefaultKafkaClientID       = "sluice"
	// Failover after a crash (SPEC §5 brokers). DefaultSessionTimeout is
	// franz-go's (and Kafka's) own default; MinSessionTimeout is the
	// brokers' default group.min.session.timeout.ms, below which they refuse
	// to let a member join. Beyond MaxSessionTimeout a dead process's
	// partitions would sit idle for minutes: almost surely a mistake (the
	// brokers themselves allow up to group.max.session.timeout.ms, 30m).
	DefaultSessionTimeout = 45 * time.Second
	MinSessionTimeout     = 6 * time.Second
	MaxSessionTimeout     = 300 * time.Second
	// DefaultNATSAckWait is the JetStream consumers' AckWait; a stream-mode
	// partition pins to a process for 2 × AckWait after it died. The bounds
	// are sluice's, not JetStream's (it takes any positive AckWait): held
	// messages are kept with InProgress every AckWait/3 and pins renewed at
	// least every AckWait/2, so below MinNATSAckWait a network hiccup or a
	// GC pause of a second or two would let them lapse (redeliveries, lost
	// pins); beyond MaxNATSAckWait a dead process's partitions would sit
	// idle for over 2 hours.
	DefaultNATSAckWait = 30 * time.Second
	MinNATSAckWait     = 5 * time.Second
	MaxNATSAckWait     = time.Hour
	// DefaultStartingPosition is trim_horizon (Lambda has no default): a
	// new source delivers what is already in the topic, so nothing is lost.
	DefaultStartingPosition = TrimHorizon
)

const (
	defaultRecordAge             = shard.Infinite
	minBackoffInitial            = time.Millisecond
	streamOnlyNote               = "not allowed with mode async (stream-only key)"
	asyncOnlyNote                = "not allowed with mode stream (async-only key)"
	startingTimestampExample     = `RFC 3339, e.g. "2024-05-01T00:00:00Z"`
	natsSubjectSyntax            = `dot-separated tokens without spaces; "*" stands for one token, ">" for the rest and only last`
	streamModeSubjectRequirement = `must have exactly one "*" token in stream mode, the record key (e.g. "clicks.*")`
)

// BrokerConfig is one entry of `brokers`: exactly one of Kafka or NATS.
type BrokerConfig struct {
	Kafka *KafkaConfig `koanf:"kafka"`
	NATS  *NATSConfig  `koanf:"nats"`
}

// KafkaConfig reaches a Kafka cluster.
type KafkaConfig struct {
	// Seeds are host:port addresses of some brokers of the cluster.
	Seeds []string `koanf:"seeds"`
	// ClientID is the client id the brokers see in their logs and quotas;
	// default "sluice".
	ClientID string `koanf:"client_id"`
	// SessionTimeout is how long the group waits for a member that stopped
	// heartbeating (it died) before its partitions move to another;
	// default 45s, 6s..300s. The heartbeat interval follows from it
	// (HeartbeatInterval). The brokers' group.min/max.session.timeout.ms
	// must allow it.
	SessionTimeout time.Duration `koanf:"session_timeout"`
	// TLS encrypts the connections to the brokers (and, with cert_file and
	// key_file, authenticates sluice by its certificate).
	TLS TLSConfig `koanf:"tls"`
	// SASL authenticates sluice to the brokers (PLAIN, SCRAM-SHA-256,
	// SCRAM-SHA-512, OAUTHBEARER, AWS_MSK_IAM).
	SASL SASLConfig `koanf:"sasl"`
}

// DefaultHeartbeatInterval is franz-go's (and Kafka's) default heartbeat
// interval.
const DefaultHeartbeatInterval = 3 * time.Second

// HeartbeatInterval is the group heartbeat interval for SessionTimeout: a
// third of it (Kafka's advice, so that two heartbeats may be lost without
// the member being given up), but no longer than franz-go's default 3s.
// Zero when SessionTimeout is zero (the client's defaults then).
func (k KafkaConfig) HeartbeatInterval() time.Duration {
	if k.SessionTimeout <= 0 {
		return 0
	}
	return min(DefaultHeartbeatInterval, k.SessionTimeout/3)
}

// NATSConfig reaches a NATS server with JetStream.
type NATSConfig struct {
	// URL is a NATS URL, or several separated by commas for a cluster.
	// Empty means the embedded nats-server that sluice starts itself, with
	// its data under state_dir.
	URL string `koanf:"url"`
	// Listen is where the embedded nats-server listens (only without URL);
	// default 127.0.0.1:4222, so that `nats pub` reaches it.
	Listen string `koanf:"listen"`
	// AckWait is the JetStream consumers' AckWait: how long the messages a
	// process held when it died stay invisible, and (2 × AckWait) how long
	// a stream-mode partition stays pinned to it; default 30s, 5s..1h. It
	// does not bound how long a function may run (held messages are kept
	// with InProgress).
	AckWait time.Duration `koanf:"ack_wait"`

	// TLS: for a server by URL, how sluice checks it and (cert_file,
	// key_file) proves itself; for the embedded server, its own certificate
	// (cert_file, key_file) and the CA of the client certificates it then
	// requires (ca_file).
	TLS TLSConfig `koanf:"tls"`
	// At most one way to authenticate. CredsFile is a user's JWT and nkey
	// seed (a .creds file, as Synadia Cloud and `nsc` hand out); NkeyFile
	// is a file holding a user's nkey seed; TokenFile/TokenEnv a token;
	// User with PasswordFile/PasswordEnv a user and password. For the
	// embedded server, a token or a user and password are the credentials
	// it requires of every client (sluice included).
	CredsFile    string `koanf:"creds_file"`
	NkeyFile     string `koanf:"nkey_file"`
	TokenFile    string `koanf:"token_file"`
	TokenEnv     string `koanf:"token_env"`
	User         string `koanf:"user"`
	PasswordFile string `koanf:"password_file"`
	PasswordEnv  string `koanf:"password_env"`
}

// DefaultNATSConfig returns a NATSConfig (the embedded server) with the
// defaults applied.
func DefaultNATSConfig() NATSConfig { return NATSConfig{AckWait: DefaultNATSAckWait} }

// DefaultEmbeddedListen is the embedded nats-server's default address.
const DefaultEmbeddedListen = "127.0.0.1:4222"

// EmbeddedBroker is the name of the broker sluice implies when the config
// defines none: an embedded NATS JetStream.
const EmbeddedBroker = "embedded"

// Embedded reports whether n stands for the embedded nats-server.
func (n NATSConfig) Embedded() bool { return n.URL == "" }

// DefaultKafkaConfig returns a KafkaConfig with the defaults applied.
func DefaultKafkaConfig() KafkaConfig {
	return KafkaConfig{ClientID: DefaultKafkaClientID, SessionTimeout: DefaultSessionTimeout}
}

// Validate checks a broker; key names it in messages (e.g. "brokers.main").
// It reports every problem, joined.
func (b BrokerConfig) Validate(key string) error {
	switch {
	case b.Kafka == nil && b.NATS == nil:
		return invalid(key, "exactly one of kafka, nats is required")
	case b.Kafka != nil && b.NATS != nil:
		return invalid(key, "both kafka and nats are set (exactly one of kafka, nats is allowed)")
	case b.Kafka != nil:
		return b.Kafka.validate(key + ".kafka")
	default:
		return b.NATS.validate(key + ".nats")
	}
}

func (k KafkaConfig) validate(key string) error {
	var errs []error
	if len(k.Seeds) == 0 {
		errs = append(errs, invalid(key+".seeds", "required (a list of host:port)"))
	}
	for i, s := range k.Seeds {
		host, port, err := net.SplitHostPort(s)
		if err != nil || host == "" || port == "" || strings.Contains(s, "/") {
			errs = append(errs, invalid(fmt.Sprintf("%s.seeds[%d]", key, i), "%q is not host:port", s))
		}
	}
	if k.ClientID == "" {
		errs = append(errs, invalid(key+".client_id", "must not be empty (default %q)", DefaultKafkaClientID))
	}
	if k.SessionTimeout < MinSessionTimeout || k.SessionTimeout > MaxSessionTimeout {
		errs = append(errs, invalid(key+".session_timeout", "%s is out of range (6s..300s)", shard.FormatDuration(k.SessionTimeout)))
	}
	if _, err := k.TLS.Client(key + ".tls"); err != nil {
		errs = append(errs, err)
	}
	if k.SASL.On() || k.SASL != (SASLConfig{}) {
		errs = append(errs, k.SASL.validate(key+".sasl"))
	}
	return errors.Join(errs...)
}

func (n NATSConfig) validate(key string) error {
	var ackWait error
	if n.AckWait < MinNATSAckWait || n.AckWait > MaxNATSAckWait {
		ackWait = invalid(key+".ack_wait", "%s is out of range (5s..1h)", shard.FormatDuration(n.AckWait))
	}
	return errors.Join(n.validateAddress(key), ackWait, n.validateAuth(key))
}

func (n NATSConfig) validateAddress(key string) error {
	if n.Embedded() {
		if n.Listen == "" {
			return nil
		}
		host, port, err := net.SplitHostPort(n.Listen)
		if _, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil {
			return invalid(key+".listen", "%q is not host:port (the embedded server's address, e.g. %s)", n.Listen, DefaultEmbeddedListen)
		}
		return nil
	}
	if n.Listen != "" {
		return invalid(key+".listen", "only for the embedded server (no url); this broker has url %q", n.URL)
	}
	for _, s := range strings.Split(n.URL, ",") {
		u, err := url.Parse(strings.TrimSpace(s))
		if err != nil || u.Host == "" || !oneOf(u.Scheme, "nats", "tls", "ws", "wss") {
			return invalid(key+".url", "%q is not a NATS URL (nats://, tls://, ws:// or wss:// and host:port; several separated by commas; empty for the embedded server)", n.URL)
		}
	}
	return nil
}

// Backoff bounds the waits between retries: Initial, then multiplied by
// Multiplier after each attempt up to Max, each wait spread by ±Jitter (a
// fraction). Stream shards use it between retries of a batch, async sources
// between retries of an event.
type Backoff struct {
	Initial    time.Duration `koanf:"initial"`
	Max        time.Duration `koanf:"max"`
	Multiplier float64       `koanf:"multiplier"`
	Jitter     float64       `koanf:"jitter"`
}

// DefaultBackoff returns the backoff of SPEC §2.2: 1s, ×2, up to 5m, ±20%.
func DefaultBackoff() Backoff {
	return Backoff{
		Initial:    DefaultBackoffInitial,
		Max:        DefaultBackoffMax,
		Multiplier: DefaultBackoffMultiplier,
		Jitter:     DefaultBackoffJitter,
	}
}

func (b Backoff) validate(key string) error {
	var errs []error
	if b.Initial < minBackoffInitial {
		errs = append(errs, invalid(key+".initial", "%s is out of range (1ms or more)", shard.FormatDuration(b.Initial)))
	} else if b.Max < b.Initial {
		errs = append(errs, invalid(key+".max", "%s is less than %s.initial (%s)", shard.FormatDuration(b.Max), lastPart(key), shard.FormatDuration(b.Initial)))
	}
	if b.Multiplier < 1 {
		errs = append(errs, invalid(key+".multiplier", "%v is out of range (1 or more)", b.Multiplier))
	}
	if b.Jitter < 0 || b.Jitter > 1 {
		errs = append(errs, invalid(key+".jitter", "%v is out of range (0..1, a fraction of each wait)", b.Jitter))
	}
	return errors.Join(errs...)
}

// ScopeKind says where a source takes an invocation's scope from.
type ScopeKind string

// The scope kinds.
const (
	ScopeNone    ScopeKind = "none"    // no scope: only the function's limits apply
	ScopeKey     ScopeKind = "key"     // the record key
	ScopeHeader  ScopeKind = "header"  // the value of a record header (Scope.Arg names it)
	ScopeLiteral ScopeKind = "literal" // one fixed scope for the whole source (Scope.Arg)
)

// Scope is a source's scope spec: `none`, `key`, `header:<name>` or
// `literal:<value>`. The zero Scope is none.
type Scope struct {
	Kind ScopeKind
	// Arg is the header name for ScopeHeader and the scope for ScopeLiteral.
	Arg string
}

const scopeSyntax = "none, key, header:<name>, literal:<value>"

// ParseScope parses a scope spec. Its error describes the value only; the
// caller prefixes the key.
func ParseScope(s string) (Scope, error) {
	kind, arg, hasArg := strings.Cut(s, ":")
	switch k := ScopeKind(kind); {
	case (k == ScopeNone || k == ScopeKey) && !hasArg:
		return Scope{Kind: k}, nil
	case (k == ScopeHeader || k == ScopeLiteral) && arg != "":
		return Scope{Kind: k, Arg: arg}, nil
	}
	return Scope{}, fmt.Errorf("%q is not one of %s", s, scopeSyntax)
}

// IsNone reports whether s carries no scope.
func (s Scope) IsNone() bool { return s.Kind == "" || s.Kind == ScopeNone }

// String formats s as the config writes it.
func (s Scope) String() string {
	switch {
	case s.IsNone():
		return string(ScopeNone)
	case s.Arg != "":
		return string(s.Kind) + ":" + s.Arg
	default:
		return string(s.Kind)
	}
}

// MarshalText formats s as String does.
func (s Scope) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText parses a scope spec as ParseScope does.
func (s *Scope) UnmarshalText(text []byte) error {
	v, err := ParseScope(string(text))
	if err != nil {
		return err
	}
	*s = v
	return nil
}

// SourceConfig is one entry of `sources`: it binds a Kafka topic, or a
// JetStream stream and subject, to a function. Build one with
// DefaultSourceConfig: the defaults depend on the mode, and a stream-only
// setting left non-zero on an async source (or the reverse) is an error.
type SourceConfig struct {
	// Broker names an entry of `brokers`; the config loader fills it in
	// when the config has a single broker (or none: the embedded NATS).
	Broker string `koanf:"broker"`
	// Topic is the Kafka topic (Kafka brokers only).
	Topic string `koanf:"topic"`
	// Stream and Subject are the JetStream stream and the subject published
	// to (NATS brokers only). In stream mode Subject has exactly one "*"
	// token, the record key, and sluice maps it onto Partitions partition
	// subjects.
	Stream     string `koanf:"stream"`
	Subject    string `koanf:"subject"`
	Partitions int    `koanf:"partitions"`

	Mode     Mode   `koanf:"mode"`
	Function string `koanf:"function"`
	Scope    Scope  `koanf:"scope"`

	// StartingPosition applies when the source has no committed position;
	// default trim_horizon, so that nothing already published is skipped.
	StartingPosition  StartingPosition `koanf:"starting_position"`
	StartingTimestamp time.Time        `koanf:"starting_timestamp"`

	// Stream mode only.
	BatchSize               int           `koanf:"batch_size"`
	BatchingWindow          time.Duration `koanf:"batching_window"`
	MaxBatchBytes           shard.Bytes   `koanf:"max_batch_bytes"`
	ParallelizationFactor   int           `koanf:"parallelization_factor"`
	MaxRecordAge            shard.Age     `koanf:"max_record_age"`
	BisectBatchOnError      bool          `koanf:"bisect_batch_on_error"`
	ReportBatchItemFailures bool          `koanf:"report_batch_item_failures"`
	// CommitPipelineDepth (Kafka stream sources): how many batches a lane
	// delivers beyond its last confirmed offset commit. A kill -9
	// redelivers at most (CommitPipelineDepth + 1) × BatchSize records per
	// partition with parallelization_factor 1. JetStream sources acknowledge
	// each batch before the lane's next and ignore it.
	CommitPipelineDepth int `koanf:"commit_pipeline_depth"`

	// Async mode only.
	MaxEventAge time.Duration `koanf:"max_event_age"`

	// Both modes, with ranges and defaults that depend on the mode.
	MaxRetryAttempts int     `koanf:"max_retry_attempts"`
	RetryBackoff     Backoff `koanf:"retry_backoff"`
	// OnFailure names a dead-letter destination; empty drops (counts and
	// logs) what cannot be delivered.
	OnFailure string `koanf:"on_failure"`
}

// DefaultSourceConfig returns a source of the given mode with every default
// of SPEC §2.1 (stream) or §2.2 (async) applied. An empty mode means stream;
// an unknown mode gets the stream defaults and fails Validate.
func DefaultSourceConfig(mode Mode) SourceConfig {
	c := SourceConfig{
		Mode:             mode,
		Scope:            Scope{Kind: ScopeNone},
		StartingPosition: DefaultStartingPosition,
		RetryBackoff:     DefaultBackoff(),
	}
	if mode == ModeAsync {
		c.MaxRetryAttempts = DefaultAsyncRetryAttempts
		c.MaxEventAge = DefaultMaxEventAge
		return c
	}
	if mode == "" {
		c.Mode = ModeStream
	}
	c.BatchSize = DefaultBatchSize
	c.MaxBatchBytes = DefaultMaxBatchBytes
	c.ParallelizationFactor = 1
	c.CommitPipelineDepth = DefaultCommitPipelineDepth
	c.MaxRetryAttempts = DefaultStreamRetryAttempts
	c.MaxRecordAge = defaultRecordAge
	return c
}

// IsKafka reports whether the source reads a Kafka topic (rather than a
// JetStream stream).
func (c SourceConfig) IsKafka() bool { return c.Topic != "" }

// Validate checks a source on its own; key names it in messages (e.g.
// "sources.orders"). References to brokers, functions and dead-letter
// destinations are the config loader's to check. It reports every problem,
// joined.
func (c SourceConfig) Validate(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, invalid(key+"."+field, format, args...))
	}

	if c.Function == "" {
		add("function", "required (the name of a function)")
	}
	if !c.Scope.IsNone() {
		// A round trip catches a Scope built in code with a bad kind or arg.
		if _, err := ParseScope(c.Scope.String()); err != nil {
			add("scope", "%q is not one of %s", c.Scope.String(), scopeSyntax)
		}
	}
	switch c.StartingPosition {
	case TrimHorizon, Latest:
		if !c.StartingTimestamp.IsZero() {
			add("starting_timestamp", "only allowed with starting_position at_timestamp")
		}
	case AtTimestamp:
		if c.StartingTimestamp.IsZero() {
			add("starting_timestamp", "required with starting_position at_timestamp (%s)", startingTimestampExample)
		}
	default:
		add("starting_position", "%q is not one of trim_horizon, latest, at_timestamp", c.StartingPosition)
	}
	errs = append(errs, c.RetryBackoff.validate(key+".retry_backoff"))

	// Where the records come from.
	switch {
	case c.Topic == "" && c.Stream == "":
		errs = append(errs, invalid(key, "one of topic (Kafka) or stream and subject (NATS JetStream) is required"))
	case c.Topic != "" && c.Stream != "":
		errs = append(errs, invalid(key, "topic (Kafka) and stream (NATS JetStream) are both set; use one"))
	case c.Topic != "":
		if !shard.ValidTopic(c.Topic) {
			add("topic", "%q is not a valid Kafka topic name (1..249 of a-z, A-Z, 0-9, \".\", \"_\", \"-\")", c.Topic)
		}
		if c.Subject != "" {
			add("subject", "not allowed with topic (subject goes with stream, on NATS JetStream)")
		}
		if c.Partitions != 0 {
			add("partitions", "not allowed with topic (Kafka partitions come from the topic)")
		}
	default:
		if !shard.ValidStream(c.Stream) {
			add("stream", "%q is not a valid stream name (no spaces, \".\", \"*\", \">\", \"/\" or \"\\\")", c.Stream)
		}
		switch {
		case c.Subject == "":
			add("subject", "required with stream (the subject published to, e.g. \"clicks.*\")")
		case !shard.ValidSubject(c.Subject):
			add("subject", "%q is not a valid subject (%s)", c.Subject, natsSubjectSyntax)
		case c.Mode == ModeStream && !oneKeyToken(c.Subject):
			add("subject", "%q %s", c.Subject, streamModeSubjectRequirement)
		}
		if c.Mode == ModeStream && (c.Partitions < 1 || c.Partitions > MaxPartitions) {
			if c.Partitions == 0 {
				add("partitions", "required in stream mode on NATS JetStream (the number of partition subjects, 1..%d)", MaxPartitions)
			} else {
				add("partitions", "%d is out of range (1..%d)", c.Partitions, MaxPartitions)
			}
		}
	}

	switch c.Mode {
	case ModeStream:
		errs = append(errs, c.validateStream(key))
	case ModeAsync:
		errs = append(errs, c.validateAsync(key))
	default:
		add("mode", "%q is not one of stream, async", c.Mode)
	}
	return errors.Join(errs...)
}

func (c SourceConfig) validateStream(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, invalid(key+"."+field, format, args...))
	}
	if c.BatchSize < 1 || c.BatchSize > MaxBatchSize {
		add("batch_size", "%d is out of range (1..%d)", c.BatchSize, MaxBatchSize)
	}
	if c.BatchingWindow < 0 || c.BatchingWindow > MaxBatchingWindow {
		add("batching_window", "%s is out of range (0s..300s)", shard.FormatDuration(c.BatchingWindow))
	}
	if c.MaxBatchBytes < MinMaxBatchBytes || c.MaxBatchBytes > MaxMaxBatchBytes {
		add("max_batch_bytes", "%s is out of range (%s..%s)", c.MaxBatchBytes, MinMaxBatchBytes, MaxMaxBatchBytes)
	}
	if c.ParallelizationFactor < 1 || c.ParallelizationFactor > MaxParallelizationFactor {
		add("parallelization_factor", "%d is out of range (1..%d)", c.ParallelizationFactor, MaxParallelizationFactor)
	}
	if c.CommitPipelineDepth < 0 || c.CommitPipelineDepth > MaxCommitPipelineDepth {
		add("commit_pipeline_depth", "%d is out of range (0..%d)", c.CommitPipelineDepth, MaxCommitPipelineDepth)
	}
	if c.MaxRetryAttempts < -1 || c.MaxRetryAttempts > MaxStreamRetryAttempts {
		add("max_retry_attempts", "%d is out of range (-1 or 0..%d)", c.MaxRetryAttempts, MaxStreamRetryAttempts)
	}
	if a := c.MaxRecordAge; a != shard.Infinite && (a < MinRecordAge || a > MaxRecordAge) {
		add("max_record_age", "%s is out of range (-1 or 60s..168h)", a)
	}
	if c.MaxEventAge != 0 {
		add("max_event_age", asyncOnlyNote)
	}
	return errors.Join(errs...)
}

func (c SourceConfig) validateAsync(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, invalid(key+"."+field, format, args...))
	}
	if c.MaxRetryAttempts < 0 || c.MaxRetryAttempts > MaxAsyncRetryAttempts {
		add("max_retry_attempts", "%d is out of range (0..%d)", c.MaxRetryAttempts, MaxAsyncRetryAttempts)
	}
	if c.MaxEventAge < MinEventAge || c.MaxEventAge > MaxEventAge {
		add("max_event_age", "%s is out of range (60s..6h)", shard.FormatDuration(c.MaxEventAge))
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"batch_size", c.BatchSize != 0},
		{"batching_window", c.BatchingWindow != 0},
		{"max_batch_bytes", c.MaxBatchBytes != 0},
		{"parallelization_factor", c.ParallelizationFactor != 0},
		{"commit_pipeline_depth", c.CommitPipelineDepth != 0},
		{"max_record_age", c.MaxRecordAge != 0},
		{"bisect_batch_on_error", c.BisectBatchOnError},
		{"report_batch_item_failures", c.ReportBatchItemFailures},
		{"partitions", c.Partitions != 0},
	} {
		if f.set {
			add(f.name, streamOnlyNote)
		}
	}
	return errors.Join(errs...)
}

func invalid(key, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalid, key, fmt.Sprintf(format, args...))
}

func oneOf(s string, set ...string) bool {
	for _, v := range set {
		if s == v {
			return true
		}
	}
	return false
}

func lastPart(key string) string { return key[strings.LastIndexByte(key, '.')+1:] }

// oneKeyToken reports whether a stream-mode subject has exactly one "*"
// token (the record key) and no ">".
func oneKeyToken(s string) bool {
	stars := 0
	for _, t := range strings.Split(s, ".") {
		switch t {
		case "*":
			stars++
		case ">":
			return false
		}
	}
	return stars == 1
}
