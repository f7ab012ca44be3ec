package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/shard"
)

// Readiness checks: a broker that does not answer within readyTimeout makes
// sluice not ready; a result is reused for readyCacheFor, so that a probe
// every second costs a broker round trip every few seconds at most.
const (
	readyTimeout  = 2 * time.Second
	readyCacheFor = 3 * time.Second
)

// wireAdmin builds the limits book (the file's limits with the API's
// changes of state_dir on top) and the readiness checks of the brokers in
// use. It runs after wireSources, which connected to the brokers.
func (a *app) wireAdmin() error {
	book, err := a.newBook()
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	a.book = book
	a.readiness = &readiness{}
	for _, name := range a.brokersInUse() {
		if br, ok := a.brokers[name]; ok { // wireSources opened every broker in use
			a.readiness.add(name, br.Ping)
		}
	}
	return nil
}

// brokersInUse returns the brokers a source or a dead-letter destination
// uses, sorted.
func (a *app) brokersInUse() []string {
	seen := map[string]bool{}
	for _, s := range a.cfg.Sources {
		seen[s.Broker] = true
	}
	for _, d := range a.cfg.DeadLetters {
		seen[d.Broker] = true
	}
	var out []string
	for name := range seen {
		if _, ok := a.cfg.Brokers[name]; ok {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out
}

// adminAPI is the admin HTTP API: the admin package's handler over this
// app's limits, shards, metrics, readiness and ingress.
func (a *app) adminAPI() (http.Handler, error) {
	tokens, err := adminTokens(a.cfg)
	if err != nil {
		return nil, err
	}
	srv, err := admin.New(admin.Options{
		Book: a.book,
		Shards: func() []shard.Status {
			var out []shard.Status
			for _, s := range a.sources {
				out = append(out, s.Statuses()...)
			}
			return out
		},
		Ready: func() error {
			if !a.ready.Load() {
				return errors.New("starting or stopping")
			}
			return a.readiness.check()
		},
		Metrics:          promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}),
		Ingress:          a.ingress,
		Tokens:           tokens,
		Lags:             a.shardLags,
		DeadLetterCounts: a.deadLetterCounts,
		Logger:           a.log,
		Cluster:          a.clusterStatus(),
	})
	if err != nil {
		return nil, err
	}
	a.api.Store(srv) // for SIGHUP's reload of the tokens (secrets.go)
	return srv, nil
}

// adminTokens resolves the secrets of admin.tokens; a missing file or
// variable is an error naming the key.
func adminTokens(cfg *config.Config) ([]admin.Token, error) {
	var out []admin.Token
	for i, t := range cfg.Admin.Tokens {
		secret, err := t.Secret()
		if err != nil {
			return nil, fmt.Errorf("%w: admin.tokens[%d]: %w", config.ErrInvalid, i, err)
		}
		role, err := admin.ParseRole(string(t.Role))
		if err != nil {
			return nil, fmt.Errorf("%w: admin.tokens[%d].role: %w", config.ErrInvalid, i, err)
		}
		out = append(out, admin.Token{Secret: secret, Role: role})
	}
	return out, nil
}

// readiness runs the broker checks of /readyz, at most one round at a time,
// and caches the result for readyCacheFor.
type readiness struct {
	checks []namedCheck

	mu      sync.Mutex // guards the cache; held during a round so probes queue behind it
	checked time.Time
	last    error
}

type namedCheck struct {
	broker string
	ping   func(context.Context) error
}

func (r *readiness) add(broker string, ping func(context.Context) error) {
	r.checks = append(r.checks, namedCheck{broker, ping})
}

// check returns nil when every broker in use answered, or an error naming
// those that did not.
func (r *readiness) check() error {
	if r == nil {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.checked.IsZero() && time.Since(r.checked) < readyCacheFor {
		return r.last
	}
	ctx, cancel := context.WithTimeout(context.Background(), readyTimeout)
	defer cancel()
	errs := make([]error, len(r.checks))
	var wg sync.WaitGroup
	for i, c := range r.checks {
		wg.Go(func() {
			if err := c.ping(ctx); err != nil {
				errs[i] = fmt.Errorf("brokers.%s: %w", c.broker, err)
			}
		})
	}
	wg.Wait()
	r.last, r.checked = errors.Join(errs...), time.Now()
	return r.last
}
