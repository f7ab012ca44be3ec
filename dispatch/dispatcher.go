package dispatch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluicehq/sluice/internal/lograte"
)

// ErrUnknownFunction is returned for an invocation of a function that is not
// registered.
var ErrUnknownFunction = errors.New("dispatch: unknown function")

// Dispatcher invokes functions under the limits of its Limits engine (a
// local Limiter unless WithLimits gives another). Stream shards and
// async consumers call Invoke, which waits for slots; synchronous ingress
// calls TryInvoke, which answers at once with the throttle reason.
type Dispatcher struct {
	lim     Limits
	log     *slog.Logger
	fails   *lograte.Logger // one Warn line per failed invocation, rate-limited per shard
	metrics *metrics
	tracer  trace.Tracer // nil: no spans (WithTracer)

	mu  sync.RWMutex         // guards fns
	fns map[string]*function // registered functions by name
}

type function struct {
	h       Handler
	timeout time.Duration
}

// Option configures a Dispatcher.
type Option func(*options)

type options struct {
	reg    prometheus.Registerer
	log    *slog.Logger
	limits Limits
	tracer trace.Tracer
	fnTLS  map[string]*tls.Config // WithFunctionTLS
}

// WithRegisterer registers the dispatcher's metrics with reg (default: none).
func WithRegisterer(reg prometheus.Registerer) Option { return func(o *options) { o.reg = reg } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithLimits makes the Dispatcher take its slots from l instead of a local
// Limiter built from the Config: the plug for a limit engine shared by
// several processes. l must have been built from the same Config; the
// Dispatcher owns it from then on and closes it in Close.
func WithLimits(l Limits) Option { return func(o *options) { o.limits = l } }

// limitsFor returns the engine given by WithLimits, or a local Limiter of
// cfg; either way cfg must be valid.
func (o *options) limitsFor(cfg Config) (Limits, error) {
	if o.limits == nil {
		l, err := NewLimiter(cfg)
		if err != nil {
			return nil, err // not a typed nil in the interface
		}
		return l, nil
	}
	cfg.Account = cfg.Account.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	return o.limits, nil
}

// New returns a Dispatcher for cfg. Every function of cfg with a URL gets an
// HTTP handler; functions without one must be given a Handler with Register
// before they are invoked.
func New(cfg Config, opts ...Option) (*Dispatcher, error) {
	o := options{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	lim, err := o.limitsFor(cfg)
	if err != nil {
		return nil, err
	}
	d := &Dispatcher{lim: lim, log: o.log, fails: lograte.New(o.log, "failed invocations", 0, 0), tracer: o.tracer, fns: make(map[string]*function, len(cfg.Functions))}
	// The metrics come first: each HTTP function reports its connection
	// waits to them.
	d.metrics, err = newMetrics(o.reg, lim)
	if err != nil {
		lim.Close()
		return nil, err
	}
	unreserved := lim.Usage().UnreservedLimit
	for _, name := range sortedKeys(cfg.Functions) {
		fc := cfg.Functions[name]
		d.metrics.initFunction(name)
		if fc.URL == "" {
			continue
		}
		// Enough pooled connections for every slot the function can hold, so
		// no invocation waits for a connection.
		conns := unreserved
		if fc.ReservedConcurrency != nil {
			conns = max(1, *fc.ReservedConcurrency)
		}
		hopts := []HTTPOption{WithMaxConns(conns), WithConnObserver(d.metrics.connObserver(name))}
		if c, ok := o.fnTLS[name]; ok {
			hopts = append(hopts, WithTLSConfig(c))
		}
		h, err := NewHTTPFunction(name, fc, hopts...)
		if err != nil {
			d.unregister(o.reg)
			lim.Close()
			return nil, err
		}
		d.fns[name] = &function{h: h, timeout: timeoutOrDefault(fc.Timeout)}
	}
	return d, nil
}

// Register sets the Handler of a function, for library use and tests. A zero
// timeout means DefaultTimeout.
func (d *Dispatcher) Register(name string, h Handler, timeout time.Duration) {
	timeout = timeoutOrDefault(timeout)
	d.lim.SetFunctionTimeout(name, timeout)
	d.metrics.initFunction(name)
	d.mu.Lock()
	d.fns[name] = &function{h: h, timeout: timeout}
	d.mu.Unlock()
}

// Limiter returns the limit engine, for live changes and usage snapshots.
func (d *Dispatcher) Limiter() Limits { return d.lim }

// Invoke runs req.Function once it holds the slots of its function and scopes,
// waiting in line for them. req.MaxWait and req.WaitUntil bound the wait
// only; ctx bounds the wait and cancels the invocation (shutdown, revoke),
// and the function's timeout bounds the invocation. onWait, if not nil,
// hears once that the invocation is waiting and why; use it to show a shard
// as throttled.
//
// The error is nil on success, or one of the outcome errors of this package
// (see Handler). A wait cut short by ctx returns an error matching both
// ctx.Err() and *ThrottledError; one cut short by req.MaxWait or
// req.WaitUntil returns the *ThrottledError alone.
func (d *Dispatcher) Invoke(ctx context.Context, req *Request, onWait func(Reason)) (resp *Response, err error) {
	f, err := d.function(req.Function)
	if err != nil {
		return nil, err
	}
	ctx, span := d.startSpan(ctx, req)
	defer func() { endSpan(span, err) }()
	actx := ctx
	if until := waitBound(req); !until.IsZero() {
		var cancel context.CancelFunc
		actx, cancel = context.WithDeadline(ctx, until)
		defer cancel()
	}
	lease, err := d.lim.Acquire(actx, req.Function, scopesOf(req), func(r Reason) {
		d.metrics.throttled(req.Function, r)
		throttleEvent(span, r)
		if onWait != nil {
			onWait(r)
		}
	})
	if err != nil {
		if t, ok := AsThrottled(err); ok && ctx.Err() == nil {
			return nil, t // MaxWait or WaitUntil ran out, not the caller's ctx: a plain throttle
		}
		return nil, err
	}
	defer func() { releaseAfter(ctx, lease, req, err) }()
	return d.run(ctx, f, req)
}

// releaseAfter releases lease, at once unless the caller gave up while the
// invocation was in flight (a revoke or a shutdown cancelled ctx): the
// function may still be running the request it was sent, so the slot stays
// held until the invocation's deadline (its timeout from the start), the
// latest it can still run. Otherwise a revoked partition's abandoned
// invocations would free their slots at once and others be granted them
// while the function still runs them: more running than the limit.
func releaseAfter(ctx context.Context, lease Lease, req *Request, err error) {
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil && !req.Deadline.IsZero() {
		if wait := time.Until(req.Deadline); wait > 0 {
			time.AfterFunc(wait, lease.Release)
			return
		}
	}
	lease.Release()
}

// TryInvoke runs req.Function if its slots are free now, and otherwise
// returns a *ThrottledError at once.
func (d *Dispatcher) TryInvoke(ctx context.Context, req *Request) (resp *Response, err error) {
	f, err := d.function(req.Function)
	if err != nil {
		return nil, err
	}
	ctx, span := d.startSpan(ctx, req)
	defer func() { endSpan(span, err) }()
	lease, err := d.lim.TryAcquire(req.Function, scopesOf(req))
	if err != nil {
		if t, ok := AsThrottled(err); ok {
			d.metrics.throttled(req.Function, t.Reason)
			throttleEvent(span, t.Reason)
		}
		return nil, err
	}
	defer func() { releaseAfter(ctx, lease, req, err) }()
	return d.run(ctx, f, req)
}

// Close stops granting slots and wakes waiters with ErrClosed. In-flight
// invocations are not interrupted; their callers own their contexts.
func (d *Dispatcher) Close() {
	d.lim.Close()
	d.mu.RLock()
	defer d.mu.RUnlock()
	for _, f := range d.fns {
		if c, ok := f.h.(interface{ CloseIdleConnections() }); ok {
			c.CloseIdleConnections()
		}
	}
}

func (d *Dispatcher) function(name string) (*function, error) {
	d.mu.RLock()
	f := d.fns[name]
	d.mu.RUnlock()
	if f == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknownFunction, name)
	}
	return f, nil
}

// run invokes f with the function's timeout and turns whatever it returns
// into one of the outcome errors.
func (d *Dispatcher) run(ctx context.Context, f *function, req *Request) (*Response, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	req.Deadline, _ = ctx.Deadline()
	start := time.Now()
	resp, err := f.h.Invoke(ctx, req)
	err = classify(ctx, req, err)
	d.metrics.invoked(req.Function, err, time.Since(start))
	d.logFailure(ctx, req, err, time.Since(start))
	return resp, err
}

// logFailure writes one Warn line for an invocation that failed (an error,
// a timeout, a permanent error, a partial batch, the function's own
// throttle), at most lograte.DefaultBurst per shard per minute. An
// invocation its caller abandoned is not a failure.
func (d *Dispatcher) logFailure(ctx context.Context, req *Request, err error, took time.Duration) {
	if err == nil || ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return
	}
	key := req.Shard
	if key == "" {
		key = req.Header.Get("Sluice-Source")
	}
	if key == "" {
		key = "function " + req.Function
	}
	args := []any{"function", req.Function, "shard", key, "attempt", req.Attempt, "outcome", string(OutcomeOf(err)),
		"error", err.Error(), "took", took.Round(time.Millisecond)}
	if src := req.Header.Get("Sluice-Source"); src != "" {
		args = append(args, "source", src)
	}
	if len(req.Items) > 0 {
		args = append(args, "first", req.Items[0], "last", req.Items[len(req.Items)-1])
	}
	d.fails.Log(slog.LevelWarn, key, "invocation failed", args...)
}

// classify maps a handler's error to the outcome errors: in-process handlers
// may return anything, HTTP ones already return typed errors.
func classify(ctx context.Context, req *Request, err error) error {
	if err == nil {
		return nil
	}
	var (
		t  *ThrottledError
		fe *FunctionError
		pe *PermanentError
		pb *PartialBatchError
		iv *InvalidRequestError
	)
	switch {
	case errors.As(err, &pb):
		if !req.ReportItemFailures {
			// Not wrapped: the outcome is a whole-batch failure, not a partial one.
			return &FunctionError{Kind: KindResponse, Message: "partial batch failure without report_batch_item_failures: whole batch failed (" + err.Error() + ")"}
		}
		return checkPartial(pb.Failed, req.Items)
	case errors.As(err, &t), errors.As(err, &fe), errors.As(err, &pe), errors.As(err, &iv):
		return err
	case errors.Is(err, context.Canceled) && ctx.Err() != nil:
		// The caller gave up (shutdown, revoke): not the function's failure,
		// and no attempt is consumed. Callers see ctx's error.
		return err
	case errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		return &FunctionError{Kind: KindTimeout, Message: "no answer within the function's timeout", Err: err}
	default:
		return &FunctionError{Kind: KindHandler, Message: err.Error(), Err: err}
	}
}

// waitBound is when the wait for a slot ends: the earlier of now + MaxWait
// and WaitUntil; zero when neither is set.
func waitBound(req *Request) time.Time {
	until := req.WaitUntil
	if req.MaxWait > 0 {
		if m := time.Now().Add(req.MaxWait); until.IsZero() || m.Before(until) {
			until = m
		}
	}
	return until
}

func scopesOf(req *Request) []string {
	if len(req.Scopes) > 0 {
		return req.Scopes
	}
	if req.Scope != "" {
		return []string{req.Scope}
	}
	return nil
}

func timeoutOrDefault(d time.Duration) time.Duration {
	if d <= 0 {
		return DefaultTimeout
	}
	return d
}

// unregister undoes newMetrics' registrations, for a New that fails after it.
func (d *Dispatcher) unregister(reg prometheus.Registerer) {
	if reg != nil {
		d.metrics.unregister(reg)
	}
}
