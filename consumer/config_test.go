package consumer

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/shard"
)

func TestDefaultSourceConfigIsValid(t *testing.T) {
	stream := DefaultSourceConfig(ModeStream)
	stream.Function, stream.Topic = "fn", "orders"
	if err := stream.Validate("sources.s"); err != nil {
		t.Errorf("stream defaults: %v", err)
	}
	if stream.BatchSize != 100 || stream.MaxBatchBytes != 6*shard.MiB || stream.ParallelizationFactor != 1 ||
		stream.MaxRetryAttempts != -1 || !stream.MaxRecordAge.IsInfinite() || stream.StartingPosition != TrimHorizon ||
		stream.BatchingWindow != 0 || !stream.Scope.IsNone() {
		t.Errorf("stream defaults = %+v", stream)
	}
	async := DefaultSourceConfig(ModeAsync)
	async.Function, async.Stream, async.Subject = "fn", "SIGNUPS", "signups.>"
	if err := async.Validate("sources.a"); err != nil {
		t.Errorf("async defaults: %v", err)
	}
	if async.MaxRetryAttempts != 2 || async.MaxEventAge != 6*time.Hour || async.RetryBackoff != DefaultBackoff() {
		t.Errorf("async defaults = %+v", async)
	}
	if got := DefaultSourceConfig(""); got.Mode != ModeStream || got.BatchSize != DefaultBatchSize {
		t.Errorf("empty mode = %+v, want stream defaults", got)
	}
}

func TestSourceConfigValidate(t *testing.T) {
	kafka := func(edit func(*SourceConfig)) SourceConfig {
		c := DefaultSourceConfig(ModeStream)
		c.Function, c.Topic = "fn", "orders"
		edit(&c)
		return c
	}
	jetstream := func(mode Mode, edit func(*SourceConfig)) SourceConfig {
		c := DefaultSourceConfig(mode)
		c.Function, c.Stream, c.Subject = "fn", "CLICKS", "clicks.*"
		if mode == ModeStream {
			c.Partitions = 4
		}
		edit(&c)
		return c
	}
	for _, tc := range []struct {
		name string
		c    SourceConfig
		want string // every problem, one per line
	}{
		{"valid stream at a timestamp", kafka(func(c *SourceConfig) {
			c.StartingPosition, c.StartingTimestamp = AtTimestamp, time.Date(2024, 5, 1, 0, 0, 0, 0, time.UTC)
		}), ""},
		{"valid jetstream async", jetstream(ModeAsync, func(c *SourceConfig) { c.Subject = "clicks.>" }), ""},
		{"no function, no topic", kafka(func(c *SourceConfig) { c.Function, c.Topic = "", "" }),
			"s.function: required (the name of a function)\n" +
				"s: one of topic (Kafka) or stream and subject (NATS JetStream) is required"},
		{"topic and stream", kafka(func(c *SourceConfig) { c.Stream = "S" }),
			"s: topic (Kafka) and stream (NATS JetStream) are both set; use one"},
		{"kafka with subject and partitions", kafka(func(c *SourceConfig) { c.Subject, c.Partitions, c.Topic = "x", 2, "bad topic" }),
			`s.topic: "bad topic" is not a valid Kafka topic name (1..249 of a-z, A-Z, 0-9, ".", "_", "-")` + "\n" +
				"s.subject: not allowed with topic (subject goes with stream, on NATS JetStream)\n" +
				"s.partitions: not allowed with topic (Kafka partitions come from the topic)"},
		{"jetstream without subject or partitions", jetstream(ModeStream, func(c *SourceConfig) { c.Subject, c.Partitions = "", 0 }),
			`s.subject: required with stream (the subject published to, e.g. "clicks.*")` + "\n" +
				"s.partitions: required in stream mode on NATS JetStream (the number of partition subjects, 1..1024)"},
		{"jetstream bad names", jetstream(ModeStream, func(c *SourceConfig) { c.Stream, c.Subject, c.Partitions = "A.B", "clicks..*", 2000 }),
			`s.stream: "A.B" is not a valid stream name (no spaces, ".", "*", ">", "/" or "\")` + "\n" +
				`s.subject: "clicks..*" is not a valid subject (dot-separated tokens without spaces; "*" stands for one token, ">" for the rest and only last)` + "\n" +
				"s.partitions: 2000 is out of range (1..1024)"},
		{"stream subject with two key tokens", jetstream(ModeStream, func(c *SourceConfig) { c.Subject = "clicks.*.*" }),
			`s.subject: "clicks.*.*" must have exactly one "*" token in stream mode, the record key (e.g. "clicks.*")`},
		{"async with partitions", jetstream(ModeAsync, func(c *SourceConfig) { c.Partitions = 2 }),
			"s.partitions: not allowed with mode async (stream-only key)"},
		{"stream ranges", kafka(func(c *SourceConfig) {
			c.BatchingWindow, c.MaxBatchBytes, c.MaxRecordAge = 301*time.Second, 512, shard.Age(200*time.Hour)
		}),
			"s.batching_window: 5m1s is out of range (0s..300s)\n" +
				"s.max_batch_bytes: 512B is out of range (1KiB..256MiB)\n" +
				"s.max_record_age: 200h is out of range (-1 or 60s..168h)"},
		{"timestamp without at_timestamp", kafka(func(c *SourceConfig) { c.StartingTimestamp = time.Now() }),
			"s.starting_timestamp: only allowed with starting_position at_timestamp"},
		{"async ranges and stream keys", jetstream(ModeAsync, func(c *SourceConfig) {
			c.MaxEventAge, c.MaxRetryAttempts, c.BatchSize, c.ReportBatchItemFailures, c.MaxRecordAge = 7*time.Hour, -1, 10, true, shard.Infinite
		}),
			"s.max_retry_attempts: -1 is out of range (0..10)\n" +
				"s.max_event_age: 7h is out of range (60s..6h)\n" +
				"s.batch_size: not allowed with mode async (stream-only key)\n" +
				"s.max_record_age: not allowed with mode async (stream-only key)\n" +
				"s.report_batch_item_failures: not allowed with mode async (stream-only key)"},
		{"bad backoff", kafka(func(c *SourceConfig) {
			c.RetryBackoff = Backoff{Initial: time.Minute, Max: time.Second, Multiplier: 0.5, Jitter: 2}
		}),
			"s.retry_backoff.max: 1s is less than retry_backoff.initial (1m)\n" +
				"s.retry_backoff.multiplier: 0.5 is out of range (1 or more)\n" +
				"s.retry_backoff.jitter: 2 is out of range (0..1, a fraction of each wait)"},
		{"zero backoff", kafka(func(c *SourceConfig) { c.RetryBackoff.Initial = 0 }),
			"s.retry_backoff.initial: 0s is out of range (1ms or more)"},
		{"scope built in code", kafka(func(c *SourceConfig) { c.Scope = Scope{Kind: ScopeHeader} }),
			`s.scope: "header" is not one of none, key, header:<name>, literal:<value>`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.c.Validate("s")
			got := ""
			if err != nil {
				got = strings.ReplaceAll(err.Error(), "invalid configuration: ", "")
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error does not wrap ErrInvalid")
				}
			}
			if got != tc.want {
				t.Errorf("Validate:\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

func TestBrokerConfigValidate(t *testing.T) {
	kafka := DefaultKafkaConfig()
	kafka.Seeds = []string{"127.0.0.1:9092", "[::1]:9092"}
	for _, tc := range []struct {
		name string
		b    BrokerConfig
		want string
	}{
		{"kafka", BrokerConfig{Kafka: &kafka}, ""},
		{"nats cluster", BrokerConfig{NATS: &NATSConfig{URL: "nats://a:4222, tls://b:4222", AckWait: DefaultNATSAckWait}}, ""},
		{"embedded nats", BrokerConfig{NATS: ptr(DefaultNATSConfig())}, ""},
		{"neither", BrokerConfig{}, "b: exactly one of kafka, nats is required"},
		{"no seeds, no client id, no session timeout", BrokerConfig{Kafka: &KafkaConfig{}},
			"b.kafka.seeds: required (a list of host:port)\n" + `b.kafka.client_id: must not be empty (default "sluice")` +
				"\nb.kafka.session_timeout: 0s is out of range (6s..300s)"},
		{"seed with a scheme", BrokerConfig{Kafka: &KafkaConfig{Seeds: []string{"kafka://a:9092"}, ClientID: "x", SessionTimeout: DefaultSessionTimeout}},
			`b.kafka.seeds[0]: "kafka://a:9092" is not host:port`},
		{"bad nats url", BrokerConfig{NATS: &NATSConfig{URL: "127.0.0.1:4222", AckWait: DefaultNATSAckWait}},
			`b.nats.url: "127.0.0.1:4222" is not a NATS URL (nats://, tls://, ws:// or wss:// and host:port; several separated by commas; empty for the embedded server)`},
		{"session timeout at its lower bound", BrokerConfig{Kafka: withSession(kafka, 6*time.Second)}, ""},
		{"session timeout at its upper bound", BrokerConfig{Kafka: withSession(kafka, 300*time.Second)}, ""},
		{"session timeout too short", BrokerConfig{Kafka: withSession(kafka, time.Second)},
			"b.kafka.session_timeout: 1s is out of range (6s..300s)"},
		{"session timeout too long", BrokerConfig{Kafka: withSession(kafka, 301*time.Second)},
			"b.kafka.session_timeout: 5m1s is out of range (6s..300s)"},
		{"ack wait at its lower bound", BrokerConfig{NATS: &NATSConfig{URL: "nats://a:4222", AckWait: 5 * time.Second}}, ""},
		{"ack wait at its upper bound", BrokerConfig{NATS: &NATSConfig{AckWait: time.Hour}}, ""},
		{"ack wait zero", BrokerConfig{NATS: &NATSConfig{URL: "nats://a:4222"}},
			"b.nats.ack_wait: 0s is out of range (5s..1h)"},
		{"ack wait too short, embedded, bad listen", BrokerConfig{NATS: &NATSConfig{Listen: "x", AckWait: 4 * time.Second}},
			`b.nats.listen: "x" is not host:port (the embedded server's address, e.g. 127.0.0.1:4222)` +
				"\nb.nats.ack_wait: 4s is out of range (5s..1h)"},
		{"ack wait too long", BrokerConfig{NATS: &NATSConfig{URL: "nats://a:4222", AckWait: 2 * time.Hour}},
			"b.nats.ack_wait: 2h is out of range (5s..1h)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := ""
			if err := tc.b.Validate("b"); err != nil {
				got = strings.ReplaceAll(err.Error(), "invalid configuration: ", "")
			}
			if got != tc.want {
				t.Errorf("Validate:\n got: %s\nwant: %s", got, tc.want)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func withSession(k KafkaConfig, d time.Duration) *KafkaConfig {
	k.SessionTimeout = d
	return &k
}

func TestHeartbeatInterval(t *testing.T) {
	for _, tc := range []struct{ session, want time.Duration }{
		{0, 0}, // the client's defaults
		{6 * time.Second, 2 * time.Second},
		{9 * time.Second, 3 * time.Second},
		{DefaultSessionTimeout, DefaultHeartbeatInterval}, // franz-go's defaults, as before
		{MaxSessionTimeout, DefaultHeartbeatInterval},
	} {
		if got := (KafkaConfig{SessionTimeout: tc.session}).HeartbeatInterval(); got != tc.want {
			t.Errorf("session_timeout %s: heartbeat interval %s, want %s", tc.session, got, tc.want)
		}
	}
}

func TestDefaultBrokerConfigsAreValid(t *testing.T) {
	k := DefaultKafkaConfig()
	k.Seeds = []string{"127.0.0.1:9092"}
	if k.SessionTimeout != 45*time.Second {
		t.Errorf("default session_timeout %s, want franz-go's 45s", k.SessionTimeout)
	}
	if err := (BrokerConfig{Kafka: &k}).Validate("b"); err != nil {
		t.Error(err)
	}
	n := DefaultNATSConfig()
	if n.AckWait != 30*time.Second {
		t.Errorf("default ack_wait %s, want 30s", n.AckWait)
	}
	if err := (BrokerConfig{NATS: &n}).Validate("b"); err != nil {
		t.Error(err)
	}
}

func TestParseScope(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Scope
		err  bool
	}{
		{"none", Scope{Kind: ScopeNone}, false},
		{"key", Scope{Kind: ScopeKey}, false},
		{"header:tenant", Scope{Kind: ScopeHeader, Arg: "tenant"}, false},
		{"literal:checkout:eu", Scope{Kind: ScopeLiteral, Arg: "checkout:eu"}, false},
		{"header:", Scope{}, true},
		{"key:x", Scope{}, true},
		{"tenant", Scope{}, true},
		{"", Scope{}, true},
	} {
		got, err := ParseScope(tc.in)
		if got != tc.want || (err != nil) != tc.err {
			t.Errorf("ParseScope(%q) = %+v, %v", tc.in, got, err)
		}
		if err == nil && got.String() != tc.in {
			t.Errorf("%q round-trips as %q", tc.in, got.String())
		}
	}
}
