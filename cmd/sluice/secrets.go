package main

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/dispatch"
)

// secrets are the functions' TLS settings and configured headers: read at
// start-up, and again on SIGHUP (reload.go), never per request. Their
// values are never logged; errors name the key and the file, not the
// content.
type secrets struct {
	fnTLS map[string]*config.ClientTLS // function → its TLS, for functions with tls
}

// loadSecrets reads the functions' TLS files and returns them with the
// dispatcher options that give each HTTP function its own; it warns about
// secret files that every user may read.
func loadSecrets(cfg *config.Config, log *slog.Logger) (*secrets, []dispatch.Option, error) {
	warnWorldReadable(cfg, log)
	s := &secrets{fnTLS: map[string]*config.ClientTLS{}}
	var opts []dispatch.Option
	for _, name := range slices.Sorted(maps.Keys(cfg.Functions)) {
		f := cfg.Functions[name]
		if f.TLS == nil {
			continue
		}
		ct, err := config.LoadClientTLS(*f.TLS)
		if err != nil {
			return nil, nil, fmt.Errorf("%w: functions.%s.tls: %w", config.ErrInvalid, name, err)
		}
		s.fnTLS[name] = ct
		opts = append(opts, dispatch.WithFunctionTLS(name, ct.Config))
	}
	return s, opts, nil
}

// setHeaders resolves the configured headers of every function of cfg that
// d runs and hands them to d.
func setHeaders(d *dispatch.Dispatcher, cfg *config.Config, running map[string]dispatch.FunctionConfig) error {
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cfg.Functions)) {
		if _, ok := running[name]; !ok || running[name].URL == "" {
			continue // a function added to the file needs a restart
		}
		h, err := cfg.FunctionHeaders(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if err := d.SetHeaders(name, h); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reloadSecrets re-reads the secret files on SIGHUP: the function headers
// and admin tokens of the reloaded configuration cfg, the functions' client
// certificates and the admin API's certificate. What fails to load is logged and keeps its
// old value.
func (a *app) reloadSecrets(cfg *config.Config) {
	warnWorldReadable(cfg, a.log)
	if err := setHeaders(a.disp, cfg, a.cfg.Functions); err != nil {
		a.log.Error("reload: function headers not reloaded; the old values stay in use", "error", err)
	}
	for _, name := range slices.Sorted(maps.Keys(a.secrets.fnTLS)) {
		if err := a.secrets.fnTLS[name].Reload(); err != nil {
			a.log.Error("reload: function client certificate not reloaded; the old one stays in use", "function", name, "error", err)
		}
	}
	if srv := a.api.Load(); srv != nil {
		tokens, err := adminTokens(cfg)
		if err == nil {
			err = srv.SetTokens(tokens)
		}
		if err != nil {
			a.log.Error("reload: admin tokens not reloaded; the old ones stay in use", "error", err)
		}
	}
	if a.adminTLS != nil {
		if err := a.adminTLS.Reload(); err != nil {
			a.log.Error("reload: admin API certificate not reloaded; the old one stays in use", "error", err)
		}
	}
}

// warnWorldReadable logs every secret file of cfg that others may read.
func warnWorldReadable(cfg *config.Config, log *slog.Logger) {
	files := cfg.SecretFiles()
	for _, key := range cfg.WorldReadableSecrets() {
		log.Warn("a secret file is readable by every user of this machine; restrict it (chmod o-r)", "key", key, "file", files[key])
	}
}
