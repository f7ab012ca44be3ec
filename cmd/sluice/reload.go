package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sluicehq/sluice/config"
)

// catchSIGHUP starts catching SIGHUP, whose default action would end the
// process: `run` calls it first, so that a reload asked for while sluice is
// still starting is done once it runs instead of killing it.
func catchSIGHUP() chan os.Signal {
	hup := make(chan os.Signal, 1) // signal.Notify drops signals when full; one pending reload is enough
	signal.Notify(hup, syscall.SIGHUP)
	return hup
}

// reloadOnSIGHUP reloads the limits (account, reservations, rules) and
// re-reads the secret files (function headers and certificates, the admin
// API's certificate; secrets.go) from the configuration on every signal of hup (catchSIGHUP) until ctx ends, through
// load (the same files, environment and flags sluice started with).
// In-flight invocations keep their slots; the API's changes stay on top. A
// file that does not load or validate is logged and changes nothing. Other
// sections (sources, brokers, functions) need a restart. The returned func
// stops listening.
func (a *app) reloadOnSIGHUP(ctx context.Context, hup chan os.Signal, load func() (*config.Config, error)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				a.reload(load)
			}
		}
	}()
	return func() {
		signal.Stop(hup)
		cancel()
		<-done
	}
}

// reload applies the limits of a freshly loaded configuration.
func (a *app) reload(load func() (*config.Config, error)) {
	a.log.Info("reload: SIGHUP received, reloading limits from the configuration")
	cfg, err := load()
	if err != nil {
		a.log.Error("reload: the configuration does not load; nothing changed", "error", err)
		return
	}
	a.reloadSecrets(cfg)
	if err := a.book.Reload(cfg.Dispatch()); err != nil {
		a.log.Error("reload: could not save the limits", "error", err)
		return
	}
	u := a.disp.Limiter().Usage()
	a.log.Info("reload: done", "account_concurrency", u.AccountLimit, "unreserved_concurrency", u.UnreservedLimit,
		"rules", len(a.book.Rules()))
}
