package cluster

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// ErrInvalid is wrapped by every configuration error of this package.
var ErrInvalid = errors.New("invalid configuration")

// Defaults and bounds of the cluster section.
const (
	DefaultLease = 10 * time.Second
	MinLease     = 2 * time.Second
	MaxLease     = 5 * time.Minute
)

// Config is the cluster section: processes with the same Name share every
// limit, through the engine of the broker named Broker.
type Config struct {
	// Name is the cluster's name; it names the engine's buckets.
	Name string `koanf:"name"`
	// Broker is the broker (a key under brokers) whose engine holds the
	// shared rule book and the capacity shares.
	Broker string `koanf:"broker"`
	// Lease is how long a share stays with a process that stopped renewing
	// it; after it the capacity is back in the pool.
	Lease time.Duration `koanf:"lease"`
}

// WithDefaults fills in the lease.
func (c Config) WithDefaults() Config {
	if c.Lease == 0 {
		c.Lease = DefaultLease
	}
	return c
}

var validName = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// Validate checks the section on its own; key is its place ("cluster").
// That Broker names a broker of the configuration is the config package's
// check.
func (c Config) Validate(key string) error {
	var errs []error
	if !validName.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("%w: %s.name: %q must be 1 to 64 letters, digits, '-' or '_'", ErrInvalid, key, c.Name))
	}
	if c.Lease < MinLease || c.Lease > MaxLease {
		errs = append(errs, fmt.Errorf("%w: %s.lease: %s is out of range (%s..%s)", ErrInvalid, key,
			shard.FormatDuration(c.Lease), shard.FormatDuration(MinLease), shard.FormatDuration(MaxLease)))
	}
	return errors.Join(errs...)
}
