package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sluicehq/sluice/admin"
	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/shard"
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
	natsURL map[string]string                    // NATS broker name → the URL sluice connected to
	streams map[string]*dispatch.StreamDeliverer // stream source name → its deliverer, for `dlq replay` (see recordStream)
	ready   atomic.Bool                          // set once everything started; /readyz reports it

	book      *admin.Book             // live limits: the file's, with the API's changes on top (admin_wire.go)
	readiness *readiness              // broker checks of /readyz (admin_wire.go)
	natsConns map[string]*natsgo.Conn // NATS broker name → the connection in use, for readiness
	ingress   http.Handler            // the HTTP ingress (SPEC §2.3), mounted by the admin API; nil when not wired

	secrets  *secrets                     // function headers and TLS, re-read on SIGHUP (secrets.go)
	adminTLS *config.ServerTLS            // admin.tls, loaded by wire, re-read on SIGHUP (admin_server.go)
	lock     *stateLock                   // the lock on state_dir (statelock.go)
	api      atomic.Pointer[admin.Server] // the admin API once run serves it, for SIGHUP's token reload
}

// source is a running source as the app sees it.
type source interface {
	Run(ctx context.Context) error
	Statuses() []shard.Status
}

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
	d, err := dispatch.New(cfg.Dispatch(), append(dopts, dispatch.WithRegisterer(reg), dispatch.WithLogger(log))...)
	if err != nil {
		lock.release()
		return nil, err
	}
	a := &app{cfg: cfg, log: log, reg: reg, disp: d, natsURL: map[string]string{}, natsConns: map[string]*natsgo.Conn{},
		lock: lock, secrets: sec}
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
	conns := map[string]*natsgo.Conn{}
	natsConn := func(name string) (*natsgo.Conn, error) {
		if nc, ok := conns[name]; ok {
			return nc, nil
		}
		nb := a.cfg.Brokers[name].NATS
		url := nb.URL
		if nb.Embedded() {
			e, err := a.startEmbedded(name, *nb)
			if err != nil {
				return nil, err
			}
			url = e.ClientURL()
		}
		nc, err := natsgo.Connect(url, natsgo.Name("sluice"), natsgo.MaxReconnects(-1))
		if err != nil {
			return nil, fmt.Errorf("run: brokers.%s: connect to %s: %w", name, dispatch.RedactURL(url), err)
		}
		a.natsURL[name] = url
		a.natsConns[name] = nc
		a.closers = append(a.closers, nc.Close)
		conns[name] = nc
		return nc, nil
	}

	stores := map[string]shard.DeadLetterer{}
	deadLetterer := func(name string) (shard.DeadLetterer, error) {
		if name == "" {
			return nil, nil // no on_failure: undeliverable records are dropped, counted and logged
		}
		if s, ok := stores[name]; ok {
			return s, nil
		}
		app, err := a.deadLetterDestination(ctx, name, natsConn)
		if err != nil {
			return nil, err
		}
		s := retention.NewStore(name, app, storeMetrics)
		stores[name] = s
		if err := a.measureDeadLetters(name, natsConn, gauges); err != nil {
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
		b := a.cfg.Brokers[sc.Broker]
		dlq, err := deadLetterer(sc.OnFailure)
		if err != nil {
			return err
		}
		var scope func(*shard.Record) string
		if !sc.Scope.IsNone() {
			scope = sc.Scope.Of
		}
		stream := func(encode func([]shard.Record) ([]byte, error)) *dispatch.StreamDeliverer {
			d := &dispatch.StreamDeliverer{D: a.disp, Source: name, Function: sc.Function, Encode: encode,
				Scope: scope, ReportItemFailures: sc.ReportBatchItemFailures}
			a.recordStream(name, d)
			return d
		}
		async := func() *dispatch.AsyncDeliverer {
			return &dispatch.AsyncDeliverer{D: a.disp, Source: name, Function: sc.Function, Scope: scope,
				MaxSlotWait: asyncSlotWait}
		}
		var src source
		switch {
		case b.Kafka != nil && sc.Mode == consumer.ModeStream:
			bootstrap := strings.Join(b.Kafka.Seeds, ",")
			src, err = kafka.New(name, *b.Kafka, sc, kafka.Options{
				Worker:       sc.WorkerConfig(name),
				Deliverer:    stream(func(recs []shard.Record) ([]byte, error) { return kafka.EncodeEvent(bootstrap, recs) }),
				DeadLetterer: dlq, Logger: a.log, Registerer: a.reg,
			})
		case b.Kafka != nil:
			src, err = kafka.NewAsync(name, *b.Kafka, sc, kafka.AsyncOptions{
				Deliverer:    async(),
				DeadLetterer: dlq, Logger: a.log, Registerer: a.reg,
			})
		default:
			nc, cerr := natsConn(sc.Broker)
			if cerr != nil {
				return cerr
			}
			if sc.Mode == consumer.ModeStream {
				src, err = natssrc.NewStream(name, nc, sc, natssrc.StreamOptions{
					Worker:       sc.WorkerConfig(name),
					Deliverer:    stream(func(recs []shard.Record) ([]byte, error) { return natssrc.EncodeEvent(sc.Stream, recs) }),
					AckWait:      b.NATS.AckWait, // and the pin TTL, 2 × AckWait
					DeadLetterer: dlq, Logger: a.log, Registerer: a.reg,
				})
			} else {
				src, err = natssrc.NewAsync(name, nc, sc, natssrc.AsyncOptions{
					Deliverer:    async(),
					AckWait:      b.NATS.AckWait,
					DeadLetterer: dlq, Logger: a.log, Registerer: a.reg,
				})
			}
		}
		if err != nil {
			return fmt.Errorf("run: sources.%s: %w", name, err)
		}
		// JetStream streams are created before sluice says it is running,
		// so that what publishers send from then on is kept.
		if e, ok := src.(interface{ Ensure(context.Context) error }); ok {
			if err := e.Ensure(ctx); err != nil {
				return fmt.Errorf("run: sources.%s: %w", name, err)
			}
		}
		a.sources = append(a.sources, src)
	}
	return nil
}

// startEmbedded starts the in-process nats-server of broker name, storing
// under state_dir/nats.
func (a *app) startEmbedded(name string, nb consumer.NATSConfig) (*natssrc.Embedded, error) {
	listen := nb.Listen
	if listen == "" {
		listen = consumer.DefaultEmbeddedListen
	}
	host, portText, _ := net.SplitHostPort(listen) // validated by config
	port, _ := strconv.Atoi(portText)
	if port == 0 {
		port = -1 // any free port
	}
	if a.lock == nil { // `sluice dlq list/show`: the store is about to be opened here
		lock, err := lockStateDir(a.cfg.StateDir)
		if err != nil {
			return nil, err
		}
		a.lock = lock
		a.closers = append(a.closers, func() { lock.release(); a.lock = nil })
	}
	dir := filepath.Join(a.cfg.StateDir, "nats")
	e, err := natssrc.StartEmbedded(dir, natssrc.WithHost(host), natssrc.WithPort(port), natssrc.WithEmbeddedLogger(a.log))
	if err != nil {
		return nil, fmt.Errorf("run: brokers.%s: embedded nats-server: %w", name, err)
	}
	a.closers = append(a.closers, e.Shutdown)
	a.log.Info("embedded nats-server started", "broker", name, "url", e.ClientURL(), "store", dir)
	return e, nil
}

// deadLetterDestination creates or reconciles dead-letter destination name
// (SPEC §4), logs what it did, and returns a writer for it.
func (a *app) deadLetterDestination(ctx context.Context, name string, natsConn func(string) (*natsgo.Conn, error)) (retention.Appender, error) {
	dl := a.cfg.DeadLetters[name]
	age := time.Duration(-1)
	if !dl.Retention.IsInfinite() {
		age = dl.Retention.Duration()
	}
	logResult := func(kind, where string, created bool, changed []string) {
		switch {
		case created:
			a.log.Info("dead-letter "+kind+" created", "destination", name, kind, where, "retention", dl.Retention.String())
		case len(changed) > 0:
			a.log.Info("dead-letter "+kind+" reconciled", "destination", name, kind, where, "changed", strings.Join(changed, ", "))
		default:
			a.log.Info("dead-letter "+kind+" up to date", "destination", name, kind, where, "retention", dl.Retention.String())
		}
	}
	b := a.cfg.Brokers[dl.Broker]
	if b.Kafka != nil {
		created, changed, err := kafka.EnsureTopic(ctx, *b.Kafka, dl.Topic, 1, age, int64(dl.MaxBytes))
		if err != nil {
			return nil, fmt.Errorf("run: dead_letters.%s: topic %s: %w", name, dl.Topic, err)
		}
		logResult("topic", dl.Topic, created, changed)
		w, err := kafka.NewWriter(*b.Kafka, dl.Topic)
		if err != nil {
			return nil, fmt.Errorf("run: dead_letters.%s: %w", name, err)
		}
		a.closers = append(a.closers, w.Close)
		return w, nil
	}
	prefix, ok := strings.CutSuffix(dl.Subject, ".>")
	if !ok {
		return nil, fmt.Errorf("run: dead_letters.%s.subject: %q must end in \".>\" (sluice publishes to <prefix>.<key>)", name, dl.Subject)
	}
	nc, err := natsConn(dl.Broker)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("run: dead_letters.%s: %w", name, err)
	}
	created, changed, err := natssrc.EnsureStream(ctx, js, dl.Stream, []string{dl.Subject}, age, int64(dl.MaxBytes))
	if err != nil {
		return nil, fmt.Errorf("run: dead_letters.%s: stream %s: %w", name, dl.Stream, err)
	}
	logResult("stream", dl.Stream, created, changed)
	w, err := natssrc.NewWriter(nc, dl.Stream, prefix)
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
		// A source that stops on its own has failed: stop everything, so a
		// supervisor restarts sluice instead of it running half-deaf.
		runErr = fmt.Errorf("run: source stopped: %w", err)
	}
	a.ready.Store(false)
	a.log.Info("sluice stopping", "grace", shutdownGrace.String())
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

// natsURLOf returns the URL of NATS broker name that the sources use (the
// embedded server's, when it is embedded).
func (a *app) natsURLOf(name string) (string, error) {
	if u, ok := a.natsURL[name]; ok {
		return u, nil
	}
	return "", fmt.Errorf("run: broker %s is not a NATS broker in use", name)
}
