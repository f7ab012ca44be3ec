package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/cluster"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/shard"
	"github.com/sluicehq/sluice/telemetry"
)

// Defaults of the settings this package owns.
const (
	DefaultAdminListen = "127.0.0.1:9400"
	DefaultStateDir    = "./.sluice"
)

// Config is the whole operator configuration of SPEC §5. Each section is
// the struct of the package that owns it; Load fills it in from files, the
// environment and flags, and checks it.
type Config struct {
	Account     dispatch.AccountConfig             `koanf:"account"`
	Admin       AdminConfig                        `koanf:"admin"`
	StateDir    string                             `koanf:"state_dir"`
	Brokers     map[string]consumer.BrokerConfig   `koanf:"brokers"`
	Functions   map[string]dispatch.FunctionConfig `koanf:"functions"`
	Rules       []dispatch.Rule                    `koanf:"rules"`
	Sources     map[string]consumer.SourceConfig   `koanf:"sources"`
	DeadLetters map[string]retention.Config        `koanf:"dead_letters"`
	Metrics     MetricsConfig                      `koanf:"metrics"`
	Tracing     telemetry.Config                   `koanf:"tracing"`
	// Cluster, when set, shares every limit with the other processes of
	// the same cluster name (package cluster); nil runs on its own.
	Cluster *cluster.Config `koanf:"cluster"`
}

// MetricsConfig is the /metrics exposition.
type MetricsConfig struct {
	// PerPartition adds sluice_partition_offset_lag and
	// sluice_partition_iterator_age_seconds, one series per source and
	// partition owned here (label partition): as many series as the
	// sources have partitions, so it is off by default.
	PerPartition bool `koanf:"per_partition"`
}

// AdminConfig is the admin HTTP API (SPEC §6).
type AdminConfig struct {
	// Listen is the API's host:port; default loopback. Without Tokens,
	// only a loopback address is accepted.
	Listen string        `koanf:"listen"`
	Tokens []TokenConfig `koanf:"tokens"`
	// The hardening of the listener (admin.go): HTTPS, accepted Host
	// names, time limits and the cap on open connections.
	TLS            *AdminTLS     `koanf:"tls"`
	Hosts          []string      `koanf:"hosts"`
	ReadTimeout    time.Duration `koanf:"read_timeout"`
	IdleTimeout    time.Duration `koanf:"idle_timeout"`
	MaxConnections int           `koanf:"max_connections"`
}

// Role is what a bearer token may do on the admin API: the admin
// package's one Role type, named here for the configuration's readers.
type Role = admin.Role

// The roles, each allowed everything the previous one is.
const (
	RoleRead   = admin.RoleRead   // GET only
	RoleInvoke = admin.RoleInvoke // also the invocation ingress
	RoleAdmin  = admin.RoleAdmin  // everything, including changing limits
)

// TokenConfig is one admin API token: a role and where its secret is kept,
// either a file (its content, trimmed) or an environment variable.
type TokenConfig struct {
	Role Role   `koanf:"role"`
	File string `koanf:"file"`
	Env  string `koanf:"env"`
}

// Secret reads the token's secret: the file's content without surrounding
// white space, or the environment variable's value.
func (t TokenConfig) Secret() (string, error) {
	s, err := t.secret()
	if err != nil {
		return "", fmt.Errorf("config: admin token: %w", err)
	}
	return s, nil
}

// secret is Secret with an error that describes the problem only, for
// Validate to prefix with the key.
func (t TokenConfig) secret() (string, error) {
	if t.File != "" {
		b, err := readSmallFile(t.File, maxTokenFileBytes)
		if err != nil {
			return "", err
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", fmt.Errorf("%s is empty", t.File)
		}
		return s, nil
	}
	s := strings.TrimSpace(os.Getenv(t.Env))
	if s == "" {
		return "", fmt.Errorf("%s is not set", t.Env)
	}
	return s, nil
}

// maxTokenFileBytes bounds what a token file may hold: a secret is a line,
// and a path to a device or a huge file must fail start-up, not hang it.
const maxTokenFileBytes = 64 << 10

// readSmallFile reads name with consumer.ReadSmallFile's bound; a file
// over limit is refused with a word on what it should hold.
func readSmallFile(name string, limit int64) ([]byte, error) {
	b, err := consumer.ReadSmallFile(name, limit)
	if limit == maxTokenFileBytes && errors.Is(err, consumer.ErrFileTooLarge) {
		return nil, fmt.Errorf("%w; a token file holds one secret", err)
	}
	return b, err
}

// Default returns the configuration of an empty file: account limits 1000
// and 100, the admin API on 127.0.0.1:9400, state in ./.sluice.
func Default() *Config {
	return &Config{
		Account: dispatch.AccountConfig{}.WithDefaults(),
		Admin: AdminConfig{Listen: DefaultAdminListen, ReadTimeout: DefaultAdminReadTimeout,
			IdleTimeout: DefaultAdminIdleTimeout, MaxConnections: DefaultAdminMaxConnections},
		StateDir: DefaultStateDir,
		Tracing:  telemetry.Config{SampleRatio: telemetry.DefaultSampleRatio}.WithDefaults(),
	}
}

// Dispatch returns the dispatcher's part of the configuration.
func (c *Config) Dispatch() dispatch.Config {
	return dispatch.Config{Account: c.Account, Functions: c.Functions, Rules: c.Rules}
}

// complete fills in what the file may leave out: the embedded NATS broker
// when there is no broker, and the broker of sources and dead-letter
// destinations when there is only one.
func (c *Config) complete() {
	if len(c.Brokers) == 0 {
		embedded := consumer.DefaultNATSConfig()
		c.Brokers = map[string]consumer.BrokerConfig{consumer.EmbeddedBroker: {NATS: &embedded}}
	}
	if len(c.Brokers) != 1 {
		return
	}
	var only string
	for name := range c.Brokers {
		only = name
	}
	for name, s := range c.Sources {
		if s.Broker == "" {
			s.Broker = only
			c.Sources[name] = s
		}
	}
	for name, dl := range c.DeadLetters {
		if dl.Broker == "" {
			dl.Broker = only
			c.DeadLetters[name] = dl
		}
	}
	if c.Cluster != nil && c.Cluster.Broker == "" {
		c.Cluster.Broker = only
	}
}

// Validate checks every section and the references between them, and
// returns an *Error listing every problem, or nil. Defaults must already be
// applied (Load does so): Validate judges the values as they will run.
func (c *Config) Validate() error {
	errs := []error{c.Dispatch().Validate()}
	errs = append(errs, c.validateAdmin()...)
	if c.StateDir == "" {
		errs = append(errs, problem("state_dir", "must not be empty (default %s)", DefaultStateDir))
	}
	errs = append(errs, c.validateFunctions()...)
	errs = append(errs, c.validateSecrets()...)
	errs = append(errs, c.validateBrokers()...)
	errs = append(errs, c.validateSources()...)
	errs = append(errs, c.validateDeadLetters()...)
	errs = append(errs, c.Tracing.Validate("tracing"))
	errs = append(errs, c.validateCluster()...)
	return newError(errs...)
}

func (c *Config) validateAdmin() []error {
	var errs []error
	host, _, err := net.SplitHostPort(c.Admin.Listen)
	if err != nil {
		errs = append(errs, problem("admin.listen", "%q is not host:port", c.Admin.Listen))
	} else if len(c.Admin.Tokens) == 0 && !loopback(host) && !c.Admin.TLS.requiresClientCert() {
		errs = append(errs, problem("admin.listen", "%s is not a loopback address; set admin.tokens to serve the admin API on it", c.Admin.Listen))
	}
	errs = append(errs, c.validateAdminHardening()...)
	secrets := map[string]int{}
	for i, t := range c.Admin.Tokens {
		key := fmt.Sprintf("admin.tokens[%d]", i)
		switch t.Role {
		case RoleRead, RoleInvoke, RoleAdmin:
		default:
			errs = append(errs, problem(key+".role", "%q is not one of read, invoke, admin", t.Role))
		}
		if (t.File == "") == (t.Env == "") {
			errs = append(errs, problem(key, "exactly one of file, env is required"))
			continue
		}
		source := key + ".file"
		if t.Env != "" {
			source = key + ".env"
		}
		s, err := t.secret()
		if err != nil {
			errs = append(errs, problem(source, "%v", err))
			continue
		}
		if j, dup := secrets[s]; dup {
			errs = append(errs, problem(key, "has the same secret as admin.tokens[%d]", j))
		}
		secrets[s] = i
	}
	return errs
}

func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (c *Config) validateFunctions() []error {
	var errs []error
	for _, name := range sortedKeys(c.Functions) {
		f, key := c.Functions[name], "functions."+name
		errs = append(errs, checkName(key, name))
		if f.URL == "" {
			errs = append(errs, problem(key+".url", "required (an http:// or https:// URL)"))
		} else if u, err := url.Parse(f.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			errs = append(errs, problem(key+".url", "%q is not an http:// or https:// URL", dispatch.RedactURL(f.URL)))
		}
		if f.Timeout == 0 {
			// dispatch accepts 0 as "unset"; here defaults are applied, so
			// a 0 was written by the operator.
			errs = append(errs, problem(key+".timeout", "0s is out of range (1ms..%s)", shard.FormatDuration(dispatch.MaxTimeout)))
		}
		if q := f.AsyncQueue; q != "" {
			queues := c.asyncSourcesOf(name)
			if s, ok := c.Sources[q]; !ok {
				errs = append(errs, problem(key+".async_queue", "undefined source %q (async sources of %s: %s)", q, name, list(queues)))
			} else if s.Mode != consumer.ModeAsync || s.Function != name {
				errs = append(errs, problem(key+".async_queue", "source %q is not an async source of function %s (async sources of %s: %s)", q, name, name, list(queues)))
			}
		}
	}
	return errs
}

func (c *Config) asyncSourcesOf(function string) []string {
	var out []string
	for _, name := range sortedKeys(c.Sources) {
		if s := c.Sources[name]; s.Mode == consumer.ModeAsync && s.Function == function {
			out = append(out, name)
		}
	}
	return out
}

func (c *Config) validateBrokers() []error {
	var errs []error
	embedded := ""
	for _, name := range sortedKeys(c.Brokers) {
		b, key := c.Brokers[name], "brokers."+name
		errs = append(errs, checkName(key, name), b.Validate(key))
		if b.Kafka == nil && b.NATS != nil && b.NATS.Embedded() {
			if embedded != "" {
				errs = append(errs, problem(key+".nats.url", "required: brokers.%s is already the embedded NATS (a nats broker without url)", embedded))
			}
			embedded = name
		}
	}
	return errs
}

func (c *Config) validateSources() []error {
	var errs []error
	for _, name := range sortedKeys(c.Sources) {
		s, key := c.Sources[name], "sources."+name
		errs = append(errs, checkName(key, name), s.Validate(key))
		if s.Function != "" {
			if _, ok := c.Functions[s.Function]; !ok {
				errs = append(errs, problem(key+".function", "undefined function %q (defined: %s)", s.Function, list(sortedKeys(c.Functions))))
			}
		}
		if s.OnFailure != "" {
			if _, ok := c.DeadLetters[s.OnFailure]; !ok {
				errs = append(errs, problem(key+".on_failure", "undefined dead-letter destination %q (defined: %s)", s.OnFailure, list(sortedKeys(c.DeadLetters))))
			}
		}
		errs = append(errs, c.checkBroker(key, s.Broker, s.Topic != "", s.Stream != ""))
	}
	return errs
}

func (c *Config) validateDeadLetters() []error {
	var errs []error
	for _, name := range sortedKeys(c.DeadLetters) {
		dl, key := c.DeadLetters[name], "dead_letters."+name
		errs = append(errs, checkName(key, name), dl.Validate(key))
		errs = append(errs, c.checkBroker(key, dl.Broker, dl.Topic != "", dl.Stream != ""))
	}
	return errs
}

// checkBroker checks that the broker a source or destination names exists
// and is of the kind its topic (Kafka) or stream (JetStream) asks for.
func (c *Config) checkBroker(key, broker string, topic, stream bool) error {
	if broker == "" {
		return problem(key+".broker", "required when several brokers are defined (defined: %s)", list(sortedKeys(c.Brokers)))
	}
	b, ok := c.Brokers[broker]
	switch {
	case !ok:
		return problem(key+".broker", "undefined broker %q (defined: %s)", broker, list(sortedKeys(c.Brokers)))
	case topic && !stream && b.Kafka == nil && b.NATS != nil:
		if c.impliedEmbedded(broker) {
			return problem(key+".topic", "no brokers are defined, so this uses the embedded NATS JetStream: use stream and subject, or define a Kafka broker under brokers")
		}
		return problem(key+".topic", "broker %q is NATS JetStream: use stream and subject", broker)
	case stream && !topic && b.NATS == nil && b.Kafka != nil:
		return problem(key+".stream", "broker %q is Kafka: use topic", broker)
	}
	return nil
}

// OnlyEmbedded reports whether the configuration's one broker is the
// embedded NATS that an empty brokers section implies.
func (c *Config) OnlyEmbedded() bool { return c.impliedEmbedded(consumer.EmbeddedBroker) }

func (c *Config) impliedEmbedded(broker string) bool {
	b := c.Brokers[broker]
	return broker == consumer.EmbeddedBroker && len(c.Brokers) == 1 && b.NATS != nil && b.NATS.Embedded()
}

// checkName keeps names usable where sluice puts them: metric labels,
// consumer group and durable names, URL paths, environment variable names.
func checkName(key, name string) error {
	if name == "" || strings.Trim(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-") != "" {
		return problem(key, "%q is not a valid name (letters, digits, \"_\" and \"-\")", name)
	}
	return nil
}

func list(names []string) string {
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, ", ")
}

// Tokens resolves the admin tokens' secrets, for the admin API.
func (c *Config) Tokens() (map[string]Role, error) {
	out := make(map[string]Role, len(c.Admin.Tokens))
	var errs []error
	for _, t := range c.Admin.Tokens {
		s, err := t.Secret()
		if err != nil {
			errs = append(errs, err)
			continue
		}
		out[s] = t.Role
	}
	return out, errors.Join(errs...)
}
