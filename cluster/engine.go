package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/dispatch"
)

// tick is how often a member looks at every limit it has a demand or a
// share on: the grain of a hand-off.
const tick = 200 * time.Millisecond

// opTimeout bounds one engine call.
const opTimeout = 2 * time.Second

// opTimeout bounds the calls of one limit's rebalance: a quarter of the
// lease at most, so that an engine that hangs does not hold up the round.
func (e *Engine) opTimeout() time.Duration { return min(opTimeout, e.cfg.Lease/4) }

// Engine is the cluster-wide dispatch.Limits: the global limits (the same
// on every member, set by the admin Book from the shared rule book) and,
// inside, a local dispatch.Limiter that runs on this member's shares of
// them. Acquire, TryAcquire and Release are the local Limiter's: no network
// round trip. A background loop renews and rebalances the shares through
// the engine's KV (see the package documentation).
type Engine struct {
	cfg   Config
	id    string
	inner *dispatch.Limiter
	log   *slog.Logger
	m     *metrics
	now   func() time.Time

	// mu guards every field below. It is never held across an engine call;
	// it is taken before the inner Limiter's lock (through its methods).
	mu       sync.Mutex
	closed   bool
	account  dispatch.AccountConfig
	reserved map[string]int
	rules    map[string]dispatch.Rule
	fnNames  map[string]bool
	limits   map[string]*limitState // by engine key
	tries    map[string]int         // refused TryAcquires per key since the last round: demand too
	members  []Member               // the last read of the member records
	seq      uint64
	// kept is what this member held on each limit when it closed (began
	// stopping): invocations its sources then abandon free their slots at
	// once, but the function may still be running them, so the claim on
	// them is kept (and renewed) until Stop and left to lapse after it.
	kept map[string]int

	kv     consumer.KV
	cancel context.CancelFunc
	done   chan struct{}
}

// limitState is this member's view of one limit.
type limitState struct {
	key, kind, name string
	applied         int       // the share the inner Limiter runs on
	others          int       // the live others' claims when the share was last computed
	claim           int       // the share last written to the engine
	demand          int       // the demand last written
	validUntil      time.Time // when the last written claim lapses for this member
	lastWrite       time.Time
	obs             map[string]seen // other members' claims as first seen here
	view            entry           // the last entry read
	hungrySince     time.Time       // when demand first exceeded the share; zero when not
	peak            int             // the highest demand seen within demandHold
	peakAt          time.Time       // when peak was seen
}

// demandHold is how long a demand counts after it was seen: invocations
// whose scopes change from one to the next (many tenants) make a scope's
// demand come and go between rounds; holding it briefly keeps the share
// where it is used instead of moving it back and forth.
const demandHold = 500 * time.Millisecond

// held returns the demand to publish for a current demand of now.
func (ls *limitState) held(demand int, now time.Time) int {
	if demand >= ls.peak || now.Sub(ls.peakAt) > demandHold {
		ls.peak, ls.peakAt = demand, now
	}
	return ls.peak
}

// seen is when a member's claim of a given Seq was first seen here.
type seen struct {
	seq uint64
	at  time.Time
}

// Option configures an Engine.
type Option func(*Engine)

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option { return func(e *Engine) { e.log = l } }

// WithRegisterer registers the cluster metrics.
func WithRegisterer(r registerer) Option { return func(e *Engine) { e.m = newMetrics(r) } }

// New returns the Engine of cfg for the limits of base (the configuration
// file's; the Book puts the shared rule book on top). It admits nothing
// until Start gave it the engine's KV and the first shares are won.
func New(cfg Config, base dispatch.Config, opts ...Option) (*Engine, error) {
	cfg = cfg.WithDefaults()
	if err := cfg.Validate("cluster"); err != nil {
		return nil, err
	}
	base.Account = base.Account.WithDefaults()
	if err := base.Validate(); err != nil {
		return nil, err
	}
	inner, err := dispatch.NewLimiter(dispatch.Config{Functions: base.Functions})
	if err != nil {
		return nil, err
	}
	e := &Engine{cfg: cfg, id: memberID(), inner: inner, log: slog.Default(), now: time.Now,
		account: base.Account, reserved: map[string]int{}, rules: map[string]dispatch.Rule{},
		fnNames: map[string]bool{}, limits: map[string]*limitState{}, tries: map[string]int{}}
	for name, f := range base.Functions {
		e.fnNames[name] = true
		if f.ReservedConcurrency != nil {
			e.reserved[name] = *f.ReservedConcurrency
		}
	}
	for _, r := range base.Rules {
		e.rules[r.Pattern] = r
	}
	for _, o := range opts {
		o(e)
	}
	if e.m == nil {
		e.m = newMetrics(nil)
	}
	for fn := range e.reserved {
		e.m.share.WithLabelValues(fn).Set(0) // a series from the start, for alerts and rate()
	}
	e.mu.Lock()
	e.applyLocked()
	e.mu.Unlock()
	return e, nil
}

// memberID names this process in the engine: host, pid and a random part,
// new at every start.
func memberID() string {
	host, _ := os.Hostname()
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '-'
	}, host)
	if len(host) > 32 {
		host = host[:32]
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// ID is this member's id in the engine.
func (e *Engine) ID() string { return e.id }

// Config is the cluster section the engine runs with.
func (e *Engine) Config() Config { return e.cfg }

var _ dispatch.Limits = (*Engine)(nil)

// Start begins renewing and rebalancing shares through kv (the shares
// bucket) until Stop.
func (e *Engine) Start(kv consumer.KV) {
	ctx, cancel := context.WithCancel(context.Background())
	e.mu.Lock()
	e.kv, e.cancel, e.done = kv, cancel, make(chan struct{})
	e.mu.Unlock()
	go e.loop(ctx)
}

// Stop ends the loop and gives back every share this member held nothing
// on when it closed (bounded by opTimeout), so that the others need not
// wait for the lease. A limit it held slots on when it closed is not given
// back: its claim is written once more, lowered to those slots, and lapses
// a lease later as the others count (the invocations the sources abandoned
// when they stopped may still be running at the function). Stop closes
// the Engine first if Close was not called. It is safe to call twice.
func (e *Engine) Stop() {
	e.Close()
	e.mu.Lock()
	cancel, done := e.cancel, e.done
	e.cancel = nil
	e.mu.Unlock()
	if cancel == nil {
		return
	}
	cancel()
	<-done
	e.mu.Lock()
	keys := slices.Sorted(maps.Keys(e.limits))
	e.mu.Unlock()
	ctx, stop := context.WithTimeout(context.Background(), opTimeout)
	defer stop()
	for _, k := range keys {
		e.leave(ctx, k)
	}
	_ = e.deleteMember(ctx)
}

// leave removes this member's claim from key when it held nothing on it
// since it closed; otherwise it lowers the claim to what it held (never
// raising it) with a new seq, so that the others count a full lease from
// now before they hand that capacity out.
func (e *Engine) leave(ctx context.Context, key string) {
	for range 3 {
		val, rev, err := e.kv.Get(ctx, key)
		if err != nil {
			return
		}
		ent := decodeEntry(val)
		mine, ok := ent.Members[e.id]
		if !ok {
			return
		}
		e.mu.Lock()
		keep := min(mine.Share, max(e.kept[key], e.inUseLocked(key)))
		if keep > 0 {
			e.seq++
			ent.Members[e.id] = &claim{Share: keep, Seq: e.seq}
		} else {
			delete(ent.Members, e.id)
		}
		e.mu.Unlock()
		b, _ := json.Marshal(ent)
		if _, err := e.kv.Update(ctx, key, b, rev); !errors.Is(err, consumer.ErrKVConflict) {
			return
		}
	}
}

// guardEvery is how often the guard looks for shares about to lapse, and
// guardMargin how long before its claim lapses a member stops granting.
const (
	guardEvery  = 25 * time.Millisecond
	guardMargin = 100 * time.Millisecond
)

// guard takes back every local share whose claim was not renewed in time:
// it runs on its own, never waiting for the engine, so that a member cut
// off from the engine stops granting before any other member can be given
// its capacity.
func (e *Engine) guard(ctx context.Context) {
	t := time.NewTicker(guardEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		e.mu.Lock()
		now := e.now()
		lapsed := false
		for _, ls := range e.limits {
			if ls.applied > 0 && !now.Before(ls.validUntil.Add(-guardMargin)) {
				ls.applied = 0
				lapsed = true
			}
		}
		if lapsed {
			e.m.lapsed.Inc()
			e.log.Warn("cluster: shares not renewed within the lease; granting nothing on them until the engine answers")
			e.applyLocked()
		}
		e.mu.Unlock()
	}
}

func (e *Engine) loop(ctx context.Context) {
	defer close(e.done)
	guarded := make(chan struct{})
	go func() { defer close(guarded); e.guard(ctx) }()
	defer func() { <-guarded }()
	t := time.NewTicker(tick)
	defer t.Stop()
	var lastMembers time.Time
	for {
		e.round(ctx)
		if time.Since(lastMembers) >= e.memberEvery() {
			e.writeMember(ctx)
			e.readMembers(ctx)
			lastMembers = time.Now()
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// memberEvery is how often the member record is renewed and the others'
// read: a third of the lease, at most a second.
func (e *Engine) memberEvery() time.Duration { return min(time.Second, e.cfg.Lease/3) }

// round looks at every limit with a demand or a share: it first takes back
// shares whose lease lapsed, then renews and rebalances each limit.
func (e *Engine) round(ctx context.Context) {
	e.mu.Lock()
	demand := e.demandLocked()
	now := e.now()
	for key, d := range demand {
		ls := e.limits[key]
		if ls == nil {
			kind, name := parseKey(key)
			ls = &limitState{key: key, kind: kind, name: name, obs: map[string]seen{}}
			e.limits[key] = ls
		}
		demand[key] = ls.held(d, now)
	}
	clear(e.tries)
	keys := slices.Sorted(maps.Keys(e.limits))
	e.mu.Unlock()

	for _, key := range keys {
		if ctx.Err() != nil {
			return
		}
		e.rebalance(ctx, key, demand[key])
	}
}

// rebalance renews this member's claim on one limit and moves it towards
// its fair share: shrinking the local share before the claim, growing the
// claim (compare-and-swap on the entry's revision) before the local share.
func (e *Engine) rebalance(ctx context.Context, key string, demand int) {
	cctx, cancel := context.WithTimeout(ctx, e.opTimeout())
	defer cancel()
	val, rev, err := e.kv.Get(cctx, key)
	if err != nil && !errors.Is(err, consumer.ErrKVNotFound) {
		e.renewFailed(key, err)
		return
	}
	ent := decodeEntry(val)
	if errors.Is(err, consumer.ErrKVNotFound) {
		rev = 0
	}

	e.mu.Lock()
	ls := e.limits[key]
	if ls == nil {
		e.mu.Unlock()
		return
	}
	if e.closed {
		demand = 0 // it grants nothing any more: it only keeps its claim on what it held
	}
	now := e.now()
	capacity := e.capacityLocked(key)
	// Others' claims: live until they go a lease without being renewed, as
	// seen from here (the holder stops granting earlier, counted from
	// before its write).
	others, demands := 0, map[string]int{e.id: demand}
	live := map[string]*claim{}
	for id, c := range ent.Members {
		if id == e.id {
			continue
		}
		s, ok := ls.obs[id]
		if !ok || s.seq != c.Seq {
			s = seen{seq: c.Seq, at: now}
			ls.obs[id] = s
		}
		if now.Sub(s.at) >= e.cfg.Lease {
			continue // lapsed: its holder stopped granting on it
		}
		live[id] = c
		others += c.Share
		demands[id] = c.Demand
	}
	for id := range ls.obs {
		if _, ok := ent.Members[id]; !ok {
			delete(ls.obs, id)
		}
	}
	ls.view = ent
	ls.others = others
	free := max(0, capacity-others)
	fairMe := fair(capacity, demands)[e.id]
	target := min(fairMe, free)
	inUse := e.inUseLocked(key)
	if e.closed {
		// Closed: nothing more is granted, and the claim still covers
		// what was held at the close (see kept).
		target, inUse = 0, max(inUse, e.kept[key])
	}
	// The claim covers what is granted and what is still held; the local
	// share never exceeds the claim, and grows only once the claim is
	// written.
	grant := target
	claimed := max(grant, min(inUse, max(ls.claim, ls.applied)))
	if grant < ls.applied {
		ls.applied = grant
		e.applyLocked()
	}
	// Owed capacity: its fair part is more than it has (the others must
	// give some back first, or the free capacity is being taken). The wait
	// until it has it is a hand-off (sluice_cluster_rebalance_seconds).
	if fairMe > ls.applied && demand > ls.applied {
		if ls.hungrySince.IsZero() {
			ls.hungrySince = now
		}
	} else if !ls.hungrySince.IsZero() {
		ls.hungrySince = time.Time{} // no longer owed (its demand went down)
	}
	renew := now.Sub(ls.lastWrite) >= e.cfg.Lease/3
	dropped := len(live) != len(ent.Members)-boolInt(ent.Members[e.id] != nil)
	mine := ent.Members[e.id]
	changed := mine == nil || mine.Share != claimed || mine.Demand != demand || ent.Capacity != capacity
	if claimed == 0 && demand == 0 {
		if mine == nil && !dropped {
			// Nothing here for this member: forget the limit.
			if ls.applied == 0 {
				delete(e.limits, key)
			}
			e.mu.Unlock()
			return
		}
	}
	if !changed && !renew && !dropped && now.Before(ls.validUntil.Add(-e.cfg.Lease/2)) {
		e.mu.Unlock()
		return
	}
	e.seq++
	next := entry{Capacity: capacity, Members: live}
	if claimed > 0 || demand > 0 {
		next.Members[e.id] = &claim{Share: claimed, Demand: demand, Seq: e.seq}
	}
	e.mu.Unlock()

	b, _ := json.Marshal(next)
	start := e.now()
	if rev == 0 {
		_, err = e.kv.Create(cctx, key, b)
	} else {
		_, err = e.kv.Update(cctx, key, b, rev)
	}
	if err != nil {
		if !errors.Is(err, consumer.ErrKVConflict) {
			e.renewFailed(key, err)
		}
		return // a conflict: another member wrote first; the next round reads it
	}

	e.mu.Lock()
	defer e.mu.Unlock()
	if ls = e.limits[key]; ls == nil {
		return
	}
	ls.claim, ls.demand, ls.lastWrite = claimed, demand, start
	ls.validUntil = start.Add(e.cfg.Lease)
	if grant > ls.applied {
		ls.applied = grant
		if !ls.hungrySince.IsZero() && grant >= min(fairMe, demand) {
			e.m.rebalance.Observe(e.now().Sub(ls.hungrySince).Seconds())
			ls.hungrySince = time.Time{}
		}
		e.applyLocked()
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (e *Engine) renewFailed(key string, err error) {
	e.m.renewFailures.Inc()
	e.log.Debug("cluster: renewing a share failed", "limit", key, "error", err)
}

// capacityLocked is the cluster-wide capacity of key under the global
// limits: the pool, a reservation, or the rule of a scope.
func (e *Engine) capacityLocked(key string) int {
	kind, name := parseKey(key)
	switch kind {
	case kindPool:
		return e.account.Concurrency - e.reservedTotalLocked()
	case kindFunction:
		return e.reserved[name]
	case kindScope:
		if r, ok := e.ruleForLocked(name); ok {
			return r.Concurrency
		}
	}
	return 0
}

func (e *Engine) reservedTotalLocked() int {
	t := 0
	for _, n := range e.reserved {
		t += n
	}
	return t
}

// ruleForLocked is the global rule limiting scope: its enabled exact rule,
// else the enabled "*" rule, else none (as the local Limiter matches).
func (e *Engine) ruleForLocked(scope string) (dispatch.Rule, bool) {
	if r, ok := e.rules[scope]; ok && !r.Disabled {
		return r, true
	}
	if r, ok := e.rules["*"]; ok && !r.Disabled {
		return r, true
	}
	return dispatch.Rule{}, false
}

// keyOfFunctionLocked is the limit a function's slot comes from.
func (e *Engine) keyOfFunctionLocked(fn string) string {
	if _, ok := e.reserved[fn]; ok {
		return limitKey(kindFunction, fn)
	}
	return limitKey(kindPool, "")
}

// demandLocked is this member's demand on every limit: slots held plus
// invocations waiting plus refused TryAcquires since the last round.
func (e *Engine) demandLocked() map[string]int {
	out := map[string]int{}
	u := e.inner.Usage()
	for fn, fu := range u.Functions {
		out[e.keyOfFunctionLocked(fn)] += fu.InFlight + fu.Waiting
	}
	for _, s := range e.inner.Scopes() {
		if _, ok := e.ruleForLocked(s.Scope); ok && s.InFlight > 0 {
			out[limitKey(kindScope, s.Scope)] += s.InFlight
		}
	}
	for _, q := range e.inner.Queues() {
		for _, sc := range q.Scopes {
			if _, ok := e.ruleForLocked(sc); ok {
				out[limitKey(kindScope, sc)] += q.Waiting
			}
		}
	}
	for k, n := range e.tries {
		out[k] += n
	}
	// A limit this member holds a share of stays in view while the demand
	// is gone, so that the share is given back.
	for k, ls := range e.limits {
		if _, ok := out[k]; !ok && (ls.applied > 0 || ls.claim > 0) {
			out[k] = 0
		}
	}
	return out
}

// inUseLocked is what this member holds on key now.
func (e *Engine) inUseLocked(key string) int {
	kind, name := parseKey(key)
	switch kind {
	case kindScope:
		for _, s := range e.inner.Scopes() {
			if s.Scope == name {
				return s.InFlight
			}
		}
		return 0
	case kindFunction:
		return e.inner.Usage().Functions[name].InFlight
	}
	n := 0
	for fn, fu := range e.inner.Usage().Functions {
		if _, ok := e.reserved[fn]; !ok {
			n += fu.InFlight
		}
	}
	return n
}

// applyLocked gives the inner Limiter this member's shares, all at once:
// each reservation's share, the pool's share (the inner account is their
// sum), and one exact rule per scope with its share; a "*" rule of 0 keeps
// a scope without a share waiting until one is won. A share is never above
// the limit's current capacity, so a lowered limit holds at once.
func (e *Engine) applyLocked() {
	// A share never exceeds what the capacity leaves after the others'
	// claims as last seen: when a limit is lowered, every member shrinks
	// at once to what is provably its own under the new capacity (the
	// member that wrote last sees every earlier writer's claim, so the
	// shares kept add up to at most the new capacity), and the next rounds
	// split it again.
	share := func(key string) int {
		ls := e.limits[key]
		if ls == nil {
			return 0
		}
		return max(0, min(ls.applied, e.capacityLocked(key)-ls.others))
	}
	res := make(map[string]int, len(e.reserved))
	total := 0
	for fn := range e.reserved {
		n := share(limitKey(kindFunction, fn))
		res[fn] = n
		total += n
		e.m.share.WithLabelValues(fn).Set(float64(n))
	}
	account := total + share(limitKey(kindPool, ""))
	var rules []dispatch.Rule
	if r, ok := e.rules["*"]; ok && !r.Disabled {
		rules = append(rules, dispatch.Rule{Pattern: "*", Concurrency: 0})
	}
	for p, r := range e.rules {
		if p != "*" && !r.Disabled {
			rules = append(rules, dispatch.Rule{Pattern: p, Concurrency: share(limitKey(kindScope, p))})
		}
	}
	for key, ls := range e.limits {
		if ls.kind != kindScope || ls.applied == 0 {
			continue
		}
		if r, ok := e.rules[ls.name]; ok && !r.Disabled {
			continue // done above
		}
		if _, ok := e.ruleForLocked(ls.name); ok {
			rules = append(rules, dispatch.Rule{Pattern: ls.name, Concurrency: share(key)})
		}
	}
	e.inner.Replace(account, res, rules)
}
