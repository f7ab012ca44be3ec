package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/cluster"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

// shutdownGrace bounds how long a stopping sluice waits for in-flight work
// and open admin requests before it exits anyway.
const shutdownGrace = 15 * time.Second

// asyncSlotWait is how long an async event waits in line for a concurrency
// slot before it is handed back to its source as throttled (a retry topic on
// Kafka, NakWithDelay on JetStream): long enough to ride out a short burst,
// short enough that a full limit never pins offsets and memory for the hours
// an event may live (SPEC §2.2).
const asyncSlotWait = 5 * time.Second

// The dispatcher's async deliverer is what both async sources call.
var _ consumer.AsyncDeliverer = (*dispatch.AsyncDeliverer)(nil)

// app is a wired sluice: what `run` runs and, later, what `dlq replay` drives,
// so that replays go through the same dispatcher and limits as live traffic.
type app struct {
	cfg     *config.Config
	log     *slog.Logger
	reg     *prometheus.Registry
	disp    *dispatch.Dispatcher
	sources []source
	closers []func()                             // run at exit, newest first, after the sources stopped
	brokers map[string]consumer.Broker           // broker name → the broker opened (brokers.go)
	streams map[string]*dispatch.StreamDeliverer // stream source name → its deliverer, for `dlq replay` (see recordStream)
	ready   atomic.Bool                          // set once everything started; /readyz reports it

	book      *admin.Book  // live limits: the file's, with the API's changes on top (admin_wire.go)
	readiness *readiness   // broker checks of /readyz (admin_wire.go)
	ingress   http.Handler // the HTTP ingress (SPEC §2.3), mounted by the admin API; nil when not wired

	secrets  *secrets                     // function headers and TLS, re-read on SIGHUP (secrets.go)
	adminTLS *config.ServerTLS            // admin.tls, loaded by wire, re-read on SIGHUP (admin_server.go)
	lock     *stateLock                   // the lock on state_dir (statelock.go)
	api      atomic.Pointer[admin.Server] // the admin API once run serves it, for SIGHUP's token reload

	cluster   *cluster.Engine // the cluster-wide limits; nil without a cluster section (cluster_wire.go)
	bookStore *cluster.Store  // the shared rule book; nil without a cluster section
}

// source is a running source as the app sees it.
type source = consumer.Source

// wire builds the parts of a sluice from cfg; nothing runs until app.run.
// Start-up work that talks to brokers (creating dead-letter topics) is bounded
// by ctx.
func wire(ctx context.Context, cfg *config.Config, log *slog.Logger) (*app, error) {
	// One process per state_dir: taken before anything reads or writes it.
	lock, err := lockStateDir(cfg.StateDir)
	if err != nil {
		return nil, err
	}
	sec, dopts, err := loadSecrets(cfg, log)
	if err != nil {
		lock.release()
		return nil, err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	var closers []func()
	tracing, err := tracer(cfg.Tracing, log, &closers)
	if err != nil {
		lock.release()
		return nil, err
	}
	opts := append([]dispatch.Option{dispatch.WithRegisterer(reg), dispatch.WithLogger(log)}, tracing...)
	eng, err := newClusterEngine(cfg, reg, log) // nil without a cluster section
	if err != nil {
		for _, c := range closers {
			c()
		}
		lock.release()
		return nil, err
	}
	if eng != nil {
		opts = append(opts, dispatch.WithLimits(eng))
	}
	d, err := dispatch.New(cfg.Dispatch(), append(opts, dopts...)...)
	if err != nil {
		for _, c := range closers {
			c()
		}
		lock.release()
		return nil, err
	}
	a := &app{cfg: cfg, log: log, reg: reg, disp: d, closers: closers, lock: lock, secrets: sec, cluster: eng}
	if err := setHeaders(d, cfg, cfg.Functions); err != nil {
		a.close()
		return nil, err
	}
	if err := a.loadAdminTLS(); err != nil {
		a.close()
		return nil, err
	}
	if err := a.wireSources(ctx); err != nil {
		a.close()
		return nil, err
	}
	if err := a.wireCluster(ctx); err != nil {
		a.close()
		return nil, err
	}
	if err := a.wireObservability(); err != nil {
		a.close()
		return nil, err
	}
	if err := a.wireAdmin(); err != nil {
		a.close()
		return nil, err
	}
	if err := a.wireIngress(); err != nil {
		a.close()
		return nil, err
	}
	return a, nil
}

// wireSources connects to the brokers the sources and dead-letter
// destinations use (starting the embedded nats-server if one is implied),
// then builds every source with its dead-letter store.
func (a *app) wireSources(ctx context.Context) error {
	storeMetrics, err := retention.NewStoreMetrics(a.reg)
	if err != nil {
		return err
	}
	gauges := retention.NewGauges(a.log)
	if err := a.reg.Register(gauges); err != nil {
		return err
	}
	stores := map[string]event.DeadLetterer{}
	deadLetterer := func(name string) (event.DeadLetterer, error) {
		if name == "" {
			return nil, nil // no on_failure: undeliverable records are dropped, counted and logged
		}
		if s, ok := stores[name]; ok {
			return s, nil
		}
		app, err := a.deadLetterDestination(ctx, name)
		if err != nil {
			return nil, err
		}
		s := retention.NewStore(name, app, storeMetrics, retention.WithLogger(a.log))
		stores[name] = s
		if err := a.measureDeadLetters(ctx, name, gauges); err != nil {
			return nil, err
		}
		return s, nil
	}

	names := make([]string, 0, len(a.cfg.Sources))
	for name := range a.cfg.Sources {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		sc := a.cfg.Sources[name]
		dlq, err := deadLetterer(sc.OnFailure)
		if err != nil {
			return err
		}
		var scope func(*event.Record) string
		if !sc.Scope.IsNone() {
			scope = sc.Scope.Of
		}
		br, err := a.broker(ctx, "run", sc.Broker)
		if err != nil {
			return err
		}
		deps := consumer.SourceDeps{DeadLetterer: dlq, Logger: a.log, Registerer: a.reg}
		if sc.OnFailure != "" {
			deps.KeepFor = time.Duration(a.cfg.DeadLetters[sc.OnFailure].Retention) // -1: forever
		}
		if sc.Mode == consumer.ModeStream {
			d := &dispatch.StreamDeliverer{D: a.disp, Source: name, Function: sc.Function, Encode: br.Encoder(sc),
				Scope: scope, ReportItemFailures: sc.ReportBatchItemFailures}
			a.recordStream(name, d)
			deps.Stream = d
		} else {
			deps.Async = &dispatch.AsyncDeliverer{D: a.disp, Source: name, Function: sc.Function, Scope: scope,
				MaxSlotWait: asyncSlotWait}
		}
		src, err := br.NewSource(name, sc, deps)
		if err != nil {
			return fmt.Errorf("run: sources.%s: %w", name, err)
		}
		// JetStream streams and Kafka retry topics are created before
		// sluice says it is running, so that what publishers send from then
		// on is kept.
		if e, ok := src.(consumer.Ensurer); ok {
			if err := e.Ensure(ctx); err != nil {
				return fmt.Errorf("run: sources.%s: %w", name, err)
			}
		}
		if sc.OnFailure != "" {
			storeMetrics.Init(name, deadLetterConditions(sc.Mode)...)
		}
		a.sources = append(a.sources, src)
	}
	return nil
}

// deadLetterDestination creates or reconciles dead-letter destination name
// (SPEC §4), logs what it did, and returns a writer for it.
func (a *app) deadLetterDestination(ctx context.Context, name string) (retention.Appender, error) {
	dl := a.cfg.DeadLetters[name]
	br, err := a.broker(ctx, "run", dl.Broker)
	if err != nil {
		return nil, err
	}
	d := a.destination(name)
	created, changed, err := br.EnsureDestination(ctx, d)
	if err != nil {
		return nil, fmt.Errorf("run: dead_letters.%s: %w", name, err)
	}
	kind, where := br.Where(d)
	switch {
	case created:
		a.log.Info("dead-letter "+kind+" created", "destination", name, kind, where, "retention", dl.Retention.String())
	case len(changed) > 0:
		a.log.Info("dead-letter "+kind+" reconciled", "destination", name, kind, where, "changed", strings.Join(changed, ", "))
	default:
		a.log.Info("dead-letter "+kind+" up to date", "destination", name, kind, where, "retention", dl.Retention.String())
	}
	w, err := br.DeadLetterWriter(d)
	if err != nil {
		return nil, fmt.Errorf("run: dead_letters.%s: %w", name, err)
	}
	return w, nil
}

// close releases what wire opened, newest first (writers and connections
// before the embedded server they use).
func (a *app) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.disp.Close()
	a.lock.release() // last: the embedded server's store is closed
}

// run serves until ctx ends, then shuts down: the sources stop fetching,
// abandon in-flight batches (they are redelivered: at-least-once) and commit
// what is done; the admin API drains within shutdownGrace.
func (a *app) run(ctx context.Context) error {
	defer a.close()
	handler, err := a.adminAPI()
	if err != nil {
		return err
	}
	as, err := a.listenAdmin(handler)
	if err != nil {
		return err
	}
	ln, srv := as.ln, as.srv
	served := make(chan error, 1) // Serve's one result; buffered so Serve never blocks on it
	go func() { served <- as.serve() }()

	sctx, stopSources := context.WithCancel(ctx)
	defer stopSources()
	srcErrs := make(chan error, len(a.sources)) // one result per source; buffered so none blocks
	var running sync.WaitGroup
	for _, s := range a.sources {
		running.Go(func() { srcErrs <- s.Run(sctx) })
	}

	// Ready before the log line: whoever waits for "sluice running" may ask
	// /readyz at once.
	a.ready.Store(true)
	u := a.disp.Limiter().Usage()
	a.log.Info("sluice running", "admin", ln.Addr().String(), "functions", len(a.cfg.Functions), "sources", len(a.sources),
		"account_concurrency", u.AccountLimit, "unreserved_concurrency", u.UnreservedLimit)

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-served:
		runErr = fmt.Errorf("run: admin API: %w", err)
	case err := <-srcErrs:
		if ctx.Err() != nil {
			// The stop reached this source before this select saw it:
			// judged with the others' results below.
			srcErrs <- err // its slot was just emptied: never blocks
			break
		}
		// A source that stops on its own has failed: stop everything, so a
		// supervisor restarts sluice instead of it running half-deaf.
		if err == nil {
			err = errors.New("without an error")
		}
		runErr = fmt.Errorf("run: source stopped: %w", err)
	}
	a.ready.Store(false)
	a.log.Info("sluice stopping", "grace", shutdownGrace.String())
	// No slot is granted from here on, before the sources abandon their
	// in-flight invocations: an abandoned invocation frees its slot at once
	// while the function may still be running it, and a shard not stopped
	// yet would otherwise be granted that slot (more running than the
	// limit). In cluster mode the limits also keep their claim on what was
	// held now (cluster.Engine.Close).
	a.disp.Limiter().Close()
	stopSources()
	running.Wait()
	close(srcErrs)
	for err := range srcErrs {
		if err != nil && !errors.Is(err, context.Canceled) && runErr == nil {
			runErr = fmt.Errorf("run: source: %w", err)
		}
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) && runErr == nil {
		runErr = fmt.Errorf("run: admin API shutdown: %w", err)
	}
	if runErr != nil {
		return runErr
	}
	a.log.Info("sluice stopped")
	return nil
}

// brokerURL returns the URL broker name was reached at, for a broker that
// has one (the embedded nats-server's, when it is embedded); wire must
// have opened it.
func (a *app) brokerURL(name string) (string, error) {
	if b, ok := a.brokers[name].(interface{ URL() string }); ok {
		return b.URL(), nil
	}
	return "", fmt.Errorf("run: broker %s is not a broker in use with a URL", name)
}
