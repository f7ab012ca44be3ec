package kafka

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// Defaults of Options.
const (
	// DefaultFetchMaxBytes bounds one fetch response (franz-go buffers at
	// most one per broker): 16 MiB instead of Kafka's 50 MiB, because each
	// shard also holds up to its Buffer of records.
	DefaultFetchMaxBytes = 16 << 20
	// DefaultFetchMaxPartitionBytes bounds one partition's share of a fetch
	// (Kafka's default, 1 MiB) for the Async source; the stream Source
	// sizes it to its shards' buffers (fetchPartitionBytes).
	DefaultFetchMaxPartitionBytes = 1 << 20
	// minFetchPartitionBytes is the least per-partition share the stream
	// Source asks for (a broker still returns at least one whole batch).
	minFetchPartitionBytes = 64 << 10
	// DefaultFetchMaxWait is how long a broker may hold a fetch that finds
	// no new data: a fifth of Kafka's Java default (fetch.max.wait.ms,
	// 500 ms), not franz-go's 5s. A partition resumed after a pause (a
	// throttle ended, a full buffer drained) is fetched only once the fetch
	// in flight returns; when the other partitions are idle, that is this
	// long. At 500 ms a shard that paused on a full buffer stalled for half
	// a second at a time (BenchmarkKafkaPipeline took twice as long); an
	// idle source pays for the shorter wait with ten empty fetches a second
	// per broker.
	DefaultFetchMaxWait = 100 * time.Millisecond
	// DefaultStopTimeout bounds how long a revoke or shutdown waits for a
	// shard's in-flight delivery to end once cancelled. A Deliverer honours
	// ctx, so this is only reached by one that does not; the shard is then
	// abandoned (its late results are neither marked nor paused).
	DefaultStopTimeout = 15 * time.Second
	// DefaultCommitTimeout bounds the commit at revoke and at shutdown.
	DefaultCommitTimeout = 10 * time.Second
	// DefaultLagRefresh is how often the high watermarks of the assigned
	// partitions are listed for the lag: a paused partition is not fetched,
	// so its fetches stop telling.
	DefaultLagRefresh = 5 * time.Second
	// commitInterval is how often the committer commits the marked
	// offsets when no lane asked for a round; short, so a crash redelivers
	// at most about a second of finished work (AsyncCommit).
	commitInterval = time.Second
	// maxCommitRest bounds the pause between asked commit rounds
	// (committer.run), however long the last round took.
	maxCommitRest = 50 * time.Millisecond
	// autoCommitInterval is franz-go's own auto-commit interval: in effect
	// never. franz-go snapshots the marks before it takes its commit lock,
	// so two commits of one client can land in the other order and move the
	// committed offset back; every commit goes through the committer
	// instead (committer.commit), which takes the snapshot and sends it
	// under one lock.
	autoCommitInterval = 365 * 24 * time.Hour
	// DefaultShardBufferBytes bounds what one shard holds (buffered and in
	// flight) by the estimated encoded size of its records
	// (event.Record.Size, about what they occupy in memory too): it pauses
	// its partition at this, and resumes at half. In steady flow a shard
	// holds far less: the poll loop polls only while some shard holds less
	// than a quarter of it (awaitWantLocked), and a fetch share decodes to
	// about a quarter (fetchSizer), so shards hold 1–4 MiB and reach this
	// bound only when one falls far behind the others, or fetches bring
	// record batches larger than a quarter.
	DefaultShardBufferBytes = 8 << 20
	// minShardBuffer is the least record count a shard may hold before it
	// pauses (Options.Worker.Buffer's default, unless 2 × BatchSize ×
	// ParallelizationFactor is larger). A count small next to what a fetch
	// brings a partition (polls were bounded at 10,000 records then) paused
	// and resumed a partition on every poll and cost most of the
	// throughput, so the count is loose here and the bytes bound memory.
	minShardBuffer = 20000
)

// ErrRunning is returned by a second call to Run.
var ErrRunning = errors.New("kafka: source already running")

// Options are the collaborators and tuning of a Source.
type Options struct {
	// Group is the consumer group; default "sluice-" + the source name.
	// Processes running the same source share its partitions through it.
	Group string
	// Worker configures each partition's shard engine; its Source defaults
	// to the source name, its Buffer to at least 20,000 records and its
	// BufferBytes to DefaultShardBufferBytes.
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

	// Memory bounds and latency of the client: see the defaults.
	// FetchMaxPartitionBytes, unless set, starts at a sixty-fourth of the
	// shard's BufferBytes (fetchPartitionBytes) and is then sized by what
	// the fetched records decode to (fetchSizer).
	FetchMaxBytes          int32
	FetchMaxPartitionBytes int32
	FetchMaxWait           time.Duration
	// AsyncCommit lets a shard go on as soon as it marked a batch, leaving
	// the commit to the next commit round (at most about a second later).
	// After a crash (kill -9) the batches finished in that last second are
	// delivered again. By default a shard's lane waits for the commit of
	// each batch before it delivers the next (the commits of all shards are
	// coalesced), so a crash redelivers at most the batch in flight per lane
	// (SPEC §2.1: duplicates limited to batches in flight).
	AsyncCommit bool
	// CommitPipelineDepth is how many batches a shard's lane may deliver
	// beyond its last confirmed commit (without AsyncCommit; a shard of N
	// lanes leaves N × CommitPipelineDepth checkpoints unconfirmed): 0 here, as
	// described above; the configuration's commit_pipeline_depth defaults to
	// consumer.DefaultCommitPipelineDepth (8), measured in BENCHMARKS.md. With depth d, a lane delivers batch N+1 while the
	// commit of N is on the wire and a crash redelivers at most d+1 batches
	// per lane; it asks for a commit round once ⌈d/2⌉ of its checkpoints
	// wait for one. A lane whose batches take less time than a commit round trip
	// (a fast function, a local broker: a few ms) delivers d+1 batches per
	// round trip, so a deeper pipeline trades duplicates after a crash for
	// throughput, in steps, where AsyncCommit trades them for a second's
	// worth. BENCHMARKS.md measures both.
	CommitPipelineDepth int
	// StopTimeout, CommitTimeout, LagRefresh: see the defaults.
	StopTimeout   time.Duration
	CommitTimeout time.Duration
	LagRefresh    time.Duration

	// ClientOpts are appended to the franz-go options (tests, TLS, SASL).
	ClientOpts []kgo.Opt
}

// Source is one stream-mode Kafka source: a consumer group member that runs
// one shard.Worker per assigned partition and moves the group's committed
// offsets only past records its workers delivered or dead-lettered.
//
// Goroutines: Run's own (it waits for ctx, then shuts down), the poll loop,
// the lag refresher, one per assigned partition (Worker.Run), and franz-go's
// group goroutine, which calls assigned, revoked and lost. Locks, taken in
// this order and never the other way: Source.mu → the Worker's own lock →
// part.mu → franz-go's locks. Nothing is held while waiting for a worker.
type Source struct {
	name      string
	topic     string
	group     string
	bootstrap string
	opts      Options
	log       *slog.Logger
	kopts     []kgo.Opt
	metrics   prometheus.Collector // nil without a Registerer

	// member is the group-member lifecycle (member.go); its mu guards the
	// fields below too, and serializes the poll loop's pushes with
	// assignment changes.
	member[*part]
	// parts are the partitions this member owns and runs a worker for.
	parts map[int32]*part
	cl    *kgo.Client // set once Run created it; for Shards' committed offsets

	commits *committer
	// hungry (capacity 1) wakes a poll loop waiting for a shard that
	// wants records (awaitWantLocked); it never blocks a hook.
	hungry chan struct{}
	// sizer sizes the fetch shares by what they decode to; nil when
	// Options.FetchMaxPartitionBytes was set.
	sizer *fetchSizer
}

// part is one assigned partition and its worker.
type part struct {
	p      int32
	w      *shard.Worker
	cl     *kgo.Client
	ctx    context.Context // the worker's; ends when it is stopped
	cancel context.CancelFunc
	done   chan struct{} // closed when w.Run returned

	// mu guards revoked and orders the hooks that reach franz-go: a mark
	// or a pause happens entirely before revoked is set, or not at all.
	mu      sync.Mutex
	revoked bool

	// full and paused are what the worker's Full and Pause hooks last
	// said: the poll loop polls while some shard is neither (wantLocked).
	full, paused atomic.Bool

	// Guarded by Source.mu.
	hwm   int64 // high watermark last seen; -1 unknown
	first int64 // offset of the first record pushed; -1 before

	// commitRounds are the commit rounds asked for the shard's latest
	// marks, oldest first, at most CommitPipelineDepth of them; only the
	// worker's Commit hook uses it (the worker serializes those).
	commitRounds []uint64
}

// New checks the settings and returns a Source for topic src.Topic; Run
// starts it. It does not contact the cluster.
func New(name string, broker consumer.KafkaConfig, src consumer.SourceConfig, opts Options) (*Source, error) {
	switch {
	case name == "":
		return nil, errors.New("kafka: source needs a name")
	case src.Topic == "":
		return nil, fmt.Errorf("kafka: source %q: no topic", name)
	case len(broker.Seeds) == 0:
		return nil, fmt.Errorf("kafka: source %q: no seed brokers", name)
	case opts.Deliverer == nil:
		return nil, fmt.Errorf("kafka: source %q: no Deliverer", name)
	}
	start, err := startOffset(src)
	if err != nil {
		return nil, fmt.Errorf("kafka: source %q: %w", name, err)
	}
	if opts.Group == "" {
		opts.Group = "sluice-" + name
	}
	if opts.Worker.Source == "" {
		opts.Worker.Source = name
	}
	if opts.Worker.Buffer <= 0 {
		opts.Worker.Buffer = max(minShardBuffer, 2*max(opts.Worker.BatchSize, 1)*max(opts.Worker.ParallelizationFactor, 1))
	}
	if opts.Worker.BufferBytes <= 0 {
		opts.Worker.BufferBytes = DefaultShardBufferBytes
	}
	opts.CommitPipelineDepth = max(opts.CommitPipelineDepth, 0)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.FetchMaxBytes <= 0 {
		opts.FetchMaxBytes = DefaultFetchMaxBytes
	}
	sizeShares := opts.FetchMaxPartitionBytes <= 0
	if sizeShares {
		opts.FetchMaxPartitionBytes = fetchPartitionBytes(opts.Worker.BufferBytes)
	}
	if opts.FetchMaxWait <= 0 {
		opts.FetchMaxWait = DefaultFetchMaxWait
	}
	if opts.StopTimeout <= 0 {
		opts.StopTimeout = DefaultStopTimeout
	}
	if opts.CommitTimeout <= 0 {
		opts.CommitTimeout = DefaultCommitTimeout
	}
	if opts.LagRefresh <= 0 {
		opts.LagRefresh = DefaultLagRefresh
	}
	s := &Source{
		name:      name,
		topic:     src.Topic,
		group:     opts.Group,
		bootstrap: bootstrapServers(broker),
		opts:      opts,
		log:       opts.Logger.With("source", name, "topic", src.Topic),
		parts:     make(map[int32]*part),
		commits:   newCommitter(),
		hungry:    make(chan struct{}, 1),
	}
	if sizeShares {
		s.sizer = newFetchSizer(opts.Worker.BufferBytes, opts.FetchMaxPartitionBytes)
		s.kopts = append(s.kopts, kgo.WithHooks(s.sizer))
	}
	s.member = member[*part]{log: s.log, commitTimeout: opts.CommitTimeout, what: "records",
		startLocked: s.startLocked, detachLocked: s.detachLocked, stop: s.stop}
	s.init()
	base, err := ClientOpts(broker)
	if err != nil {
		return nil, fmt.Errorf("kafka: source %q: %w", name, err)
	}
	s.kopts = append(append(append(s.kopts, base...),
		kgo.WithLogger(kgoLogger{s.log}),
		kgo.ConsumerGroup(opts.Group),
		kgo.ConsumeTopics(src.Topic),
		// Only where a new group starts. A committed offset that fell
		// below the log start resumes at the log start (franz-go's default
		// reset), whatever starting_position says: nothing still kept is
		// skipped.
		kgo.ConsumeStartOffset(start),
		// Commit only what the workers marked, through the committer
		// (when a lane asks, about every second, at revoke and shutdown). No BlockRebalanceOnPoll: a throttled batch
		// may hold its shard for minutes, and rebalances must not wait for
		// it; assigned() fences the poll loop instead.
		kgo.AutoCommitMarks(),
		kgo.AutoCommitInterval(autoCommitInterval),
		kgo.OnPartitionsAssigned(s.assigned),
		kgo.OnPartitionsRevoked(s.revoked),
		kgo.OnPartitionsLost(s.lost),
		kgo.FetchMaxBytes(opts.FetchMaxBytes),
		kgo.FetchMaxPartitionBytes(opts.FetchMaxPartitionBytes),
		kgo.FetchMaxWait(opts.FetchMaxWait),
	), append(sessionOpts(broker), opts.ClientOpts...)...)
	if opts.Registerer != nil {
		c := consumer.NewShardCollector(s.name, func() []consumer.ShardLoad {
			return shardLoads(s.Shards())
		})
		if err := opts.Registerer.Register(c); err != nil {
			return nil, fmt.Errorf("kafka: source %q: register metrics: %w", name, err)
		}
		s.metrics = c
	}
	return s, nil
}

// fetchPartitionBytes is the stream Source's first per-partition share of a
// fetch, until its fetchSizer learned what shares decode to: a sixty-fourth
// of what a shard buffers, within 64 KiB..1 MiB (128 KiB for
// DefaultShardBufferBytes). Small, because a compressed topic's share
// decodes to many times its bytes (eleven times on the benchmark topic),
// and a share that decodes to more than a shard takes in below its whole
// buffer has the shard paused and is fetched again.
func fetchPartitionBytes(bufferBytes int64) int32 {
	return int32(min(max(bufferBytes/64, minFetchPartitionBytes), DefaultFetchMaxPartitionBytes))
}

func startOffset(src consumer.SourceConfig) (kgo.Offset, error) {
	switch src.StartingPosition {
	case consumer.TrimHorizon, "":
		return kgo.NewOffset().AtStart(), nil
	case consumer.Latest:
		return kgo.NewOffset().AtEnd(), nil
	case consumer.AtTimestamp:
		if src.StartingTimestamp.IsZero() {
			return kgo.Offset{}, errors.New("starting_position at_timestamp needs starting_timestamp")
		}
		return kgo.NewOffset().AfterMilli(src.StartingTimestamp.UnixMilli()), nil
	default:
		return kgo.Offset{}, fmt.Errorf("unknown starting_position %q", src.StartingPosition)
	}
}

// Name returns the source name.
func (s *Source) Name() string { return s.name }

// Topic returns the topic the source consumes.
func (s *Source) Topic() string { return s.topic }

// Group returns the consumer group the source consumes in.
func (s *Source) Group() string { return s.group }

// BootstrapServers returns the seed brokers as the Kafka event's
// bootstrapServers field carries them.
func (s *Source) BootstrapServers() string { return s.bootstrap }

// Run joins the group and delivers until ctx ends, then shuts down: it stops
// polling, stops every worker (in-flight deliveries see their context
// cancelled; what they did not finish is redelivered later), commits the
// marked offsets, leaves the group and closes the client. It returns an
// error only if it could not start.
func (s *Source) Run(ctx context.Context) error {
	stopWork, err := s.begin(ctx)
	if err != nil {
		return err
	}
	defer stopWork()

	cl, err := kgo.NewClient(s.kopts...)
	if err != nil {
		return fmt.Errorf("kafka: source %q: %w", s.name, err)
	}
	s.mu.Lock()
	s.cl = cl
	s.mu.Unlock()
	if s.metrics != nil {
		defer s.opts.Registerer.Unregister(s.metrics)
	}
	s.log.Info("source started", "group", s.group)

	var wg sync.WaitGroup
	wg.Go(func() { s.poll(ctx, cl) })
	wg.Go(func() { s.refreshLag(ctx, cl) })
	stopCommits := s.runCommits(ctx, cl, s.commits)
	<-ctx.Done()
	wg.Wait() // the poll loop returned: nothing more is pushed
	s.shutdown(ctx, cl, stopCommits)
	s.log.Info("source stopped")
	return nil
}

// poll is the poll loop: it hands each partition's records to its worker and
// never waits for one (Push does not block; a worker that holds too much or
// is throttled pauses its partition). It polls only while some shard wants
// records (awaitWantLocked).
func (s *Source) poll(ctx context.Context, cl *kgo.Client) {
	next := func() int {
		s.awaitWantLocked(ctx)
		if s.sizer != nil {
			if share, changed := s.sizer.resizeLocked(); changed {
				cl.UpdateFetchMaxBytes(s.opts.FetchMaxBytes, share)
			}
		}
		// Everything buffered: a poll that left part of a fetch behind
		// would hold franz-go's next fetch until the poll after it, and
		// the shards would wait a fetch round trip every other poll. The
		// fetch shares bound what a fetch holds.
		return 0
	}
	s.pollLoop(ctx, cl, next, func(fp kgo.FetchTopicPartition) {
		if fp.Topic != s.topic {
			return
		}
		pt := s.parts[fp.Partition]
		if pt == nil {
			// Revoked since the fetch: not marked, so whoever owns
			// the partition now reads these records again.
			return
		}
		if fp.Err == nil && fp.HighWatermark > pt.hwm {
			pt.hwm = fp.HighWatermark
		}
		if len(fp.Records) == 0 {
			return
		}
		if pt.first < 0 {
			pt.first = fp.Records[0].Offset
		}
		recs := convert(fp.Records)
		size := pt.w.Push(recs)
		if s.sizer != nil {
			s.sizer.pushedLocked(len(recs), size)
		}
	})
}

// awaitWantLocked returns once some shard is neither full (its Full hook)
// nor paused, or none is assigned, or ctx ended; it waits with s.mu
// released. Called with s.mu held.
//
// Why it waits rather than polls: franz-go keeps one fetch per broker
// buffered until it is polled and sends the next only then, and a fetch
// brings records for every partition not paused. A shard that is full still
// takes what a poll brings it; if the source polled regardless, a shard
// would fill to Buffer, be paused, and franz-go would drop what it had
// fetched for it (to fetch it again after the resume): a fifth of the
// records fetched at batch_size 500 on eight partitions. Holding the poll
// while every shard is full holds the next fetch too, so what is fetched
// is delivered, and pausing is left to shards that are throttled or fall
// far behind the others.
func (s *Source) awaitWantLocked(ctx context.Context) {
	for ctx.Err() == nil && !s.wantLocked() {
		s.mu.Unlock()
		select {
		case <-s.hungry:
		case <-ctx.Done():
		}
		s.mu.Lock()
	}
}

// wantLocked reports whether the poll loop should poll: some shard is
// neither full nor paused, or none is assigned (a poll then waits for the
// first records of an assignment). Called with s.mu held.
func (s *Source) wantLocked() bool {
	if len(s.parts) == 0 {
		return true
	}
	for _, pt := range s.parts {
		if !pt.full.Load() && !pt.paused.Load() {
			return true
		}
	}
	return false
}

// wake tells a waiting poll loop to look again whether a shard wants
// records. It never blocks.
func (s *Source) wake() {
	select {
	case s.hungry <- struct{}{}:
	default:
	}
}

// timestampTypeOf reads the timestamp type of kr's attributes.
func timestampTypeOf(kr *kgo.Record) event.TimestampType {
	if kr.Attrs.TimestampType() == 1 {
		return event.LogAppendTime
	}
	return event.CreateTime
}

func convert(krs []*kgo.Record) []event.Record {
	recs := make([]event.Record, len(krs))
	for i, kr := range krs {
		r := &recs[i]
		r.Topic, r.Partition, r.LeaderEpoch, r.Offset, r.Timestamp = kr.Topic, kr.Partition, kr.LeaderEpoch, kr.Offset, kr.Timestamp
		r.TimestampType = timestampTypeOf(kr)
		r.Key, r.Value = kr.Key, kr.Value
		if len(kr.Headers) > 0 {
			r.Headers = make([]event.Header, len(kr.Headers))
			for j, h := range kr.Headers {
				r.Headers[j] = event.Header{Key: h.Key, Value: h.Value}
			}
		}
	}
	return recs
}

// assigned starts a worker for each newly assigned partition of our topic.
//
// Before it does, it fences the poll loop: a poll that began before an
// earlier revoke (or loss) of the same partition may have returned that
// partition's old records and not pushed them yet. Without the fence:
//
//  1. PollRecords returns records 100..199 of p (our worker has 100..149 in
//     flight, nothing committed past 100);
//  2. p is revoked: its worker stops; then p comes back to us and this
//     callback starts a new worker, whose fetch starts at the commit, 100;
//  3. the poll loop pushes the stale 100..199 into the new worker, then the
//     fresh fetch pushes 100.. again: p is delivered out of order.
//
// Cancelling the poll in progress and waiting for its round to end pushes
// (or drops, as p has no worker) those records before the new worker exists;
// a poll that starts after this callback began cannot return the old
// session's records (franz-go invalidates them before revoking), and the new
// session's records only after this callback returns.
func (s *Source) assigned(_ context.Context, cl *kgo.Client, assigned map[string][]int32) {
	if ps := assigned[s.topic]; len(ps) > 0 {
		s.member.assigned(cl, map[string][]int32{s.topic: ps}, ps)
	}
}

// startLocked runs a worker for every partition of the topic in m that has
// none. Called with s.mu held.
func (s *Source) startLocked(cl *kgo.Client, m map[string][]int32) {
	for _, p := range m[s.topic] {
		if s.parts[p] == nil { // else still ours from an earlier session
			s.parts[p] = s.start(cl, p)
		}
	}
	s.wake() // a new shard wants records
}

// start runs a worker for partition p. Called with s.mu held.
func (s *Source) start(cl *kgo.Client, p int32) *part {
	pt := &part{p: p, cl: cl, done: make(chan struct{}), hwm: -1, first: -1}
	tp := map[string][]int32{s.topic: {p}}
	// How many checkpoints a lane's Commit hook leaves unconfirmed.
	depth := s.opts.CommitPipelineDepth * s.opts.Worker.WithDefaults().ParallelizationFactor
	askAt := max(1, (depth+1)/2) // unstarted marks that ask for a commit round
	pt.w = shard.NewWorker(shard.ID{Source: s.name, Partition: p}, s.opts.Worker, shard.Hooks{
		Deliverer:    s.opts.Deliverer,
		DeadLetterer: s.opts.DeadLetterer,
		Logger:       s.opts.Logger,
		Commit: func(last event.Record) func() {
			// What a mark reads of a record: its coordinates and epoch.
			kr := &kgo.Record{Topic: last.Topic, Partition: last.Partition, LeaderEpoch: last.LeaderEpoch, Offset: last.Offset}
			pt.mu.Lock()
			marked := !pt.revoked
			if marked {
				cl.MarkCommitRecords(kr)
			}
			pt.mu.Unlock()
			if !marked || s.opts.AsyncCommit {
				return nil
			}
			// The lane waits, outside the worker's locks, for the round of
			// the mark CommitPipelineDepth × ParallelizationFactor
			// checkpoints back: with one lane and depth d the lane delivers
			// its next d batches while the commits are on the wire, and a
			// crash redelivers at most d+1 batches; N lanes make N
			// checkpoints per round of batches, so they get N times the
			// depth (else every lane would wait on nearly every commit
			// round). A round is asked for once half of that depth waits
			// for one, not after every mark: it is done before the lane
			// reaches the end of its depth as long as half of it takes
			// longer than a commit round trip, and rounds asked for after
			// every batch cost a broker more CPU than sluice's own (a
			// Kafka 4 broker spent half a core on commits at batch_size
			// 500; BENCHMARKS.md). Every partition's marks go in each
			// round. Stopping the worker (revoke, shutdown) cuts the wait
			// short; its marks are committed then. (The worker serializes
			// Commit calls, so commitRounds needs no lock of its own.)
			pt.commitRounds = append(pt.commitRounds, s.commits.next())
			if s.commits.unstarted(pt.commitRounds) >= askAt {
				s.commits.ask()
			}
			if len(pt.commitRounds) <= depth {
				return nil
			}
			target := pt.commitRounds[0]
			pt.commitRounds = slices.Delete(pt.commitRounds, 0, 1)
			return func() { s.commits.waitFor(pt.ctx, target) }
		},
		Pause: func(paused bool) {
			pt.mu.Lock()
			switch {
			case pt.revoked:
			case paused:
				cl.PauseFetchPartitions(tp)
			default:
				cl.ResumeFetchPartitions(tp)
			}
			pt.mu.Unlock()
			pt.paused.Store(paused)
			if !paused {
				s.wake()
			}
		},
		Full: func(full bool) {
			pt.full.Store(full)
			if !full {
				s.wake()
			}
		},
	})
	ctx, cancel := context.WithCancel(s.workCtx)
	pt.ctx, pt.cancel = ctx, cancel
	go func() {
		defer close(pt.done)
		pt.w.Run(ctx)
	}()
	return pt
}

// revoked stops the workers of the revoked partitions and commits what they
// marked, so that the next owner starts right after it. The sequence:
//
//  1. detach the parts under s.mu: the poll loop pushes nothing more to
//     them (records it still holds for them are dropped, unmarked);
//  2. cancel each worker and wait for it (bounded by StopTimeout): an
//     in-flight invocation is abandoned through its ctx and its batch is not
//     marked; a batch that finished first marks as usual;
//  3. set revoked under part.mu: a worker that outlived the wait can no
//     longer mark or pause (a late mark would otherwise land in franz-go's
//     uncommitted map after it dropped the partition and be committed over
//     the next owner's offsets);
//  4. resume the partitions (pauses persist across rebalances);
//  5. commit what is marked (committer.commit, after any round in progress).
//
// franz-go calls it with an empty map at the end of every cooperative
// session; then there is nothing to stop and nothing extra to commit.
func (s *Source) revoked(ctx context.Context, cl *kgo.Client, revoked map[string][]int32) {
	ps := revoked[s.topic]
	s.member.revoked(ctx, cl, map[string][]int32{s.topic: ps}, ps)
}

// lost stops the workers of partitions this member lost without a clean
// revoke (session expired, fenced): they may already be someone else's, so
// nothing is marked from the start (revoked is set first) and nothing is
// committed.
func (s *Source) lost(_ context.Context, cl *kgo.Client, lost map[string][]int32) {
	ps := lost[s.topic]
	s.member.lost(cl, map[string][]int32{s.topic: ps}, ps)
}

// detachLocked removes the parts of the topic's partitions in m (all of
// them when m is nil) from s.parts and returns them. (An empty m detaches
// nothing: franz-go passes an empty map at the end of every cooperative
// session.)
func (s *Source) detachLocked(m map[string][]int32) []*part {
	var out []*part
	if m == nil {
		for p, pt := range s.parts {
			out = append(out, pt)
			delete(s.parts, p)
		}
		return out
	}
	for _, p := range m[s.topic] {
		if pt := s.parts[p]; pt != nil {
			out = append(out, pt)
			delete(s.parts, p)
		}
	}
	return out
}

// stop cancels the workers of parts and waits for them together, at most
// StopTimeout; with fenceFirst their hooks are fenced before cancelling
// (lost partitions), else after the wait (revoke, shutdown: a batch that
// completes during the wait is still marked).
func (s *Source) stop(parts []*part, fenceFirst bool) {
	fence := func() {
		for _, pt := range parts {
			pt.mu.Lock()
			pt.revoked = true
			pt.mu.Unlock()
		}
	}
	if fenceFirst {
		fence()
	}
	for _, pt := range parts {
		pt.cancel()
	}
	deadline := time.NewTimer(s.opts.StopTimeout)
	defer deadline.Stop()
	for _, pt := range parts {
		select {
		case <-pt.done:
		case <-deadline.C:
			s.log.Error("a shard did not stop in time after cancel; abandoning it (its Deliverer ignores ctx)",
				"partition", pt.p, "timeout", s.opts.StopTimeout)
		}
	}
	if !fenceFirst {
		fence()
	}
}

// refreshLag lists the high watermarks of the topic every LagRefresh: a
// paused partition is not fetched, so the poll loop stops seeing its high
// watermark just when its lag matters.
func (s *Source) refreshLag(ctx context.Context, cl *kgo.Client) {
	adm := kadm.NewClient(cl)
	t := time.NewTicker(s.opts.LagRefresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lctx, cancel := context.WithTimeout(ctx, s.opts.LagRefresh)
		offs, err := adm.ListEndOffsets(lctx, s.topic)
		cancel()
		if err != nil && ctx.Err() == nil {
			s.log.Debug("listing end offsets failed", "error", err)
		}
		s.mu.Lock()
		offs.Each(func(o kadm.ListedOffset) {
			if pt := s.parts[o.Partition]; pt != nil && o.Err == nil && o.Topic == s.topic && o.Offset > pt.hwm {
				pt.hwm = o.Offset
			}
		})
		s.mu.Unlock()
	}
}

// ShardStatus is a partition as GET /v1/shards shows it: the worker's status
// with the partition's high watermark, lag and iterator age.
type ShardStatus struct {
	shard.Status
	// HighWatermark is the offset after the newest record of the partition,
	// as last seen; -1 when not known yet.
	HighWatermark int64
	// Lag is HighWatermark − the next offset to commit (0 when unknown).
	Lag int64
	// IteratorAge is now − the timestamp of the oldest record not yet
	// checkpointed; 0 when there is none.
	IteratorAge time.Duration
}

// Statuses returns the status of each partition this member owns, by
// partition.
func (s *Source) Statuses() []shard.Status {
	shards := s.Shards()
	out := make([]shard.Status, len(shards))
	for i := range shards {
		out[i] = shards[i].Status
	}
	return out
}

// Shards returns each owned partition's status with its lag, by partition.
func (s *Source) Shards() []ShardStatus {
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var committed map[int32]kgo.EpochOffset
	if s.cl != nil && len(s.parts) > 0 {
		committed = s.cl.CommittedOffsets()[s.topic]
	}
	out := make([]ShardStatus, 0, len(s.parts))
	for p, pt := range s.parts {
		st := ShardStatus{Status: pt.w.Status(), HighWatermark: pt.hwm}
		// The next offset to commit: after the last checkpoint, else the
		// first record fetched, else the group's committed offset.
		next := st.Position
		if next < 0 {
			next = pt.first
		}
		if c, ok := committed[p]; next < 0 && ok {
			next = c.Offset
		}
		if pt.hwm >= 0 && next >= 0 && pt.hwm > next {
			st.Lag = pt.hwm - next
		}
		if !st.Oldest.IsZero() {
			st.IteratorAge = max(0, now.Sub(st.Oldest))
		}
		out = append(out, st)
	}
	slices.SortFunc(out, func(a, b ShardStatus) int { return int(a.Shard.Partition - b.Shard.Partition) })
	return out
}

// kgoLogger sends franz-go's warnings and errors to slog.
type kgoLogger struct{ l *slog.Logger }

func (l kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (l kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lv := slog.LevelWarn
	switch level {
	case kgo.LogLevelError:
		lv = slog.LevelError
	case kgo.LogLevelInfo:
		lv = slog.LevelInfo
	case kgo.LogLevelDebug:
		lv = slog.LevelDebug
	}
	l.l.Log(context.Background(), lv, "kafka client: "+msg, keyvals...)
}

// committer commits the marked offsets of every shard when a shard asks
// (once half of its commit_pipeline_depth waits, or when it must wait),
// coalescing the marks of every shard into each round and the asks made
// while a round is on the wire, or in the pause after it, into the next
// one, and every commitInterval when nobody asked. It is the
// only path by which a client commits: its rounds, the commit at revoke and
// the final one all go through commit, which reads the marks and sends them
// under one lock, so a commit never carries older marks than the one before
// it and the committed offset never moves back. (franz-go's
// CommitMarkedOffsets reads the marks before it takes its own commit lock:
// a round that read them just before a revoke could otherwise commit its
// older offsets after the revoke's, and the next owner would start there.)
type committer struct {
	asked chan struct{} // capacity 1: "a mark is waiting for a commit"; never blocks a shard
	// urgent (capacity 1): a lane waits for a round that has not begun, so
	// the round starts without the pause between rounds (run).
	urgent chan struct{}

	// commitMu serializes commit: the read of the marks and their commit.
	commitMu sync.Mutex
	// afterSnapshot, if set (tests), runs in commit between the read of the
	// marks and their commit.
	afterSnapshot func()

	// mu guards the round counters and done.
	mu       sync.Mutex
	started  uint64        // commit rounds begun
	finished uint64        // rounds ended (with or without error)
	done     chan struct{} // closed, and replaced, whenever a round ends
}

func newCommitter() *committer {
	return &committer{asked: make(chan struct{}, 1), urgent: make(chan struct{}, 1), done: make(chan struct{})}
}

// commit commits what is marked on cl now, after any commit of c in
// progress, and returns the first error of the request or of a partition.
// It is franz-go's CommitMarkedOffsets with the read of the marks inside
// the lock.
func (c *committer) commit(ctx context.Context, cl *kgo.Client) error {
	if c == nil { // a revoke before Run started the committer: nothing to order with
		return cl.CommitMarkedOffsets(ctx)
	}
	c.commitMu.Lock()
	defer c.commitMu.Unlock()
	marked := cl.MarkedOffsets()
	if len(marked) == 0 {
		return nil
	}
	if c.afterSnapshot != nil {
		c.afterSnapshot()
	}
	var rerr error
	cl.CommitOffsetsSync(ctx, marked, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			rerr = err
			return
		}
		for _, t := range resp.Topics {
			for _, p := range t.Partitions {
				if err := kerr.ErrorForCode(p.ErrorCode); err != nil && rerr == nil {
					rerr = err
				}
			}
		}
	})
	return rerr
}

// next returns the number of the round that will commit what the caller
// marked before calling (the next to begin), for waitFor. It does not ask
// for that round: ask does.
func (c *committer) next() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.started + 1
}

// unstarted counts the rounds of targets (in ascending order, as next
// returned them) that have not begun.
func (c *committer) unstarted(targets []uint64) int {
	c.mu.Lock()
	started := c.started
	c.mu.Unlock()
	n := 0
	for i := len(targets) - 1; i >= 0 && targets[i] > started; i-- {
		n++
	}
	return n
}

// ask asks for a round after the one in progress, if any. It does not
// block.
func (c *committer) ask() {
	select {
	case c.asked <- struct{}{}:
	default: // a round is already asked for; it begins after every mark made so far
	}
}

// wait asks for a commit round and returns once it has ended (it commits
// what the caller marked before calling), or when ctx ends: waitFor asks
// for the round, which has not begun.
func (c *committer) wait(ctx context.Context) { c.waitFor(ctx, c.next()) }

// waitFor returns once round target has ended (at once for 0), or when ctx
// ends. A target that has not begun is asked for. A failed round is not
// retried here: the mark stays, and the next round (asked for or periodic)
// or the commit at revoke carries it.
func (c *committer) waitFor(ctx context.Context, target uint64) {
	for {
		c.mu.Lock()
		if c.finished >= target {
			c.mu.Unlock()
			return
		}
		done, begun := c.done, c.started >= target
		c.mu.Unlock()
		if !begun {
			c.ask()
			select {
			case c.urgent <- struct{}{}:
			default:
			}
		}
		select {
		case <-done:
		case <-ctx.Done():
			return
		}
	}
}

// run commits the marked offsets each time a shard asks, and every
// interval, until ctx ends; a round that ctx interrupts still ends (and
// releases its waiters).
func (c *committer) run(ctx context.Context, cl *kgo.Client, interval, timeout time.Duration, log *slog.Logger) {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	var rested time.Time // when the pause after the last round ends
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.asked:
			// A round asked for starts after a pause as long as the last
			// round took, unless a lane waits for it (urgent). Lanes ask
			// once half their depth waits; with several lanes asking in
			// turn, rounds ran back to back, each carrying a batch or two
			// a partition, and each cost the broker more CPU than those
			// batches cost sluice (batch_size 500, BENCHMARKS.md). Marks
			// made during the pause join the round.
			if rest := time.Until(rested); rest > 0 {
				t := time.NewTimer(rest)
				select {
				case <-ctx.Done():
					t.Stop()
					return
				case <-t.C:
				case <-c.urgent:
					t.Stop()
				}
			}
		case <-tick.C:
		}
		select {
		case <-c.urgent: // this round serves it
		default:
		}
		began := time.Now()
		c.mu.Lock()
		c.started++
		round := c.started
		c.mu.Unlock()

		cctx, cancel := context.WithTimeout(ctx, timeout)
		err := c.commit(cctx, cl)
		cancel()
		rested = time.Now().Add(min(time.Since(began), maxCommitRest))
		if err != nil && ctx.Err() == nil {
			// Typically a rebalance in progress; the marks stay and the
			// next round or the revoke commits them.
			log.Debug("commit of marked offsets failed", "error", err)
		}

		c.mu.Lock()
		c.finished = round
		close(c.done)
		c.done = make(chan struct{})
		c.mu.Unlock()
	}
}

// PartitionLoads reports the lag and iterator age of every partition this
// process owns (consumer.PartitionLoader).
func (s *Source) PartitionLoads() []consumer.PartitionLoad {
	st := s.Shards()
	out := make([]consumer.PartitionLoad, len(st))
	for i := range st {
		out[i] = consumer.PartitionLoad{Partition: st[i].Shard.Partition, Lag: st[i].Lag, IteratorAge: st[i].IteratorAge}
	}
	return out
}

var _ consumer.PartitionLoader = (*Source)(nil)
