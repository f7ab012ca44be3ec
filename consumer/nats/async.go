package nats

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/redelivery"
	"github.com/sluicehq/sluice/shard"
)

// Defaults of AsyncOptions.
const (
	// DefaultAsyncConcurrency bounds the events one process invokes at
	// once for one async source (the function's own limits apply on top,
	// in the dispatcher).
	DefaultAsyncConcurrency = 64
	// DefaultMaxWaiting is the consumer's MaxAckPending: events delivered
	// and not yet acknowledged, which includes every event waiting out a
	// retry delay on the server (a NAKed message stays pending until it is
	// redelivered and acknowledged). It bounds the server's bookkeeping,
	// not sluice's memory: a waiting event is not held by sluice.
	DefaultMaxWaiting = 10000
	// stateTTLMargin is how much longer than max_event_age an event's
	// retry state is kept: by then the event was dead-lettered.
	stateTTLMargin = time.Hour
	// bookTimeout bounds one bookkeeping call (a NAK, a state write) made
	// after the invocation, also at shutdown.
	bookTimeout = 10 * time.Second
)

// AsyncOptions are the collaborators and tuning of an Async source.
type AsyncOptions struct {
	// Deliverer invokes the function; required.
	Deliverer consumer.AsyncDeliverer
	// DeadLetterer stores what cannot be delivered; nil drops it (counted
	// and logged), as a source without on_failure.
	DeadLetterer event.DeadLetterer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer, if set, gets the source's metrics.
	Registerer prometheus.Registerer

	// Concurrency, MaxWaiting: see the defaults.
	Concurrency int
	MaxWaiting  int
	// AckWait of the consumer (default DefaultAckWait); events in flight
	// are kept with InProgress every AckWait/3.
	AckWait time.Duration
	// FetchWait is how long one pull request waits (default
	// DefaultFetchWait).
	FetchWait time.Duration
	// StopTimeout bounds the wait for in-flight invocations at shutdown
	// (default DefaultStopTimeout).
	StopTimeout time.Duration
	// Consumer is the durable consumer, shared by every process running the
	// source; default "sluice-<source>".
	Consumer string
	// StateBucket is the KV bucket holding the retry state of events that
	// failed or were throttled; default "sluice-async-<source>".
	StateBucket string
	// KeepFor is how long an event whose dead letter omits its payload is
	// kept (keep.go) when the stream deletes terminated events: the
	// dead-letter destination's retention; ≤ 0 keeps it forever.
	KeepFor time.Duration
}

// Async is one async-mode JetStream source (SPEC §2.2): every process
// running it pulls from one durable consumer, invokes each event on its own,
// unordered, at most Concurrency at once, and leaves waiting to the server:
// a throttled or failed event is NAKed with a delay (retry_backoff, at least
// Retry-After) and comes back when it is due. An event that exhausts
// max_retry_attempts, passes max_event_age or fails permanently is
// dead-lettered, then terminated (Term).
//
// Attempts are counted from the server's delivery count minus the throttled
// deliveries, which are recorded in a KV bucket (see doc.go, "Async
// attempts"), so a restart keeps them.
type Async struct {
	name    string
	nc      *natsgo.Conn
	js      jetstream.JetStream
	src     consumer.SourceConfig
	opts    AsyncOptions
	log     *slog.Logger
	policy  redelivery.Policy // max_retry_attempts, max_event_age, retry_backoff
	metrics *consumer.AsyncMetrics

	// ensureMu serializes Ensure and guards what it sets up.
	ensureMu sync.Mutex
	cons     jetstream.Consumer
	kv       jetstream.KeyValue
	keeper   *keeper // the stream deletes terminated events: they are kept when their letters omit them; else nil

	// mu guards running and inflight.
	mu       sync.Mutex
	running  bool
	inflight map[uint64]jetstream.Msg // by stream sequence: events being handled, kept with InProgress

	// nakWithDelay hands an event back (m.NakWithDelay; tests drop it, as
	// a crash between recording the retry state and the NAK would).
	nakWithDelay func(m jetstream.Msg, delay time.Duration) error
}

// NewAsync checks the settings and returns an Async source for source name
// over src.Stream and src.Subject; Run (or Ensure) creates what it needs on
// the server. nc must stay open while it runs.
func NewAsync(name string, nc *natsgo.Conn, src consumer.SourceConfig, opts AsyncOptions) (*Async, error) {
	switch {
	case name == "":
		return nil, errors.New("nats: source needs a name")
	case nc == nil:
		return nil, fmt.Errorf("nats: source %q: no connection", name)
	case src.Stream == "" || src.Subject == "":
		return nil, fmt.Errorf("nats: source %q: stream and subject are required", name)
	case opts.Deliverer == nil:
		return nil, fmt.Errorf("nats: source %q: no Deliverer", name)
	case src.Mode != consumer.ModeAsync:
		return nil, fmt.Errorf("nats: source %q: mode %q is not async (use NewStream)", name, src.Mode)
	case src.MaxEventAge <= 0:
		return nil, fmt.Errorf("nats: source %q: max_event_age must be positive", name)
	case src.MaxRetryAttempts < 0:
		return nil, fmt.Errorf("nats: source %q: max_retry_attempts must not be negative", name)
	}
	if _, err := deliverPolicy(src); err != nil {
		return nil, fmt.Errorf("nats: source %q: %w", name, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("nats: source %q: %w", name, err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultAsyncConcurrency
	}
	if opts.MaxWaiting <= 0 {
		opts.MaxWaiting = DefaultMaxWaiting
	}
	opts.MaxWaiting = max(opts.MaxWaiting, opts.Concurrency)
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.FetchWait <= 0 {
		opts.FetchWait = DefaultFetchWait
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.Consumer == "" {
		opts.Consumer = "sluice-" + nameToken(name)
	}
	if opts.StateBucket == "" {
		opts.StateBucket = "sluice-async-" + nameToken(name)
	}
	b := src.RetryBackoff
	a := &Async{
		name: name, nc: nc, js: js, src: src, opts: opts,
		log: opts.Logger.With("source", name, "stream", src.Stream),
		policy: redelivery.Policy{
			MaxAttempts: src.MaxRetryAttempts, MaxAge: src.MaxEventAge, AgeCondition: event.EventAgeExceeded,
			Backoff: event.Backoff{Initial: b.Initial, Max: b.Max, Multiplier: b.Multiplier, Jitter: b.Jitter},
		},
		inflight:     make(map[uint64]jetstream.Msg),
		nakWithDelay: func(m jetstream.Msg, d time.Duration) error { return m.NakWithDelay(d) },
	}
	a.metrics = consumer.NewAsyncMetrics(name)
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(a.metrics); err != nil {
			return nil, fmt.Errorf("nats: source %q: register metrics: %w", name, err)
		}
	}
	return a, nil
}

// Name returns the source name.
func (a *Async) Name() string { return a.name }

// Statuses returns nil: an async source has no shards.
func (a *Async) Statuses() []shard.Status { return nil }

// Ensure creates the stream if missing (or adds the subject to it), the
// durable consumer and the retry-state bucket. Run calls it; calling it
// first reports a broker problem at start-up. It does the work once.
func (a *Async) Ensure(ctx context.Context) error {
	a.ensureMu.Lock()
	defer a.ensureMu.Unlock()
	if a.cons != nil {
		return nil
	}
	// The stream is the publishers' as much as sluice's: sluice creates
	// it if missing and adds its subject, and leaves its limits alone. One
	// it creates is a work queue: an event is removed once acknowledged
	// or terminated (dead-lettered), and kept however long sluice is down.
	st, created, changed, err := ensureStream(ctx, a.js, a.src.Stream, []string{a.src.Subject}, jetstream.WorkQueuePolicy, nil)
	if err != nil {
		return fmt.Errorf("nats: source %q: %w", a.name, err)
	}
	switch {
	case created:
		a.log.Info("stream created", "subject", a.src.Subject)
	case len(changed) > 0:
		a.log.Info("stream reconciled", "changed", changed)
	}
	dp, _ := deliverPolicy(a.src) // checked in NewAsync
	cfg := jetstream.ConsumerConfig{
		Durable:       a.opts.Consumer,
		Description:   "sluice async source " + a.name,
		FilterSubject: a.src.Subject,
		DeliverPolicy: dp,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       a.opts.AckWait,
		MaxDeliver:    -1, // sluice counts function attempts; throttles are deliveries too
		MaxAckPending: a.opts.MaxWaiting,
	}
	if dp == jetstream.DeliverByStartTimePolicy {
		t := a.src.StartingTimestamp
		cfg.OptStartTime = &t
	}
	cons, err := ensureConsumer(ctx, st, cfg)
	if err != nil {
		return fmt.Errorf("nats: source %q: %w", a.name, err)
	}
	kv, err := a.js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      a.opts.StateBucket,
		Description: "sluice: retry state of the async source " + a.name + "'s waiting events",
		History:     1,
		TTL:         a.policy.MaxAge + stateTTLMargin,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return fmt.Errorf("nats: source %q: retry-state bucket %s: %w", a.name, a.opts.StateBucket, err)
	}
	if st.CachedInfo().Config.Retention != jetstream.LimitsPolicy {
		a.keeper = &keeper{js: a.js, stream: a.src.Stream, ttl: a.opts.KeepFor}
	}
	a.cons, a.kv = cons, kv
	return nil
}

// Run creates what the source needs on the server, then invokes events until
// ctx ends, then shuts down: it stops pulling (waiting for the pull in
// progress, at most FetchWait), cancels the invocations in flight and waits
// for them (at most StopTimeout); each ends like any other (acknowledged,
// or NAKed with its retry state recorded), so nothing waits for AckWait. It
// returns an error only if it could not start.
func (a *Async) Run(ctx context.Context) error {
	a.mu.Lock()
	if a.running {
		a.mu.Unlock()
		return ErrRunning
	}
	a.running = true
	a.mu.Unlock()
	if a.opts.Registerer != nil {
		defer a.opts.Registerer.Unregister(a.metrics)
	}
	if err := a.Ensure(ctx); err != nil {
		return err
	}
	a.log.Info("async source started", "consumer", a.opts.Consumer, "concurrency", a.opts.Concurrency)

	// Invocations are cancelled once pulling stopped; their bookkeeping
	// runs on bounded contexts of its own.
	invokeCtx, stopInvokes := context.WithCancel(context.WithoutCancel(ctx))
	defer stopInvokes()
	progressCtx, stopProgress := context.WithCancel(context.WithoutCancel(ctx))
	defer stopProgress()
	var handlers, background sync.WaitGroup
	background.Go(func() { a.progressLoop(progressCtx) })

	// slots holds a token per event being handled (capacity Concurrency:
	// the bound on events this process holds); a pull asks for as many
	// events as there are free slots.
	slots := make(chan struct{}, a.opts.Concurrency)
	failures := 0
	for ctx.Err() == nil {
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			continue
		}
		n := 1
	more:
		for n < a.opts.Concurrency {
			select {
			case slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		got := 0
		batch, err := a.cons.Fetch(n, jetstream.FetchMaxWait(a.opts.FetchWait))
		if err == nil {
			for m := range batch.Messages() {
				got++
				a.track(m)
				handlers.Go(func() {
					defer func() { <-slots }()
					a.handle(invokeCtx, m)
				})
			}
			err = batch.Error()
		}
		for range n - got {
			<-slots
		}
		if err != nil {
			failures++
			if ctx.Err() == nil {
				a.log.Warn("pull failed", "consumer", a.opts.Consumer, "error", err, "failures", failures)
			}
			sleep(ctx, retryDelay(failures))
			continue
		}
		failures = 0
	}

	stopInvokes()
	done := make(chan struct{})
	go func() { handlers.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(a.opts.StopTimeout):
		a.log.Error("invocations did not end in time after cancel; their events are redelivered after AckWait", "timeout", a.opts.StopTimeout)
	}
	stopProgress()
	background.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookTimeout)
	defer cancel()
	if err := a.nc.FlushWithContext(fctx); err != nil {
		a.log.Warn("flushing the final acknowledgements failed; those events are redelivered after AckWait", "error", err)
	}
	a.log.Info("async source stopped")
	return nil
}

func (a *Async) track(m jetstream.Msg) {
	if md, err := m.Metadata(); err == nil {
		a.mu.Lock()
		a.inflight[md.Sequence.Stream] = m
		a.mu.Unlock()
	}
}

func (a *Async) untrack(seq uint64) {
	a.mu.Lock()
	delete(a.inflight, seq)
	a.mu.Unlock()
}

// progressLoop keeps the events being handled (waiting for a slot, being
// invoked, being dead-lettered) from being redelivered meanwhile.
func (a *Async) progressLoop(ctx context.Context) {
	t := time.NewTicker(a.opts.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.mu.Lock()
		msgs := make([]jetstream.Msg, 0, len(a.inflight))
		for _, m := range a.inflight {
			msgs = append(msgs, m)
		}
		a.mu.Unlock()
		for _, m := range msgs {
			_ = m.InProgress()
		}
	}
}

// asyncState is an event's retry history, kept in the state bucket under
// its stream sequence from its first failure or throttle until it is
// acknowledged or terminated.
type asyncState struct {
	// Stamp is the event's timestamp (Unix ns): a state left from a
	// deleted and re-created stream, whose sequences start over, is not
	// taken for this event's.
	Stamp     int64           `json:"stamp"`
	Throttles int             `json:"throttles"` // deliveries that ended throttled: not attempts
	Failures  int             `json:"failures"`  // function attempts that failed
	First     time.Time       `json:"firstAttemptAt"`
	Last      time.Time       `json:"lastAttemptAt"`
	LastError event.ErrorInfo `json:"lastError"`
	// Due is when the event may be invoked again (this process's clock
	// when it was handed back, plus the wait it asked the server for).
	Due time.Time `json:"dueAt,omitzero"`
	// Early counts deliveries that came before Due and were handed back
	// without an invocation: not attempts.
	Early int `json:"early,omitempty"`
}

// state is st as the redelivery policy sees it, with attempts counted.
func (st *asyncState) state(attempts int) redelivery.State {
	return redelivery.State{Attempts: attempts, Throttles: st.Throttles, First: st.First, Last: st.Last, LastError: st.LastError}
}

// update takes back what the policy changed; failures are recorded only
// when an attempt was consumed.
func (st *asyncState) update(rs redelivery.State, attempts int) {
	st.Throttles, st.First, st.Last, st.LastError = rs.Throttles, rs.First, rs.Last, rs.LastError
	if rs.Attempts != attempts {
		st.Failures = rs.Attempts
	}
}

// handle invokes one event and settles it as the redelivery policy decides:
// Ack, NakWithDelay (retry state recorded first) or dead letter then Term.
func (a *Async) handle(ctx context.Context, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		a.log.Error("a pulled message has no JetStream metadata; terminating it", "subject", m.Subject(), "error", err)
		_ = m.Term()
		return
	}
	seq := md.Sequence.Stream
	defer a.untrack(seq)
	rec := newRecord(m, md)
	now := time.Now()
	a.metrics.Received.Inc()
	a.metrics.Age.Observe(max(0, now.Sub(rec.Timestamp)).Seconds())

	key := strconv.FormatUint(seq, 10)
	st := asyncState{Stamp: rec.Timestamp.UnixNano()}
	hasState := false
	if md.NumDelivered > 1 {
		var ok bool
		if st, hasState, ok = a.loadState(ctx, key, rec); !ok {
			return // stopping: the event is redelivered and read again
		}
	}
	// A delivery before the recorded due time is handed back until then:
	// the NAK that asked for the wait may never have reached the server (a
	// crash right after the state was recorded brings the event back after
	// AckWait, which may be shorter than the backoff), and the server
	// schedules redelivery by its own clock. The delivery is recorded as
	// early (not an attempt) with the same due time before the NAK.
	if hasState && time.Now().Before(st.Due) {
		st.Early++
		a.retry(ctx, m, key, st, max(time.Until(st.Due), time.Millisecond), st.Failures)
		return
	}
	// Every earlier delivery that is not a recorded throttle or early
	// delivery counts as an attempt: the recorded failures, and deliveries
	// whose outcome was never recorded (a crash or a lost connection
	// mid-invocation: the function may have run).
	attempts := max(st.Failures, int(md.NumDelivered)-1-st.Throttles-st.Early, 0)
	rs := st.state(attempts)
	if cond, ok := a.policy.Before(&rs, rec.Timestamp, now); ok {
		a.finish(ctx, m, rec, key, hasState, cond, rs)
		return
	}

	a.policy.Begin(&rs, now)
	// The expiry bounds only the wait for a slot: an invocation that
	// started runs to its answer, however old the event grows meanwhile.
	res := a.opts.Deliverer.Deliver(ctx, rec, attempts+1, a.policy.Expiry(rec.Timestamp))
	dec := a.policy.After(&rs, res, 1, rec.Timestamp, time.Now(), ctx.Err() != nil)
	if dec.Action == redelivery.Abandon {
		// Stopping: this delivery consumed no attempt. It is recorded as
		// a throttle and handed back, so that it ends like any other and
		// is not taken for an attempt whose outcome was lost.
		rs.Throttles++
		dec = redelivery.Decision{Action: redelivery.Retry, Delay: a.policy.Delay(rs.Throttles), Throttled: true}
	}
	st.update(rs, attempts)

	switch dec.Action {
	case redelivery.Done:
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookTimeout)
		defer cancel()
		if err := m.Ack(); err != nil {
			a.log.Warn("acknowledging a delivered event failed; it will be delivered again", "sequence", seq, "error", err)
		}
		if hasState {
			a.dropState(bctx, key)
		}
	case redelivery.Retry:
		a.retry(ctx, m, key, st, dec.Delay, rs.Attempts)
	case redelivery.DeadLetter, redelivery.Split: // an event is never split
		a.finish(ctx, m, rec, key, hasState, dec.Condition, rs)
	}
}

// retry records st, then hands the event back to the server to redeliver
// after delay (the policy cut it at the event's expiry: the next delivery
// then dead-letters it on time).
func (a *Async) retry(ctx context.Context, m jetstream.Msg, key string, st asyncState, delay time.Duration, attempts int) {
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookTimeout)
	defer cancel()
	st.Due = time.Now().Add(delay)
	a.saveState(bctx, key, st)
	var err error
	if delay > 0 {
		err = a.nakWithDelay(m, delay)
	} else {
		err = m.Nak()
	}
	if err != nil {
		a.log.Warn("handing an event back for retry failed; it is redelivered after AckWait", "subject", m.Subject(), "error", err)
	}
	a.log.Debug("event retried later", "key", key, "attempts", attempts, "throttles", st.Throttles, "delay", delay, "error", st.LastError.Message)
}

// finish dead-letters the event through the policy's bounded, retried
// write (until it succeeds or the source stops; the event is kept
// meanwhile), then terminates it.
func (a *Async) finish(ctx context.Context, m jetstream.Msg, rec event.Record, key string, hasState bool,
	cond event.Condition, rs redelivery.State,
) {
	if a.opts.DeadLetterer == nil {
		a.log.Warn("dropping an undeliverable event: the source has no on_failure destination",
			"condition", cond, "sequence", rec.Offset, "attempts", rs.Attempts, "error", rs.LastError.Message)
	} else {
		letters := redelivery.Letters(a.name, a.src.Function, string(consumer.ModeAsync), cond, &rs, time.Now(), []event.Record{rec})
		if k := a.keeper; k != nil {
			// Term deletes the event: one whose letter cannot carry it
			// is kept first (keep.go), so that it can still be replayed.
			letters[0].Keep = func(ctx context.Context) error { return k.keep(ctx, rec) }
		}
		err := a.policy.Store(ctx, a.opts.DeadLetterer, letters, func(try int, err error) {
			a.log.Error("dead-letter write failed; retrying (the event is held meanwhile)",
				"condition", cond, "sequence", rec.Offset, "try", try, "error", err)
		})
		if err != nil {
			return // shutting down: the event is redelivered and ends here again
		}
	}
	a.metrics.Dropped.WithLabelValues(string(cond)).Inc()
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookTimeout)
	defer cancel()
	if err := m.TermWithReason("sluice: " + string(cond)); err != nil {
		a.log.Warn("terminating a dead-lettered event failed; it may be dead-lettered twice", "sequence", rec.Offset, "error", err)
	}
	if hasState {
		a.dropState(bctx, key)
	}
}

// loadState reads the event's retry state. A read that fails is tried
// again, the event kept in progress meanwhile, until it succeeds or ctx
// ends (ok false): going on without the state would take the event's
// recorded throttles for attempts and could dead-letter it as exhausted
// although the function never failed it (an outage of JetStream is not an
// attempt).
func (a *Async) loadState(ctx context.Context, key string, rec event.Record) (st asyncState, found, ok bool) {
	fresh := asyncState{Stamp: rec.Timestamp.UnixNano()}
	for failures := 1; ; failures++ {
		gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), bookTimeout)
		e, err := a.kv.Get(gctx, key)
		cancel()
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			return fresh, false, true
		case err == nil:
			if json.Unmarshal(e.Value(), &st) != nil || st.Stamp != fresh.Stamp {
				return fresh, true, true // not this event's; overwritten or dropped later
			}
			return st, true, true
		}
		if failures == 1 || failures%20 == 0 {
			a.log.Warn("reading an event's retry state failed; the event waits and it is read again", "key", key, "failures", failures, "error", err)
		}
		if !sleep(ctx, retryDelay(failures)) {
			return fresh, false, false
		}
	}
}

func (a *Async) saveState(ctx context.Context, key string, st asyncState) {
	b, err := json.Marshal(st)
	if err == nil {
		_, err = a.kv.Put(ctx, key, b)
	}
	if err != nil {
		a.log.Warn("recording an event's retry state failed; a throttle or an early delivery may count as an attempt", "key", key, "error", err)
	}
}

func (a *Async) dropState(ctx context.Context, key string) {
	if err := a.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		a.log.Debug("dropping an event's retry state failed; it expires with the bucket's TTL", "key", key, "error", err)
	}
}
