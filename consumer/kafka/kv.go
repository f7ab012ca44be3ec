package kafka

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/internal/lograte"
)

// The key-value engine over Kafka (consumer.KV), for the cluster mode.
//
// A bucket is three single-partition topics:
//
//   - <bucket>-state, compacted: the bucket itself. The record key is the
//     KV key, the value {value, write time}, a tombstone a delete; a key's
//     revision is the offset of its record. Offsets only grow, across
//     leader changes and compaction, so a revision is never reused.
//   - <bucket>-requests: every member's compare-and-swap requests.
//   - <bucket>-replies: the leader's answers, keyed by member.
//
// The state topic has a single writer, the leader: the member of the
// consumer group <bucket> (over the requests topic) that is assigned its
// one partition — Kafka's group membership is the election, as in Kafka
// Connect. The leader applies the requests in their order to its table,
// writes the accepted values and every answer in one Kafka transaction, and
// members read the state and the answers with read_committed.
//
// Fencing. Every leader uses the same transactional id (per bucket). A new
// leader's first transaction makes the transaction coordinator bump the
// producer epoch: the previous leader's open transaction is aborted and any
// later write of it is refused (PRODUCER_FENCED), whether or not it knows
// yet that it lost the partition. The new leader then reads the state topic
// up to the marker it wrote in that first transaction, so its table holds
// every committed write of its predecessors. No write of a zombie leader
// can land, and no consensus of ours is involved: the group coordinator
// elects, the transaction coordinator fences, the partition orders.
//
// Reads (Get, Keys, Watch) are served from each member's own copy of the
// state topic, kept by a read_committed consumer: they never wait on the
// leader and may lag the last writes by a fetch; a compare-and-swap made on
// a stale read is refused. A member's own accepted write is in its copy
// before Create/Update/Delete return (it waits for the record's offset).
//
// TTL: the leader tombstones keys whose last write is older than the
// bucket's TTL, checking every second, on its own (monotonic) clock: a new
// leader counts every key's age from when it took the lead, so clocks of
// different hosts never compare (a key may outlive the TTL by one TTL
// after a leader change).
//
// Recreated topics. A revision is an offset of the state topic, valid
// only in that topic's history. A member records the topics' IDs when it
// opens, compares them every kvTopicCheck and whenever it takes the lead,
// and checks that the state offsets it reads (and, as leader, writes) only
// grow; a request carries the ID of the state topic its sender read, and a
// leader skips one made on another. A mismatch (the topics deleted and
// recreated, records lost by an unclean election) breaks the KV for good:
// every call fails with an error saying so, the member stops leading and
// leaves the group. The operator restarts the processes (a new process
// reads the new topics from their start).
//
// History is not kept: a
// compacted topic keeps a key's latest value only (the cluster engine reads
// nothing else).

// Tuning of the Kafka KV engine.
const (
	// kvSessionTimeout is the group session of a member: a leader killed
	// without leaving is replaced after it (6s is the broker's minimum by
	// default, group.min.session.timeout.ms).
	kvSessionTimeout = 6 * time.Second
	// kvHeartbeat is how often members heartbeat; a rebalance reaches
	// every member within it.
	kvHeartbeat = 500 * time.Millisecond
	// kvSweep is how often the leader looks for keys past the TTL (and the
	// longest its request loop waits for records).
	kvSweep = time.Second
	// kvTxnTimeout bounds a leader's transaction at the coordinator.
	kvTxnTimeout = 10 * time.Second
	// kvDefaultDeadline bounds a request sent without a ctx deadline.
	kvDefaultDeadline = 30 * time.Second
	// kvOpenSync bounds OpenKV's wait for a leader.
	kvOpenSync = time.Minute
	// kvTopicRetention keeps requests and replies (their readers only look
	// at the newest).
	kvTopicRetention = time.Hour
	// kvSegment rolls the topics' segments often enough for compaction
	// and retention to reach them (the shares bucket is written every
	// round).
	kvSegment = 10 * time.Minute
	// kvStaleRequest is how far past its sender's deadline a request is
	// still decided: the deadline is the sender's wall clock, so a margin
	// far above any sane clock skew keeps a member whose clock is behind
	// the leader's able to write (a request decided after its sender gave
	// up is harmless: its answer finds nobody waiting, and the engine
	// tolerates a write it was told failed).
	kvStaleRequest = time.Minute
	// kvTopicCheck is how often a member compares the bucket's topic IDs
	// with those it opened.
	kvTopicCheck = 5 * time.Second
	// kvReplicas is the replication factor of new bucket topics (fewer
	// when the cluster has fewer brokers); with it, min.insync.replicas is
	// 2, so an accepted write survives the loss of a broker.
	kvReplicas = 3
)

// leaderKey is the reserved state key of the leaders' markers; reserved
// keys start with NUL, which no KV key of the cluster engine does.
const leaderKey = "\x00leader"

// positionKey is the reserved state key of the requests offset the
// leaders have handled up to: written in every leader transaction with its
// writes and answers, so a new leader resumes exactly there.
const positionKey = "\x00requests"

// kvOp is a request's operation.
type kvOp string

const (
	opCreate kvOp = "create"
	opUpdate kvOp = "update"
	opDelete kvOp = "delete"
	// opSync writes nothing: its answer carries the last state offset the
	// leader wrote or read, so that the caller can read up to it.
	opSync kvOp = "sync"
)

// kvRequest is one record of the requests topic (key: the member id).
type kvRequest struct {
	Member   string `json:"member"`
	N        uint64 `json:"n"`
	Op       kvOp   `json:"op"`
	Key      string `json:"key"`
	Rev      uint64 `json:"rev,omitempty"`
	Value    []byte `json:"value,omitempty"`
	Deadline int64  `json:"deadline"` // unix ms; the leader skips a request past it
	// State is the ID of the state topic the member read (empty when the
	// broker has no topic IDs): a leader skips a request made on another
	// topic's history (the topic was recreated meanwhile).
	State string `json:"state,omitempty"`
}

// kvReply is one record of the replies topic (key: the member id).
type kvReply struct {
	N  uint64 `json:"n"`
	OK bool   `json:"ok"`
	// Rev is the accepted write's offset in the state topic.
	Rev uint64 `json:"rev,omitempty"`
}

// kvValue is the value of a state record.
type kvValue struct {
	Value   []byte `json:"value"`
	Written int64  `json:"written"` // unix ms, the leader's clock
	Leader  string `json:"leader,omitempty"`
	// Next is the requests topic's next offset to handle (positionKey).
	Next int64 `json:"next,omitempty"`
}

type kvEntry struct {
	value   []byte
	rev     uint64
	written time.Time
}

// kvTopics names a bucket's topics.
type kvTopics struct{ state, requests, replies string }

func topicsOf(bucket string) kvTopics {
	return kvTopics{state: bucket + "-state", requests: bucket + "-requests", replies: bucket + "-replies"}
}

var _ consumer.KVOpener = (*Broker)(nil)

// OpenKV opens the bucket over this broker's Kafka cluster (creating its
// topics when they are missing) and returns once this member's copy of
// the state is current; Close of the Broker closes it.
func (b *Broker) OpenKV(ctx context.Context, bucket string, opts consumer.KVOptions) (consumer.KV, error) {
	kv, err := OpenKV(ctx, b.cfg, bucket, opts, b.log)
	if err != nil {
		return nil, err
	}
	b.closers.Add(kv.Close)
	return kv, nil
}

// KV is a consumer.KV over Kafka topics (see OpenKV).
//
// A write that fails otherwise than by ErrKVConflict — its ctx ended before
// the leader answered, the KV closed meanwhile — may still have landed:
// the request stays in the requests topic and a leader decides it up to
// kvStaleRequest past the ctx's deadline. Its caller must treat the
// outcome as unknown (re-read the key) rather than as not written. A write
// the leader accepted returns its revision even when ctx ends before this
// member's copy holds it (a Get may then lag it for a moment).
type KV struct {
	cfg    consumer.KafkaConfig
	bucket string
	topics kvTopics
	opts   consumer.KVOptions
	id     string
	log    *slog.Logger
	failed *lograte.Logger // reading the state or the replies failed (a persistent error stalls every call)
	skew   time.Duration   // tests: how far this member's wall clock is behind the leader's

	state, replies, producer, group, meta *kgo.Client
	ids                                   map[string]kadm.TopicID // the topics' IDs at open

	mu       sync.Mutex
	table    map[string]kvEntry
	applied  int64         // the last offset of the state topic read (records and markers)
	progress chan struct{} // closed and replaced when applied grows
	pending  map[uint64]chan kvReply
	n        uint64
	watchers map[string][]*kvWatcher
	leader   string // the member id of the last leader's marker
	next     int64  // the requests offset the leaders handled up to (positionKey)

	isLeader bool          // the group assigned this member the requests partition (guarded by mu)
	leads    int           // how often this member took the lead (guarded by mu; tests)
	assigned chan struct{} // signalled when isLeader changes

	broken   error         // set once (guarded by mu): the topics are not those opened (see fail)
	brokenCh chan struct{} // closed when broken is set

	cancel  context.CancelFunc
	wg      sync.WaitGroup // the loops
	watches sync.WaitGroup // the Watch goroutines
	done    chan struct{}  // closed by Close
	closing sync.Once
}

var _ consumer.KV = (*KV)(nil)

// OpenKV opens bucket on the Kafka cluster of cfg (see the KV type's
// comment at the top of this file); log may be nil.
func OpenKV(ctx context.Context, cfg consumer.KafkaConfig, bucket string, opts consumer.KVOptions, log *slog.Logger) (*KV, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	k := &KV{cfg: cfg, bucket: bucket, topics: topicsOf(bucket), opts: opts, id: hex.EncodeToString(rnd[:]),
		log: log.With("bucket", bucket), failed: lograte.New(log, "kafka kv read failures", 3, time.Minute), table: map[string]kvEntry{}, applied: -1, progress: make(chan struct{}),
		pending: map[uint64]chan kvReply{}, watchers: map[string][]*kvWatcher{}, assigned: make(chan struct{}, 1), done: make(chan struct{}), brokenCh: make(chan struct{})}
	if err := k.ensureTopics(ctx); err != nil {
		return nil, err
	}
	if err := k.open(ctx); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// ensureTopics creates the bucket's three topics where missing.
func (k *KV) ensureTopics(ctx context.Context) error {
	cl, err := newClient(k.cfg)
	if err != nil {
		return fmt.Errorf("kafka: key-value bucket %s: %w", k.bucket, err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	segment := strconv.FormatInt(kvSegment.Milliseconds(), 10)
	retention := strconv.FormatInt(kvTopicRetention.Milliseconds(), 10)
	compact, del := "compact", "delete"
	// An accepted write must outlive a broker: a state topic losing its
	// tail would hand its offsets (revisions) out again.
	replicas := int16(kvReplicas)
	if brokers, err := adm.ListBrokers(ctx); err == nil && len(brokers) > 0 && len(brokers) < kvReplicas {
		replicas = int16(len(brokers))
	}
	isr := strconv.Itoa(min(2, int(replicas)))
	for topic, conf := range map[string]map[string]*string{
		k.topics.state:    {"cleanup.policy": &compact, "segment.ms": &segment, "min.insync.replicas": &isr},
		k.topics.requests: {"cleanup.policy": &del, "segment.ms": &segment, "retention.ms": &retention},
		k.topics.replies:  {"cleanup.policy": &del, "segment.ms": &segment, "retention.ms": &retention},
	} {
		resp, err := adm.CreateTopic(ctx, 1, replicas, conf, topic)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.TopicAlreadyExists) {
			return fmt.Errorf("kafka: key-value bucket %s: create topic %q: %w", k.bucket, topic, opaque(err))
		}
	}
	// A new topic can be unknown to the broker that answers for a moment.
	for {
		ends, err := adm.ListEndOffsets(ctx, k.topics.state, k.topics.requests, k.topics.replies)
		if err == nil {
			err = ends.Error()
		}
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kafka: key-value bucket %s: topics not visible: %w", k.bucket, opaque(err))
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// open starts the clients and the loops and waits until the copy of the
// state is current.
func (k *KV) open(ctx context.Context) (err error) {
	if k.meta, err = newClient(k.cfg); err != nil {
		return err
	}
	ka := kadm.NewClient(k.meta)
	if k.ids, err = k.topicIDs(ctx); err != nil {
		return fmt.Errorf("kafka: key-value bucket %s: %w", k.bucket, opaque(err))
	}
	stable, err := ka.ListCommittedOffsets(ctx, k.topics.state)
	if err == nil {
		err = stable.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka: key-value bucket %s: %w", k.bucket, opaque(err))
	}
	ends, err := ka.ListEndOffsets(ctx, k.topics.replies)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return fmt.Errorf("kafka: key-value bucket %s: %w", k.bucket, opaque(err))
	}
	repliesEnd, _ := ends.Lookup(k.topics.replies, 0)
	stateEnd, _ := stable.Lookup(k.topics.state, 0)

	if k.state, err = newClient(k.cfg, kgo.FetchIsolationLevel(kgo.ReadCommitted()), kgo.KeepControlRecords(),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{k.topics.state: {0: kgo.NewOffset().AtStart()}})); err != nil {
		return err
	}
	if k.replies, err = newClient(k.cfg, kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{k.topics.replies: {0: kgo.NewOffset().At(repliesEnd.Offset)}})); err != nil {
		return err
	}
	if k.producer, err = newClient(k.cfg, kgo.ProducerLinger(0), kgo.DefaultProduceTopic(k.topics.requests)); err != nil {
		return err
	}
	if k.group, err = newClient(k.cfg, kgo.ConsumerGroup(k.bucket), kgo.ConsumeTopics(k.topics.requests),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtEnd()), kgo.DisableAutoCommit(),
		kgo.SessionTimeout(kvSessionTimeout), kgo.HeartbeatInterval(kvHeartbeat),
		kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if len(m[k.topics.requests]) > 0 {
				k.setAssigned(true)
			}
		}),
		kgo.OnPartitionsRevoked(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if len(m[k.topics.requests]) > 0 {
				k.setAssigned(false)
			}
		}),
		kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, m map[string][]int32) {
			if len(m[k.topics.requests]) > 0 {
				k.setAssigned(false)
			}
		}),
	); err != nil {
		return err
	}
	// The group only elects: the leader reads the requests with its own
	// client, from the position kept in the state.
	k.group.PauseFetchTopics(k.topics.requests)
	lctx, cancel := context.WithCancel(context.Background())
	k.cancel = cancel
	k.wg.Add(4)
	go k.readState(lctx)
	go k.readReplies(lctx)
	go k.serve(lctx)
	go k.checkTopics(lctx)
	if stateEnd.Offset > 0 {
		if err := k.waitApplied(ctx, stateEnd.Offset-1); err != nil {
			return fmt.Errorf("kafka: key-value bucket %s: read the state: %w", k.bucket, err)
		}
	}
	// A leader answers before OpenKV returns (the first member of a new
	// bucket waits for the group's first election), so the first writes
	// of the caller do not race the election.
	sctx, cancel := context.WithTimeout(ctx, kvOpenSync)
	defer cancel()
	if err := k.Sync(sctx); err != nil {
		return fmt.Errorf("kafka: key-value bucket %s: no leader answered within %s: %w", k.bucket, kvOpenSync, err)
	}
	return nil
}

// Sync waits until this member's copy holds every write the leader made
// before it answered: a read after Sync sees every write accepted before
// Sync was called. It fails when no leader answers within ctx.
func (k *KV) Sync(ctx context.Context) error {
	_, err := k.call(ctx, opSync, "", nil, 0)
	return err
}

// setAssigned records the group's (re)assignment of the requests
// partition for serve.
func (k *KV) setAssigned(a bool) {
	k.mu.Lock()
	k.isLeader = a
	k.mu.Unlock()
	select {
	case k.assigned <- struct{}{}:
	default:
	}
}

// errKVClosed is returned by the calls of a closed KV.
var errKVClosed = errors.New("closed")

// Close leaves the group (another member leads at once), ends the Watch
// goroutines (waiting for a running fn to return) and the loops, and
// closes the clients. Calls made meanwhile or later fail.
func (k *KV) Close() {
	k.closing.Do(func() {
		k.mu.Lock()
		close(k.done)
		k.mu.Unlock()
	})
	if k.cancel != nil {
		k.cancel()
	}
	k.wg.Wait()
	k.watches.Wait()
	for _, cl := range []*kgo.Client{k.group, k.producer, k.replies, k.state, k.meta} {
		if cl != nil {
			cl.Close()
		}
	}
}

// readState keeps the copy of the state topic.
func (k *KV) readState(ctx context.Context) {
	defer k.wg.Done()
	for {
		fs := k.state.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		fs.EachError(func(t string, p int32, err error) {
			k.failed.Log(slog.LevelWarn, "state", "kafka kv: reading the state failed; reads and writes wait", "bucket", k.bucket, "topic", t, "error", err)
		})
		fs.EachRecord(k.apply)
	}
}

// apply applies one record of the state topic.
func (k *KV) apply(r *kgo.Record) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.broken != nil {
		return
	}
	if r.Offset <= k.applied {
		// Offsets only grow: the topic was recreated or lost its tail
		// (revisions this member holds would be handed out again).
		k.failLocked(fmt.Errorf("the offsets of topic %s went back from %d to %d", k.topics.state, k.applied, r.Offset))
		return
	}
	k.applied = r.Offset
	close(k.progress)
	k.progress = make(chan struct{})
	if r.Attrs.IsControl() {
		return
	}
	key := string(r.Key)
	rev := uint64(r.Offset)
	if r.Value == nil {
		delete(k.table, key)
		k.notify(key, nil, rev)
		return
	}
	var v kvValue
	if err := json.Unmarshal(r.Value, &v); err != nil {
		k.log.Warn("kafka kv: a state record is not valid, skipped", "offset", r.Offset, "error", err)
		return
	}
	switch key {
	case leaderKey:
		k.leader = v.Leader
		return
	case positionKey:
		k.next = v.Next
		return
	}
	k.table[key] = kvEntry{value: v.Value, rev: rev, written: time.UnixMilli(v.Written)}
	k.notify(key, v.Value, rev)
}

// waitApplied waits until the copy holds offset off of the state topic.
func (k *KV) waitApplied(ctx context.Context, off int64) error {
	for {
		k.mu.Lock()
		done, ch, broken := k.applied >= off, k.progress, k.broken
		k.mu.Unlock()
		if broken != nil {
			return broken
		}
		if done {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-k.done:
			return errKVClosed
		case <-ch:
		}
	}
}

// readReplies hands the leader's answers to this member's waiting calls.
func (k *KV) readReplies(ctx context.Context) {
	defer k.wg.Done()
	for {
		fs := k.replies.PollFetches(ctx)
		if ctx.Err() != nil {
			return
		}
		fs.EachError(func(t string, _ int32, err error) {
			k.failed.Log(slog.LevelWarn, "replies", "kafka kv: reading the leader's answers failed; writes wait", "bucket", k.bucket, "topic", t, "error", err)
		})
		fs.EachRecord(func(r *kgo.Record) {
			if string(r.Key) != k.id {
				return
			}
			var rep kvReply
			if json.Unmarshal(r.Value, &rep) != nil {
				return
			}
			k.mu.Lock()
			ch := k.pending[rep.N]
			delete(k.pending, rep.N)
			k.mu.Unlock()
			if ch != nil {
				ch <- rep
			}
		})
	}
}

// call sends a request to the leader and waits for its answer (and, for
// an accepted write, for the write to be in this member's copy).
func (k *KV) call(ctx context.Context, op kvOp, key string, value []byte, rev uint64) (uint64, error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(kvDefaultDeadline)
	}
	select {
	case <-k.done:
		return 0, fmt.Errorf("kafka: key-value bucket %s: %w", k.bucket, errKVClosed)
	default:
	}
	if err := k.err(); err != nil {
		return 0, err
	}
	ch := make(chan kvReply, 1)
	k.mu.Lock()
	k.n++
	n := k.n
	k.pending[n] = ch
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		delete(k.pending, n)
		k.mu.Unlock()
	}()
	b, err := json.Marshal(kvRequest{Member: k.id, N: n, Op: op, Key: key, Rev: rev, Value: value, Deadline: deadline.Add(-k.skew).UnixMilli(), State: k.stateID()})
	if err != nil {
		return 0, err
	}
	if err := k.producer.ProduceSync(ctx, &kgo.Record{Key: []byte(k.id), Value: b}).FirstErr(); err != nil {
		return 0, fmt.Errorf("kafka: key-value bucket %s: send the request: %w", k.bucket, opaque(err))
	}
	var rep kvReply
	select {
	case rep = <-ch:
	case <-ctx.Done():
		return 0, fmt.Errorf("kafka: key-value bucket %s: no answer from a leader (the request may still be decided): %w", k.bucket, ctx.Err())
	case <-k.done:
		return 0, fmt.Errorf("kafka: key-value bucket %s: no answer from a leader (the request may still be decided): %w", k.bucket, errKVClosed)
	case <-k.brokenCh:
		return 0, k.err()
	}
	if !rep.OK {
		return 0, consumer.ErrKVConflict
	}
	if err := k.waitApplied(ctx, int64(rep.Rev)); err != nil && (op == opSync || k.err() != nil || (ctx.Err() == nil && !k.closed())) {
		return 0, fmt.Errorf("kafka: key-value bucket %s: read the accepted write back: %w", k.bucket, err)
	}
	// The leader accepted the write: it landed, whether or not this
	// member's copy caught up with it within ctx.
	return rep.Rev, nil
}

// Get returns key's value in this member's copy.
func (k *KV) Get(ctx context.Context, key string) ([]byte, uint64, error) {
	if err := ctx.Err(); err != nil {
		return nil, 0, err
	}
	k.mu.Lock()
	e, ok := k.table[key]
	broken := k.broken
	k.mu.Unlock()
	if broken != nil {
		return nil, 0, broken
	}
	if !ok {
		return nil, 0, consumer.ErrKVNotFound
	}
	return e.value, e.rev, nil
}

// Create writes key when it has no value.
func (k *KV) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	return k.call(ctx, opCreate, key, value, 0)
}

// Update writes key when its revision is still rev.
func (k *KV) Update(ctx context.Context, key string, value []byte, rev uint64) (uint64, error) {
	return k.call(ctx, opUpdate, key, value, rev)
}

// Delete removes key when its revision is still rev.
func (k *KV) Delete(ctx context.Context, key string, rev uint64) error {
	_, err := k.call(ctx, opDelete, key, nil, rev)
	return err
}

// Keys lists the keys under the dotted prefix in this member's copy.
func (k *KV) Keys(ctx context.Context, prefix string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p := strings.TrimSuffix(prefix, ".") + "."
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.broken != nil {
		return nil, k.broken
	}
	var out []string
	for key := range k.table {
		if strings.HasPrefix(key, p) && len(key) > len(p) {
			out = append(out, key)
		}
	}
	slices.Sort(out)
	return out, nil
}

// Where names the bucket's state topic.
func (k *KV) Where() string { return "kafka topic " + k.topics.state }

// Leader returns the member id of the bucket's last elected leader, and
// this member's id.
func (k *KV) Leader() (leader, self string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.leader, k.id
}

// kvWatcher queues a Watch's values for its goroutine.
type kvWatcher struct {
	mu     sync.Mutex
	queue  []kvEntry
	signal chan struct{}
}

func (w *kvWatcher) push(e kvEntry) {
	w.mu.Lock()
	w.queue = append(w.queue, e)
	w.mu.Unlock()
	select {
	case w.signal <- struct{}{}:
	default:
	}
}

// notify queues a new value of key for its watchers; k.mu is held.
func (k *KV) notify(key string, value []byte, rev uint64) {
	for _, w := range k.watchers[key] {
		w.push(kvEntry{value: value, rev: rev})
	}
}

// closed reports whether Close was called.
func (k *KV) closed() bool {
	select {
	case <-k.done:
		return true
	default:
		return false
	}
}

// Watch calls fn with key's current value (when it has one) and then with
// every new one this member reads, until ctx ends or the KV closes.
func (k *KV) Watch(ctx context.Context, key string, fn func([]byte, uint64)) error {
	w := &kvWatcher{signal: make(chan struct{}, 1)}
	k.mu.Lock()
	if k.closed() { // under mu: Close waits for every Watch counted before it
		k.mu.Unlock()
		return fmt.Errorf("kafka: key-value bucket %s: %w", k.bucket, errKVClosed)
	}
	if k.broken != nil {
		k.mu.Unlock()
		return k.broken
	}
	k.watches.Add(1)
	if e, ok := k.table[key]; ok {
		w.push(e)
	}
	k.watchers[key] = append(k.watchers[key], w)
	k.mu.Unlock()
	go func() {
		defer k.watches.Done()
		defer func() {
			k.mu.Lock()
			k.watchers[key] = slices.DeleteFunc(k.watchers[key], func(x *kvWatcher) bool { return x == w })
			k.mu.Unlock()
		}()
		for {
			select {
			case <-ctx.Done():
				return
			case <-k.done:
				return
			case <-k.brokenCh:
				return
			case <-w.signal:
			}
			w.mu.Lock()
			q := w.queue
			w.queue = nil
			w.mu.Unlock()
			for _, e := range q {
				if ctx.Err() != nil || k.closed() || k.err() != nil {
					return
				}
				fn(e.value, e.rev)
			}
		}
	}()
	return nil
}

// errKVRecreated is wrapped by every error of a KV whose topics are no
// longer those it opened.
var errKVRecreated = errors.New("a topic of the bucket was deleted and recreated, or lost records, while this process ran; " +
	"its revisions cannot be trusted: restart every sluice process that uses the bucket")

// err returns the error every call of a broken KV returns, or nil.
func (k *KV) err() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.broken
}

// fail breaks the KV for good: every call returns an error naming cause,
// the leader steps down and the member leaves the group. A compare-and-swap
// decided on a copy of another topic's history could succeed against the
// wrong value, so nothing is served any more.
func (k *KV) fail(cause error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.failLocked(cause)
}

// failLocked is fail with k.mu held.
func (k *KV) failLocked(cause error) {
	if k.broken != nil {
		return
	}
	k.broken = fmt.Errorf("kafka: key-value bucket %s: %w (%w)", k.bucket, errKVRecreated, cause)
	k.log.Error("kafka kv: the bucket's topics are not those this process opened; every call fails until the process restarts", "cause", cause)
	close(k.brokenCh)
	close(k.progress)
	k.progress = make(chan struct{})
	select {
	case k.assigned <- struct{}{}:
	default:
	}
}

// topicIDs returns the IDs of the bucket's topics.
func (k *KV) topicIDs(ctx context.Context) (map[string]kadm.TopicID, error) {
	td, err := kadm.NewClient(k.meta).ListTopics(ctx, k.topics.state, k.topics.requests, k.topics.replies)
	if err != nil {
		return nil, err
	}
	ids := map[string]kadm.TopicID{}
	for _, d := range td {
		if d.Err != nil {
			return nil, fmt.Errorf("topic %s: %w", d.Topic, d.Err)
		}
		ids[d.Topic] = d.ID
	}
	return ids, nil
}

// sameTopics breaks the KV when a topic of the bucket has another ID than
// at open (it was deleted and recreated); a topic missing or a metadata
// failure is only logged.
func (k *KV) sameTopics(ctx context.Context) error {
	ids, err := k.topicIDs(ctx)
	if err != nil {
		k.failed.Log(slog.LevelWarn, "metadata", "kafka kv: reading the bucket's topics failed", "bucket", k.bucket, "error", err)
		return nil
	}
	for topic, id := range ids {
		if was := k.ids[topic]; was != (kadm.TopicID{}) && id != (kadm.TopicID{}) && id != was {
			k.fail(fmt.Errorf("topic %s has the ID %s, not %s as when this process opened it", topic, id, was))
		}
	}
	return k.err()
}

// checkTopics runs sameTopics every kvTopicCheck.
func (k *KV) checkTopics(ctx context.Context) {
	defer k.wg.Done()
	t := time.NewTicker(kvTopicCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-k.brokenCh:
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, kvTopicCheck)
		_ = k.sameTopics(cctx)
		cancel()
	}
}

// stateID is the ID of the state topic this member opened, "" when the
// broker has no topic IDs.
func (k *KV) stateID() string {
	if id := k.ids[k.topics.state]; id != (kadm.TopicID{}) {
		return id.String()
	}
	return ""
}
