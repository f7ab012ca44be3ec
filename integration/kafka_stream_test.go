package integration

// Acceptance tests of Kafka stream sources (issue 3, SPEC §2.1, §3, §4, §6):
// each runs `sluice run` as a separate process against the real Kafka broker
// and an HTTP function (fnServer), and checks what the function received,
// what was dead-lettered and what the consumer group committed.

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sluicehq/sluice/shard"
)

// newSource returns a unique source name; its consumer group is
// "sluice-" + the name.
func newSource(t *testing.T) (source, group string) {
	source = uniqueName(t, "src")
	return source, "sluice-" + source
}

// TestKafkaStreamThrottleHoldsOnlyItsShard: the function answers 429 for every
// batch of partition 2 for 5 s. Meanwhile partitions 0, 1 and 3 keep flowing
// and partition 2 holds the same batch without consuming attempts; afterwards
// partition 2 is delivered in order; nothing is dead-lettered.
func TestKafkaStreamThrottleHoldsOnlyItsShard(t *testing.T) {
	t.Parallel()
	const (
		partitions = 4
		records    = 20000
		batchSize  = 50
		window     = 5 * time.Second
		// Each batch takes at least this long in the function, so the
		// other partitions (100 batches each) need > 5 s: they are still
		// flowing during the whole window.
		perBatch = 60 * time.Millisecond
	)
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	want := produce(t, topic, partitions, records, produceOpts{})

	var windowStart time.Time // set at the first batch of partition 2; guarded by the server's lock
	fn := newFnServer(t, func(b *fnBatch) fnAnswer {
		if b.Partition == 2 {
			if windowStart.IsZero() {
				windowStart = b.At
			}
			if b.At.Before(windowStart.Add(window)) {
				return fnAnswer{Status: http.StatusTooManyRequests, RetryAfter: "1"}
			}
		}
		return fnAnswer{Sleep: perBatch}
	})
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": batchSize}})
	p := startSluice(t, "sluice", cfg)

	// Watch GET /v1/shards until the end of the window: partition 2 must
	// show as throttled (with the function's reason) while it holds.
	var (
		watchMu   sync.Mutex
		throttled []shardView // partition 2 views in state throttled
		states    = map[string]int{}
		gauge     float64 // the highest sluice_shards{state="throttled"} seen
	)
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		deadline := time.Now().Add(60 * time.Second)
		for time.Now().Before(deadline) {
			fn.mu.Lock()
			ws := windowStart
			fn.mu.Unlock()
			if !ws.IsZero() && time.Since(ws) > window {
				return
			}
			g, gerr := p.metric("sluice_shards", map[string]string{"source": source, "state": "throttled"})
			views, err := p.shards()
			if err == nil {
				watchMu.Lock()
				if gerr == nil {
					gauge = max(gauge, g)
				}
				for _, v := range views {
					if v.Shard == 2 {
						states[v.State]++
						if v.State == string(shard.StateThrottled) {
							throttled = append(throttled, v)
						}
					}
				}
				watchMu.Unlock()
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	waitDelivered(t, fn, records, 120*time.Second)
	<-watchDone
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })

	batches := fn.snapshot()
	checkDeliveries(t, batches, want, nil)
	fn.mu.Lock()
	ws := windowStart
	fn.mu.Unlock()

	// During the window the other partitions kept flowing: each was
	// delivered in the middle of it, not only at its edges.
	mid0, mid1 := ws.Add(500*time.Millisecond), ws.Add(window-500*time.Millisecond)
	flowing := map[int32]int{}
	var held []*fnBatch // partition 2's batches during the window
	for _, b := range batches {
		switch {
		case b.Partition == 2 && b.At.Before(ws.Add(window)):
			held = append(held, b)
		case b.Partition != 2 && b.Status == http.StatusOK && b.At.After(mid0) && b.At.Before(mid1):
			flowing[b.Partition] += len(b.Records)
		}
	}
	for _, part := range []int32{0, 1, 3} {
		if flowing[part] < 5*batchSize {
			t.Errorf("partition %d: %d records delivered during the throttle window of partition 2, want it to keep flowing (≥ %d)",
				part, flowing[part], 5*batchSize)
		}
	}
	t.Logf("during the window: delivered %v records on the other partitions; partition 2 was tried %d times", flowing, len(held))

	// Partition 2 held one batch: every try during the window was the same
	// records, answered 429, and none was accepted.
	if len(held) == 0 {
		t.Fatal("partition 2 was never tried during the window")
	}
	for _, b := range held {
		if b.Status != http.StatusTooManyRequests {
			t.Errorf("partition 2 batch at %s answered %d during the window", b.At.Sub(ws), b.Status)
		}
		if !slices.Equal(b.offsets(), held[0].offsets()) {
			t.Errorf("partition 2 retried offsets %d..%d, want the held batch %d..%d",
				b.Records[0].Offset, b.Records[len(b.Records)-1].Offset, held[0].Records[0].Offset, held[0].Records[len(held[0].Records)-1].Offset)
		}
	}
	// Retry-After: 1 is honoured: about one try a second, not a hot loop.
	if len(held) > 8 {
		t.Errorf("partition 2 was tried %d times in the %s window, want about one per second (Retry-After: 1)", len(held), window)
	}
	if held[0].Records[0].Offset != 0 {
		t.Errorf("the first batch of partition 2 starts at offset %d, want 0", held[0].Records[0].Offset)
	}
	// After the window, the held batch is delivered first, then the rest.
	var after []*fnBatch
	for _, b := range batches {
		if b.Partition == 2 && !b.At.Before(ws.Add(window)) {
			after = append(after, b)
		}
	}
	if len(after) == 0 || !slices.Equal(after[0].offsets(), held[0].offsets()) {
		t.Errorf("the first delivery of partition 2 after the window is not the held batch")
	}
	// Throttles consume no attempt.
	for _, b := range batches {
		if b.Partition == 2 && b.Attempt != 1 {
			t.Errorf("partition 2 batch at offset %d carried Sluice-Attempt %d, want 1 (throttles consume no attempt)",
				b.Records[0].Offset, b.Attempt)
		}
	}

	watchMu.Lock()
	if len(throttled) == 0 {
		t.Errorf("GET /v1/shards never showed partition 2 throttled during the window (states seen: %v)", states)
	} else if r := throttled[0].Reason; r != "FunctionThrottled" {
		t.Errorf("partition 2 throttled with reason %q, want FunctionThrottled", r)
	}
	if gauge != 1 {
		t.Errorf("sluice_shards{state=\"throttled\"} was at most %v during the window, want 1", gauge)
	}
	watchMu.Unlock()
	// Every 429 counts as a throttle of the function.
	if n, err := p.metric("sluice_throttles_total", map[string]string{"function": "fn", "reason": "FunctionThrottled"}); err != nil || n != float64(len(held)) {
		t.Errorf("sluice_throttles_total{reason=\"FunctionThrottled\"} = %v (%v), want %d (the 429 answers)", n, err, len(held))
	}

	if dl := readDeadLetters(t, dlq); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none; first: %+v", len(dl), dl[0].Env)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestKafkaStreamPoisonRecordBisect: with bisect_batch_on_error and
// max_retry_attempts 2, a record the function always fails is dead-lettered
// alone with RetryAttemptsExhausted after 3 attempts; the rest is delivered
// in order.
func TestKafkaStreamPoisonRecordBisect(t *testing.T) {
	t.Parallel()
	const partitions, records = 2, 2000
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	want := produce(t, topic, partitions, records, produceOpts{})
	poison := want[len(want)/2+437] // partition 1, somewhere in the middle of a batch
	pk := producedKey{poison.Partition, poison.Offset}

	fn := newFnServer(t, func(b *fnBatch) fnAnswer {
		if b.contains(poison.Partition, poison.Offset) {
			return fnAnswer{Status: http.StatusInternalServerError}
		}
		return fnAnswer{}
	})
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": 100, "bisect_batch_on_error": true, "max_retry_attempts": 2}})
	p := startSluice(t, "sluice", cfg)

	waitDelivered(t, fn, records-1, 90*time.Second)
	var letters []deadLetter
	eventually(t, 30*time.Second, "the poison record is dead-lettered", func() error {
		if letters = readDeadLetters(t, dlq); len(letters) == 0 {
			return errors.New("no dead letter yet")
		}
		return nil
	})
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if n, err := p.metric("sluice_dead_letters_total", map[string]string{"source": source, "condition": "RetryAttemptsExhausted"}); err != nil || n != 1 {
		t.Errorf("sluice_dead_letters_total{condition=\"RetryAttemptsExhausted\"} = %v (%v), want 1", n, err)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	letters = readDeadLetters(t, dlq)

	rep := checkDeliveries(t, fn.snapshot(), want, map[producedKey]bool{pk: true})
	if n := rep.duplicates(); n != 0 {
		t.Errorf("%d records delivered more than once, want none", n)
	}

	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want exactly 1 (the poison record)", len(letters))
	}
	dl := letters[0]
	e := dl.Env
	if e.Source != source || e.Function != "fn" || e.Mode != "stream" || e.Condition != shard.RetryAttemptsExhausted || e.Replays != 0 {
		t.Errorf("envelope source %q function %q mode %q condition %q replays %d, want %q fn stream RetryAttemptsExhausted 0",
			e.Source, e.Function, e.Mode, e.Condition, e.Replays, source)
	}
	// max_retry_attempts 2: the first attempt and two retries.
	if e.Attempts != 3 {
		t.Errorf("envelope attempts = %d, want 3 (1 + max_retry_attempts 2)", e.Attempts)
	}
	if e.LastError.Status != http.StatusInternalServerError {
		t.Errorf("envelope lastError = %+v, want status 500", e.LastError)
	}
	if e.FirstAttemptAt.IsZero() || e.LastAttemptAt.Before(e.FirstAttemptAt) {
		t.Errorf("envelope firstAttemptAt %s, lastAttemptAt %s", e.FirstAttemptAt, e.LastAttemptAt)
	}
	r := e.Record
	if r.Topic != topic || r.Partition != poison.Partition || r.Offset != poison.Offset ||
		string(r.Key) != poison.Key || string(r.Value) != poison.Value {
		t.Errorf("envelope record %s/%d@%d key %q value %q, want %s/%d@%d key %q value %q",
			r.Topic, r.Partition, r.Offset, r.Key, r.Value, topic, poison.Partition, poison.Offset, poison.Key, poison.Value)
	}
	if !r.Timestamp.Equal(poison.Timestamp) {
		t.Errorf("envelope record timestamp %s, want %s", r.Timestamp, poison.Timestamp)
	}
	if e.ID == "" || dl.Headers["sluice-condition"] != string(shard.RetryAttemptsExhausted) ||
		dl.Headers["sluice-source"] != source || dl.Headers["sluice-function"] != "fn" {
		t.Errorf("dead letter id %q headers %v", e.ID, dl.Headers)
	}

	// Bisection is free: every batch holding the poison record with others
	// went out as attempt 1; the poison record alone was tried 3 times.
	var alone []int
	for _, b := range fn.snapshot() {
		if !b.contains(poison.Partition, poison.Offset) {
			continue
		}
		if len(b.Records) == 1 {
			alone = append(alone, b.Attempt)
		} else if b.Attempt != 1 {
			t.Errorf("a batch of %d records holding the poison record went out as attempt %d, want 1 (bisecting consumes no attempt)",
				len(b.Records), b.Attempt)
		}
	}
	if !slices.Equal(alone, []int{1, 2, 3}) {
		t.Errorf("the poison record alone was tried with Sluice-Attempt %v, want [1 2 3]", alone)
	}
}

// TestKafkaStreamRecordAgeExpiry: with max_record_age 60s and a function that
// throttles forever, records are dead-lettered with RecordAgeExceeded once
// older than 60 s, then the shard moves on: later records are delivered once
// the function recovers. The records are stamped 50 s in the past, so they
// expire about 10 s into the test: time enough to see them held first.
func TestKafkaStreamRecordAgeExpiry(t *testing.T) {
	t.Parallel()
	const (
		old   = 300
		fresh = 200
		age   = 60 * time.Second
	)
	topic := createTopic(t, 1)
	dlq := deadLetterTopic(t)
	stamp := time.Now().Add(-50 * time.Second).Truncate(time.Millisecond)
	oldRecs := produce(t, topic, 1, old, produceOpts{Timestamp: func(int) time.Time { return stamp }})

	fn := newFnServer(t, func(*fnBatch) fnAnswer {
		return fnAnswer{Status: http.StatusTooManyRequests, RetryAfter: "1"}
	})
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": 100, "max_record_age": "60s"}})
	p := startSluice(t, "sluice", cfg)

	// The shard shows throttled while it holds the old records.
	eventually(t, 30*time.Second, "GET /v1/shards shows the shard throttled", func() error {
		views, err := p.shards()
		if err != nil {
			return err
		}
		for _, v := range views {
			if v.State == string(shard.StateThrottled) {
				return nil
			}
		}
		return fmt.Errorf("shards %+v", views)
	})

	var letters []deadLetter
	eventually(t, 40*time.Second, "the old records are dead-lettered", func() error {
		if letters = readDeadLetters(t, dlq); len(letters) < old {
			return fmt.Errorf("%d dead letters, want %d", len(letters), old)
		}
		return nil
	})
	seen := map[int64]bool{}
	for _, dl := range letters {
		e := dl.Env
		if e.Condition != shard.RecordAgeExceeded || e.Attempts != 0 {
			t.Errorf("record %d dead-lettered with %s after %d attempts, want RecordAgeExceeded after 0 (throttles consume none)",
				e.Record.Offset, e.Condition, e.Attempts)
		}
		if seen[e.Record.Offset] {
			t.Errorf("record %d dead-lettered twice", e.Record.Offset)
		}
		seen[e.Record.Offset] = true
		// Not before it was 60 s old (timestamps are in milliseconds).
		if dl.Timestamp.Before(stamp.Add(age)) {
			t.Errorf("record %d dead-lettered at age %s, want at least %s", e.Record.Offset, dl.Timestamp.Sub(stamp), age)
		}
	}
	for _, r := range oldRecs {
		if !seen[r.Offset] {
			t.Errorf("old record %d was not dead-lettered", r.Offset)
		}
	}
	if n, err := p.metric("sluice_dead_letters_total", map[string]string{"source": source, "condition": "RecordAgeExceeded"}); err != nil || n != old {
		t.Errorf("sluice_dead_letters_total{condition=\"RecordAgeExceeded\"} = %v (%v), want %d", n, err, old)
	}
	if t.Failed() {
		t.FailNow()
	}

	// The shard moved on: fresh records are throttled for a while, then
	// delivered once the function recovers.
	freshRecs := produce(t, topic, 1, fresh, produceOpts{First: old})
	eventually(t, 30*time.Second, "the function sees a fresh record", func() error {
		for _, b := range fn.snapshot() {
			if b.Records[0].Offset >= old {
				return nil
			}
		}
		return errors.New("not yet")
	})
	fn.setPolicy(answer(http.StatusOK))
	waitDelivered(t, fn, fresh, 30*time.Second)
	eventually(t, 30*time.Second, "the partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	skip := map[producedKey]bool{}
	for _, r := range oldRecs {
		skip[producedKey{r.Partition, r.Offset}] = true
	}
	checkDeliveries(t, fn.snapshot(), append(oldRecs, freshRecs...), skip)
	if n := len(readDeadLetters(t, dlq)); n != old {
		t.Errorf("%d dead letters in the end, want %d (no fresh record expired)", n, old)
	}
}

// TestKafkaStreamPartialBatch: with report_batch_item_failures, the function
// fails two items of a batch once; the lowest failed item and everything
// after it are retried as the next attempt, the records before it are not.
func TestKafkaStreamPartialBatch(t *testing.T) {
	t.Parallel()
	const records = 1000
	topic := createTopic(t, 1)
	dlq := deadLetterTopic(t)
	want := produce(t, topic, 1, records, produceOpts{})

	var target *fnBatch // the batch answered with a partial failure; guarded by the server's lock
	var k int           // index in target of the lowest failed item
	fn := newFnServer(t, func(b *fnBatch) fnAnswer {
		if target == nil && len(b.Records) >= 10 {
			target, k = b, len(b.Records)/2
			// Named out of order: the lowest one counts.
			return fnAnswer{Failed: []int64{b.Records[k+3].Offset, b.Records[k].Offset}}
		}
		return fnAnswer{}
	})
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": 100, "report_batch_item_failures": true}})
	p := startSluice(t, "sluice", cfg)

	waitDelivered(t, fn, records, 60*time.Second)
	eventually(t, 30*time.Second, "the partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	batches := fn.snapshot()
	rep := checkDeliveries(t, batches, want, nil)
	if n := rep.duplicates(); n != 0 {
		t.Errorf("%d records accepted more than once, want none", n)
	}
	if target == nil {
		t.Fatal("no batch of 10 records or more: nothing was failed")
	}
	if target.Seq+1 >= len(batches) {
		t.Fatal("nothing was delivered after the partial failure")
	}
	retry := batches[target.Seq+1]
	if wantOffs := target.offsets()[k:]; !slices.Equal(retry.offsets(), wantOffs) {
		t.Errorf("after failing items %d and %d of a batch %d..%d, the next batch was %d..%d (%d records), want the retry of %d..%d",
			target.Records[k].Offset, target.Records[k+3].Offset, target.Records[0].Offset, target.Records[len(target.Records)-1].Offset,
			retry.Records[0].Offset, retry.Records[len(retry.Records)-1].Offset, len(retry.Records), wantOffs[0], wantOffs[len(wantOffs)-1])
	}
	if retry.Attempt != target.Attempt+1 {
		t.Errorf("the retry went out as attempt %d, want %d", retry.Attempt, target.Attempt+1)
	}
	// Records before the lowest failed item were sent exactly once; from it
	// on, exactly twice (failed, then retried).
	sent := map[int64]int{}
	for _, b := range batches {
		for _, r := range b.Records {
			sent[r.Offset]++
		}
	}
	for i, r := range target.Records {
		wantSent := 1
		if i >= k {
			wantSent = 2
		}
		if sent[r.Offset] != wantSent {
			t.Errorf("record %d (item %d of the partial batch, lowest failed %d) was sent %d times, want %d",
				r.Offset, i, k, sent[r.Offset], wantSent)
		}
	}
	if dl := readDeadLetters(t, dlq); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// TestKafkaStreamKill9: sluice is killed with SIGKILL in the middle of a
// 50k-record run and restarted: every record is delivered, first deliveries
// stay in order per partition, and only records the group had not committed
// when it died come again.
func TestKafkaStreamKill9(t *testing.T) {
	t.Parallel()
	const (
		partitions = 4
		records    = 50000
		batchSize  = 100
	)
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	want := produce(t, topic, partitions, records, produceOpts{})

	fn := newFnServer(t, func(*fnBatch) fnAnswer { return fnAnswer{Sleep: 10 * time.Millisecond} })
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": batchSize}})
	p := startSluice(t, "sluice (first)", cfg)

	// Kill it mid-run, at a moment when the function has accepted more
	// than one batch past what the group committed on some partition, if
	// such a moment comes (a process that commits finished work late is
	// then caught in the act); else once half the records are delivered.
	// The moment only decides when to kill; what is asserted below holds
	// for any moment.
	waitDelivered(t, fn, records/5, 120*time.Second)
	eventually(t, 120*time.Second, "a moment to kill sluice", func() error {
		committed := committedOffsets(t, group, topic)
		accepted := acceptedUpTo(fn.snapshot())
		n := 0
		for part, a := range accepted {
			n += int(a) // offsets start at 0 and first deliveries are in order
			if a-committed[part] > batchSize {
				return nil
			}
		}
		if n >= records/2 {
			return nil
		}
		return fmt.Errorf("committed %v, accepted up to %v", committed, accepted)
	})
	p.kill()
	atKill := fn.snapshot()
	committed := committedOffsets(t, group, topic)
	acceptedAtKill := acceptedUpTo(atKill)
	t.Logf("killed after %d batches; committed %v; accepted up to %v", len(atKill), committed, acceptedAtKill)

	// The restarted process gets the partitions only once the broker gave
	// up on the dead member: after the session timeout (franz-go's default
	// is 45 s), which is most of this test's run time.
	p2 := startSluice(t, "sluice (restarted)", cfg)
	waitDelivered(t, fn, records, 120*time.Second)
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	rep := checkDeliveries(t, fn.snapshot(), want, nil)
	// Only what was not committed at the kill may come again: the restarted
	// process resumes at the committed offsets.
	for k := range rep.Duplicates {
		if k.o < committed[k.p] {
			t.Errorf("record %d@%d was delivered again after the restart, but the group had committed past it (%d)",
				k.p, k.o, committed[k.p])
		}
	}
	// The bound of SPEC §2.1: duplicates come only from batches in flight
	// at the kill: one batch per partition (parallelization_factor 1), at
	// most batch_size records each, so batch_size × partitions in all.
	// (Anything more would be work that was finished before the kill and
	// not committed.)
	byPart := rep.duplicatesByPartition()
	t.Logf("duplicates by partition: %v (bound %d per partition)", byPart, batchSize)
	for part, n := range byPart {
		if n > batchSize {
			t.Errorf("partition %d: %d records delivered twice, want at most %d (the batch in flight at the kill); "+
				"committed %d at the kill, accepted up to %d", part, n, batchSize, committed[part], acceptedAtKill[part])
		}
	}
	if dl := readDeadLetters(t, dlq); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// acceptedUpTo returns, per partition, the offset after the highest one the
// function accepted.
func acceptedUpTo(batches []*fnBatch) map[int32]int64 {
	out := map[int32]int64{}
	for _, b := range batches {
		for _, r := range b.accepted() {
			out[r.Partition] = max(out[r.Partition], r.Offset+1)
		}
	}
	return out
}

// TestKafkaStreamGracefulHandover: two sluice processes share a source's
// consumer group on 4 partitions; one is stopped with SIGTERM mid-run. It
// exits 0, the other takes over its partitions, and nothing is lost.
func TestKafkaStreamGracefulHandover(t *testing.T) {
	t.Parallel()
	const (
		partitions = 4
		records    = 40000
		batchSize  = 100
	)
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	fn := newFnServer(t, func(*fnBatch) fnAnswer { return fnAnswer{Sleep: 10 * time.Millisecond} })
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": batchSize}})
	a := startSluice(t, "sluice A", cfg)
	b := startSluice(t, "sluice B", cfg)
	owned := func(p *sluiceProc) int {
		views, err := p.shards()
		if err != nil {
			return -1
		}
		return len(views)
	}
	eventually(t, 60*time.Second, "A and B share the partitions", func() error {
		if na, nb := owned(a), owned(b); na+nb != partitions || na == 0 || nb == 0 {
			return fmt.Errorf("A owns %d shards, B %d", na, nb)
		}
		return nil
	})

	want := produce(t, topic, partitions, records, produceOpts{})
	waitDelivered(t, fn, records/3, 120*time.Second)
	if code := a.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("A: exit code %d after SIGTERM, want 0", code)
	}
	stoppedAt := len(fn.snapshot())
	eventually(t, 60*time.Second, "B owns every partition", func() error {
		if n := owned(b); n != partitions {
			return fmt.Errorf("B owns %d shards", n)
		}
		return nil
	})
	waitDelivered(t, fn, records, 120*time.Second)
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("B: exit code %d after SIGTERM, want 0", code)
	}

	batches := fn.snapshot()
	rep := checkDeliveries(t, batches, want, nil)
	// A graceful stop abandons only the batches in flight (one per
	// partition it owned) and commits everything finished before it leaves.
	byPart := rep.duplicatesByPartition()
	t.Logf("A stopped after %d batches; duplicates by partition: %v (bound %d per partition)", stoppedAt, byPart, batchSize)
	for part, n := range byPart {
		if n > batchSize {
			t.Errorf("partition %d: %d records delivered twice, want at most %d (the batch in flight at the stop)", part, n, batchSize)
		}
	}
	if dl := readDeadLetters(t, dlq); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// TestKafkaStreamDeadLetterOutage: the dead-letter topic is deleted while
// sluice runs and a record fails permanently: its shard blocks (GET
// /v1/shards says blocked), the group commits nothing past the record and
// nothing after it is delivered, while the other partition keeps flowing.
// Once the topic is back, the dead letter is written and the shard moves on.
func TestKafkaStreamDeadLetterOutage(t *testing.T) {
	t.Parallel()
	const partitions, records = 2, 2000
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	fn := newFnServer(t, answer(http.StatusOK))
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": 100, "bisect_batch_on_error": true}})
	p := startSluice(t, "sluice", cfg)

	// sluice created the dead-letter topic at start-up; take it away (the
	// broker does not auto-create topics).
	adm := kadm.NewClient(newKafkaClient(t))
	if _, ok := endOffsets(t, dlq)[0]; !ok {
		t.Fatalf("sluice did not create the dead-letter topic %s at start-up", dlq)
	}
	resp, err := adm.DeleteTopic(t.Context(), dlq)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("delete the dead-letter topic: %v", err)
	}
	eventually(t, 30*time.Second, "the dead-letter topic is gone", func() error {
		if offs := endOffsets(t, dlq); len(offs) > 0 {
			return fmt.Errorf("still listed: %v", offs)
		}
		return nil
	})

	want := produce(t, topic, partitions, records, produceOpts{})
	producedAt := time.Now()
	bad := want[500] // partition 0
	if bad.Partition != 0 {
		t.Fatalf("record 500 is on partition %d", bad.Partition)
	}
	fn.setPolicy(func(b *fnBatch) fnAnswer {
		if b.contains(bad.Partition, bad.Offset) {
			return fnAnswer{Status: http.StatusBadRequest}
		}
		return fnAnswer{}
	})

	// Partition 1 flows; partition 0 blocks on the dead letter it cannot
	// write (each write gives up after the writer's timeout, 10 s).
	eventually(t, 60*time.Second, "GET /v1/shards shows partition 0 blocked", func() error {
		views, err := p.shards()
		if err != nil {
			return err
		}
		for _, v := range views {
			if v.Shard == 0 && v.State == string(shard.StateBlocked) {
				return nil
			}
		}
		return fmt.Errorf("shards %+v", views)
	})
	checkBlocked := func() {
		t.Helper()
		if c, ok := committedOffsets(t, group, topic)[0]; ok && c > bad.Offset {
			t.Errorf("partition 0 committed up to %d while the dead letter of offset %d is not written", c, bad.Offset)
		}
		for _, b := range fn.snapshot() {
			for _, r := range b.accepted() {
				if r.Partition == 0 && r.Offset > bad.Offset {
					t.Errorf("partition 0 delivered offset %d past the blocked record %d", r.Offset, bad.Offset)
					return
				}
			}
		}
	}
	t.Logf("partition 0 blocked %s after the records were produced", time.Since(producedAt).Round(time.Millisecond))
	for _, l := range p.logLines() {
		if strings.Contains(l, "dead-letter write failed") {
			t.Logf("sluice logged: %s", l)
			break
		}
	}
	// It stays blocked: nothing past the failed record, however long.
	for range 3 {
		checkBlocked()
		time.Sleep(time.Second)
	}
	checkBlocked()
	onlyP1 := func() error {
		n := 0
		for _, b := range fn.snapshot() {
			for _, r := range b.accepted() {
				if r.Partition == 1 {
					n++
				}
			}
		}
		if n < records/2 {
			return fmt.Errorf("partition 1: %d records delivered", n)
		}
		return nil
	}
	eventually(t, 30*time.Second, "partition 1 keeps flowing while partition 0 is blocked", onlyP1)
	views, err := p.shards()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		if v.Shard == 0 && (v.State != string(shard.StateBlocked) || v.Reason == "") {
			t.Errorf("partition 0 is %q (reason %q), want blocked with a reason", v.State, v.Reason)
		}
	}
	if n, err := p.metric("sluice_shards", map[string]string{"source": source, "state": "blocked"}); err != nil || n != 1 {
		t.Errorf("sluice_shards{state=\"blocked\"} = %v (%v), want 1", n, err)
	}
	if n, err := p.metric("sluice_dead_letter_errors_total", map[string]string{"destination": "dead"}); err != nil || n < 1 {
		t.Errorf("sluice_dead_letter_errors_total{destination=\"dead\"} = %v (%v), want at least 1", n, err)
	}

	// The topic comes back: the shard resumes.
	eventually(t, 30*time.Second, "the dead-letter topic is created again", func() error {
		resp, err := adm.CreateTopic(t.Context(), 1, 1, nil, dlq)
		if err == nil {
			err = resp.Err
		}
		if errors.Is(err, kerr.TopicAlreadyExists) {
			return nil
		}
		return err
	})
	recreatedAt := time.Now()
	var letters []deadLetter
	eventually(t, 60*time.Second, "the dead letter is written", func() error {
		if letters = readDeadLetters(t, dlq); len(letters) == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	t.Logf("the dead letter was written %s after the topic came back", time.Since(recreatedAt).Round(time.Millisecond))
	waitDelivered(t, fn, records-1, 60*time.Second)
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	checkDeliveries(t, fn.snapshot(), want, map[producedKey]bool{{bad.Partition, bad.Offset}: true})
	letters = readDeadLetters(t, dlq)
	// A write that timed out may still have landed, so the same letter may
	// be there more than once (same id); nothing else may.
	for _, dl := range letters {
		e := dl.Env
		if e.Record.Partition != bad.Partition || e.Record.Offset != bad.Offset || e.Condition != shard.PermanentError {
			t.Errorf("dead letter of %d@%d with %s, want only %d@%d with PermanentError",
				e.Record.Partition, e.Record.Offset, e.Condition, bad.Partition, bad.Offset)
		}
		if e.ID != letters[0].Env.ID {
			t.Errorf("dead letters with ids %s and %s for the same record", e.ID, letters[0].Env.ID)
		}
	}
}
