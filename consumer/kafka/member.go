package kafka

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// member is the consumer-group member lifecycle that the stream Source and
// the Async source share: starting once, fencing the poll loop on assign,
// the revoke and lost sequences, the commit loop and the shutdown tail. P is
// the source's state of one assigned partition (*part, *apart); the source
// says how to start, detach and stop those, and keeps everything else (what
// a partition does with its records) to itself.
//
// The sequences (see doc.go, "Revoke and lost"):
//   - assigned: resume the partitions (pauses persist across rebalances in
//     franz-go), fence the poll in progress, start the new partitions;
//   - revoked: detach, stop (fence the marks after the wait, so a batch or
//     event that finishes meanwhile is still marked), resume, commit the
//     marks through the committer (after any round in progress);
//   - lost: detach, stop with the marks fenced first (the partitions may be
//     someone else's already), resume, commit nothing;
//   - shutdown: stop polling, detach and stop everything, stop the commit
//     loop, commit once more, leave the group, close the client.
type member[P any] struct {
	log           *slog.Logger
	commitTimeout time.Duration
	what          string // what a member delivers again after a loss: "records", "events"

	// startLocked starts the partitions of m that are new to this member.
	startLocked func(cl *kgo.Client, m map[string][]int32)
	// detachLocked removes the partitions of m (every partition when m is
	// nil) from the source and returns them.
	detachLocked func(m map[string][]int32) []P
	// stop cancels parts and waits for them, fencing their marks and
	// pauses first with fenceFirst, else after the wait.
	stop func(parts []P, fenceFirst bool)

	// mu guards the fields below and the source's own partition state,
	// and serializes the poll loop's rounds with assignment changes (see
	// assigned).
	mu   sync.Mutex
	cond *sync.Cond // on mu: signalled when a poll round ends (and by the source for its own waits)
	// pollCancel cancels the poll in progress; nil between rounds. round
	// counts finished rounds (a round: PollRecords, then handing out what
	// it returned).
	pollCancel context.CancelFunc
	round      uint64
	running    bool
	closing    bool // Run is shutting down: assign nothing new
	workCtx    context.Context
	// commits is the committer runCommits runs: revoke and shutdown
	// commit through it, after any round in progress.
	commits *committer
}

func (m *member[P]) init() { m.cond = sync.NewCond(&m.mu) }

// begin marks the member running (ErrRunning if it already is) and returns
// the context of its partitions' work: it outlives ctx, so the work is
// stopped in order at shutdown, after polling stopped; call stopWork when
// Run returns.
func (m *member[P]) begin(ctx context.Context) (stopWork context.CancelFunc, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running {
		return nil, ErrRunning
	}
	m.running = true
	m.workCtx, stopWork = context.WithCancel(context.WithoutCancel(ctx))
	return stopWork, nil
}

// runCommits runs the commit loop of commits on cl until the returned stop
// is called; stop waits for it.
func (m *member[P]) runCommits(ctx context.Context, cl *kgo.Client, commits *committer) (stop func()) {
	m.mu.Lock()
	m.commits = commits
	m.mu.Unlock()
	commitCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan struct{})
	go func() {
		defer close(done)
		commits.run(commitCtx, cl, commitInterval, m.commitTimeout, m.log)
	}()
	return func() { cancel(); <-done }
}

// shutdown is the end of Run, once the poll loop returned: stop every
// partition (closing keeps a rebalance that lands meanwhile from starting
// new ones), stop the commit loop, then commit what was marked and leave.
func (m *member[P]) shutdown(ctx context.Context, cl *kgo.Client, stopCommits func()) {
	m.mu.Lock()
	m.closing = true
	parts := m.detachLocked(nil)
	m.mu.Unlock()
	m.stop(parts, false)
	stopCommits()
	m.mu.Lock()
	commits := m.commits
	m.mu.Unlock()
	commitAndLeave(ctx, cl, commits, m.commitTimeout, m.log, "the "+m.what+" after the last commit will be delivered again")
}

// pollLoop is the poll loop of both sources. Each round: under m.mu, next
// says how many records to fetch (it may wait on m.cond; the loop ends when
// ctx does); PollRecords runs without the lock, cancellable by assigned's
// fence (pollCancel); then, under m.mu again, take hands out each
// partition's records, and the round is counted and broadcast. Fetch errors
// other than our own cancel are logged.
func (m *member[P]) pollLoop(ctx context.Context, cl *kgo.Client, next func() int, take func(kgo.FetchTopicPartition)) {
	for {
		m.mu.Lock()
		n := next()
		if ctx.Err() != nil {
			m.mu.Unlock()
			return
		}
		pctx, cancel := context.WithCancel(ctx)
		m.pollCancel = cancel
		m.mu.Unlock()

		fetches := cl.PollRecords(pctx, n)

		m.mu.Lock()
		m.pollCancel = nil
		fetches.EachPartition(take)
		m.round++
		m.cond.Broadcast()
		m.mu.Unlock()
		cancel()

		if fetches.IsClientClosed() {
			return
		}
		fetches.EachError(func(topic string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return // our own cancel (assigned fences the poll) or shutdown
			}
			m.log.Warn("fetch error", "fetched_topic", topic, "partition", p, "error", err)
		})
	}
}

// fencePollLocked cancels the poll in progress, if any, and waits for its
// round to end. Called with m.mu held (the wait releases it).
//
// In assigned, this pushes (or drops, as a new partition has no state yet)
// the records of a poll that began before the callback, before the new
// partition state exists; a poll that starts after the callback began cannot
// return the old session's records (franz-go invalidates them before
// revoking), and the new session's records only after the callback returns.
func (m *member[P]) fencePollLocked() {
	if m.pollCancel == nil {
		return
	}
	r := m.round
	m.pollCancel()
	for m.round == r {
		m.cond.Wait()
	}
}

// assigned starts the partitions of tps; logParts is what the log line
// shows of them.
func (m *member[P]) assigned(cl *kgo.Client, tps map[string][]int32, logParts any) {
	cl.ResumeFetchPartitions(tps)
	m.mu.Lock()
	defer m.mu.Unlock()
	m.fencePollLocked()
	if m.closing || m.workCtx == nil {
		return
	}
	m.startLocked(cl, tps)
	m.log.Info("partitions assigned", "partitions", logParts)
}

// revoked stops the partitions of tps and commits what they marked, so the
// next owner starts right after it. franz-go calls it with an empty map at
// the end of every cooperative session; then there is nothing to stop and
// nothing extra to commit.
func (m *member[P]) revoked(ctx context.Context, cl *kgo.Client, tps map[string][]int32, logParts any) {
	m.mu.Lock()
	parts := m.detachLocked(tps)
	commits := m.commits
	m.mu.Unlock()
	if len(parts) == 0 {
		return
	}
	m.stop(parts, false)
	cl.ResumeFetchPartitions(tps)
	cctx, cancel := context.WithTimeout(ctx, m.commitTimeout)
	defer cancel()
	// After any commit round in progress: that round may have read the
	// marks before the stopped workers' last ones, and must not land after.
	if err := commits.commit(cctx, cl); err != nil {
		m.log.Warn("commit at revoke failed; the next owner delivers again the "+m.what+" after the previous commit", "error", err)
	}
	m.log.Info("partitions revoked", "partitions", logParts)
}

// lost stops the partitions of tps, which this member lost without a clean
// revoke (session expired, fenced): nothing is marked from the start and
// nothing is committed.
func (m *member[P]) lost(cl *kgo.Client, tps map[string][]int32, logParts any) {
	m.mu.Lock()
	parts := m.detachLocked(tps)
	m.mu.Unlock()
	if len(parts) == 0 {
		return
	}
	m.stop(parts, true)
	cl.ResumeFetchPartitions(tps)
	m.log.Warn("partitions lost; their "+m.what+" after the last commit will be delivered again", "partitions", logParts)
}

// commitAndLeave ends a group member: a final commit of what was marked,
// leaving the group (so its partitions move at once, not after the session
// timeout) and closing the client, within timeout even when ctx is done.
// lost says in the log what a failed final commit means.
func commitAndLeave(ctx context.Context, cl *kgo.Client, commits *committer, timeout time.Duration, log *slog.Logger, lost string) {
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := commits.commit(cctx, cl); err != nil {
		log.Error("final commit failed; "+lost, "error", err)
	}
	if err := cl.LeaveGroupContext(cctx); err != nil {
		log.Warn("leaving the group failed; its partitions move after the session timeout", "error", err)
	}
	cl.Close()
}
