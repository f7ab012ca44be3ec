package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/shard"
)

// specDir copies the SPEC §5 sketches into a fresh directory with the admin
// token file they reference, sets the token variable they reference, and
// returns the directory.
func specDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range []string{"spec.yaml", "spec.toml"} {
		b, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		write(t, dir, name, string(b))
	}
	write(t, dir, "admin.token", "s3cret-admin\n")
	t.Setenv("SLUICE_READ_TOKEN", "s3cret-read")
	return dir
}

func write(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func load(t *testing.T, files []string, args ...string) *config.Config {
	t.Helper()
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	config.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	c, err := config.Load(files, fs)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return c
}

func TestLoadSpecSketchYAML(t *testing.T) {
	dir := specDir(t)
	c := load(t, []string{filepath.Join(dir, "spec.yaml")})

	if want := (dispatch.AccountConfig{Concurrency: 1000, MinUnreserved: 100}); c.Account != want {
		t.Errorf("account = %+v, want %+v", c.Account, want)
	}
	wantAdmin := config.AdminConfig{Listen: "127.0.0.1:9400", Tokens: []config.TokenConfig{
		{Role: config.RoleAdmin, File: filepath.Join(dir, "admin.token")}, // relative to the file
		{Role: config.RoleRead, Env: "SLUICE_READ_TOKEN"},
	}, ReadTimeout: config.DefaultAdminReadTimeout, IdleTimeout: config.DefaultAdminIdleTimeout, MaxConnections: config.DefaultAdminMaxConnections}
	if !reflect.DeepEqual(c.Admin, wantAdmin) {
		t.Errorf("admin = %+v, want %+v", c.Admin, wantAdmin)
	}
	tokens, err := c.Tokens()
	if err != nil || !reflect.DeepEqual(tokens, map[string]config.Role{"s3cret-admin": "admin", "s3cret-read": "read"}) {
		t.Errorf("Tokens() = %v, %v", tokens, err)
	}
	if want := filepath.Join(dir, ".sluice"); c.StateDir != want {
		t.Errorf("state_dir = %q, want %q", c.StateDir, want)
	}
	fifty := 50
	wantFn := map[string]dispatch.FunctionConfig{"thumbnail": {
		URL: "http://127.0.0.1:8080/invoke", Timeout: 30 * time.Second, ReservedConcurrency: &fifty, AsyncQueue: "signups",
	}}
	if !reflect.DeepEqual(c.Functions, wantFn) {
		t.Errorf("functions = %+v, want %+v", c.Functions, wantFn)
	}
	wantRules := []dispatch.Rule{{Pattern: "*", Concurrency: 100, Description: "per-tenant default"}, {Pattern: "checkout", Concurrency: 5}}
	if !reflect.DeepEqual(c.Rules, wantRules) {
		t.Errorf("rules = %+v, want %+v", c.Rules, wantRules)
	}
	wantBrokers := map[string]consumer.BrokerConfig{
		"main": {Kafka: &consumer.KafkaConfig{Seeds: []string{"127.0.0.1:9092"}, ClientID: "sluice", SessionTimeout: 45 * time.Second}},
		"bus":  {NATS: &consumer.NATSConfig{URL: "nats://127.0.0.1:4222", AckWait: 30 * time.Second}},
	}
	if !reflect.DeepEqual(c.Brokers, wantBrokers) {
		t.Errorf("brokers = %+v, want %+v", c.Brokers, wantBrokers)
	}

	orders := consumer.DefaultSourceConfig(consumer.ModeStream)
	orders.Broker, orders.Topic, orders.Function, orders.OnFailure = "main", "orders", "thumbnail", "dead"
	orders.Scope = consumer.Scope{Kind: consumer.ScopeHeader, Arg: "tenant"}
	orders.MaxRecordAge = shard.Age(time.Hour)
	orders.BisectBatchOnError = true
	clicks := consumer.DefaultSourceConfig(consumer.ModeStream)
	clicks.Broker, clicks.Stream, clicks.Subject, clicks.Partitions, clicks.Function = "bus", "CLICKS", "clicks.*", 8, "thumbnail"
	signups := consumer.DefaultSourceConfig(consumer.ModeAsync)
	signups.Broker, signups.Stream, signups.Subject, signups.Function, signups.OnFailure = "bus", "SIGNUPS", "signups.>", "thumbnail", "dead"
	wantSources := map[string]consumer.SourceConfig{"orders": orders, "clicks": clicks, "signups": signups}
	if !reflect.DeepEqual(c.Sources, wantSources) {
		t.Errorf("sources =\n%+v\nwant\n%+v", c.Sources, wantSources)
	}
	// The defaults the sketch leaves out, spelled out once.
	if o := c.Sources["orders"]; o.MaxBatchBytes != 6*shard.MiB || o.ParallelizationFactor != 1 || o.MaxRetryAttempts != -1 ||
		o.StartingPosition != consumer.TrimHorizon || o.BatchingWindow != 0 || o.RetryBackoff != (consumer.Backoff{Initial: time.Second, Max: 5 * time.Minute, Multiplier: 2, Jitter: 0.2}) {
		t.Errorf("orders defaults = %+v", o)
	}
	if s := c.Sources["signups"]; s.MaxRetryAttempts != 2 || s.MaxEventAge != 6*time.Hour || s.BatchSize != 0 || s.MaxRecordAge != 0 {
		t.Errorf("signups defaults = %+v", s)
	}

	wantDL := map[string]retention.Config{
		"dead":     {Broker: "main", Topic: "sluice.dead-letters", Retention: shard.Age(336 * time.Hour)},
		"dead-bus": {Broker: "bus", Stream: "DEAD", Subject: "sluice.dead.>", Retention: shard.Age(336 * time.Hour), MaxBytes: shard.GiB},
	}
	if !reflect.DeepEqual(c.DeadLetters, wantDL) {
		t.Errorf("dead_letters = %+v, want %+v", c.DeadLetters, wantDL)
	}
}

func TestLoadSpecSketchTOMLMatchesYAML(t *testing.T) {
	dir := specDir(t)
	fromYAML := load(t, []string{filepath.Join(dir, "spec.yaml")})
	fromTOML := load(t, []string{filepath.Join(dir, "spec.toml")})
	if !reflect.DeepEqual(fromYAML, fromTOML) {
		t.Errorf("TOML and YAML differ:\nyaml %+v\ntoml %+v", fromYAML, fromTOML)
	}
}

func TestLoadEnvironmentOverrides(t *testing.T) {
	dir := specDir(t)
	t.Setenv("SLUICE_ACCOUNT__CONCURRENCY", "500")
	t.Setenv("SLUICE_ACCOUNT__MIN_UNRESERVED", "50")
	t.Setenv("SLUICE_SOURCES__ORDERS__BATCH_SIZE", "200")
	t.Setenv("SLUICE_SOURCES__ORDERS__RETRY_BACKOFF__MAX", "1m")
	t.Setenv("SLUICE_BROKERS__MAIN__KAFKA__SEEDS", "k1:9092, k2:9092")
	t.Setenv("SLUICE_DEAD_LETTERS__DEAD_BUS__RETENTION", "-1") // reaches dead-bus
	t.Setenv("SLUICE_STATE_DIR", "/var/lib/sluice")
	t.Setenv("SLUICE_TEST_SOMETHING_ELSE", "ignored") // not a key: left alone

	c := load(t, []string{filepath.Join(dir, "spec.yaml")})
	if c.Account.Concurrency != 500 || c.Account.MinUnreserved != 50 {
		t.Errorf("account = %+v", c.Account)
	}
	if o := c.Sources["orders"]; o.BatchSize != 200 || o.RetryBackoff.Max != time.Minute || o.RetryBackoff.Initial != time.Second {
		t.Errorf("orders = %+v", o)
	}
	if got := c.Brokers["main"].Kafka.Seeds; !reflect.DeepEqual(got, []string{"k1:9092", "k2:9092"}) {
		t.Errorf("seeds = %q", got)
	}
	if got := c.DeadLetters["dead-bus"].Retention; got != shard.Infinite {
		t.Errorf("dead-bus retention = %v", got)
	}
	if c.StateDir != "/var/lib/sluice" {
		t.Errorf("state_dir = %q", c.StateDir)
	}
}

func TestLoadFlagOverrides(t *testing.T) {
	dir := specDir(t)
	t.Setenv("SLUICE_SOURCES__ORDERS__BATCH_SIZE", "200")
	t.Setenv("SLUICE_STATE_DIR", "/from/env")
	c := load(t, []string{filepath.Join(dir, "spec.yaml")},
		"--set", "sources.orders.batch_size=300", // wins over the environment
		"--set", "functions.thumbnail.reserved_concurrency=10",
		"--state-dir", "/from/flag",
		"--admin-listen", "127.0.0.1:9500",
	)
	if got := c.Sources["orders"].BatchSize; got != 300 {
		t.Errorf("batch_size = %d, want 300", got)
	}
	if got := *c.Functions["thumbnail"].ReservedConcurrency; got != 10 {
		t.Errorf("reserved_concurrency = %d, want 10", got)
	}
	if c.StateDir != "/from/flag" || c.Admin.Listen != "127.0.0.1:9500" {
		t.Errorf("state_dir = %q, admin.listen = %q", c.StateDir, c.Admin.Listen)
	}
	// Flags not given leave the file's values alone.
	c = load(t, []string{filepath.Join(dir, "spec.yaml")})
	if c.Admin.Listen != "127.0.0.1:9400" {
		t.Errorf("admin.listen = %q", c.Admin.Listen)
	}
}

func TestLoadDefaultsAndEmbeddedBroker(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "sluice.yaml", `
functions:
  fn: {url: "http://127.0.0.1:8080/"}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 4, function: fn}
  signups: {stream: SIGNUPS, subject: "signups.>", mode: async, function: fn, max_event_age: 1h}
dead_letters:
  dead: {stream: DEAD, subject: "dead.>"}
`)
	c := load(t, []string{path})
	want := config.Default()
	if c.Account != want.Account || c.Admin.Listen != want.Admin.Listen || c.StateDir != "./.sluice" || c.Admin.Tokens != nil {
		t.Errorf("defaults: %+v", c)
	}
	if want := (map[string]consumer.BrokerConfig{"embedded": {NATS: &consumer.NATSConfig{AckWait: 30 * time.Second}}}); !reflect.DeepEqual(c.Brokers, want) {
		t.Errorf("brokers = %+v, want the embedded NATS", c.Brokers)
	}
	if c.Functions["fn"].Timeout != dispatch.DefaultTimeout || c.Functions["fn"].ReservedConcurrency != nil {
		t.Errorf("function defaults = %+v", c.Functions["fn"])
	}
	clicks := consumer.DefaultSourceConfig(consumer.ModeStream)
	clicks.Broker, clicks.Stream, clicks.Subject, clicks.Partitions, clicks.Function = "embedded", "CLICKS", "clicks.*", 4, "fn"
	if !reflect.DeepEqual(c.Sources["clicks"], clicks) {
		t.Errorf("clicks = %+v, want %+v", c.Sources["clicks"], clicks)
	}
	if s := c.Sources["signups"]; s.Broker != "embedded" || s.MaxEventAge != time.Hour || s.MaxRetryAttempts != 2 {
		t.Errorf("signups = %+v", s)
	}
	if d := c.DeadLetters["dead"]; d.Broker != "embedded" || d.Retention != retention.DefaultRetention || d.MaxBytes != 0 {
		t.Errorf("dead = %+v", d)
	}

	// An empty file is a valid configuration.
	c = load(t, []string{write(t, dir, "empty.yaml", "")})
	if len(c.Sources) != 0 || len(c.Brokers) != 1 {
		t.Errorf("empty config = %+v", c)
	}
}

// base is a small valid configuration that the bad cases below overlay.
const base = `
functions:
  thumbnail: {url: "http://127.0.0.1:8080/invoke"}
brokers:
  main: {kafka: {seeds: ["127.0.0.1:9092"]}}
sources:
  orders: {topic: orders, function: thumbnail}
`

const sourceKeys = "batch_size, batching_window, bisect_batch_on_error, broker, commit_pipeline_depth, function, max_batch_bytes, max_event_age, max_record_age, max_retry_attempts, mode, on_failure, parallelization_factor, partitions, report_batch_item_failures, retry_backoff, scope, starting_position, starting_timestamp, stream, subject, topic"

func TestLoadBadConfigurations(t *testing.T) {
	for _, tc := range []struct {
		name    string
		overlay string // YAML loaded over base, from a second file
		noBase  bool   // the overlay is the whole configuration
		file    string // overlay file name; default overlay.yaml
		want    string // the exact error; {file} is the overlay's path
	}{
		{
			name:    "unknown top-level key",
			overlay: "sourcess: {}",
			want:    "sourcess: unknown key; did you mean sources? (allowed: account, admin, brokers, cluster, dead_letters, functions, metrics, rules, sources, state_dir, tracing)",
		},
		{
			name:    "tracing endpoint not a URL",
			overlay: "tracing: {otlp_endpoint: \"collector:4318\"}",
			want:    `tracing.otlp_endpoint: "collector:4318" is not an http:// or https:// URL (an OTLP/HTTP receiver, e.g. http://localhost:4318)`,
		},
		{
			name:    "tracing sample ratio out of range",
			overlay: "tracing: {otlp_endpoint: \"http://127.0.0.1:4318\", sample_ratio: 1.5}",
			want:    "tracing.sample_ratio: 1.5 is out of range (0..1)",
		},
		{
			name:    "unknown tracing key",
			overlay: "tracing: {endpoint: \"http://127.0.0.1:4318\"}",
			want:    "tracing.endpoint: unknown key (allowed: otlp_endpoint, sample_ratio, service_name)",
		},
		{
			name:    "per_partition not a boolean",
			overlay: "metrics: {per_partition: maybe}",
			want:    `metrics.per_partition: expected true or false, got "maybe"`,
		},
		{
			name:    "unknown nested key with a typo",
			overlay: "sources: {orders: {batchsize: 10}}",
			want:    "sources.orders.batchsize: unknown key; did you mean batch_size? (allowed: " + sourceKeys + ")",
		},
		{
			name:    "unknown key far from any",
			overlay: "brokers: {main: {kafka: {kerberos: on}}}",
			want:    "brokers.main.kafka.kerberos: unknown key (allowed: client_id, sasl, seeds, session_timeout, tls)",
		},
		{
			name:    "session_timeout 1s",
			overlay: "brokers: {main: {kafka: {session_timeout: 1s}}}",
			want:    "brokers.main.kafka.session_timeout: 1s is out of range (6s..300s)",
		},
		{
			name:    "ack_wait 2s on the embedded NATS",
			overlay: "brokers: {bus: {nats: {ack_wait: 2s}}}",
			noBase:  true,
			want:    "brokers.bus.nats.ack_wait: 2s is out of range (5s..1h)",
		},
		{
			name:    "batch_size 0",
			overlay: "sources: {orders: {batch_size: 0}}",
			want:    "sources.orders.batch_size: 0 is out of range (1..10000)",
		},
		{
			name:    "batch_size 10001",
			overlay: "sources: {orders: {batch_size: 10001}}",
			want:    "sources.orders.batch_size: 10001 is out of range (1..10000)",
		},
		{
			name:    "batch_size not a number",
			overlay: "sources: {orders: {batch_size: lots}}",
			want:    `sources.orders.batch_size: expected an integer, got "lots"`,
		},
		{
			name:    "max_record_age 30s",
			overlay: "sources: {orders: {max_record_age: 30s}}",
			want:    "sources.orders.max_record_age: 30s is out of range (-1 or 60s..168h)",
		},
		{
			name:    "max_retry_attempts -2",
			overlay: "sources: {orders: {max_retry_attempts: -2}}",
			want:    "sources.orders.max_retry_attempts: -2 is out of range (-1 or 0..10000)",
		},
		{
			name:    "async max_retry_attempts 11",
			overlay: "sources: {orders: {mode: async, max_retry_attempts: 11}}",
			want:    "sources.orders.max_retry_attempts: 11 is out of range (0..10)",
		},
		{
			name:    "parallelization_factor 11",
			overlay: "sources: {orders: {parallelization_factor: 11}}",
			want:    "sources.orders.parallelization_factor: 11 is out of range (1..10)",
		},
		{
			name:    "bad mode",
			overlay: "sources: {orders: {mode: streem}}",
			want:    `sources.orders.mode: "streem" is not one of stream, async`,
		},
		{
			name:    "bad starting_position",
			overlay: "sources: {orders: {starting_position: oldest}}",
			want:    `sources.orders.starting_position: "oldest" is not one of trim_horizon, latest, at_timestamp`,
		},
		{
			name:    "at_timestamp without starting_timestamp",
			overlay: "sources: {orders: {starting_position: at_timestamp}}",
			want:    `sources.orders.starting_timestamp: required with starting_position at_timestamp (RFC 3339, e.g. "2024-05-01T00:00:00Z")`,
		},
		{
			name:    "undefined function",
			overlay: "sources: {orders: {function: thumbnial}}",
			want:    `sources.orders.function: undefined function "thumbnial" (defined: thumbnail)`,
		},
		{
			name:    "undefined broker",
			overlay: "sources: {orders: {broker: mian}}",
			want:    `sources.orders.broker: undefined broker "mian" (defined: main)`,
		},
		{
			name:    "two brokers and a source without broker",
			overlay: "brokers: {bus: {nats: {url: nats://127.0.0.1:4222}}}",
			want:    "sources.orders.broker: required when several brokers are defined (defined: bus, main)",
		},
		{
			name:    "undefined on_failure",
			overlay: "sources: {orders: {on_failure: ded}}\ndead_letters: {dead: {topic: dead}}",
			want:    `sources.orders.on_failure: undefined dead-letter destination "ded" (defined: dead)`,
		},
		{
			name:    "reservation over the account limit",
			overlay: "functions: {thumbnail: {reserved_concurrency: 2000}}",
			want:    "functions.thumbnail.reserved_concurrency: 2000 is out of range (0..account.concurrency, 1000)",
		},
		{
			name:    "reservations under min_unreserved",
			overlay: "functions: {thumbnail: {reserved_concurrency: 600}, resize: {url: 'http://127.0.0.1:8081/', reserved_concurrency: 350}}",
			want:    "functions: reservations total 950 and would leave the unreserved pool at 50, under account.min_unreserved (100)",
		},
		{
			name:    "duplicate rule pattern",
			overlay: "rules: [{pattern: checkout, concurrency: 5}, {pattern: checkout, concurrency: 6}]",
			want:    `rules[1].pattern: "checkout" repeats rules[0]`,
		},
		{
			name:    "rule with negative concurrency",
			overlay: "rules: [{pattern: '*', concurrency: -1}]",
			want:    "rules[0].concurrency: -1 is out of range (0 or more)",
		},
		{
			name:    "bad scope spec",
			overlay: "sources: {orders: {scope: tenant}}",
			want:    `sources.orders.scope: "tenant" is not one of none, key, header:<name>, literal:<value>`,
		},
		{
			name:    "header scope without a name",
			overlay: "sources: {orders: {scope: 'header:'}}",
			want:    `sources.orders.scope: "header:" is not one of none, key, header:<name>, literal:<value>`,
		},
		{
			name:    "async-only key on a stream source",
			overlay: "sources: {orders: {max_event_age: 1h}}",
			want:    "sources.orders.max_event_age: not allowed with mode stream (async-only key)",
		},
		{
			name:    "stream-only key on an async source",
			overlay: "sources: {orders: {mode: async, bisect_batch_on_error: true}}",
			want:    "sources.orders.bisect_batch_on_error: not allowed with mode async (stream-only key)",
		},
		{
			name:    "bad duration syntax",
			overlay: "sources: {orders: {batching_window: 5 minutes}}",
			want:    `sources.orders.batching_window: "5 minutes" is not a duration (Go syntax, e.g. "90s", "1h30m")`,
		},
		{
			name:    "duration without a unit",
			overlay: "functions: {thumbnail: {timeout: 30}}",
			want:    `functions.thumbnail.timeout: 30 is not a duration (write a unit, e.g. "30s")`,
		},
		{
			name:    "bad size syntax",
			overlay: "sources: {orders: {max_batch_bytes: 6 MiBs}}",
			want:    `sources.orders.max_batch_bytes: "6 MiBs" is not a size (an integer with an optional unit: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)`,
		},
		{
			name:    "broker with both kafka and nats",
			overlay: "brokers: {main: {nats: {url: nats://127.0.0.1:4222}}}",
			want:    "brokers.main: both kafka and nats are set (exactly one of kafka, nats is allowed)",
		},
		{
			name:    "admin token with a bad role",
			overlay: "admin: {tokens: [{role: root, file: admin.token}]}",
			want:    `admin.tokens[0].role: "root" is not one of read, invoke, admin`,
		},
		{
			name:    "admin token with both file and env",
			overlay: "admin: {tokens: [{role: read, file: admin.token, env: SLUICE_X}]}",
			want:    "admin.tokens[0]: exactly one of file, env is required",
		},
		{
			name:    "admin API off loopback without tokens",
			overlay: "admin: {listen: '0.0.0.0:9400'}",
			want:    "admin.listen: 0.0.0.0:9400 is not a loopback address; set admin.tokens to serve the admin API on it",
		},
		{
			name:    "async_queue naming a stream source",
			overlay: "functions: {thumbnail: {async_queue: orders}}",
			want:    `functions.thumbnail.async_queue: source "orders" is not an async source of function thumbnail (async sources of thumbnail: none)`,
		},
		{
			name:    "Kafka topic on the embedded NATS",
			noBase:  true,
			overlay: "functions: {fn: {url: 'http://127.0.0.1:8080/'}}\nsources: {orders: {topic: orders, function: fn}}",
			want:    "sources.orders.topic: no brokers are defined, so this uses the embedded NATS JetStream: use stream and subject, or define a Kafka broker under brokers",
		},
		{
			name:    "stream-mode subject without a key token",
			noBase:  true,
			overlay: "functions: {fn: {url: 'http://127.0.0.1:8080/'}}\nsources: {clicks: {stream: CLICKS, subject: 'clicks.>', partitions: 8, function: fn}}",
			want:    `sources.clicks.subject: "clicks.>" must have exactly one "*" token in stream mode, the record key (e.g. "clicks.*")`,
		},
		{
			name:    "kafka seed without a port",
			overlay: "brokers: {main: {kafka: {seeds: [kafka1]}}}",
			want:    `brokers.main.kafka.seeds[0]: "kafka1" is not host:port`,
		},
		{
			name:    "dead-letter retention too short",
			overlay: "dead_letters: {dead: {topic: dead, retention: 30s}}",
			want:    "dead_letters.dead.retention: 30s is out of range (-1 or 1m or more)",
		},
		{
			name:    "every problem at once, sorted by key",
			overlay: "sources: {orders: {batch_size: 0, max_record_age: 30s, function: nope, scope: tenant}}\naccount: {concurrency: 0}",
			want: strings.Join([]string{
				"account.concurrency: 0 is out of range (1 or more)",
				`sources.orders.batch_size: 0 is out of range (1..10000)`,
				`sources.orders.function: undefined function "nope" (defined: thumbnail)`,
				`sources.orders.max_record_age: 30s is out of range (-1 or 60s..168h)`,
				`sources.orders.scope: "tenant" is not one of none, key, header:<name>, literal:<value>`,
			}, "\n"),
		},
		{
			name:    "YAML syntax error",
			overlay: "sources:\n  orders:\n    batch_size: 100\n    topic: orders: x\n",
			want:    "{file}:4: mapping values are not allowed in this context",
		},
		{
			name:    "YAML key defined twice",
			overlay: "sources:\n  orders: {batch_size: 100}\n  orders: {batch_size: 200}\n",
			want:    `{file}:3: mapping key "orders" already defined at line 2`,
		},
		{
			name:    "TOML syntax error",
			file:    "overlay.toml",
			overlay: "[sources.orders]\nbatch_size = 100\ntopic = \"orders\n",
			want:    "{file}:3:16: basic strings cannot have new lines",
		},
		{
			name:    "TOML key defined twice",
			file:    "overlay.toml",
			overlay: "[sources.orders]\nbatch_size = 100\nbatch_size = 200\n",
			want:    "{file}: key batch_size is already defined",
		},
		{
			name:    "unknown file type",
			file:    "overlay.ini",
			overlay: "[sources]",
			want:    `{file}: unknown file type ".ini" (use .yaml, .yml, .json or .toml)`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			write(t, dir, "admin.token", "secret")
			name := tc.file
			if name == "" {
				name = "overlay.yaml"
			}
			overlay := write(t, dir, name, tc.overlay)
			files := []string{overlay}
			if !tc.noBase {
				files = []string{write(t, dir, "base.yaml", base), overlay}
			}
			c, err := config.Load(files, nil)
			if err == nil {
				t.Fatalf("Load succeeded: %+v", c)
			}
			if c != nil {
				t.Errorf("Load returned a config with its error")
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Errorf("error does not match config.ErrInvalid: %v", err)
			}
			if want := strings.ReplaceAll(tc.want, "{file}", overlay); err.Error() != want {
				t.Errorf("error:\n got: %s\nwant: %s", err, want)
			}
		})
	}
}

// TestLoadFailoverSettings: session_timeout and ack_wait reach the broker
// configs, from a file or from --set.
func TestLoadFailoverSettings(t *testing.T) {
	dir := t.TempDir()
	f := write(t, dir, "sluice.yaml", `
brokers:
  main: {kafka: {seeds: ["127.0.0.1:9092"], session_timeout: 10s}}
  bus: {nats: {url: "nats://127.0.0.1:4222", ack_wait: 1m}}
`)
	c := load(t, []string{f}, "--set", "brokers.bus.nats.ack_wait=12s")
	if got := c.Brokers["main"].Kafka.SessionTimeout; got != 10*time.Second {
		t.Errorf("brokers.main.kafka.session_timeout = %s, want 10s", got)
	}
	if got := c.Brokers["bus"].NATS.AckWait; got != 12*time.Second {
		t.Errorf("brokers.bus.nats.ack_wait = %s, want 12s (from --set)", got)
	}
}

func TestLoadBadOverrides(t *testing.T) {
	dir := t.TempDir()
	path := write(t, dir, "sluice.yaml", base+"rules: [{pattern: '*', concurrency: 10}]\n")
	t.Setenv("SLUICE_SOURCES__ORDERS__BATCHSIZE", "5")
	t.Setenv("SLUICE_ACCOUNT_CONCURRENCY", "5")
	t.Setenv("SLUICE_RULES__0__CONCURRENCY", "5")
	t.Setenv("SLUICE_ADMIN_TOKEN", "a token for some client, not a key")

	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	config.RegisterFlags(fs)
	if err := fs.Parse([]string{"--set", "sources.orders.parallelization_factor=ten", "--set", "nonsense"}); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load([]string{path}, fs)
	want := strings.Join([]string{
		`--set nonsense: want key=value, e.g. --set sources.orders.batch_size=200`,
		`SLUICE_ACCOUNT_CONCURRENCY: not a configuration key; levels are separated by two underscores (did you mean SLUICE_ACCOUNT__CONCURRENCY?)`,
		`SLUICE_RULES__0__CONCURRENCY: rules is a list; its items can only be set in a file (a running sluice changes a rule with ` + "`sluice rules set PATTERN --concurrency N`" + `)`,
		`sources.orders.batchsize: unknown key (set by SLUICE_SOURCES__ORDERS__BATCHSIZE); did you mean batch_size? (allowed: ` + sourceKeys + `)`,
		`sources.orders.parallelization_factor: expected an integer, got "ten" (set by --set sources.orders.parallelization_factor)`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("error:\n got: %v\nwant: %s", err, want)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := config.Load([]string{path}, nil)
	if !errors.Is(err, config.ErrInvalid) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error = %v, want ErrInvalid and ErrNotExist", err)
	}
	if want := "open " + path + ": no such file or directory"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}
}

func TestLoadTokenSecrets(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "empty.token", "  \n")
	path := write(t, dir, "sluice.yaml", `
admin:
  tokens:
    - {role: admin, file: missing.token}
    - {role: admin, file: empty.token}
    - {role: read, env: SLUICE_TEST_UNSET_TOKEN}
    - {role: read, file: huge.token}
    - {role: read, file: /dev/zero}
`)
	write(t, dir, "huge.token", strings.Repeat("x", 64<<10+1))
	_, err := config.Load([]string{path}, nil)
	want := strings.Join([]string{
		"admin.tokens[0].file: open " + filepath.Join(dir, "missing.token") + ": no such file or directory",
		"admin.tokens[1].file: " + filepath.Join(dir, "empty.token") + " is empty",
		"admin.tokens[2].env: SLUICE_TEST_UNSET_TOKEN is not set",
		"admin.tokens[3].file: " + filepath.Join(dir, "huge.token") + " is larger than 65536 bytes; a token file holds one secret",
		"admin.tokens[4].file: /dev/zero is larger than 65536 bytes; a token file holds one secret",
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("error:\n got: %v\nwant: %s", err, want)
	}
}

func TestErrorMatchesDomainSentinels(t *testing.T) {
	dir := t.TempDir()
	files := []string{write(t, dir, "base.yaml", base), write(t, dir, "overlay.yaml", "sources: {orders: {batch_size: 0}}")}
	_, err := config.Load(files, nil)
	var cerr *config.Error
	if !errors.As(err, &cerr) || len(cerr.Problems) != 1 {
		t.Fatalf("error = %v, want one problem", err)
	}
	if !errors.Is(err, consumer.ErrInvalid) || !errors.Is(err, config.ErrInvalid) {
		t.Errorf("error should match consumer.ErrInvalid and config.ErrInvalid")
	}
	if got := cerr.Problems[0].Error(); got != "invalid configuration: sources.orders.batch_size: 0 is out of range (1..10000)" {
		t.Errorf("problem = %q", got)
	}
}

func TestLoadStartingTimestamp(t *testing.T) {
	dir := t.TempDir()
	want := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	for name, content := range map[string]string{
		"native.yaml": "sources: {orders: {starting_position: at_timestamp, starting_timestamp: 2024-05-01T12:00:00Z}}",
		"quoted.yaml": `sources: {orders: {starting_position: at_timestamp, starting_timestamp: "2024-05-01T14:00:00+02:00"}}`,
		"native.toml": "[sources.orders]\nstarting_position = \"at_timestamp\"\nstarting_timestamp = 2024-05-01T12:00:00Z\n",
	} {
		c, err := config.Load([]string{write(t, dir, "base.yaml", base), write(t, dir, name, content)}, nil)
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if got := c.Sources["orders"].StartingTimestamp; !got.Equal(want) {
			t.Errorf("%s: starting_timestamp = %v, want %v", name, got, want)
		}
	}
	_, err := config.Load([]string{write(t, dir, "base.yaml", base), write(t, dir, "bad.yaml", "sources: {orders: {starting_position: at_timestamp, starting_timestamp: yesterday}}")}, nil)
	if want := `sources.orders.starting_timestamp: "yesterday" is not an RFC 3339 timestamp (e.g. "2024-05-01T00:00:00Z")`; err == nil || err.Error() != want {
		t.Errorf("error = %v, want %s", err, want)
	}
}

func TestYAMLRoundTrips(t *testing.T) {
	dir := specDir(t)
	t.Setenv("SLUICE_SOURCES__CLICKS__MAX_BATCH_BYTES", "512KB")
	c := load(t, []string{filepath.Join(dir, "spec.yaml")}, "--set", "functions.thumbnail.reserved_concurrency=0")
	b, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range []string{"    max_batch_bytes: 512KB\n", "    max_record_age: \"-1\"\n", "    scope: header:tenant\n", "    reserved_concurrency: 0\n", "  retention: 336h\n"} {
		if !strings.Contains(string(b), line) {
			t.Errorf("YAML lacks %q:\n%s", line, b)
		}
	}
	again := load(t, []string{write(t, t.TempDir(), "shown.yaml", string(b))})
	if !reflect.DeepEqual(c, again) {
		t.Errorf("round trip differs:\n%s\nfirst  %+v\nsecond %+v", b, c, again)
	}
}
