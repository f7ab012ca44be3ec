package kafka

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// The leader of a Kafka KV bucket: the member assigned the requests
// topic's partition (see kv.go).

// serve runs the member's side of the group: while it is assigned the
// requests partition it leads, else it waits.
func (k *KV) serve(ctx context.Context) {
	defer k.wg.Done()
	var l *kvLeader
	defer func() {
		if l != nil {
			l.close()
		}
	}()
	for {
		k.mu.Lock()
		assigned, broken := k.isLeader, k.broken
		k.mu.Unlock()
		if broken != nil {
			// Nothing is served any more: step down and leave the group,
			// so that a restarted process can lead the recreated topics.
			if l != nil {
				l.close()
				l = nil
			}
			k.group.LeaveGroup()
			<-ctx.Done()
			return
		}
		if !assigned && l != nil {
			k.log.Info("kafka kv: no longer the leader")
			l.close()
			l = nil
		}
		if assigned && l == nil {
			var err error
			if l, err = k.lead(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				k.log.Warn("kafka kv: taking the lead failed; trying again", "error", err)
				l = nil
				select {
				case <-ctx.Done():
					return
				case <-time.After(500 * time.Millisecond):
				}
				continue
			}
			k.log.Info("kafka kv: leading the bucket", "member", k.id)
			k.mu.Lock()
			k.leads++
			k.mu.Unlock()
		}
		if l == nil {
			// Not assigned: nothing is fetched; wait for an assignment.
			select {
			case <-ctx.Done():
				return
			case <-k.assigned:
			case <-time.After(kvSweep):
			}
			continue
		}
		pctx, cancel := context.WithTimeout(ctx, kvSweep)
		fs := l.reqs.PollFetches(pctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		var reqs []kvRequest
		next := int64(-1)
		fs.EachRecord(func(r *kgo.Record) {
			next = r.Offset + 1
			var req kvRequest
			if json.Unmarshal(r.Value, &req) == nil {
				reqs = append(reqs, req)
			}
		})
		if err := l.handle(ctx, reqs, next); err != nil {
			// Fenced (another member leads), or the broker failed: the
			// table may hold writes that did not commit; rebuild it.
			k.log.Warn("kafka kv: leading stopped", "error", err)
			l.close()
			l = nil
		}
	}
}

// kvLeader is a member while it leads: its transactional producer and the
// table as of its last committed transaction.
type kvLeader struct {
	k     *KV
	txn   *kgo.Client
	reqs  *kgo.Client // the requests, from where the last leader stopped
	table map[string]kvEntry
	last  int64 // the last state offset this leader wrote or read
}

// lead fences the previous leader (the first transaction of the shared
// transactional id), writes the leader's marker and reads the state up to
// it.
func (k *KV) lead(ctx context.Context) (*kvLeader, error) {
	// A new client learns the topics' current IDs: they must be those
	// this member's copy was read from.
	if err := k.sameTopics(ctx); err != nil {
		return nil, err
	}
	txn, err := newClient(k.cfg, kgo.TransactionalID("sluice-kv-"+k.bucket), kgo.TransactionTimeout(kvTxnTimeout),
		kgo.ProducerLinger(0), kgo.DefaultProduceTopic(k.topics.state))
	if err != nil {
		return nil, err
	}
	l := &kvLeader{k: k, txn: txn}
	k.mu.Lock()
	read := k.applied
	k.mu.Unlock()
	b, _ := json.Marshal(kvValue{Written: time.Now().UnixMilli(), Leader: k.id})
	offs, err := l.transact(ctx, []*kgo.Record{{Key: []byte(leaderKey), Value: b}})
	if err != nil {
		txn.Close()
		return nil, fmt.Errorf("first transaction: %w", err)
	}
	if offs[0] <= read { // the marker went below what this member had read
		k.fail(fmt.Errorf("the new leader's marker in topic %s is at offset %d, at or below the %d already read", k.topics.state, offs[0], read))
		txn.Close()
		return nil, k.err()
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := k.waitApplied(wctx, offs[0]); err != nil {
		txn.Close()
		return nil, fmt.Errorf("read the state: %w", err)
	}
	k.mu.Lock()
	l.table = maps.Clone(k.table)
	l.last = max(k.applied, offs[0])
	next := k.next
	k.mu.Unlock()
	// The TTL counts on this leader's clock only: the write times its
	// predecessors recorded (their clocks) restart from now, so a clock
	// ahead of theirs cannot expire a key that is being renewed. A key
	// nobody renews goes at most one TTL later than it would have.
	now := time.Now()
	for key, e := range l.table {
		e.written = now
		l.table[key] = e
	}
	if l.reqs, err = newClient(k.cfg, kgo.FetchMaxWait(kvSweep),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{k.topics.requests: {0: kgo.NewOffset().At(next)}})); err != nil {
		txn.Close()
		return nil, err
	}
	return l, nil
}

func (l *kvLeader) close() {
	if l.reqs != nil {
		l.reqs.Close()
	}
	l.txn.Close()
}

// transact writes recs in one transaction and returns their offsets once
// it committed.
func (l *kvLeader) transact(ctx context.Context, recs []*kgo.Record) ([]int64, error) {
	if err := l.txn.BeginTransaction(); err != nil {
		return nil, err
	}
	offs, err := l.produce(ctx, recs)
	if err != nil {
		l.abort()
		return nil, err
	}
	// Not bounded by ctx: a cancelled EndTxn leaves its outcome unknown.
	cctx, cancel := context.WithTimeout(context.Background(), kvTxnTimeout)
	defer cancel()
	if err := l.txn.EndTransaction(cctx, kgo.TryCommit); err != nil {
		return nil, err
	}
	return offs, nil
}

// handle decides reqs in their order against the table, writes the
// accepted values (and the tombstones of keys past the TTL) and the
// answers in one transaction, and then applies them to the table.
//
// next ≥ 0 is the requests offset after reqs, written with them.
func (l *kvLeader) handle(ctx context.Context, reqs []kvRequest, next int64) error {
	k := l.k
	now := time.Now()
	type write struct {
		key   string
		value []byte // nil: delete
		reply int    // index in replies, -1 for a TTL tombstone
	}
	var writes []write
	var replies []kvRequest
	// touched holds the keys written in this batch: their new revision is
	// not known to any requester, so a later request on them is refused.
	touched := map[string]bool{}
	accepted := make([]bool, 0, len(reqs))
	for _, req := range reqs {
		if req.Deadline < now.Add(-kvStaleRequest).UnixMilli() {
			continue // its sender gave up long ago
		}
		if state := k.stateID(); req.State != "" && state != "" && req.State != state {
			continue // made on a deleted state topic's history: its sender is broken
		}
		e, exists := l.table[req.Key]
		if w, ok := touched[req.Key]; ok {
			exists = w
		}
		_, fresh := touched[req.Key]
		ok := false
		switch {
		case strings.HasPrefix(req.Key, "\x00"):
			ok = false // a reserved key (the leaders' own)
		case req.Op == opCreate:
			ok = !exists
		case req.Op == opUpdate, req.Op == opDelete:
			ok = exists && !fresh && e.rev == req.Rev
		case req.Op == opSync:
			ok = true
		}
		replies = append(replies, req)
		accepted = append(accepted, ok)
		if !ok || req.Op == opSync {
			continue
		}
		var v []byte
		if req.Op != opDelete {
			v = req.Value
			if v == nil {
				v = []byte{}
			}
		}
		touched[req.Key] = req.Op != opDelete
		writes = append(writes, write{key: req.Key, value: v, reply: len(replies) - 1})
	}
	if k.opts.TTL > 0 {
		for key, e := range l.table {
			if _, ok := touched[key]; !ok && now.Sub(e.written) > k.opts.TTL && len(writes) < 1000 {
				touched[key] = false
				writes = append(writes, write{key: key, reply: -1})
			}
		}
	}
	if len(replies) == 0 && len(writes) == 0 {
		return nil
	}
	recs := make([]*kgo.Record, 0, len(writes)+1)
	for _, w := range writes {
		r := &kgo.Record{Key: []byte(w.key)}
		if w.value != nil {
			r.Value, _ = json.Marshal(kvValue{Value: w.value, Written: now.UnixMilli()})
		}
		recs = append(recs, r)
	}
	if next >= 0 {
		b, _ := json.Marshal(kvValue{Written: now.UnixMilli(), Next: next})
		recs = append(recs, &kgo.Record{Key: []byte(positionKey), Value: b})
	}
	if err := l.txn.BeginTransaction(); err != nil {
		return err
	}
	offs, err := l.produce(ctx, recs)
	if err != nil {
		l.abort()
		return err
	}
	last := l.last
	for _, o := range offs {
		if o <= l.last { // a revision would be handed out again
			k.fail(fmt.Errorf("the leader's write in topic %s went to offset %d, at or below its last one %d", k.topics.state, o, l.last))
			l.abort()
			return k.err()
		}
		last = max(last, o)
	}
	revs := make([]uint64, len(replies))
	for i, req := range replies {
		if req.Op == opSync {
			revs[i] = uint64(last)
		}
	}
	for i, w := range writes {
		if w.reply >= 0 {
			revs[w.reply] = uint64(offs[i])
		}
	}
	answers := make([]*kgo.Record, len(replies))
	for i, req := range replies {
		b, _ := json.Marshal(kvReply{N: req.N, OK: accepted[i], Rev: revs[i]})
		answers[i] = &kgo.Record{Topic: k.topics.replies, Key: []byte(req.Member), Value: b}
	}
	if _, err := l.produce(ctx, answers); err != nil {
		l.abort()
		return err
	}
	cctx, cancel := context.WithTimeout(context.Background(), kvTxnTimeout)
	defer cancel()
	if err := l.txn.EndTransaction(cctx, kgo.TryCommit); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	l.last = last
	for i, w := range writes {
		if w.value == nil {
			delete(l.table, w.key)
			continue
		}
		l.table[w.key] = kvEntry{value: w.value, rev: uint64(offs[i]), written: now}
	}
	return nil
}

// produce sends recs inside the open transaction and returns their
// offsets once all are written.
func (l *kvLeader) produce(ctx context.Context, recs []*kgo.Record) ([]int64, error) {
	offs := make([]int64, len(recs))
	errs := make([]error, len(recs))
	done := make(chan struct{}, len(recs))
	for i, r := range recs {
		l.txn.Produce(ctx, r, func(r *kgo.Record, err error) {
			offs[i], errs[i] = r.Offset, err
			done <- struct{}{}
		})
	}
	for range recs {
		<-done
	}
	return offs, errors.Join(errs...)
}

// abort ends the open transaction without committing it.
func (l *kvLeader) abort() {
	actx, cancel := context.WithTimeout(context.Background(), kvTxnTimeout)
	defer cancel()
	_ = l.txn.EndTransaction(actx, kgo.TryAbort)
}
