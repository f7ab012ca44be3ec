package nats

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// Defaults of StreamOptions (and, where they apply, AsyncOptions).
const (
	// DefaultAckWait is the consumers' AckWait. sluice holds every message
	// it has not acknowledged yet (buffered, in flight, throttled) with
	// InProgress every AckWait/3, so AckWait bounds only how long the
	// messages of a process that died stay invisible, not how long a
	// function may run. The config sets it per broker
	// (brokers.<name>.nats.ack_wait).
	DefaultAckWait = consumer.DefaultNATSAckWait
	// DefaultFetchWait is how long one pull request waits for messages.
	// Shutdown waits for the pull in progress (cancelling it would drop
	// messages already on their way, which would then come back after
	// AckWait, out of order), so it is short.
	DefaultFetchWait = 5 * time.Second
	// DefaultStopTimeout bounds the wait for a shard's in-flight delivery
	// once cancelled (a Deliverer honours ctx; this is for one that does
	// not).
	DefaultStopTimeout = 15 * time.Second
	// DefaultInfoRefresh is how often each partition consumer's info is read
	// for the lag and the pinned client.
	DefaultInfoRefresh = 5 * time.Second

	// PriorityGroup is the priority group of every partition consumer: the
	// server pins each partition to one puller of this group.
	PriorityGroup = "sluice"

	// minServerMajor.minServerMinor is the first nats-server with priority
	// groups (pinned clients).
	minServerMajor, minServerMinor = 2, 11
)

// ErrRunning is returned by a second call to Run.
var ErrRunning = errors.New("nats: source already running")

// StreamOptions are the collaborators and tuning of a Stream.
type StreamOptions struct {
	// Worker configures each partition's shard engine; its Source defaults
	// to the source name.
	Worker shard.WorkerConfig
	// Deliverer invokes the function; required.
	Deliverer shard.Deliverer
	// DeadLetterer stores what cannot be delivered; nil drops it (counted
	// and logged), as a source without on_failure.
	DeadLetterer event.DeadLetterer
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Registerer, if set, gets the source's metrics (metrics.go).
	Registerer prometheus.Registerer
	// KeepFor: as AsyncOptions.KeepFor, for a stream whose acknowledged
	// messages are deleted (work queue or interest retention).
	KeepFor time.Duration

	// AckWait of the partition consumers (default DefaultAckWait).
	AckWait time.Duration
	// PinnedTTL is how long a partition stays pinned to a process that
	// stopped pulling (it died) before another process may take it over
	// (default 2 × AckWait; at least 4/3 × AckWait, so that the dead
	// process's messages are up for redelivery, in order, before the next
	// owner pulls anything newer).
	PinnedTTL time.Duration
	// FetchWait is how long one pull request waits (default
	// DefaultFetchWait, at most PinnedTTL/4: pulls renew the pin).
	FetchWait time.Duration
	// StopTimeout and InfoRefresh: see the defaults.
	StopTimeout time.Duration
	InfoRefresh time.Duration
	// ConsumerPrefix names the partition consumers "<prefix>-<partition>";
	// default "sluice-<source>".
	ConsumerPrefix string
	// AckPipelineDepth is how many checkpoints a shard's lane may leave
	// unconfirmed by the server (commit_pipeline_depth, as on Kafka; a
	// shard of N lanes leaves N × AckPipelineDepth). 0: every batch waits
	// for the server's confirmation of its acknowledgements before the lane
	// takes its next. With depth d, a partition's acknowledgements are sent
	// in order by one goroutine, coalescing what is queued, and a lane waits
	// only for the confirmation of the checkpoint d back: a kill -9
	// redelivers at most (d + 1) × batch_size messages per partition with
	// parallelization_factor 1. The configuration does not set it (sources'
	// commit_pipeline_depth is Kafka's): measured in BenchmarkStreamVsBareFetch
	// it did not raise throughput (BENCHMARKS.md), so `sluice run` keeps the
	// tighter bound of the batch in flight.
	AckPipelineDepth int
}

// Stream is one stream-mode JetStream source. Publishers publish to the
// source's subject ("clicks.*", the "*" being the key); the stream's subject
// transform stores each message under a partition subject
// ("clicks.<p>.<key>", p a hash of the key); one durable pull consumer per
// partition feeds one shard.Worker, and a message is acknowledged only once
// its worker checkpointed it (delivered or dead-lettered).
//
// Each partition consumer is a pinned-client priority group: the server
// delivers a partition to one process at a time, and moves it to another
// process only after the first stopped pulling for PinnedTTL (or released
// it at shutdown). doc.go describes the sequence and its limits.
type Stream struct {
	name          string
	nc            *natsgo.Conn
	js            jetstream.JetStream
	src           consumer.SourceConfig
	pt            partitioning
	opts          StreamOptions
	log           *slog.Logger
	fetchBatch    int // messages asked for by one pull
	maxAckPending int // the server's bound on unacknowledged messages per partition
	ackDepth      int // checkpoints a shard leaves unconfirmed: AckPipelineDepth × lanes
	metrics       prometheus.Collector

	// ensureMu serializes Ensure and guards what it sets up.
	ensureMu  sync.Mutex
	stream    jetstream.Stream
	consumers []jetstream.Consumer // by partition

	// mu guards running and parts.
	mu      sync.Mutex
	running bool
	parts   []*partition
}

// NewStream checks the settings and returns a Stream for source name over
// src.Stream; Run (or Ensure) creates or reconciles the stream and its
// partition consumers. nc must stay open while the Stream runs.
func NewStream(name string, nc *natsgo.Conn, src consumer.SourceConfig, opts StreamOptions) (*Stream, error) {
	switch {
	case name == "":
		return nil, errors.New("nats: source needs a name")
	case nc == nil:
		return nil, fmt.Errorf("nats: source %q: no connection", name)
	case src.Stream == "":
		return nil, fmt.Errorf("nats: source %q: no stream", name)
	case opts.Deliverer == nil:
		return nil, fmt.Errorf("nats: source %q: no Deliverer", name)
	case src.Mode != "" && src.Mode != consumer.ModeStream:
		return nil, fmt.Errorf("nats: source %q: mode %q is not stream (use NewAsync)", name, src.Mode)
	}
	pt, err := newPartitioning(src.Subject, src.Partitions)
	if err != nil {
		return nil, fmt.Errorf("nats: source %q: %w", name, err)
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
	if opts.AckWait <= 0 {
		opts.AckWait = DefaultAckWait
	}
	if opts.PinnedTTL <= 0 {
		opts.PinnedTTL = 2 * opts.AckWait
	}
	if opts.PinnedTTL*3 < opts.AckWait*4 {
		return nil, fmt.Errorf("nats: source %q: PinnedTTL %s is less than 4/3 of AckWait %s: a new owner could pull newer messages before a dead owner's were up for redelivery",
			name, opts.PinnedTTL, opts.AckWait)
	}
	if opts.FetchWait <= 0 {
		opts.FetchWait = DefaultFetchWait
	}
	opts.FetchWait = min(opts.FetchWait, opts.PinnedTTL/4)
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.InfoRefresh <= 0 {
		opts.InfoRefresh = DefaultInfoRefresh
	}
	if opts.ConsumerPrefix == "" {
		opts.ConsumerPrefix = "sluice-" + nameToken(name)
	}
	w := &opts.Worker
	if w.Source == "" {
		w.Source = name
	}
	// The worker's own defaults, made explicit: the fetch sizes and the
	// server's MaxAckPending are derived from them.
	*w = w.WithDefaults()
	par := w.ParallelizationFactor
	s := &Stream{
		name: name, nc: nc, js: js, src: src, pt: pt, opts: opts,
		log:        opts.Logger.With("source", name, "stream", src.Stream),
		fetchBatch: min(w.BatchSize*par, w.Buffer),
	}
	// A partition holds at most Buffer records before its worker pauses it,
	// plus what the pull in progress still brings, plus the checkpoints
	// whose acknowledgements are not confirmed yet.
	s.ackDepth = max(opts.AckPipelineDepth, 0) * par
	s.maxAckPending = w.Buffer + s.fetchBatch + s.ackDepth*w.BatchSize
	if opts.Registerer != nil {
		c := consumer.NewShardCollector(name, func() []consumer.ShardLoad {
			return shardLoads(s.Shards())
		})
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("nats: source %q: register metrics: %w", name, err)
		}
		s.metrics = c
	}
	return s, nil
}

// Name returns the source name.
func (s *Stream) Name() string { return s.name }

// ConsumerName returns the durable consumer of partition p.
func (s *Stream) ConsumerName(p int) string { return s.opts.ConsumerPrefix + "-" + strconv.Itoa(p) }

// Encode returns the request body for a batch of this stream's records
// (EncodeEvent), for the Deliverer.
func (s *Stream) Encode(recs []event.Record) ([]byte, error) { return EncodeEvent(s.src.Stream, recs) }

// Ensure creates the stream with its partitioning transform, or reconciles
// an existing one (adding the subject, setting the transform), and creates
// or updates the partition consumers. Run calls it; calling it first reports
// a broker problem at start-up. It does the work once.
func (s *Stream) Ensure(ctx context.Context) error {
	s.ensureMu.Lock()
	defer s.ensureMu.Unlock()
	if s.stream != nil {
		return nil
	}
	if err := checkServer(s.nc); err != nil {
		return fmt.Errorf("nats: source %q: %w", s.name, err)
	}
	st, err := s.ensureStream(ctx)
	if err != nil {
		return fmt.Errorf("nats: source %q: %w", s.name, err)
	}
	consumers := make([]jetstream.Consumer, s.pt.partitions)
	for p := range consumers {
		c, err := ensureConsumer(ctx, st, s.consumerConfig(p))
		if err != nil {
			return fmt.Errorf("nats: source %q: partition %d: %w", s.name, p, err)
		}
		consumers[p] = c
	}
	s.warnLeftovers(ctx, st)
	if st.CachedInfo().Config.Retention != jetstream.LimitsPolicy && s.opts.DeadLetterer != nil {
		// Acknowledging deletes a record (a work queue): one whose letter
		// omits it is kept first (keep.go). Workers start after Ensure.
		s.opts.DeadLetterer = keepingLetterer{next: s.opts.DeadLetterer,
			k: &keeper{js: s.js, stream: s.src.Stream, ttl: s.opts.KeepFor}}
	}
	s.stream, s.consumers = st, consumers
	return nil
}

// ensureStream creates or reconciles the partitioned stream.
func (s *Stream) ensureStream(ctx context.Context) (jetstream.Stream, error) {
	transform := &jetstream.SubjectTransformConfig{Source: s.pt.subject, Destination: s.pt.destination()}
	st, err := s.js.Stream(ctx, s.src.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		st, err = s.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:             s.src.Stream,
			Description:      "sluice source " + s.name + ": publish to " + s.pt.subject + ", the * being the key",
			Subjects:         []string{s.pt.subject},
			SubjectTransform: transform,
			Retention:        jetstream.LimitsPolicy,
			Storage:          jetstream.FileStorage,
		})
		if err == nil {
			s.log.Info("stream created", "subject", s.pt.subject, "partitions", s.pt.partitions, "transform", transform.Destination)
			return st, nil
		}
		if !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil, fmt.Errorf("create stream %s: %w", s.src.Stream, err)
		}
		st, err = s.js.Stream(ctx, s.src.Stream) // created by another process meanwhile
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", s.src.Stream, err)
	}
	cfg := st.CachedInfo().Config
	var changed []string
	if !slices.ContainsFunc(cfg.Subjects, func(have string) bool { return subsumes(have, s.pt.subject) }) {
		cfg.Subjects = append(cfg.Subjects, s.pt.subject)
		changed = append(changed, "subjects: +"+s.pt.subject)
	}
	if t := cfg.SubjectTransform; t == nil || *t != *transform {
		old := "none"
		if t != nil {
			old = t.Source + " -> " + t.Destination
		}
		changed = append(changed, fmt.Sprintf("subject_transform: %s => %s -> %s", old, transform.Source, transform.Destination))
		cfg.SubjectTransform = transform
	}
	if len(changed) == 0 {
		s.log.Info("stream up to date", "subject", s.pt.subject, "partitions", s.pt.partitions)
		return st, nil
	}
	if st, err = s.js.UpdateStream(ctx, cfg); err != nil {
		return nil, fmt.Errorf("update stream %s (%s): %w", s.src.Stream, strings.Join(changed, "; "), err)
	}
	s.log.Warn("stream reconciled: messages already stored keep their partition; a new partition count moves keys to other partitions",
		"changed", strings.Join(changed, "; "))
	return st, nil
}

func (s *Stream) consumerConfig(p int) jetstream.ConsumerConfig {
	dp, _ := deliverPolicy(s.src) // checked in NewStream
	cfg := jetstream.ConsumerConfig{
		Durable:        s.ConsumerName(p),
		Description:    fmt.Sprintf("sluice source %s, partition %d of %d", s.name, p, s.pt.partitions),
		FilterSubject:  s.pt.filter(p),
		DeliverPolicy:  dp,
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        s.opts.AckWait,
		MaxDeliver:     -1, // the shard engine counts attempts; a redelivery is not one
		MaxAckPending:  s.maxAckPending,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      s.opts.PinnedTTL,
	}
	if dp == jetstream.DeliverByStartTimePolicy {
		t := s.src.StartingTimestamp
		cfg.OptStartTime = &t
	}
	return cfg
}

func deliverPolicy(src consumer.SourceConfig) (jetstream.DeliverPolicy, error) {
	switch src.StartingPosition {
	case consumer.TrimHorizon, "":
		return jetstream.DeliverAllPolicy, nil
	case consumer.Latest:
		return jetstream.DeliverNewPolicy, nil
	case consumer.AtTimestamp:
		if src.StartingTimestamp.IsZero() {
			return 0, errors.New("starting_position at_timestamp needs starting_timestamp")
		}
		return jetstream.DeliverByStartTimePolicy, nil
	default:
		return 0, fmt.Errorf("unknown starting_position %q", src.StartingPosition)
	}
}

// ensureConsumer creates a durable consumer or updates an existing one. Where
// it starts is decided once, at creation: an existing consumer keeps its
// deliver policy (the server refuses to change it, and the position is the
// consumer's own state anyway).
func ensureConsumer(ctx context.Context, st jetstream.Stream, cfg jetstream.ConsumerConfig) (jetstream.Consumer, error) {
	for range 2 {
		c, err := st.Consumer(ctx, cfg.Durable)
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			c, err = st.CreateConsumer(ctx, cfg)
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue // created by another process meanwhile, differently: update it
			}
			if err != nil {
				return nil, fmt.Errorf("create consumer %s: %w", cfg.Durable, err)
			}
			return c, nil
		}
		if err != nil {
			return nil, fmt.Errorf("consumer %s: %w", cfg.Durable, err)
		}
		have := c.CachedInfo().Config
		cfg.DeliverPolicy, cfg.OptStartSeq, cfg.OptStartTime = have.DeliverPolicy, have.OptStartSeq, have.OptStartTime
		c, err = st.UpdateConsumer(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("update consumer %s: %w", cfg.Durable, err)
		}
		return c, nil
	}
	return nil, fmt.Errorf("create consumer %s: created and changed concurrently; try again", cfg.Durable)
}

// warnLeftovers logs partition consumers of this source beyond the
// configured partitions (the count went down): nobody consumes them, and
// messages stored in their partitions stay there.
func (s *Stream) warnLeftovers(ctx context.Context, st jetstream.Stream) {
	names := st.ConsumerNames(ctx)
	prefix := s.opts.ConsumerPrefix + "-"
	for n := range names.Name() {
		rest, ok := strings.CutPrefix(n, prefix)
		if !ok {
			continue
		}
		if p, err := strconv.Atoi(rest); err == nil && p >= s.pt.partitions {
			s.log.Warn("a partition consumer from an earlier, larger partitions setting is not consumed; messages left in its partition stay undelivered",
				"consumer", n, "partitions", s.pt.partitions)
		}
	}
	if err := names.Err(); err != nil && ctx.Err() == nil {
		s.log.Debug("listing consumers failed", "error", err)
	}
}

// checkServer refuses servers without pinned-client priority groups: there,
// every process running the source would pull every partition.
func checkServer(nc *natsgo.Conn) error {
	v := nc.ConnectedServerVersion()
	major, minor, ok := parseVersion(v)
	if !ok {
		return fmt.Errorf("cannot tell the nats-server version (%q); stream mode needs %d.%d or later", v, minServerMajor, minServerMinor)
	}
	if major < minServerMajor || major == minServerMajor && minor < minServerMinor {
		return fmt.Errorf("nats-server %s is too old: stream mode needs %d.%d or later (pinned-client priority groups keep each partition on one process)",
			v, minServerMajor, minServerMinor)
	}
	return nil
}

func parseVersion(v string) (major, minor int, ok bool) {
	v = strings.TrimPrefix(v, "v")
	parts := strings.SplitN(v, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	return major, minor, err1 == nil && err2 == nil
}

// subsumes reports whether every subject matching pattern b also matches
// pattern a.
func subsumes(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i, t := range at {
		switch {
		case t == ">":
			return len(bt) > i
		case i >= len(bt):
			return false
		case t == "*":
			if bt[i] == ">" {
				return false
			}
		case t != bt[i]:
			return false
		}
	}
	return len(at) == len(bt)
}

// Run creates or reconciles the stream and its consumers, then delivers
// until ctx ends, then shuts down: it stops pulling (waiting for the pull in
// progress, at most FetchWait), stops every worker (in-flight deliveries see
// their context cancelled; what they did not finish is redelivered), NAKs
// every message not checkpointed, in order, so it is up for redelivery at
// once, and unpins the partitions it owns so that another process takes them
// over without waiting for PinnedTTL. It returns an error only if it could
// not start.
func (s *Stream) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return ErrRunning
	}
	s.running = true
	s.mu.Unlock()
	if s.metrics != nil {
		defer s.opts.Registerer.Unregister(s.metrics)
	}
	if err := s.Ensure(ctx); err != nil {
		return err
	}

	// Workers and the InProgress heartbeat outlive ctx by a little: they
	// are stopped in order once pulling stopped.
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	parts := make([]*partition, s.pt.partitions)
	for p := range parts {
		parts[p] = &partition{
			s: s, p: int32(p), name: s.ConsumerName(p), cons: s.consumers[p],
			resume: make(chan struct{}, 1),
		}
		parts[p].startAcks()
		parts[p].startWorker(workCtx)
	}
	s.mu.Lock()
	s.parts = parts
	s.mu.Unlock()
	s.refreshInfo(ctx, parts)
	s.log.Info("source started", "partitions", len(parts), "consumers", s.opts.ConsumerPrefix+"-<p>")

	var pulling, background sync.WaitGroup
	for _, pt := range parts {
		pulling.Go(func() { pt.fetchLoop(ctx, workCtx) })
	}
	background.Go(func() { s.progressLoop(workCtx, parts) })
	pulling.Go(func() { s.infoLoop(ctx, parts) })
	<-ctx.Done()
	pulling.Wait() // nothing more is pushed

	deadline := time.NewTimer(s.opts.StopTimeout)
	defer deadline.Stop()
	for _, pt := range parts {
		pt.cancelWorker()
	}
	for _, pt := range parts {
		pt.waitWorker(deadline.C)
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.opts.StopTimeout)
	defer cancel()
	for _, pt := range parts {
		pt.stopAcks(rctx)
	}
	for _, pt := range parts {
		pt.release(rctx)
	}
	if err := s.nc.FlushWithContext(rctx); err != nil {
		s.log.Warn("flushing the final acknowledgements failed; unacknowledged messages are redelivered after AckWait", "error", err)
	}
	stopWork()
	background.Wait()
	s.log.Info("source stopped")
	return nil
}

// progressLoop sends InProgress for every held message every AckWait/3, so
// that neither a long invocation nor a throttled, retrying or blocked shard
// lets the server redeliver what a worker still holds.
func (s *Stream) progressLoop(ctx context.Context, parts []*partition) {
	t := time.NewTicker(s.opts.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, pt := range parts {
			pt.progress()
		}
	}
}

// infoLoop reads each partition consumer's info every InfoRefresh: the lag
// and which client the partition is pinned to.
func (s *Stream) infoLoop(ctx context.Context, parts []*partition) {
	t := time.NewTicker(s.opts.InfoRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		s.refreshInfo(ctx, parts)
	}
}

func (s *Stream) refreshInfo(ctx context.Context, parts []*partition) {
	for _, pt := range parts {
		ictx, cancel := context.WithTimeout(ctx, s.opts.InfoRefresh)
		info, err := pt.cons.Info(ictx)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("reading consumer info failed", "consumer", pt.name, "error", err)
			}
			continue
		}
		pinned := ""
		for _, g := range info.PriorityGroups {
			if g.Group == PriorityGroup {
				pinned = g.PinnedClientID
			}
		}
		pt.mu.Lock()
		pt.lag = int64(info.NumPending) + int64(info.NumAckPending)
		pt.pinnedTo = pinned
		pt.mu.Unlock()
	}
}

// ShardStatus is a partition as GET /v1/shards shows it: the worker's status
// with the partition's lag and iterator age.
type ShardStatus struct {
	shard.Status
	// Consumer is the partition's durable consumer.
	Consumer string
	// Lag is the messages of the partition not yet acknowledged: not
	// delivered yet plus delivered and not acknowledged (the consumer's
	// NumPending + NumAckPending, as last read).
	Lag int64
	// IteratorAge is now − the timestamp of the oldest message not yet
	// checkpointed; 0 when there is none.
	IteratorAge time.Duration
	// Pinned reports that the server delivers this partition to this
	// process; false while nobody is pinned yet.
	Pinned bool
}

// Statuses returns the status of each partition this process owns (is
// pinned to, or that nobody is pinned to yet), by partition.
func (s *Stream) Statuses() []shard.Status {
	shards := s.Shards()
	out := make([]shard.Status, len(shards))
	for i := range shards {
		out[i] = shards[i].Status
	}
	return out
}

// Shards returns each owned partition's status with its lag, by partition.
// A partition pinned to another process is left out: it is that process's.
func (s *Stream) Shards() []ShardStatus {
	now := time.Now()
	s.mu.Lock()
	parts := s.parts
	s.mu.Unlock()
	out := make([]ShardStatus, 0, len(parts))
	for _, pt := range parts {
		pt.mu.Lock()
		w, pinID, pinnedTo, lag := pt.w, pt.pinID, pt.pinnedTo, pt.lag
		pt.mu.Unlock()
		if pinnedTo != "" && pinnedTo != pinID {
			continue
		}
		st := ShardStatus{Status: w.Status(), Consumer: pt.name, Lag: lag, Pinned: pinnedTo != "" && pinnedTo == pinID}
		if !st.Oldest.IsZero() {
			st.IteratorAge = max(0, now.Sub(st.Oldest))
		}
		out = append(out, st)
	}
	return out
}

// partition is one partition consumer, its worker and the messages the
// worker holds.
//
// Goroutines: the fetch loop (the only one that receives messages, pushes
// to the worker and starts, resets or stops it), the worker (Commit and
// Pause hooks), the Stream's InProgress and info loops. mu guards the fields
// below it; nothing is called out with it held (Push may call the Pause
// hook, which takes it).
//
// A worker generation starts at Run and after every reset. Its messages must
// reach it in stream order, but the server does not always redeliver in
// order: a redelivery it cannot hand to any waiting pull request at once (a
// standby process's requests wait while the partition is pinned elsewhere)
// goes to the back of its redelivery queue. So a generation starts in
// recovery: at its first message (when the server pinned the partition to
// this process) it reads how many messages the consumer has pending and the
// highest sequence delivered (H); it gathers every pending message up to H,
// whatever order they come in, plus the new ones, and pushes them sorted once
// it has them all (or after AckWait + 2 × FetchWait: some may never come,
// e.g. acknowledged by a previous owner that lives on). After recovery, a
// message at or below the highest sequence pushed that the worker does not
// hold can only be out of order (acknowledgements are confirmed, so it is
// not one whose ack was lost): the partition is reset, which NAKs what it
// holds, sorted, and starts a new generation in recovery.
type partition struct {
	s      *Stream
	p      int32
	name   string
	cons   jetstream.Consumer
	resume chan struct{} // capacity 1: a pending "resume fetching" from the Pause hook, never blocks the worker

	mu sync.Mutex
	// epoch counts worker generations; hooks of an older worker are
	// ignored (after a reset their messages were NAKed).
	epoch   uint64
	w       *shard.Worker
	workCtx context.Context
	cancel  context.CancelFunc
	done    chan struct{} // closed when w.Run returned
	// held are the messages pushed to the current worker and not yet
	// acknowledged, in stream-sequence order.
	held []heldMsg
	// last is the highest sequence pushed to the current worker.
	last   uint64
	paused bool
	// pinID is the pin the server stamped on the messages this generation
	// received; "" before the first.
	pinID string
	// Recovery of the generation (see above): inbox holds what arrived,
	// not pushed yet; recovN < 0 until the first message measured it.
	recovering bool
	recovN     int
	recovH     uint64
	recovUntil time.Time
	inbox      []heldMsg // sorted by sequence, no duplicates
	// From the consumer info: the pinned client ("" none), the lag.
	pinnedTo string
	lag      int64

	// With AckPipelineDepth: the queue of the partition's ack goroutine
	// (ackLoop), closed (acksClosed) once the workers stopped. ackMu guards
	// sending to it and closing it; it is never taken with mu held.
	ackMu      sync.Mutex
	acks       chan ackJob
	acksClosed bool
	acksDone   chan struct{}
}

// ackJob is one checkpoint's acknowledgements for ackLoop.
type ackJob struct {
	ctx     context.Context // the generation's: retries end with it
	msgs    []heldMsg
	through int64
	done    chan struct{} // closed once confirmed or given up
}

type heldMsg struct {
	seq uint64
	m   jetstream.Msg
	md  *jetstream.MsgMetadata
}

// startWorker starts a new worker generation for the partition.
func (pt *partition) startWorker(workCtx context.Context) {
	s := pt.s
	pt.mu.Lock()
	defer pt.mu.Unlock()
	pt.epoch++
	epoch := pt.epoch
	var unconfirmed []chan struct{}
	pt.w = shard.NewWorker(shard.ID{Source: s.name, Partition: pt.p}, s.opts.Worker, shard.Hooks{
		Deliverer:    s.opts.Deliverer,
		DeadLetterer: s.opts.DeadLetterer,
		Logger:       s.opts.Logger,
		// Acks in order, under the worker's commit lock (which also
		// guards unconfirmed: the generation's checkpoints whose
		// acknowledgements are not confirmed yet, oldest first).
		Commit: func(last event.Record) func() { return pt.commit(epoch, last, &unconfirmed) },
		Pause:  func(paused bool) { pt.pause(epoch, paused) },
	})
	ctx, cancel := context.WithCancel(workCtx)
	pt.workCtx, pt.cancel, pt.done = ctx, cancel, make(chan struct{})
	pt.held, pt.last, pt.pinID, pt.paused = nil, 0, "", false
	pt.recovering, pt.recovN, pt.inbox = true, -1, nil
	w, done := pt.w, pt.done
	go func() {
		defer close(done)
		w.Run(ctx)
	}()
}

func (pt *partition) cancelWorker() {
	pt.mu.Lock()
	cancel := pt.cancel
	pt.mu.Unlock()
	cancel()
}

// waitWorker waits for the current worker to return, or for deadline.
func (pt *partition) waitWorker(deadline <-chan time.Time) {
	pt.mu.Lock()
	done := pt.done
	pt.mu.Unlock()
	select {
	case <-done:
	case <-deadline:
		pt.s.log.Error("a shard did not stop in time after cancel; abandoning it (its Deliverer ignores ctx)",
			"partition", pt.p, "timeout", pt.s.opts.StopTimeout)
	}
}

// commit acknowledges every held message up to last: the worker delivered
// or dead-lettered them. Each is acknowledged on its own (AckExplicit; an
// AckAll of last would also acknowledge messages below it that the server
// still counts as pending for a dead previous owner, before they were
// redelivered), and the last one waits for the server's confirmation (the
// consumer processes acks in order), so an acknowledgement is never lost
// silently. It retries until confirmed or the generation ends (then the
// messages are redelivered after AckWait, and recovery orders them).
//
// Without an ack pipeline (ackDepth 0) commit does this itself and returns
// nil. With one it queues the acknowledgements for ackLoop and returns a wait
// for the confirmation of the checkpoint ackDepth back (nil while fewer are
// unconfirmed).
func (pt *partition) commit(epoch uint64, last event.Record, unconfirmed *[]chan struct{}) func() {
	pt.mu.Lock()
	if pt.epoch != epoch {
		pt.mu.Unlock()
		return nil
	}
	n := sort.Search(len(pt.held), func(i int) bool { return pt.held[i].seq > uint64(last.Offset) })
	done := pt.held[:n:n]
	pt.held = pt.held[n:]
	if len(pt.held) == 0 {
		pt.held = nil
	}
	ctx := pt.workCtx
	pt.mu.Unlock()
	if pt.queueAcks(ackJob{ctx: ctx, msgs: done, through: last.Offset, done: make(chan struct{})}, unconfirmed) {
		if len(*unconfirmed) <= pt.s.ackDepth {
			return nil
		}
		target := (*unconfirmed)[0]
		*unconfirmed = slices.Delete(*unconfirmed, 0, 1)
		return func() {
			select {
			case <-target:
			case <-ctx.Done():
			}
		}
	}
	pt.settle(ctx, done, last.Offset)
	return nil
}

// queueAcks hands job to ackLoop and appends it to unconfirmed; false when
// there is no ack pipeline (or no longer: the workers stopped).
func (pt *partition) queueAcks(job ackJob, unconfirmed *[]chan struct{}) bool {
	if pt.s.ackDepth <= 0 {
		return false
	}
	pt.ackMu.Lock()
	defer pt.ackMu.Unlock()
	if pt.acks == nil || pt.acksClosed {
		return false
	}
	// The queue has room for every lane's unconfirmed checkpoints: this
	// waits only while ackLoop retries, which ends with the generation.
	pt.acks <- job
	*unconfirmed = append(*unconfirmed, job.done)
	return true
}

// settle acknowledges msgs (through is the checkpoint, for the logs): the
// first try also when the generation is stopping (a batch that finished as
// the stop came is still acknowledged), then retries until confirmed or ctx
// ends.
func (pt *partition) settle(ctx context.Context, msgs []heldMsg, through int64) {
	for try := 1; ; try++ {
		err := settleInOrder(context.WithoutCancel(ctx), pt.s.nc, msgs, ackBody)
		if err == nil {
			return
		}
		if ctx.Err() != nil {
			pt.s.log.Warn("acknowledging delivered messages failed at shutdown; they will be delivered again", "partition", pt.p, "through", through, "error", err)
			return
		}
		pt.s.log.Warn("acknowledging delivered messages failed; retrying", "partition", pt.p, "through", through, "try", try, "error", err)
		if !sleep(ctx, retryDelay(try)) {
			return
		}
	}
}

// ackLoop sends the partition's queued acknowledgements in order until the
// queue is closed: each round takes every job queued, acknowledges their
// messages with one confirmation request at the end (the server processes a
// consumer's acknowledgements in order), and marks them all confirmed.
func (pt *partition) ackLoop() {
	defer close(pt.acksDone)
	for job := range pt.acks {
		jobs := []ackJob{job}
	more:
		for {
			select {
			case j, ok := <-pt.acks:
				if !ok {
					break more
				}
				jobs = append(jobs, j)
			default:
				break more
			}
		}
		last := jobs[len(jobs)-1]
		msgs := last.msgs
		if len(jobs) > 1 {
			msgs = nil
			for _, j := range jobs {
				msgs = append(msgs, j.msgs...)
			}
		}
		pt.settle(last.ctx, msgs, last.through)
		for _, j := range jobs {
			close(j.done)
		}
	}
}

// startAcks starts the partition's ackLoop (with an ack pipeline).
func (pt *partition) startAcks() {
	if pt.s.ackDepth <= 0 {
		return
	}
	pt.acks = make(chan ackJob, pt.s.ackDepth+pt.s.opts.Worker.ParallelizationFactor+1)
	pt.acksDone = make(chan struct{})
	go pt.ackLoop()
}

// stopAcks closes the ack queue once the workers stopped and waits, until
// ctx ends, for ackLoop to send what is queued: the acknowledgements reach
// the server before the NAKs of release and the unpin.
func (pt *partition) stopAcks(ctx context.Context) {
	pt.ackMu.Lock()
	if pt.acks == nil || pt.acksClosed {
		pt.ackMu.Unlock()
		return
	}
	pt.acksClosed = true
	close(pt.acks)
	pt.ackMu.Unlock()
	select {
	case <-pt.acksDone:
	case <-ctx.Done():
		pt.s.log.Warn("the final acknowledgements were not confirmed in time; those messages are redelivered after AckWait", "partition", pt.p)
	}
}

func (pt *partition) pause(epoch uint64, paused bool) {
	pt.mu.Lock()
	if pt.epoch != epoch {
		pt.mu.Unlock()
		return
	}
	pt.paused = paused
	pt.mu.Unlock()
	if !paused {
		select {
		case pt.resume <- struct{}{}:
		default:
		}
	}
}

func (pt *partition) isPaused() bool {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	return pt.paused
}

// fetchLoop pulls the partition until ctx ends. While the worker has it
// paused it pulls nothing, but it keeps the pin with keepAlive once the pause
// lasted FetchWait since the last pull.
func (pt *partition) fetchLoop(ctx, workCtx context.Context) {
	s := pt.s
	failures := 0
	lastPull := time.Now()
	for ctx.Err() == nil {
		var err error
		if pt.isPaused() {
			// Most pauses are short (the worker's buffer was full and
			// drains in a few batches): wait for the resume first, and
			// renew the pin only once the pause lasted FetchWait since the
			// last pull. A keepAlive is never cut short, and while the
			// server has nothing it may deliver (MaxAckPending reached)
			// it waits out its expiry (up to a second), holding up the
			// resume. It used to be sent whenever the loop woke still
			// paused, also on a stale resume signal (one left in the
			// channel by a resume while the loop was pulling): a busy
			// partition then lost up to a second a buffer.
			if pt.waitResume(ctx, lastPull.Add(s.opts.FetchWait)) {
				continue
			}
			err = pt.keepAlive(workCtx)
		} else {
			err = pt.fetch(workCtx)
		}
		lastPull = time.Now()
		pt.recoveryDeadline(workCtx)
		switch {
		case err == nil:
			failures = 0
		case errors.Is(err, jetstream.ErrPinIDMismatch):
			// The server pinned the partition to another client: this
			// process stopped pulling (or renewing the pin) for longer
			// than PinnedTTL. Whatever the worker holds is someone else's
			// to deliver now.
			pt.reset(workCtx, "the partition was pinned to another client")
			continue
		default:
			failures++
			if ctx.Err() == nil {
				s.log.Warn("pull failed", "partition", pt.p, "consumer", pt.name, "error", err, "failures", failures)
			}
			if !sleep(ctx, retryDelay(failures)) {
				return
			}
			continue
		}
	}
}

// waitResume waits while the partition is paused, until deadline; it
// reports true when the partition is no longer paused or ctx ended, false
// when it is still paused at deadline (the pin needs renewing).
func (pt *partition) waitResume(ctx context.Context, deadline time.Time) bool {
	for {
		if ctx.Err() != nil || !pt.isPaused() {
			return true
		}
		d := time.Until(deadline)
		if d <= 0 {
			return false
		}
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
		case <-pt.resume:
		case <-t.C:
		}
		t.Stop()
	}
}

// fetch runs one pull of up to fetchBatch messages, pushing each to the
// worker as it arrives. It is never cancelled half-way: messages the server
// sent would be lost to this process and redelivered only after AckWait,
// behind newer ones.
func (pt *partition) fetch(workCtx context.Context) error {
	s := pt.s
	batch, err := pt.cons.Fetch(s.fetchBatch, jetstream.FetchMaxWait(s.opts.FetchWait), jetstream.FetchPriorityGroup(PriorityGroup))
	if err != nil {
		return err
	}
	for m := range batch.Messages() {
		pt.receive(workCtx, m)
	}
	return batch.Error()
}

// keepAlive renews the pin of a paused partition without taking a message:
// a pull request carrying the pin renews it when it arrives, and one limited
// to 1 byte cannot be given any message (the server answers 409 "Message
// Size Exceeds MaxBytes" and keeps the message). Without it the pin would
// lapse after PinnedTTL of throttling and another process would deliver the
// messages after the held batch.
func (pt *partition) keepAlive(workCtx context.Context) error {
	wait := min(pt.s.opts.FetchWait/2, time.Second)
	batch, err := pt.cons.FetchBytes(1, jetstream.FetchMaxWait(wait), jetstream.FetchPriorityGroup(PriorityGroup))
	if err != nil {
		return err
	}
	for m := range batch.Messages() {
		pt.receive(workCtx, m) // not expected; never dropped
	}
	return batch.Error()
}

// receive takes one delivered message: into the recovery inbox, to the
// worker, or (out of order) into a reset.
func (pt *partition) receive(workCtx context.Context, m jetstream.Msg) {
	s := pt.s
	md, err := m.Metadata()
	if err != nil {
		s.log.Error("a pulled message has no JetStream metadata; skipping it", "partition", pt.p, "subject", m.Subject(), "error", err)
		return
	}
	in := heldMsg{seq: md.Sequence.Stream, m: m, md: md}
	pin := m.Headers().Get(pinHeader)

	pt.mu.Lock()
	if pin != "" && pt.pinID != "" && pin != pt.pinID {
		// Pinned again under a new id: the pin lapsed in between, and
		// another process may have delivered meanwhile.
		pt.mu.Unlock()
		pt.reset(workCtx, "the partition was pinned again after its pin lapsed", in)
		return
	}
	if pt.pinID == "" {
		pt.pinID = pin
	}
	if pt.recovering {
		if pt.recovN < 0 {
			pt.mu.Unlock()
			pt.measure(workCtx)
			pt.mu.Lock()
		}
		if pt.recovering {
			i, found := slices.BinarySearchFunc(pt.inbox, in.seq, bySeq)
			if found {
				pt.inbox[i] = in // a redelivery meanwhile: keep the newest handle
			} else {
				pt.inbox = slices.Insert(pt.inbox, i, in)
			}
			old := 0
			for _, h := range pt.inbox {
				if h.seq <= pt.recovH {
					old++
				}
			}
			if old < pt.recovN {
				pt.mu.Unlock()
				return
			}
			pt.mu.Unlock()
			pt.endRecovery("")
			return
		}
	}
	if in.seq <= pt.last {
		_, held := slices.BinarySearchFunc(pt.held, in.seq, bySeq)
		pt.mu.Unlock()
		if !held {
			pt.reset(workCtx, "a message arrived after later ones", in)
		}
		// else: a redelivery of a message the worker holds (its lease
		// lapsed, e.g. the connection was down for AckWait): the worker
		// has it already.
		return
	}
	recs := pt.pushLocked([]heldMsg{in})
	w := pt.w
	pt.mu.Unlock()
	w.Push(recs)
}

func bySeq(h heldMsg, seq uint64) int { return cmp.Compare(h.seq, seq) }

// measure reads, at a generation's first message, what recovery waits for:
// the messages pending for the consumer (delivered, not acknowledged), all
// at or below the highest sequence delivered so far.
func (pt *partition) measure(ctx context.Context) {
	var info *jetstream.ConsumerInfo
	var err error
	for try := 1; try <= 3; try++ {
		ictx, cancel := context.WithTimeout(ctx, bookTimeout)
		info, err = pt.cons.Info(ictx)
		cancel()
		if err == nil || !sleep(ctx, retryDelay(try)) {
			break
		}
	}
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if err != nil {
		pt.s.log.Warn("cannot read the consumer's pending messages; delivering without reordering redeliveries", "partition", pt.p, "error", err)
		pt.recovering = false
		return
	}
	pt.recovN, pt.recovH = info.NumAckPending, info.Delivered.Stream
	pt.recovUntil = time.Now().Add(pt.s.opts.AckWait + 2*pt.s.opts.FetchWait)
}

// recoveryDeadline ends a recovery that waited long enough.
func (pt *partition) recoveryDeadline(ctx context.Context) {
	pt.mu.Lock()
	due := pt.recovering && pt.recovN >= 0 && time.Now().After(pt.recovUntil)
	missing := 0
	if due {
		missing = pt.recovN
		for _, h := range pt.inbox {
			if h.seq <= pt.recovH {
				missing--
			}
		}
	}
	pt.mu.Unlock()
	if due {
		pt.endRecovery(fmt.Sprintf("%d pending messages did not come back within AckWait; delivering without them (they are delivered when they come, after a reset)", missing))
	}
}

// endRecovery pushes the recovery inbox, in order, and ends recovery.
func (pt *partition) endRecovery(warn string) {
	pt.mu.Lock()
	if !pt.recovering {
		pt.mu.Unlock()
		return
	}
	pt.recovering = false
	inbox := pt.inbox
	pt.inbox = nil
	recs := pt.pushLocked(inbox)
	w := pt.w
	pt.mu.Unlock()
	if warn != "" {
		pt.s.log.Warn(warn, "partition", pt.p)
	}
	w.Push(recs)
}

// pushLocked records msgs (sorted, above last) as held and returns their
// records for Push. Called with mu held.
func (pt *partition) pushLocked(msgs []heldMsg) []event.Record {
	s := pt.s
	recs := make([]event.Record, 0, len(msgs))
	for _, h := range msgs {
		p, key, published, err := s.pt.parse(h.m.Subject())
		if err != nil || p != pt.p {
			// The filter only matches "<prefix>.<p>.<key>"; keep going
			// with what the subject says.
			s.log.Warn("a message's subject does not match its partition", "partition", pt.p, "subject", h.m.Subject())
			published, key = h.m.Subject(), ""
		}
		rec := newRecord(h.m, h.md)
		rec.Partition, rec.Key, rec.Subject = pt.p, []byte(key), published
		recs = append(recs, rec)
		pt.held = append(pt.held, h)
		pt.last = h.seq
	}
	return recs
}

// reset stops the worker, NAKs what the partition holds and extra, sorted,
// and starts a new generation (in recovery). Called from the fetch loop
// only.
func (pt *partition) reset(workCtx context.Context, reason string, extra ...heldMsg) {
	pt.cancelWorker()
	deadline := time.NewTimer(pt.s.opts.StopTimeout)
	pt.waitWorker(deadline.C)
	deadline.Stop()
	pt.mu.Lock()
	msgs := slices.Concat(pt.held, pt.inbox, extra)
	pt.held, pt.inbox = nil, nil
	pt.epoch++ // a worker that outlived the wait can no longer ack
	pt.mu.Unlock()
	released := nakSorted(workCtx, pt.s.nc, msgs)
	pt.s.log.Warn("partition reset: "+reason+"; its unacknowledged messages are redelivered (possibly to another process)",
		"partition", pt.p, "released", released)
	pt.startWorker(workCtx)
}

// progress tells the server the messages the partition holds are still
// being worked on.
func (pt *partition) progress() {
	pt.mu.Lock()
	msgs := slices.Concat(pt.held, pt.inbox)
	pt.mu.Unlock()
	for _, h := range msgs {
		_ = h.m.InProgress() // a lost one is covered by the next round (AckWait/3 later)
	}
}

// release, at shutdown, NAKs the messages the stopped worker did not
// checkpoint, in order, and unpins the partition if this process holds the
// pin, so that the next owner starts at once, with them.
func (pt *partition) release(ctx context.Context) {
	pt.mu.Lock()
	msgs := slices.Concat(pt.held, pt.inbox)
	pt.held, pt.inbox = nil, nil
	pin := pt.pinID
	pt.epoch++
	pt.mu.Unlock()
	nakSorted(ctx, pt.s.nc, msgs)
	if pin == "" {
		return
	}
	info, err := pt.cons.Info(ctx)
	if err != nil {
		pt.s.log.Warn("cannot release the partition's pin; another process takes it over after PinnedTTL", "partition", pt.p, "error", err)
		return
	}
	for _, g := range info.PriorityGroups {
		if g.Group == PriorityGroup && g.PinnedClientID == pin {
			if err := pt.s.stream.UnpinConsumer(ctx, pt.name, PriorityGroup); err != nil {
				pt.s.log.Warn("cannot release the partition's pin; another process takes it over after PinnedTTL", "partition", pt.p, "error", err)
			}
		}
	}
}

// The bodies of the acknowledgements sluice sends itself (what
// jetstream.Msg's Ack and Nak send).
var (
	ackBody = []byte("+ACK")
	nakBody = []byte("-NAK")
)

// nakSorted NAKs msgs in sequence order (one NAK per sequence) and returns
// how many.
func nakSorted(ctx context.Context, nc *natsgo.Conn, msgs []heldMsg) int {
	slices.SortStableFunc(msgs, func(a, b heldMsg) int { return cmp.Compare(a.seq, b.seq) })
	msgs = slices.CompactFunc(msgs, func(a, b heldMsg) bool { return a.seq == b.seq })
	if err := settleInOrder(ctx, nc, msgs, nakBody); err != nil && ctx.Err() == nil {
		slog.Default().Debug("nats: NAK failed; the messages are redelivered after AckWait", "error", err)
	}
	return len(msgs)
}

// settleInOrder sends body (an ack or a NAK) for each of msgs, in order,
// the last one as a request: the server answers it once the consumer
// processed it, and a consumer processes its acknowledgements in order, so
// a nil error means the server has them all. A client pinned right after a
// NAK then sees the NAKed messages redelivered first.
func settleInOrder(ctx context.Context, nc *natsgo.Conn, msgs []heldMsg, body []byte) error {
	for i, h := range msgs {
		reply := h.m.Reply()
		if reply == "" {
			continue
		}
		if i < len(msgs)-1 {
			if err := nc.Publish(reply, body); err != nil {
				return err
			}
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, bookTimeout)
		_, err := nc.RequestWithContext(rctx, reply, body)
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// PartitionLoads reports the lag and iterator age of every partition this
// process owns (consumer.PartitionLoader).
func (s *Stream) PartitionLoads() []consumer.PartitionLoad {
	st := s.Shards()
	out := make([]consumer.PartitionLoad, len(st))
	for i := range st {
		out[i] = consumer.PartitionLoad{Partition: st[i].Shard.Partition, Lag: st[i].Lag, IteratorAge: st[i].IteratorAge}
	}
	return out
}

var _ consumer.PartitionLoader = (*Stream)(nil)
