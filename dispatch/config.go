package dispatch

import (
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// ErrInvalid is wrapped by every configuration error of this package, so that
// callers (the config loader, the admin API) can tell a bad request from a
// failure.
var ErrInvalid = errors.New("invalid configuration")

// Defaults of SPEC §1 and §3.
const (
	DefaultAccountConcurrency = 1000
	DefaultMinUnreserved      = 100
	DefaultTimeout            = 30 * time.Second
	MaxTimeout                = 15 * time.Minute
	// MaxRules bounds the rule book (the file's rules and the API's
	// together): each rule costs memory in the limiter and a line in
	// state_dir, and a book that grows without bound is an attack.
	MaxRules = 10000
)

// AccountConfig is the deployment-wide limit.
type AccountConfig struct {
	// Concurrency is the account limit: at most this many invocations run at once.
	Concurrency int `koanf:"concurrency"`
	// MinUnreserved is the floor of the unreserved pool that reservations may
	// not eat into.
	MinUnreserved int `koanf:"min_unreserved"`
}

// FunctionConfig describes one function.
type FunctionConfig struct {
	URL     string        `koanf:"url"`
	Timeout time.Duration `koanf:"timeout"`
	// ReservedConcurrency is the function's own slice of the account limit, its
	// guarantee and its ceiling. Nil means no reservation: the function shares
	// the unreserved pool. Zero throttles every invocation.
	ReservedConcurrency *int `koanf:"reserved_concurrency"`
	// AsyncQueue names the async source that direct asynchronous invocations
	// of this function are appended to.
	AsyncQueue string `koanf:"async_queue"`
	// Headers are sent with every request to the function (secure.go):
	// header name → where its value comes from.
	Headers map[string]HeaderValue `koanf:"headers"`
	// TLS is how an https function is reached: a private CA, a client
	// certificate (mutual TLS), a server name (secure.go).
	TLS *FunctionTLS `koanf:"tls"`
}

// Rule limits the concurrency of invocations whose scope matches Pattern.
// Pattern "*" gives each scope its own budget of Concurrency; it is never a
// pool shared by all scopes. An exact pattern wins over "*".
type Rule struct {
	Pattern     string `koanf:"pattern" json:"pattern"`
	Concurrency int    `koanf:"concurrency" json:"concurrency"`
	Description string `koanf:"description" json:"description,omitempty"`
	// Disabled rules are kept but skipped when matching: a scope whose exact
	// rule is disabled falls back to "*" (if any), otherwise it is unlimited.
	Disabled bool `koanf:"disabled" json:"disabled,omitempty"`
}

// Config is everything the dispatcher needs from the operator.
type Config struct {
	Account   AccountConfig
	Functions map[string]FunctionConfig
	Rules     []Rule
}

// WithDefaults returns c with zero values replaced by the defaults.
func (c AccountConfig) WithDefaults() AccountConfig {
	if c.Concurrency == 0 {
		c.Concurrency = DefaultAccountConcurrency
	}
	if c.MinUnreserved == 0 {
		c.MinUnreserved = DefaultMinUnreserved
	}
	return c
}

// Validate checks the account limits.
func (c AccountConfig) Validate() error {
	var errs []error
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("%w: account.concurrency: %d is out of range (1 or more)", ErrInvalid, c.Concurrency))
	}
	if c.Concurrency >= 1 && (c.MinUnreserved < 0 || c.MinUnreserved > c.Concurrency) {
		errs = append(errs, fmt.Errorf("%w: account.min_unreserved: %d is out of range (0..account.concurrency, %d)", ErrInvalid, c.MinUnreserved, c.Concurrency))
	}
	return errors.Join(errs...)
}

// Validate checks a rule; key names it in messages (e.g. "rules[1]").
func (r Rule) Validate(key string) error {
	var errs []error
	if r.Pattern == "" {
		errs = append(errs, fmt.Errorf("%w: %s.pattern: must be \"*\" or an exact scope, got an empty string", ErrInvalid, key))
	} else if err := CheckScope(r.Pattern); r.Pattern != "*" && err != nil {
		errs = append(errs, fmt.Errorf("%w: %s.pattern: must be \"*\" or an exact scope (1 to %d bytes of UTF-8 without control characters): %w", ErrInvalid, key, MaxScopeBytes, err))
	}
	if r.Concurrency < 0 {
		errs = append(errs, fmt.Errorf("%w: %s.concurrency: %d is out of range (0 or more)", ErrInvalid, key, r.Concurrency))
	}
	return errors.Join(errs...)
}

// Validate checks the whole dispatcher configuration, including that the
// reservations leave at least MinUnreserved in the unreserved pool. It
// reports every problem (errors.Join), not just the first.
func (c Config) Validate() error {
	errs := []error{c.Account.Validate()}
	reserved := 0
	for _, name := range sortedKeys(c.Functions) {
		f := c.Functions[name]
		key := "functions." + name
		if f.Timeout < 0 || f.Timeout > MaxTimeout {
			errs = append(errs, fmt.Errorf("%w: %s.timeout: %s is out of range (1ms..15m)", ErrInvalid, key, shard.FormatDuration(f.Timeout)))
		}
		if f.ReservedConcurrency != nil {
			n := *f.ReservedConcurrency
			if n < 0 || n > c.Account.Concurrency {
				errs = append(errs, fmt.Errorf("%w: %s.reserved_concurrency: %d is out of range (0..account.concurrency, %d)", ErrInvalid, key, n, c.Account.Concurrency))
				continue
			}
			reserved += n
		}
		errs = append(errs, f.validateSecurity(key)...)
	}
	if left := c.Account.Concurrency - reserved; reserved > 0 && left < c.Account.MinUnreserved {
		errs = append(errs, fmt.Errorf("%w: functions: reservations total %d and would leave the unreserved pool at %d, under account.min_unreserved (%d)",
			ErrInvalid, reserved, left, c.Account.MinUnreserved))
	}
	if len(c.Rules) > MaxRules {
		errs = append(errs, fmt.Errorf("%w: rules: %d rules, at most %d", ErrInvalid, len(c.Rules), MaxRules))
	}
	seen := make(map[string]int, len(c.Rules))
	for i, r := range c.Rules {
		key := fmt.Sprintf("rules[%d]", i)
		errs = append(errs, r.Validate(key))
		if j, dup := seen[r.Pattern]; dup {
			errs = append(errs, fmt.Errorf("%w: %s.pattern: %q repeats rules[%d]", ErrInvalid, key, r.Pattern, j))
			continue
		}
		seen[r.Pattern] = i
	}
	return errors.Join(errs...)
}
