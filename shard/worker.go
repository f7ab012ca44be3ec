package shard

import (
	"cmp"
	"context"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/redelivery"
)

// WorkerConfig is how one shard delivers: SPEC §2.1's settings.
type WorkerConfig struct {
	Source   string
	Function string
	Mode     string // for dead letters; "stream"

	BatchSize             int
	BatchingWindow        time.Duration
	MaxBatchBytes         int64
	ParallelizationFactor int           // concurrent batches per shard, each for a set of keys
	MaxRetryAttempts      int           // -1: infinite
	MaxRecordAge          time.Duration // < 0 (or 0): infinite
	BisectOnError         bool
	Backoff               event.Backoff
	// Buffer is how many records a shard may hold before it asks its source
	// to stop fetching (default 2 × BatchSize × ParallelizationFactor, at
	// least 500).
	Buffer int
	// BufferBytes, if > 0, also bounds what a shard holds by the estimated
	// size of its records (Record.Size): it asks its source to stop fetching
	// at this many bytes, whatever the count. A source whose fetches bring
	// far more records than a batch (Kafka: up to thousands per partition
	// per poll) sets a large Buffer and bounds memory with this instead.
	BufferBytes int64
}

// Hooks are what a Worker calls out to.
type Hooks struct {
	Deliverer Deliverer
	// DeadLetterer stores undeliverable records; nil means the records are
	// dropped, counted and logged (a source without on_failure).
	DeadLetterer event.DeadLetterer
	// Commit moves the shard's checkpoint: every record up to and including
	// last was delivered or durably dead-lettered. last carries the record's
	// coordinates: topic, partition, leader epoch and offset (with
	// ParallelizationFactor > 1 nothing more). Called from a lane's
	// goroutine, serialized (under the worker's commit lock) and in offset
	// order, never for a record twice, so it must not wait long: it records
	// the checkpoint (Kafka: marks it) and may return a wait. The lane that
	// finished the batch calls that wait after releasing every lock of the
	// worker, before it takes its next batch (Kafka: until the commit of an
	// earlier checkpoint was confirmed, the bound on what a crash
	// redelivers); the shard's other lanes go on meanwhile. A nil wait, or
	// a nil return, means none.
	Commit func(last event.Record) (wait func())
	// Pause asks the source to stop (true) or restart (false) fetching this
	// shard. Called on changes only, from the source's Push or the worker.
	Pause func(paused bool)
	// Full, if set, tells the source that the shard holds a quarter of its
	// Buffer (or BufferBytes) or more (true), or that it drained to an
	// eighth (false). Unlike Pause it asks nothing of the source: it is
	// for a source that fetches for all its shards at once (Kafka), which
	// fetches again only once some shard is not full, so that its shards
	// take in what was fetched and reach Pause's bound rarely. Called on
	// changes only, after any Pause call of the same change.
	Full   func(full bool)
	Logger *slog.Logger
	Now    func() time.Time // default time.Now
}

// Status is a shard as GET /v1/shards shows it.
type Status struct {
	Shard       ID
	State       State
	Since       time.Time
	Reason      string    // throttle reason, error kind, ...
	Position    int64     // offset of the next record to be checkpointed; -1 before the first
	Buffered    int       // records held, not yet checkpointed
	LastRecord  time.Time // timestamp of the newest record pushed
	Oldest      time.Time // timestamp of the oldest record not yet checkpointed; zero when none (iterator age = now − Oldest)
	Delivered   int64     // records delivered
	DeadLetters int64     // records dead-lettered (or dropped without on_failure)
	Dropped     int64     // of DeadLetters, dropped for lack of on_failure
}

// Worker drives one shard: it batches the records its source pushes,
// delivers them in order, retries, bisects and expires them, dead-letters
// what cannot be delivered, and moves the checkpoint only past records that
// were delivered or durably dead-lettered.
//
// With ParallelizationFactor N > 1, records are spread over N lanes by a hash
// of their key; each lane keeps its records in order and has at most one batch
// in flight, and the checkpoint moves to just before the lowest unfinished
// record of all lanes.
type Worker struct {
	id     ID
	cfg    WorkerConfig
	policy redelivery.Policy // what follows each delivery; from cfg
	h      Hooks
	log    *slog.Logger
	now    func() time.Time

	wake     chan struct{} // capacity 1: a pending "records arrived" signal, never blocks Push
	laneFree chan struct{} // capacity 1: a lane took its next batch or finished one (the router may hand it another)

	commitMu sync.Mutex // serializes checkpoint + Hooks.Commit (not its wait); taken before mu, never inside it
	pauseMu  sync.Mutex // serializes Hooks.Pause and Hooks.Full calls; guards paused and full; taken before mu, never inside it
	paused   bool       // what Pause was last told
	full     bool       // what Full was last told

	// mu guards everything below.
	mu sync.Mutex
	// heldWarned is when the shard last said it was held (or its state
	// last changed): setState warns again HeldWarnAfter later.
	heldWarned time.Time
	// buf holds the pushed records not yet taken by a lane: the slices Push
	// was given, in order, without copying them (a source pushes thousands
	// of records per poll; take hands out sub-slices of them). bufLen and
	// bufBytes are its record count and estimated size.
	buf      [][]event.Record
	bufLen   int
	bufBytes int64
	inflight int       // records taken by lanes, not yet checkpointed
	inBytes  int64     // their estimated size
	headTime time.Time // timestamp of the first record taken while none was in flight (ParallelizationFactor 1)
	blocked  int       // lanes that are throttled, retrying or blocked
	status   Status
	// pending tracks the records taken by lanes, in offset order, until
	// they are checkpointed (only with lanes > 1); coords is the topic and
	// partition they share, for Commit.
	pending []pendingRec
	coords  event.Record
}

// pendingRec is what the checkpoint needs of a record taken by a lane. It
// holds no pointer: the router appends one per record, and pointers would
// cost a write barrier each and keep the taken slices alive for the GC to
// scan.
type pendingRec struct {
	off   int64 // Offset
	stamp int64 // Timestamp, Unix ns (Status's Oldest)
	epoch int32 // LeaderEpoch
	done  bool
}

// The shard engine's defaults, the one place they are set (the source
// settings' defaults in package consumer are these).
const (
	DefaultBatchSize     = 100
	DefaultMaxBatchBytes = 6 << 20
	// minBuffer is the least Buffer by default.
	minBuffer = 500
)

// WithDefaults returns c with the zero fields set to their defaults: a batch
// of DefaultBatchSize up to DefaultMaxBatchBytes, one lane, no record age
// limit, a Buffer of 2 × BatchSize × ParallelizationFactor (at least 500),
// stream mode. NewWorker applies it; a source that sizes its fetches from
// the worker's settings applies it first.
func (c WorkerConfig) WithDefaults() WorkerConfig {
	if c.BatchSize < 1 {
		c.BatchSize = DefaultBatchSize
	}
	if c.MaxBatchBytes <= 0 {
		c.MaxBatchBytes = DefaultMaxBatchBytes
	}
	c.ParallelizationFactor = max(1, c.ParallelizationFactor)
	if c.MaxRecordAge == 0 {
		c.MaxRecordAge = -1 // the zero value must not expire every record at once; the config's range starts at 60s
	}
	if c.Buffer <= 0 {
		c.Buffer = max(minBuffer, 2*c.BatchSize*c.ParallelizationFactor)
	}
	if c.Mode == "" {
		c.Mode = "stream"
	}
	return c
}

// NewWorker returns a Worker for shard id. Run starts it.
func NewWorker(id ID, cfg WorkerConfig, h Hooks) *Worker {
	cfg = cfg.WithDefaults()
	if h.Now == nil {
		h.Now = time.Now
	}
	if h.Logger == nil {
		h.Logger = slog.Default()
	}
	w := &Worker{
		id: id, cfg: cfg, h: h,
		log:      h.Logger.With("source", id.Source, "partition", id.Partition),
		now:      h.Now,
		wake:     make(chan struct{}, 1),
		laneFree: make(chan struct{}, 1),
	}
	w.policy = redelivery.Policy{
		MaxAttempts: cfg.MaxRetryAttempts, MaxAge: cfg.MaxRecordAge, AgeCondition: event.RecordAgeExceeded,
		Bisect: cfg.BisectOnError, Backoff: cfg.Backoff,
	}
	w.status = Status{Shard: id, State: StateIdle, Since: w.now(), Position: -1}
	return w
}

// Push hands the worker records of its shard, in order, and returns their
// estimated size (Record.Size, summed). It never blocks: when the worker
// holds Buffer records (or BufferBytes) or more it asks the source to pause.
// The worker keeps recs itself: the caller must not modify it afterwards.
func (w *Worker) Push(recs []event.Record) (size int64) {
	if len(recs) == 0 {
		return 0
	}
	for i := range recs {
		size += recs[i].Size()
	}
	w.mu.Lock()
	w.buf = append(w.buf, recs)
	w.bufLen += len(recs)
	w.bufBytes += size
	w.status.LastRecord = recs[len(recs)-1].Timestamp
	w.mu.Unlock()
	w.updatePause()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return size
}

// Status returns what the shard is doing now.
func (w *Worker) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := w.status
	s.Buffered = w.bufLen + w.inflight
	switch {
	case len(w.pending) > 0:
		s.Oldest = time.Unix(0, w.pending[0].stamp)
	case w.inflight > 0:
		s.Oldest = w.headTime
	case w.bufLen > 0:
		s.Oldest = w.buf[0][0].Timestamp
	}
	return s
}

// updatePause tells the source to pause while the buffer is full or a lane
// is blocked (a throttled shard stops fetching), and to resume when neither
// holds. A full buffer resumes only once it drained to half (hysteresis):
// resuming at the first free record would pause again on the next fetch,
// and each resume waits for a fetch round trip, so a shard fed in fetches
// larger than its headroom would spend its time paused. Draining the other
// half overlaps that round trip. The Full hook has the same hysteresis at
// 1/fullShare of the bounds. pauseMu keeps the hook calls in the order of the
// decisions; the hooks run without mu, so they may call back into the
// worker (Status).
func (w *Worker) updatePause() {
	if w.h.Pause == nil && w.h.Full == nil {
		return
	}
	w.pauseMu.Lock()
	defer w.pauseMu.Unlock()
	w.mu.Lock()
	n, size := w.bufLen+w.inflight, w.bufBytes+w.inBytes
	// over reports whether the shard holds at least 1/div of its bounds,
	// or with was (it was over them) more than 1/(2·div).
	over := func(div int, was bool) bool {
		if was {
			div *= 2
			return n > w.cfg.Buffer/div || (w.cfg.BufferBytes > 0 && size > w.cfg.BufferBytes/int64(div))
		}
		return n >= w.cfg.Buffer/div || (w.cfg.BufferBytes > 0 && size >= w.cfg.BufferBytes/int64(div))
	}
	pause := over(1, w.paused) || w.blocked > 0
	full := over(fullShare, w.full)
	w.mu.Unlock()
	if pause != w.paused {
		w.paused = pause
		if w.h.Pause != nil {
			w.h.Pause(pause)
		}
	}
	if full != w.full {
		w.full = full
		if w.h.Full != nil {
			w.h.Full(full)
		}
	}
}

// fullShare: a shard is full (Hooks.Full) at 1/fullShare of its bounds. A
// quarter leaves room, below Pause's bound (where a Kafka source drops what
// it fetched), for what a full shard is brought while its source feeds the
// others: a fetch share each time (sized to a quarter of the bound) or a
// producer's record batch.
const fullShare = 4

// HeldWarnAfter is how long a shard may stay throttled, retrying or
// blocked before it says so in the log (Warn, then again each
// HeldWarnAfter while it lasts).
const HeldWarnAfter = time.Minute

func (w *Worker) setState(s State, reason string) {
	w.mu.Lock()
	now := w.now()
	if w.status.State != s || w.status.Reason != reason {
		w.status.State, w.status.Reason, w.status.Since = s, reason, now
		w.heldWarned = now
	}
	held := now.Sub(w.status.Since)
	warn := s != StateRunning && s != StateIdle && now.Sub(w.heldWarned) >= HeldWarnAfter
	if warn {
		w.heldWarned = now
	}
	w.mu.Unlock()
	if warn {
		w.log.Warn("shard held", "state", string(s), "reason", reason, "for", held.Round(time.Second))
	}
}

// Run delivers until ctx ends, then waits for in-flight deliveries to end
// (they see ctx cancelled) and returns. Records not checkpointed by then are
// the source's to redeliver (at-least-once).
func (w *Worker) Run(ctx context.Context) {
	n := w.cfg.ParallelizationFactor
	if n == 1 {
		w.runLane(ctx, nil)
		return
	}
	lanes := make([]routedLane, n)
	var wg sync.WaitGroup
	for i := range lanes {
		// Capacity 1: the router hands a lane its next batch while the lane
		// delivers the current one, and never waits for one lane while
		// another could take a batch (route).
		lanes[i].in = make(chan []event.Record, 1)
		wg.Go(func() { w.runLane(ctx, &lanes[i]) })
	}
	w.route(ctx, lanes)
	for i := range lanes {
		close(lanes[i].in)
	}
	wg.Wait()
}

// routedLane is a lane as the router sees it (ParallelizationFactor > 1).
type routedLane struct {
	in chan []event.Record
	// owed counts the batches sent on in that the lane has not finished
	// (queued or being delivered): 0 means the lane is idle.
	owed atomic.Int32
}

// route spreads buffered records over lanes by key, keeping each key's
// records in order, in batches of at most BatchSize. Lanes run
// independently: the router hands a batch to a lane only when the lane can
// take it at once, so a lane that is slow (throttled, retrying, waiting on
// its commit) holds back only its own keys, up to one batch in its channel
// and about one more carried here. A lane's records are carried until they
// make a full batch, which may wait in the lane's channel while the lane
// delivers the one before; a batch is cut short only for an idle lane when
// nothing more is waiting in the buffer (and no batching window is set),
// as with one lane, which takes what there is when it is free
// (parallelization_factor 2 used to split every 200 records it took into
// ~68-record calls, and queuing a short batch behind a busy lane sent
// batches of a few records while the buffer refilled).
func (w *Worker) route(ctx context.Context, lanes []routedLane) {
	n, size := len(lanes), w.cfg.BatchSize
	carry := make([][]event.Record, n)
	carried := 0
	for {
		var recs []event.Record
		if carried == 0 {
			var ok bool
			if recs, ok = w.take(ctx, size*n, math.MaxInt64); !ok {
				return
			}
		} else if carried < size*n {
			recs = w.takeNow(size*n - carried)
		}
		if len(recs) > 0 {
			w.mu.Lock()
			w.coords.Topic, w.coords.Partition = recs[0].Topic, recs[0].Partition
			for i := range recs {
				r := &recs[i]
				w.pending = append(w.pending, pendingRec{off: r.Offset, stamp: r.Timestamp.UnixNano(), epoch: r.LeaderEpoch})
			}
			w.mu.Unlock()
			for j := range recs {
				r := &recs[j] // not range's copy: a record is copied once, into its lane's batch
				i := laneOf(r.Key, n)
				if carry[i] == nil {
					// A batch's worth at once: growing from nil copied each
					// record about twice more.
					carry[i] = make([]event.Record, 0, size)
				}
				carry[i] = append(carry[i], *r)
			}
			carried += len(recs)
		}
		waiting := w.cfg.BatchingWindow <= 0 && w.buffered() > 0
		sent := false
		for i := range lanes {
			l := &lanes[i]
			for len(carry[i]) >= size || (len(carry[i]) > 0 && !waiting && l.owed.Load() == 0) {
				k := min(len(carry[i]), size)
				l.owed.Add(1)
				select {
				case l.in <- carry[i][:k:k]:
				default:
					l.owed.Add(-1)
					k = 0 // the lane is busy with a batch and holds the next
				}
				if k == 0 {
					break
				}
				carry[i] = carry[i][k:]
				if len(carry[i]) == 0 {
					carry[i] = nil
				}
				carried -= k
				sent = true
			}
		}
		if sent || (len(recs) > 0 && waiting) {
			continue
		}
		if carried == 0 {
			continue // take waits for records
		}
		// Every lane with records to take is busy: wait for one to free,
		// or for more records.
		select {
		case <-ctx.Done():
			return
		case <-w.laneFree:
		case <-w.wake:
		}
	}
}

// buffered returns how many records wait in the buffer.
func (w *Worker) buffered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bufLen
}

// laneOf is the lane of a key: its 32-bit FNV-1a hash modulo n, computed
// inline (hash/fnv's interface value cost an allocation per record).
func laneOf(key []byte, n int) int {
	const offset32, prime32 = 2166136261, 16777619
	h := uint32(offset32)
	for _, c := range key {
		h ^= uint32(c)
		h *= prime32
	}
	return int(h % uint32(n))
}

// take waits for records and returns up to maxRecs of them, within maxBytes
// (at least one record), once there are enough or the batching window since
// the first one has passed. It reports false when ctx ended.
func (w *Worker) take(ctx context.Context, maxRecs int, maxBytes int64) ([]event.Record, bool) {
	var window <-chan time.Time
	windowOver := w.cfg.BatchingWindow <= 0
	for {
		w.mu.Lock()
		n := w.bufLen
		if n == 0 && w.inflight == 0 && w.status.State != StateIdle {
			w.status.State, w.status.Reason, w.status.Since = StateIdle, "", w.now()
		}
		w.mu.Unlock()
		if n >= maxRecs || (n > 0 && windowOver) {
			break
		}
		if n > 0 && window == nil {
			t := time.NewTimer(w.cfg.BatchingWindow)
			defer t.Stop()
			window = t.C
		}
		select {
		case <-ctx.Done():
			return nil, false
		case <-w.wake:
		case <-window:
			windowOver = true
		}
	}
	return w.takeUpTo(maxRecs, maxBytes), true
}

// takeNow returns up to maxRecs buffered records at once, without waiting
// (none when the buffer is empty).
func (w *Worker) takeNow(maxRecs int) []event.Record {
	return w.takeUpTo(maxRecs, math.MaxInt64)
}

// takeUpTo takes up to maxRecs records within maxBytes from the buffer and
// counts them in flight.
func (w *Worker) takeUpTo(maxRecs int, maxBytes int64) []event.Record {
	w.mu.Lock()
	defer w.mu.Unlock()
	recs, size := w.takeLocked(maxRecs, maxBytes)
	if w.inflight == 0 && len(recs) > 0 {
		w.headTime = recs[0].Timestamp
	}
	w.inflight += len(recs)
	w.inBytes += size
	return recs
}

// takeLocked removes up to maxRecs records from the head of buf, within
// maxBytes (at least one), and returns them with their estimated size. A
// batch within the first pushed slice is a sub-slice of it, not a copy;
// its capacity is cut so that appending to it cannot overwrite the records
// after it. (A pushed slice's array lives until its last record is taken
// and that batch ends: a shard may hold, beyond its counted records, the
// delivered part of one pushed slice, at most one fetch's share.)
func (w *Worker) takeLocked(maxRecs int, maxBytes int64) ([]event.Record, int64) {
	var (
		out  []event.Record
		size int64
	)
	for len(w.buf) > 0 && len(out) < maxRecs {
		head := w.buf[0]
		k := 0
		for k < len(head) && len(out)+k < maxRecs {
			s := head[k].Size()
			if len(out)+k > 0 && size+s > maxBytes {
				break
			}
			size += s
			k++
		}
		switch {
		case out == nil && (k < len(head) || len(w.buf) == 1 || k == maxRecs):
			out = head[:k:k] // the whole batch is in this slice
		case out == nil:
			out = make([]event.Record, 0, min(maxRecs, w.bufLen))
			fallthrough
		default:
			out = append(out, head[:k]...)
		}
		w.bufLen -= k
		if k < len(head) {
			w.buf[0] = head[k:]
			break // the batch is full
		}
		w.buf[0] = nil // let the records go once taken
		w.buf = w.buf[1:]
	}
	if len(w.buf) == 0 {
		w.buf = nil // let the backing array go
	}
	w.bufBytes -= size
	return out, size
}

// runLane delivers batches one at a time, in order. With rl == nil it takes
// records from the buffer itself (ParallelizationFactor 1); otherwise it
// delivers what the router sends it.
func (w *Worker) runLane(ctx context.Context, rl *routedLane) {
	for {
		var recs []event.Record
		if rl == nil {
			var ok bool
			if recs, ok = w.take(ctx, w.cfg.BatchSize, w.cfg.MaxBatchBytes); !ok {
				return
			}
		} else {
			var ok bool
			select {
			case recs, ok = <-rl.in:
				if !ok {
					return
				}
				w.signalLaneFree()
			case <-ctx.Done():
				return
			}
		}
		for _, b := range splitBytes(recs, w.cfg.MaxBatchBytes) {
			l := &lane{w: w}
			if !l.process(ctx, b, &redelivery.State{}) {
				return // ctx ended: nothing more is checkpointed; the source redelivers
			}
			l.setBlocked(false)
			if wait := w.done(b); wait != nil {
				wait() // no lock held: the other lanes checkpoint meanwhile
			}
		}
		if rl != nil && rl.owed.Add(-1) == 0 {
			w.signalLaneFree() // idle: the router may cut a batch short for it
		}
	}
}

func (w *Worker) signalLaneFree() {
	select {
	case w.laneFree <- struct{}{}:
	default:
	}
}

// splitBytes cuts recs into runs whose estimated size stays within limit; a
// record larger than limit on its own is a run of one.
func splitBytes(recs []event.Record, limit int64) [][]event.Record {
	var out [][]event.Record
	start, size := 0, int64(0)
	for i := range recs {
		s := recs[i].Size()
		if i > start && size+s > limit {
			out = append(out, recs[start:i])
			start, size = i, 0
		}
		size += s
	}
	return append(out, recs[start:])
}

// done records that every record of b was delivered or dead-lettered and
// moves the checkpoint as far as it may go. It returns the Commit hook's
// wait, for the lane to call once no lock is held.
func (w *Worker) done(b []event.Record) (wait func()) {
	// commitMu makes "compute the checkpoint, then Commit" one step, so two
	// lanes finishing at once commit in offset order (20 must not follow 30).
	// Commit does not block on the broker under it: its wait runs after.
	w.commitMu.Lock()
	defer w.commitMu.Unlock()
	var size int64
	for i := range b {
		size += b[i].Size()
	}
	w.mu.Lock()
	w.inflight -= len(b)
	w.inBytes -= size
	var last *event.Record
	if w.cfg.ParallelizationFactor == 1 {
		last = &b[len(b)-1]
	} else {
		// Mark b's records done, then checkpoint the finished prefix: the
		// lowest unfinished record of any lane holds the checkpoint back.
		// b is in offset order, so one search finds its first record and a
		// walk forward the others (past the other lanes' records between
		// them: about parallelization_factor entries a record).
		j, _ := slices.BinarySearchFunc(w.pending, b[0].Offset, func(p pendingRec, off int64) int { return cmp.Compare(p.off, off) })
		for i := range b {
			for j < len(w.pending) && w.pending[j].off < b[i].Offset {
				j++
			}
			if j < len(w.pending) && w.pending[j].off == b[i].Offset {
				w.pending[j].done = true
			}
		}
		k := 0
		for k < len(w.pending) && w.pending[k].done {
			k++
		}
		if k > 0 {
			p := w.pending[k-1]
			c := w.coords
			c.Offset, c.LeaderEpoch = p.off, p.epoch
			last = &c
			w.pending = w.pending[k:]
		}
	}
	if last != nil {
		w.status.Position = last.Offset + 1
	}
	w.mu.Unlock()
	w.updatePause()
	if last != nil && w.h.Commit != nil {
		return w.h.Commit(*last)
	}
	return nil
}

// lane is one sequential deliverer of a shard.
type lane struct {
	w       *Worker
	blocked bool // counted in w.blocked
}

func (l *lane) setBlocked(b bool) {
	if l.blocked == b {
		return
	}
	l.blocked = b
	w := l.w
	w.mu.Lock()
	if b {
		w.blocked++
	} else {
		w.blocked--
	}
	w.mu.Unlock()
	w.updatePause()
}

// process delivers recs until each is delivered or dead-lettered; it reports
// false when ctx ended first (then nothing of recs may be checkpointed). st
// is the retry state of recs (a fresh one for each half of a bisection).
// What follows each delivery is the redelivery policy's decision; the lane
// only holds the batch, sleeps and dead-letters.
func (l *lane) process(ctx context.Context, recs []event.Record, st *redelivery.State) bool {
	w := l.w
	cfg := &w.cfg
	pol := &w.policy
	for len(recs) > 0 {
		if ctx.Err() != nil {
			return false
		}
		if len(recs) == 1 && recs[0].Size() > cfg.MaxBatchBytes {
			return l.deadLetter(ctx, recs, event.RecordTooLarge, st)
		}
		// Records past max_record_age are dead-lettered, not delivered:
		// before the first attempt and before every retry.
		if now := w.now(); pol.MaxAge > 0 && anyExpired(recs, now, pol) {
			var live, expired []event.Record
			for _, r := range recs {
				if pol.Expired(r.Timestamp, now) {
					expired = append(expired, r)
				} else {
					live = append(live, r)
				}
			}
			if !l.deadLetter(ctx, expired, pol.AgeCondition, st) {
				return false
			}
			recs = live
			continue
		}

		// Wait for a slot no longer than the oldest record may live; the
		// invocation itself is bounded by the function's timeout only, so a
		// record that ages while its function runs is still delivered (the
		// check above runs before every attempt, never during one).
		oldest := oldestOf(recs)
		pol.Begin(st, w.now())
		res := w.h.Deliverer.Deliver(ctx, Delivery{
			Shard: w.id, Records: recs, Attempt: st.Attempts + 1, WaitUntil: pol.Expiry(oldest),
			OnWait: func(reason string) {
				l.setBlocked(true)
				w.setState(StateThrottled, reason)
			},
		})
		n := len(recs)
		if res.Outcome == event.Partial && res.FailedFrom > 0 && res.FailedFrom < len(recs) {
			// The records before the first failed one were handled.
			w.delivered(res.FailedFrom)
			recs = recs[res.FailedFrom:]
			n, oldest = len(recs), oldestOf(recs)
		}
		dec := pol.After(st, res, n, oldest, w.now(), ctx.Err() != nil)
		switch dec.Action {
		case redelivery.Done:
			w.delivered(len(recs))
			return true
		case redelivery.Abandon:
			return false
		case redelivery.Split:
			// Deliver each half on its own, in order: the halves start
			// with fresh attempts (bisection is free).
			half := len(recs) / 2
			if !l.process(ctx, recs[:half], &redelivery.State{}) {
				return false
			}
			return l.process(ctx, recs[half:], &redelivery.State{})
		case redelivery.DeadLetter:
			if dec.Condition == pol.AgeCondition {
				continue // the check above dead-letters the expired records and keeps the others
			}
			return l.deadLetter(ctx, recs, dec.Condition, st)
		case redelivery.Retry:
			// Hold the batch (and stop fetching) meanwhile: throttled (no
			// attempt consumed) until a slot frees or the records expire,
			// or retrying after a function error.
			l.setBlocked(true)
			if dec.Throttled {
				w.setState(StateThrottled, res.Reason)
			} else {
				w.setState(StateRetrying, string(st.LastError.Kind))
			}
			if !sleepCtx(ctx, dec.Delay) {
				return false
			}
		}
	}
	return true
}

// oldestOf returns the earliest timestamp of recs (not necessarily the
// first's: a producer may stamp records out of order).
func oldestOf(recs []event.Record) time.Time {
	oldest := recs[0].Timestamp
	for i := range recs[1:] {
		if t := recs[i+1].Timestamp; t.Before(oldest) {
			oldest = t
		}
	}
	return oldest
}

// anyExpired reports whether a record of recs is past the policy's age at
// now; the usual answer, no, then costs no allocation.
func anyExpired(recs []event.Record, now time.Time, pol *redelivery.Policy) bool {
	for i := range recs {
		if pol.Expired(recs[i].Timestamp, now) {
			return true
		}
	}
	return false
}

// sleepCtx waits d; it reports false when ctx ended first.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// deadLetter stores recs with condition through the policy's bounded,
// retried write, until it succeeds or ctx ends (false): a shard whose dead
// letters cannot be written blocks, and nothing is checkpointed past them.
func (l *lane) deadLetter(ctx context.Context, recs []event.Record, cond event.Condition, st *redelivery.State) bool {
	w := l.w
	if w.h.DeadLetterer == nil {
		w.log.Warn("dropping undeliverable records: the source has no on_failure destination",
			"condition", cond, "count", len(recs), "first_offset", recs[0].Offset, "error", st.LastError.Message)
		w.mu.Lock()
		w.status.DeadLetters += int64(len(recs))
		w.status.Dropped += int64(len(recs))
		w.mu.Unlock()
		return true
	}
	letters := redelivery.Letters(w.cfg.Source, w.cfg.Function, w.cfg.Mode, cond, st, w.now(), recs)
	err := w.policy.Store(ctx, w.h.DeadLetterer, letters, func(try int, err error) {
		w.log.Error("dead-letter write failed; the shard is blocked until it succeeds",
			"condition", cond, "count", len(recs), "first_offset", recs[0].Offset, "try", try, "error", err)
		l.setBlocked(true)
		w.setState(StateBlocked, "DeadLetterWriteFailed")
	})
	if err != nil {
		return false
	}
	w.mu.Lock()
	w.status.DeadLetters += int64(len(recs))
	w.mu.Unlock()
	return true
}

func (w *Worker) delivered(n int) {
	w.mu.Lock()
	w.status.Delivered += int64(n)
	if w.status.State != StateRunning {
		w.status.State, w.status.Reason, w.status.Since = StateRunning, "", w.now()
	}
	w.mu.Unlock()
}
