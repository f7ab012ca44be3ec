package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/dispatch"
)

// shutdownGrace bounds how long a stopping sluice waits for in-flight work
// and open admin requests before it exits anyway.
const shutdownGrace = 15 * time.Second

// app is a wired sluice: what `run` runs and, later, what `dlq replay` drives,
// so that replays go through the same dispatcher and limits as live traffic.
type app struct {
	cfg   *config.Config
	log   *slog.Logger
	reg   *prometheus.Registry
	disp  *dispatch.Dispatcher
	ready atomic.Bool // set once everything started; /readyz reports it
}

// wire builds the parts of a sluice from cfg without starting anything.
func wire(cfg *config.Config, log *slog.Logger) (*app, error) {
	if len(cfg.Sources) > 0 {
		names := make([]string, 0, len(cfg.Sources))
		for name := range cfg.Sources {
			names = append(names, name)
		}
		slices.Sort(names)
		// Refuse rather than run without consuming: an operator who
		// configured sources expects them to flow.
		return nil, fmt.Errorf("run: this build cannot run sources yet (%s); Kafka and JetStream sources are not implemented",
			strings.Join(names, ", "))
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d, err := dispatch.New(cfg.Dispatch(), dispatch.WithRegisterer(reg), dispatch.WithLogger(log))
	if err != nil {
		return nil, err
	}
	return &app{cfg: cfg, log: log, reg: reg, disp: d}, nil
}

// run serves until ctx ends, then shuts down within shutdownGrace.
func (a *app) run(ctx context.Context) error {
	defer a.disp.Close()
	ln, err := net.Listen("tcp", a.cfg.Admin.Listen)
	if err != nil {
		return fmt.Errorf("run: admin API: %w", err)
	}
	srv := &http.Server{Handler: a.adminHandler(), ReadHeaderTimeout: 10 * time.Second}
	served := make(chan error, 1) // Serve's one result; buffered so Serve never blocks on it
	go func() { served <- srv.Serve(ln) }()

	u := a.disp.Limiter().Usage()
	a.log.Info("sluice running", "admin", ln.Addr().String(), "functions", len(a.cfg.Functions),
		"account_concurrency", u.AccountLimit, "unreserved_concurrency", u.UnreservedLimit)
	a.ready.Store(true)

	select {
	case <-ctx.Done():
	case err := <-served:
		return fmt.Errorf("run: admin API: %w", err)
	}
	a.ready.Store(false)
	a.log.Info("sluice stopping", "grace", shutdownGrace.String())
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("run: admin API shutdown: %w", err)
	}
	a.log.Info("sluice stopped")
	return nil
}

// adminHandler serves the open endpoints of SPEC §6: /metrics, /healthz and
// /readyz.
func (a *app) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(a.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !a.ready.Load() {
			http.Error(w, "not ready", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	})
	return mux
}
