package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/redelivery"
	"github.com/sluicehq/sluice/shard"
)

// Defaults of AsyncOptions.
const (
	// DefaultAsyncConcurrency bounds the events of the source topic one
	// process holds at once (waiting for a concurrency slot, being invoked,
	// being moved to a retry topic or dead-lettered); the function's own
	// limits apply on top, in the dispatcher.
	DefaultAsyncConcurrency = 64
	// unsettledPerSlot × Concurrency bounds the records of the source
	// topic and retry topics that were started and are not yet behind a
	// partition's mark: one stuck event (a long invocation, a long wait for
	// a concurrency slot, a dead-letter write that keeps failing) holds the
	// mark of its partition, and the events behind it that finish stay in
	// memory until it settles. Past the bound the poll loop fetches nothing
	// more until the stuck event settles.
	unsettledPerSlot = 64
)

// AsyncOptions are the collaborators and tuning of an Async source.
type AsyncOptions struct {
	// Group is the consumer group of the source topic and its retry
	// topics; default "sluice-" + the source name.
	Group string
	// Deliverer invokes the function; required.
	Deliverer consumer.AsyncDeliverer
	// DeadLetterer stores what cannot be delivered; nil drops it (counted
	// and logged), as a source without on_failure.
	DeadLetterer event.DeadLetterer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer, if set, gets the source's metrics.
	Registerer prometheus.Registerer

	// Concurrency: see DefaultAsyncConcurrency.
	Concurrency int
	// RetryTiers are the delays of the retry topics (default
	// DefaultRetryTiers); RetryRetention their retention (default
	// DefaultRetryRetention).
	RetryTiers     []time.Duration
	RetryRetention time.Duration
	// StopTimeout, CommitTimeout: as Options.
	StopTimeout   time.Duration
	CommitTimeout time.Duration
	// FetchMaxWait: as Options.
	FetchMaxWait time.Duration

	// ClientOpts are appended to the franz-go options of every client
	// (tests, TLS, SASL).
	ClientOpts []kgo.Opt
}

// Async is one async-mode Kafka source (SPEC §2.2): a consumer-group member
// that reads the source topic and the source's retry topics, invokes each
// event on its own, unordered, and commits an offset only once every record
// before it was delivered, moved to a retry topic (acknowledged by all
// in-sync replicas) or dead-lettered. An event that must wait (throttled, or
// failed with attempts left) is written to a retry topic with its due time
// and retry state in headers, so the source's offset moves on and nothing
// waits in memory; the retry topic's partition is paused until its head
// record is due. See doc.go, "Async sources".
//
// Goroutines: Run's own, the poll loop, the committer, one per event being
// handled, the due timers of paused retry partitions, and franz-go's group
// goroutine (assigned, revoked, lost). Locks, in this order: Async.mu →
// apart.mu → franz-go's.
type Async struct {
	name    string
	topic   string
	group   string
	broker  consumer.KafkaConfig
	src     consumer.SourceConfig
	opts    AsyncOptions
	log     *slog.Logger
	policy  redelivery.Policy // max_retry_attempts, max_event_age, retry_backoff
	tiers   []retryTier
	isRetry map[string]bool // topic → it is one of the retry topics
	kopts   []kgo.Opt
	metrics *consumer.AsyncMetrics
	commits *committer

	// ensureMu serializes Ensure; ensured is set once it succeeded.
	ensureMu sync.Mutex
	ensured  bool

	// member is the group-member lifecycle (member.go); its mu guards the
	// fields below too, and serializes the poll loop's feeding with
	// assignment changes (as in Source). Its cond is also signalled when
	// an event finished.
	member[*apart]
	// parts are the partitions (of every topic of the source) this member
	// owns.
	parts  map[topicPartition]*apart
	active int // events being handled (goroutines started by dispatchLocked)
	cl     *kgo.Client
	prod   *kgo.Client

	// unsettled counts the records started and not yet behind their
	// partition's mark (see unsettledPerSlot): raised by startLocked,
	// lowered by settle and stop; read by the poll loop under mu (a change
	// is followed by a cond broadcast).
	unsettled atomic.Int64

	// hooks, when set (unit tests under testing/synctest, which cannot run
	// a network client), replace the client's pause/resume and mark calls;
	// a mark then does not wait for a commit.
	hooks *asyncHooks
}

// asyncHooks stand in for the franz-go client in unit tests.
type asyncHooks struct {
	pause func(tp topicPartition, paused bool)
	mark  func(kr *kgo.Record)
}

// setPausedLocked pauses or resumes fetching pt. Called with pt.mu held.
func (a *Async) setPausedLocked(pt *apart, paused bool) {
	pt.paused = paused
	switch tp := map[string][]int32{pt.tp.topic: {pt.tp.p}}; {
	case a.hooks != nil:
		a.hooks.pause(pt.tp, paused)
	case paused:
		a.cl.PauseFetchPartitions(tp)
	default:
		a.cl.ResumeFetchPartitions(tp)
	}
}

type topicPartition struct {
	topic string
	p     int32
}

// apart is one assigned partition of the source topic or of a retry topic.
type apart struct {
	tp     topicPartition
	retry  bool
	ctx    context.Context // its events'; ends when the partition is stopped
	cancel context.CancelFunc
	wg     sync.WaitGroup // its events being handled

	// mu guards the fields below. A mark happens entirely before revoked
	// is set, or not at all (as part.mu in source.go).
	mu      sync.Mutex
	revoked bool
	stopped bool
	// pending are the records fetched and not yet marked, in offset order;
	// the partition's checkpoint is the last of the finished prefix.
	pending []*entry
	// held (retry partitions only) are fetched records not yet started,
	// in offset order; the head waits for its due time, the partition is
	// paused meanwhile, and timer fires at the head's due time.
	held   []*entry
	paused bool
	timer  *time.Timer
}

// entry is one fetched record.
type entry struct {
	kr   *kgo.Record
	ev   retryEvent
	err  error // reading its retry headers failed (see eventOf)
	done bool  // delivered, moved to a retry topic or dead-lettered; guarded by apart.mu
}

// NewAsync checks the settings and returns an Async source for src.Topic;
// Ensure creates its retry topics, Run starts it.
func NewAsync(name string, broker consumer.KafkaConfig, src consumer.SourceConfig, opts AsyncOptions) (*Async, error) {
	switch {
	case name == "":
		return nil, errors.New("kafka: source needs a name")
	case src.Topic == "":
		return nil, fmt.Errorf("kafka: source %q: no topic", name)
	case len(broker.Seeds) == 0:
		return nil, fmt.Errorf("kafka: source %q: no seed brokers", name)
	case opts.Deliverer == nil:
		return nil, fmt.Errorf("kafka: source %q: no Deliverer", name)
	case src.Mode != consumer.ModeAsync:
		return nil, fmt.Errorf("kafka: source %q: mode %q is not async (use New)", name, src.Mode)
	case src.MaxEventAge <= 0:
		return nil, fmt.Errorf("kafka: source %q: max_event_age must be positive", name)
	case src.MaxRetryAttempts < 0:
		return nil, fmt.Errorf("kafka: source %q: max_retry_attempts must not be negative", name)
	}
	start, err := startOffset(src)
	if err != nil {
		return nil, fmt.Errorf("kafka: source %q: %w", name, err)
	}
	if opts.Group == "" {
		opts.Group = "sluice-" + name
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = DefaultAsyncConcurrency
	}
	if len(opts.RetryTiers) == 0 {
		opts.RetryTiers = DefaultRetryTiers
	}
	if opts.RetryRetention <= 0 {
		opts.RetryRetention = DefaultRetryRetention
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.CommitTimeout <= 0 {
		opts.CommitTimeout = DefaultCommitTimeout
	}
	if opts.FetchMaxWait <= 0 {
		opts.FetchMaxWait = DefaultFetchMaxWait
	}
	tiers, err := retryTopics(src.Topic, name, opts.RetryTiers)
	if err != nil {
		return nil, fmt.Errorf("kafka: source %q: %w", name, err)
	}
	b := src.RetryBackoff
	a := &Async{
		name: name, topic: src.Topic, group: opts.Group, broker: broker, src: src, opts: opts,
		log: opts.Logger.With("source", name, "topic", src.Topic),
		policy: redelivery.Policy{
			MaxAttempts: src.MaxRetryAttempts, MaxAge: src.MaxEventAge, AgeCondition: event.EventAgeExceeded,
			Backoff: event.Backoff{Initial: b.Initial, Max: b.Max, Multiplier: b.Multiplier, Jitter: b.Jitter},
		},
		tiers:   tiers,
		isRetry: make(map[string]bool, len(tiers)),
		parts:   make(map[topicPartition]*apart),
		commits: newCommitter(),
		metrics: consumer.NewAsyncMetrics(name),
	}
	a.member = member[*apart]{log: a.log, commitTimeout: opts.CommitTimeout, what: "events",
		startLocked: a.startPartsLocked, detachLocked: a.detachLocked, stop: a.stop}
	a.init()
	topics := []string{src.Topic}
	for _, t := range tiers {
		a.isRetry[t.topic] = true
		topics = append(topics, t.topic)
	}
	base, err := ClientOpts(broker)
	if err != nil {
		return nil, fmt.Errorf("kafka: source %q: %w", name, err)
	}
	a.kopts = append(append(base,
		kgo.WithLogger(kgoLogger{a.log}),
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(topics...),
		// Where the group has no commit yet: the source topic per
		// starting_position; the retry topics from their start (see
		// startRetryAtStart).
		kgo.ConsumeStartOffset(start),
		kgo.AdjustFetchOffsetsFn(a.startRetryAtStart(start)),
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(autoCommitInterval),
		kgo.OnPartitionsAssigned(a.assigned),
		kgo.OnPartitionsRevoked(a.revoked),
		kgo.OnPartitionsLost(a.lost),
		kgo.FetchMaxBytes(DefaultFetchMaxBytes),
		kgo.FetchMaxPartitionBytes(DefaultFetchMaxPartitionBytes),
		kgo.FetchMaxWait(opts.FetchMaxWait),
	), append(sessionOpts(broker), opts.ClientOpts...)...)
	if opts.Registerer != nil {
		if err := opts.Registerer.Register(a.metrics); err != nil {
			return nil, fmt.Errorf("kafka: source %q: register metrics: %w", name, err)
		}
	}
	return a, nil
}

// startRetryAtStart returns the group's offset hook: a retry partition
// without a commit starts at its first record, whatever starting_position
// says (franz-go has one start offset per client). Every retry record is an
// event whose source offset was committed once it was written, and a retry
// partition has no commit until its first record is finished, so starting it
// at its end (latest) would skip the events waiting in it after a restart or
// a rebalance.
func (a *Async) startRetryAtStart(start kgo.Offset) func(context.Context, map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
	return func(_ context.Context, offs map[string]map[int32]kgo.Offset) (map[string]map[int32]kgo.Offset, error) {
		for topic, ps := range offs {
			if !a.isRetry[topic] {
				continue
			}
			for p, o := range ps {
				if o == start { // franz-go's stand-in for "no commit"
					ps[p] = kgo.NewOffset().AtStart()
				}
			}
		}
		return offs, nil
	}
}

// Name returns the source name.
func (a *Async) Name() string { return a.name }

// Group returns the consumer group.
func (a *Async) Group() string { return a.group }

// RetryTopics returns the names of the source's retry topics, shortest
// delay first.
func (a *Async) RetryTopics() []string {
	out := make([]string, len(a.tiers))
	for i, t := range a.tiers {
		out[i] = t.topic
	}
	return out
}

// Statuses returns nil: an async source has no shards.
func (a *Async) Statuses() []shard.Status { return nil }

// Ensure creates the retry topics that are missing and reconciles their
// retention. Run calls it; calling it first reports a broker problem at
// start-up. It does the work once.
func (a *Async) Ensure(ctx context.Context) error {
	a.ensureMu.Lock()
	defer a.ensureMu.Unlock()
	if a.ensured {
		return nil
	}
	created, changed, err := ensureRetryTopics(ctx, a.broker, a.topic, a.tiers, a.opts.RetryRetention, a.opts.ClientOpts)
	if err != nil {
		return fmt.Errorf("kafka: source %q: %w", a.name, err)
	}
	if len(created) > 0 {
		a.log.Info("retry topics created", "topics", created)
	}
	if len(changed) > 0 {
		a.log.Info("retry topics reconciled", "changed", changed)
	}
	a.ensured = true
	return nil
}

// Run creates the retry topics if needed, joins the group and handles events
// until ctx ends, then shuts down: it stops polling, cancels the events in
// flight and waits for them (at most StopTimeout; an event cut short is not
// committed, so it is read again: at-least-once), commits what is finished,
// leaves the group and closes its clients. It returns an error only if it
// could not start.
func (a *Async) Run(ctx context.Context) error {
	stopWork, err := a.begin(ctx)
	if err != nil {
		return err
	}
	defer stopWork()
	if a.opts.Registerer != nil {
		defer a.opts.Registerer.Unregister(a.metrics)
	}
	if err := a.Ensure(ctx); err != nil {
		return err
	}
	// Batches sized to what the retry topics take (Ensure sized them to the
	// source topic's limit); franz-go's default when they do not say.
	limit, err := TopicMaxMessageBytes(ctx, a.broker, a.tiers[0].topic)
	if err != nil {
		a.log.Warn("the retry topics' size limit is unknown; assuming franz-go's default", "error", err)
		limit = 0
	}
	prod, err := newRetryProducer(a.broker, limit, a.opts.ClientOpts)
	if err != nil {
		return fmt.Errorf("kafka: source %q: %w", a.name, err)
	}
	defer prod.Close()
	cl, err := kgo.NewClient(a.kopts...)
	if err != nil {
		return fmt.Errorf("kafka: source %q: %w", a.name, err)
	}
	a.mu.Lock()
	a.cl, a.prod = cl, prod
	a.mu.Unlock()
	a.log.Info("async source started", "group", a.group, "concurrency", a.opts.Concurrency, "retry_topics", a.RetryTopics())

	stopCommits := a.runCommits(ctx, cl, a.commits)
	pollDone := make(chan struct{})
	go func() {
		defer close(pollDone)
		a.poll(ctx, cl)
	}()
	<-ctx.Done()
	a.mu.Lock()
	a.cond.Broadcast() // the poll loop may wait for a free slot
	a.mu.Unlock()
	<-pollDone
	a.shutdown(ctx, cl, stopCommits)
	a.log.Info("async source stopped")
	return nil
}

// poll is the poll loop. It fetches only while fewer than Concurrency events
// are being handled, and at most as many records as there are free slots,
// so the events held in memory stay bounded (records of retry partitions
// that are not due yet are bounded apart: see feedLocked).
func (a *Async) poll(ctx context.Context, cl *kgo.Client) {
	maxUnsettled := int64(unsettledPerSlot * a.opts.Concurrency)
	next := func() int {
		for (a.active >= a.opts.Concurrency || a.unsettled.Load() >= maxUnsettled) && ctx.Err() == nil {
			a.cond.Wait()
		}
		return min(a.opts.Concurrency-a.active, int(maxUnsettled-a.unsettled.Load()))
	}
	a.pollLoop(ctx, cl, next, func(fp kgo.FetchTopicPartition) {
		pt := a.parts[topicPartition{fp.Topic, fp.Partition}]
		if pt == nil || len(fp.Records) == 0 {
			return // revoked since the fetch: not marked, read again by the next owner
		}
		a.feedLocked(pt, fp.Records)
	})
}

// feedLocked takes fetched records of pt. A record of the source topic is
// handled at once. A record of a retry topic is held until its due time:
// when the head of the partition is not due, the partition is paused (so it
// fetches nothing more: what a poll returns for it is at most one poll's
// worth, the bound on held records) and a timer starts the head when it is
// due. Called with a.mu held.
func (a *Async) feedLocked(pt *apart, krs []*kgo.Record) {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.stopped {
		return
	}
	for _, kr := range krs {
		e := &entry{kr: kr}
		e.ev, e.err = eventOf(kr, a.name)
		pt.pending = append(pt.pending, e)
		if pt.retry {
			pt.held = append(pt.held, e)
		} else {
			a.startLocked(pt, e)
		}
	}
	if pt.retry {
		a.pumpLocked(pt)
	}
}

// pumpLocked starts the held records of retry partition pt that are due, in
// order, and pauses the partition while its head is not due (resuming it
// once nothing is held). Called with a.mu and pt.mu held.
func (a *Async) pumpLocked(pt *apart) {
	if pt.stopped {
		return
	}
	now := time.Now()
	for len(pt.held) > 0 {
		e := pt.held[0]
		if wait := e.ev.due.Sub(now); wait > 0 {
			if !pt.paused {
				a.setPausedLocked(pt, true)
			}
			if pt.timer == nil {
				pt.timer = time.AfterFunc(wait, func() {
					a.mu.Lock()
					defer a.mu.Unlock()
					pt.mu.Lock()
					defer pt.mu.Unlock()
					pt.timer = nil
					a.pumpLocked(pt)
				})
			}
			return
		}
		pt.held[0] = nil
		pt.held = pt.held[1:]
		a.startLocked(pt, e)
	}
	if pt.paused {
		a.setPausedLocked(pt, false)
	}
}

// startLocked starts handling e. Called with a.mu and pt.mu held.
func (a *Async) startLocked(pt *apart, e *entry) {
	a.active++
	a.unsettled.Add(1)
	pt.wg.Add(1)
	go func() {
		defer func() {
			pt.wg.Done()
			a.mu.Lock()
			a.active--
			a.cond.Broadcast()
			a.mu.Unlock()
		}()
		a.handle(pt, e)
	}()
}

// handle invokes one event and settles it: delivered, moved to a retry
// topic, or dead-lettered, then marked — as the redelivery policy decides.
// An event whose partition stops (revoke, shutdown) before it is settled is
// left unmarked: it is read again from the last commit.
func (a *Async) handle(pt *apart, e *entry) {
	ctx := pt.ctx
	ev := e.ev
	if e.err != nil {
		a.log.Warn("a retry record has unreadable retry headers; handling it as a new event",
			"retry_topic", e.kr.Topic, "partition", e.kr.Partition, "offset", e.kr.Offset, "error", e.err)
	}
	now := time.Now()
	a.metrics.Received.Inc()
	a.metrics.Age.Observe(max(0, now.Sub(ev.rec.Timestamp)).Seconds())
	st := ev.state()
	if cond, ok := a.policy.Before(&st, ev.rec.Timestamp, now); ok {
		a.giveUp(pt, e, &ev, cond)
		return
	}
	a.policy.Begin(&st, now)
	// The expiry bounds only the wait for a slot: an invocation that
	// started runs to its answer, however old the event grows meanwhile.
	res := a.opts.Deliverer.Deliver(ctx, ev.rec, st.Attempts+1, a.policy.Expiry(ev.rec.Timestamp))
	dec := a.policy.After(&st, res, 1, ev.rec.Timestamp, time.Now(), ctx.Err() != nil)
	ev.setState(st)
	switch dec.Action {
	case redelivery.Done:
		a.settle(pt, e)
	case redelivery.Retry:
		a.retry(pt, e, &ev, dec.Delay)
	case redelivery.DeadLetter:
		a.giveUp(pt, e, &ev, dec.Condition)
	case redelivery.Abandon, redelivery.Split: // stopping: the event is read again (an event is never split)
	}
}

// retry writes ev to the retry tier of delay, due after delay (the policy
// cut it at the event's expiry, when it is then dead-lettered on time),
// retrying the write until it is acknowledged or the partition stops; then
// settles it.
func (a *Async) retry(pt *apart, e *entry, ev *retryEvent, delay time.Duration) {
	ev.due = time.Now().Add(delay)
	tier := a.tiers[tierFor(a.tiers, delay)]
	kr := retryRecord(ev, a.name, tier.topic)
	// A write is not cut short when the partition stops: franz-go may fail
	// a record already on the wire when its context ends, and the event
	// would then be handled again from the source although its retry record
	// exists (a second retry chain). The write is bounded by its own
	// timeout (produceRetry), and stop waits for it.
	err := a.policy.Persist(pt.ctx, 0, func(wctx context.Context) error {
		err := produceRetry(wctx, a.prod, kr)
		if errors.Is(err, errRetryTooLarge) {
			return redelivery.Permanent(err) // no write of it can succeed
		}
		return err
	}, func(try int, err error) {
		a.log.Error("writing an event to its retry topic failed; retrying (the event is held meanwhile)",
			"retry_topic", tier.topic, "try", try, "error", err)
	})
	if errors.Is(err, errRetryTooLarge) {
		// Retrying it forever would hold the partition: dead-letter it now,
		// with the condition that says why (the store leaves its payload out
		// if the destination cannot take it either).
		a.log.Warn("an event is too large for its retry topic; dead-lettering it",
			"retry_topic", tier.topic, "origin_partition", ev.rec.Partition, "origin_offset", ev.rec.Offset, "error", err)
		a.giveUp(pt, e, ev, event.RetryTooLarge)
		return
	}
	if err != nil {
		return // the partition stopped
	}
	a.log.Debug("event retried later", "origin_partition", ev.rec.Partition, "origin_offset", ev.rec.Offset,
		"attempts", ev.attempts, "throttles", ev.throttles, "delay", delay, "retry_topic", tier.topic, "error", ev.lastError.Message)
	a.settle(pt, e)
}

// giveUp dead-letters ev with cond through the policy's bounded, retried
// write (until it succeeds or the partition stops; the event is held
// meanwhile), or drops it without a destination; then settles it. The dead
// letter carries the original record's coordinates.
func (a *Async) giveUp(pt *apart, e *entry, ev *retryEvent, cond event.Condition) {
	if a.opts.DeadLetterer == nil {
		a.log.Warn("dropping an undeliverable event: the source has no on_failure destination",
			"condition", cond, "origin_partition", ev.rec.Partition, "origin_offset", ev.rec.Offset,
			"attempts", ev.attempts, "error", ev.lastError.Message)
	} else {
		st := ev.state()
		letters := redelivery.Letters(a.name, a.src.Function, string(consumer.ModeAsync), cond, &st, time.Now(), []event.Record{ev.rec})
		err := a.policy.Store(pt.ctx, a.opts.DeadLetterer, letters, func(try int, err error) {
			a.log.Error("dead-letter write failed; retrying (the event is held meanwhile)",
				"condition", cond, "origin_partition", ev.rec.Partition, "origin_offset", ev.rec.Offset, "try", try, "error", err)
		})
		if err != nil {
			return // the partition stopped
		}
	}
	a.metrics.Dropped.WithLabelValues(string(cond)).Inc()
	a.settle(pt, e)
}

// settle marks e finished and moves the partition's mark past the finished
// prefix of its pending records; then waits until that mark is committed
// (coalesced with the other partitions' marks), so that a crash repeats
// little finished work. Stopping the partition cuts the wait short.
func (a *Async) settle(pt *apart, e *entry) {
	pt.mu.Lock()
	e.done = true
	var last *kgo.Record
	n := 0
	for n < len(pt.pending) && pt.pending[n].done {
		last = pt.pending[n].kr
		pt.pending[n] = nil
		n++
	}
	pt.pending = pt.pending[n:]
	if !pt.stopped { // stop took the partition's records out of the count
		a.unsettled.Add(-int64(n))
	}
	marked := last != nil && !pt.revoked
	switch {
	case !marked:
	case a.hooks != nil:
		a.hooks.mark(last)
		marked = false
	default:
		a.cl.MarkCommitRecords(last)
	}
	pt.mu.Unlock()
	if marked {
		a.commits.wait(pt.ctx)
	}
}

// assigned starts handling the newly assigned partitions of the source
// topic and of the retry topics, after fencing the poll loop as
// Source.assigned does (a poll that began before an earlier revoke of the
// same partition must not feed its stale records to the new owner state).
func (a *Async) assigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	if len(assigned) > 0 {
		a.member.assigned(cl, assigned, assigned)
	}
}

// startPartsLocked takes up the partitions of m of the source topic and of
// the retry topics that are new to this member. Called with a.mu held.
func (a *Async) startPartsLocked(_ *kgo.Client, m map[string][]int32) {
	for topic, ps := range m {
		if topic != a.topic && !a.isRetry[topic] {
			continue
		}
		for _, p := range ps {
			tp := topicPartition{topic, p}
			if a.parts[tp] != nil {
				continue
			}
			ctx, cancel := context.WithCancel(a.workCtx)
			a.parts[tp] = &apart{tp: tp, retry: a.isRetry[topic], ctx: ctx, cancel: cancel}
		}
	}
}

// revoked stops the revoked partitions' events (waiting for them, at most
// StopTimeout), fences their marks, and commits what was marked, so the
// next owner starts right after it.
func (a *Async) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	a.member.revoked(ctx, cl, revoked, revoked)
}

// lost stops the lost partitions' events with their marks fenced first:
// the partitions may already be someone else's. Nothing is committed.
func (a *Async) lost(_ context.Context, cl *kgo.Client, lost map[string][]int32) {
	a.member.lost(cl, lost, lost)
}

// detachLocked removes the partitions of m (all of them when m is nil)
// from a.parts and returns them. Called with a.mu held.
func (a *Async) detachLocked(m map[string][]int32) []*apart {
	var out []*apart
	if m == nil {
		for tp, pt := range a.parts {
			out = append(out, pt)
			delete(a.parts, tp)
		}
		return out
	}
	for topic, ps := range m {
		for _, p := range ps {
			tp := topicPartition{topic, p}
			if pt := a.parts[tp]; pt != nil {
				out = append(out, pt)
				delete(a.parts, tp)
			}
		}
	}
	return out
}

// stop ends parts: no more records start (held ones are dropped unmarked),
// the events being handled are cancelled and waited for together (at most
// StopTimeout), and the marks are fenced — first with fenceFirst (lost),
// else after the wait (an event that settles meanwhile is still marked).
func (a *Async) stop(parts []*apart, fenceFirst bool) {
	for _, pt := range parts {
		pt.mu.Lock()
		pt.stopped = true
		// Its started records leave the count now (held ones never
		// entered it); settle does not count them again once stopped.
		a.unsettled.Add(-int64(len(pt.pending) - len(pt.held)))
		pt.held = nil
		if pt.timer != nil {
			pt.timer.Stop()
			pt.timer = nil
		}
		pt.paused = false
		if fenceFirst {
			pt.revoked = true
		}
		pt.mu.Unlock()
		pt.cancel()
	}
	a.mu.Lock()
	a.cond.Broadcast() // the poll loop may wait for unsettled to drop
	a.mu.Unlock()
	done := make(chan struct{})
	go func() {
		for _, pt := range parts {
			pt.wg.Wait()
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(a.opts.StopTimeout):
		a.log.Error("events did not stop in time after cancel; abandoning them (their Deliverer ignores ctx)",
			"timeout", a.opts.StopTimeout)
	}
	for _, pt := range parts {
		pt.mu.Lock()
		pt.revoked = true
		pt.mu.Unlock()
	}
}
