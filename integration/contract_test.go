package integration

// The stream-source contract (SPEC §2.1, §3, §4, §6): one set of scenarios
// that every stream source — Kafka partitions, JetStream partition subjects —
// must pass, run against the real broker through an out-of-process
// `sluice run` (Watermill's tests.TestPubSub is the model). A scenario talks
// to the broker only through a streamEnv, which a streamBackend makes fresh
// for each test:
//
//   - Produce writes keyed records, the record with sequence number s to
//     partition s % partitions, and returns them by partition and position
//     (Kafka offset, JetStream stream sequence);
//   - Config writes the `sluice run` configuration of a stream source over
//     that topic or stream, with a dead-letter destination on the same broker;
//   - DeadLetters reads that destination; Committed and AllCommitted read how
//     far the source has acknowledged.
//
// What the function saw is recorded by fnServer (harness_test.go), which
// decodes both request bodies (SelfManagedKafka and sluice:nats).

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// streamBackend makes fresh stream environments on one broker.
type streamBackend interface {
	Name() string
	// Setup creates a fresh topic or stream with the given partitions and
	// a dead-letter destination, both removed when the test ends.
	Setup(t *testing.T, partitions int) streamEnv
}

// streamEnv is one topic or stream of a scenario.
type streamEnv interface {
	// Topic is the Kafka topic or the JetStream stream, as dead-letter
	// envelopes name it (record.topic).
	Topic() string
	// Produce writes n keyed records, the one with sequence number s (from
	// o.First) to partition s % partitions with value "seq-<s>", and returns
	// them sorted by partition and position, with the timestamps the broker
	// keeps. o.Timestamp is honoured only when CanBackdate.
	Produce(t *testing.T, n int, o produceOpts) []produced
	// CanBackdate reports whether Produce can stamp records in the past
	// (Kafka: yes; JetStream: no, the stream stamps the time it stored it).
	CanBackdate() bool
	// Config writes the configuration of stream source `source` over this
	// topic or stream, invoking fnURL, dead letters to this environment's
	// destination, with further source settings.
	Config(t *testing.T, source, fnURL string, settings map[string]any) string
	// ShortenFailover makes the configurations Config writes from then on
	// move a dead process's partitions after seconds (failover_test.go),
	// and returns how long after a kill -9 that takes.
	ShortenFailover() time.Duration
	// DeadLetters returns every dead letter written so far, decoded.
	DeadLetters(t *testing.T) []deadLetter
	// Committed returns, per partition, the position below which source
	// has committed (acknowledged) every record; partitions without any
	// commit are left out.
	Committed(t *testing.T, source string) map[int32]int64
	// AllCommitted returns nil once source committed every record stored.
	AllCommitted(t *testing.T, source string) error
	// RedeliveryBound is the most records per partition a kill -9 may
	// deliver again, as the documentation of the source states it, for a
	// source with batchSize, parallelization_factor 1 and the default
	// commit settings.
	RedeliveryBound(batchSize int) int
}

// streamBackends are the brokers the contract runs on.
func streamBackends() []streamBackend {
	return []streamBackend{kafkaBackend{}, natsBackend{}}
}

// TestStreamContract runs every stream-source scenario on every broker,
// all in parallel (most of their time is waiting: throttle windows, record
// ages, a dead process's lease).
func TestStreamContract(t *testing.T) {
	// Parallel at the top too, so that the scenarios overlap the other
	// parallel tests of the package, not only each other.
	t.Parallel()
	scenarios := []struct {
		name string
		run  func(*testing.T, streamBackend)
	}{
		{"ThrottledShardBlocksAlone", contractThrottleHoldsOnlyItsShard},
		{"PoisonRecordBisect", contractPoisonRecordBisect},
		{"RecordAgeExpiry", contractRecordAgeExpiry},
		{"PartialBatch", contractPartialBatch},
		{"Kill9", contractKill9},
		{"InvocationOutlivesRecordAge", contractInvocationOutlivesRecordAge},
		{"NoRetryPastRecordAge", contractNoRetryPastRecordAge},
	}
	for _, be := range streamBackends() {
		t.Run(be.Name(), func(t *testing.T) {
			t.Parallel()
			for _, sc := range scenarios {
				t.Run(sc.name, func(t *testing.T) {
					t.Parallel()
					sc.run(t, be)
				})
			}
		})
	}
}

// firstOf returns the first record of partition p in want (sorted by
// partition and position).
func firstOf(t *testing.T, want []produced, p int32) produced {
	t.Helper()
	for _, r := range want {
		if r.Partition == p {
			return r
		}
	}
	t.Fatalf("no record was produced to partition %d", p)
	return produced{}
}

// contractThrottleHoldsOnlyItsShard: the function answers 429 for every
// batch of partition 2 for 5 s. Meanwhile partitions 0, 1 and 3 keep flowing
// and partition 2 holds the same batch without consuming attempts;
// afterwards partition 2 is delivered in order; nothing is dead-lettered.
func contractThrottleHoldsOnlyItsShard(t *testing.T, be streamBackend) {
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
	env := be.Setup(t, partitions)
	want := env.Produce(t, records, produceOpts{})
	first2 := firstOf(t, want, 2)

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
	source := uniqueName(t, "src")
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": batchSize})
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
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return env.AllCommitted(t, source) })

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
	if held[0].Records[0].Offset != first2.Offset {
		t.Errorf("the first batch of partition 2 starts at %d, want its first record %d", held[0].Records[0].Offset, first2.Offset)
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

	if dl := env.DeadLetters(t); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none; first: %+v", len(dl), dl[0].Env)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// contractPoisonRecordBisect: with bisect_batch_on_error and
// max_retry_attempts 2, a record the function always fails is dead-lettered
// alone with RetryAttemptsExhausted after 3 attempts; the rest is delivered
// in order.
func contractPoisonRecordBisect(t *testing.T, be streamBackend) {
	const partitions, records = 2, 2000
	env := be.Setup(t, partitions)
	want := env.Produce(t, records, produceOpts{})
	poison := want[len(want)/2+437] // partition 1, somewhere in the middle of a batch
	pk := producedKey{poison.Partition, poison.Offset}

	fn := newFnServer(t, func(b *fnBatch) fnAnswer {
		if b.contains(poison.Partition, poison.Offset) {
			return fnAnswer{Status: http.StatusInternalServerError}
		}
		return fnAnswer{}
	})
	source := uniqueName(t, "src")
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": 100, "bisect_batch_on_error": true, "max_retry_attempts": 2})
	p := startSluice(t, "sluice", cfg)

	waitDelivered(t, fn, records-1, 90*time.Second)
	var letters []deadLetter
	eventually(t, 30*time.Second, "the poison record is dead-lettered", func() error {
		if letters = env.DeadLetters(t); len(letters) == 0 {
			return errors.New("no dead letter yet")
		}
		return nil
	})
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return env.AllCommitted(t, source) })
	if n, err := p.metric("sluice_dead_letters_total", map[string]string{"source": source, "condition": "RetryAttemptsExhausted"}); err != nil || n != 1 {
		t.Errorf("sluice_dead_letters_total{condition=\"RetryAttemptsExhausted\"} = %v (%v), want 1", n, err)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	letters = env.DeadLetters(t)

	rep := checkDeliveries(t, fn.snapshot(), want, map[producedKey]bool{pk: true})
	if n := rep.duplicates(); n != 0 {
		t.Errorf("%d records delivered more than once, want none", n)
	}

	if len(letters) != 1 {
		t.Fatalf("%d dead letters, want exactly 1 (the poison record)", len(letters))
	}
	dl := letters[0]
	e := dl.Env
	if e.Source != source || e.Function != "fn" || e.Mode != "stream" || e.Condition != event.RetryAttemptsExhausted || e.Replays != 0 {
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
	if r.Topic != env.Topic() || r.Partition != poison.Partition || r.Offset != poison.Offset ||
		string(r.Key) != poison.Key || string(r.Value) != poison.Value {
		t.Errorf("envelope record %s/%d@%d key %q value %q, want %s/%d@%d key %q value %q",
			r.Topic, r.Partition, r.Offset, r.Key, r.Value, env.Topic(), poison.Partition, poison.Offset, poison.Key, poison.Value)
	}
	if !r.Timestamp.Equal(poison.Timestamp) {
		t.Errorf("envelope record timestamp %s, want %s", r.Timestamp, poison.Timestamp)
	}
	if e.ID == "" || dl.Headers["sluice-condition"] != string(event.RetryAttemptsExhausted) ||
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

// contractRecordAgeExpiry: with max_record_age 60s and a function that
// throttles forever, records are dead-lettered with RecordAgeExceeded once
// older than 60 s, then the shard moves on: later records are delivered once
// the function recovers. Where the broker allows it (Kafka) the records are
// stamped 50 s in the past, so they expire about 10 s into the test: time
// enough to see them held first; elsewhere (JetStream stamps the time it
// stored a message) they are held for the whole 60 s.
func contractRecordAgeExpiry(t *testing.T, be streamBackend) {
	const (
		old   = 300
		fresh = 200
		age   = 60 * time.Second
	)
	env := be.Setup(t, 1)
	var o produceOpts
	if env.CanBackdate() {
		stamp := time.Now().Add(-50 * time.Second).Truncate(time.Millisecond)
		o.Timestamp = func(int) time.Time { return stamp }
	}
	oldRecs := env.Produce(t, old, o)
	stampOf := map[int64]time.Time{}
	for _, r := range oldRecs {
		stampOf[r.Offset] = r.Timestamp
	}
	var expiresAt time.Time // when the last old record is 60 s old
	for _, r := range oldRecs {
		if r.Timestamp.Add(age).After(expiresAt) {
			expiresAt = r.Timestamp.Add(age)
		}
	}

	fn := newFnServer(t, func(*fnBatch) fnAnswer {
		return fnAnswer{Status: http.StatusTooManyRequests, RetryAfter: "1"}
	})
	source := uniqueName(t, "src")
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": 100, "max_record_age": "60s"})
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
	eventually(t, max(40*time.Second, time.Until(expiresAt)+30*time.Second), "the old records are dead-lettered", func() error {
		if letters = env.DeadLetters(t); len(letters) < old {
			return fmt.Errorf("%d dead letters, want %d", len(letters), old)
		}
		return nil
	})
	seen := map[int64]bool{}
	for _, dl := range letters {
		e := dl.Env
		if e.Condition != event.RecordAgeExceeded || e.Attempts != 0 {
			t.Errorf("record %d dead-lettered with %s after %d attempts, want RecordAgeExceeded after 0 (throttles consume none)",
				e.Record.Offset, e.Condition, e.Attempts)
		}
		if seen[e.Record.Offset] {
			t.Errorf("record %d dead-lettered twice", e.Record.Offset)
		}
		seen[e.Record.Offset] = true
		// Not before it was 60 s old (Kafka timestamps are in
		// milliseconds).
		stamp, ok := stampOf[e.Record.Offset]
		switch {
		case !ok:
			t.Errorf("dead letter of record %d, which is not one of the old records", e.Record.Offset)
		case !e.Record.Timestamp.Equal(stamp):
			t.Errorf("record %d: envelope timestamp %s, produced with %s", e.Record.Offset, e.Record.Timestamp, stamp)
		case dl.Timestamp.Before(stamp.Add(age)):
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
	lastOld := oldRecs[len(oldRecs)-1].Offset
	freshRecs := env.Produce(t, fresh, produceOpts{First: old})
	eventually(t, 30*time.Second, "the function sees a fresh record", func() error {
		for _, b := range fn.snapshot() {
			if b.Records[0].Offset > lastOld {
				return nil
			}
		}
		return errors.New("not yet")
	})
	fn.setPolicy(answer(http.StatusOK))
	waitDelivered(t, fn, fresh, 30*time.Second)
	eventually(t, 30*time.Second, "the partition is committed to its end", func() error { return env.AllCommitted(t, source) })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	skip := map[producedKey]bool{}
	for _, r := range oldRecs {
		skip[producedKey{r.Partition, r.Offset}] = true
	}
	checkDeliveries(t, fn.snapshot(), append(oldRecs, freshRecs...), skip)
	if n := len(env.DeadLetters(t)); n != old {
		t.Errorf("%d dead letters in the end, want %d (no fresh record expired)", n, old)
	}
}

// contractPartialBatch: with report_batch_item_failures, the function fails
// two items of a batch once; the lowest failed item and everything after it
// are retried as the next attempt, the records before it are not.
func contractPartialBatch(t *testing.T, be streamBackend) {
	const records = 1000
	env := be.Setup(t, 1)
	want := env.Produce(t, records, produceOpts{})

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
	source := uniqueName(t, "src")
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": 100, "report_batch_item_failures": true})
	p := startSluice(t, "sluice", cfg)

	waitDelivered(t, fn, records, 60*time.Second)
	eventually(t, 30*time.Second, "the partition is committed to its end", func() error { return env.AllCommitted(t, source) })
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
	if dl := env.DeadLetters(t); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// contractKill9: sluice is killed with SIGKILL in the middle of a 50k-record
// run and restarted: every record is delivered, first deliveries stay in
// order per partition, and only records the source had not committed when
// it died come again.
func contractKill9(t *testing.T, be streamBackend) {
	const (
		partitions = 4
		records    = 50000
		batchSize  = 100
	)
	env := be.Setup(t, partitions)
	want := env.Produce(t, records, produceOpts{})

	fn := newFnServer(t, func(*fnBatch) fnAnswer { return fnAnswer{Sleep: 10 * time.Millisecond} })
	source := uniqueName(t, "src")
	failover := env.ShortenFailover()
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": batchSize})
	started := time.Now()
	p := startSluice(t, "sluice (first)", cfg)

	// Kill it mid-run, at a moment when the function has accepted more
	// than one batch past what the source committed on some partition, if
	// such a moment comes (a process that commits finished work late is
	// then caught in the act); else once half the records are delivered.
	// The moment only decides when to kill; what is asserted below holds
	// for any moment.
	waitDelivered(t, fn, records/5, 120*time.Second)
	eventually(t, 120*time.Second, "a moment to kill sluice", func() error {
		committed := env.Committed(t, source)
		ahead, n := acceptedPast(fn.snapshot(), committed)
		for _, a := range ahead {
			if a > batchSize {
				return nil
			}
		}
		if n >= records/2 {
			return nil
		}
		return fmt.Errorf("committed %v, accepted past it %v", committed, ahead)
	})
	p.kill()
	atKill := fn.snapshot()
	committed := env.Committed(t, source)
	aheadAtKill, _ := acceptedPast(atKill, committed)
	killedAt := time.Now()
	t.Logf("killed %s after the start, after %d batches; committed %v; accepted past it %v",
		killedAt.Sub(started).Round(time.Millisecond), len(atKill), committed, aheadAtKill)

	// The restarted process gets the partitions only once the broker gave
	// up on the dead one: after Kafka's session timeout or the pin of the
	// JetStream partition consumers (2 × ack_wait), shortened to seconds by
	// ShortenFailover (the defaults, 45 s and 60 s, were most of this
	// test's run time).
	p2 := startSluice(t, "sluice (restarted)", cfg)
	p2Started := time.Now()
	var resumedAt time.Time
	eventually(t, 150*time.Second, "the restarted process delivers", func() error {
		bs := fn.snapshot()
		// (A request the first process sent just before it died may
		// arrive later; the restarted one's come after it started.)
		if b := bs[len(bs)-1]; b.At.After(p2Started) {
			resumedAt = b.At
			return nil
		}
		return errors.New("nothing yet")
	})
	waitDelivered(t, fn, records, 150*time.Second)
	t.Logf("the restarted process delivered again %s after the kill, and all %s after it",
		resumedAt.Sub(killedAt).Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
	if d := resumedAt.Sub(killedAt); d > failover+failoverSlack {
		t.Errorf("the restarted process delivered again only %s after the kill, want failover within %s (+%s slack): the broker setting did not take effect?",
			d.Round(time.Millisecond), failover, failoverSlack)
	}
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return env.AllCommitted(t, source) })
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	rep := checkDeliveries(t, fn.snapshot(), want, nil)
	// Only what was not committed at the kill may come again: the restarted
	// process resumes at the committed positions.
	for k := range rep.Duplicates {
		if k.o < committed[k.p] {
			t.Errorf("record %d@%d was delivered again after the restart, but the source had committed past it (%d)",
				k.p, k.o, committed[k.p])
		}
	}
	// The documented bound: duplicates come only from the batch in flight
	// at the kill and the batches finished while their commits were on the
	// wire (Kafka: commit_pipeline_depth of them; JetStream: none, a batch
	// is acknowledged before the next), at most batch_size records each.
	// (Anything more would be work that was finished before the kill and
	// not committed.)
	bound := env.RedeliveryBound(batchSize)
	byPart := rep.duplicatesByPartition()
	t.Logf("duplicates by partition: %v (bound %d per partition)", byPart, bound)
	for part, n := range byPart {
		if n > bound {
			t.Errorf("partition %d: %d records delivered twice, want at most %d (the documented bound); "+
				"committed up to %d at the kill, %d accepted records past it", part, n, bound, committed[part], aheadAtKill[part])
		}
	}
	if dl := env.DeadLetters(t); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// acceptedPast returns, per partition, how many distinct records the
// function accepted at or past the committed position, and how many
// distinct records it accepted in all.
func acceptedPast(batches []*fnBatch, committed map[int32]int64) (ahead map[int32]int, total int) {
	ahead = map[int32]int{}
	seen := map[producedKey]bool{}
	for _, b := range batches {
		for _, r := range b.accepted() {
			k := producedKey{r.Partition, r.Offset}
			if seen[k] {
				continue
			}
			seen[k] = true
			if r.Offset >= committed[r.Partition] {
				ahead[r.Partition]++
			}
		}
	}
	return ahead, len(seen)
}

// The two record-age scenarios below need an invocation that is still
// running when its records reach max_record_age (60 s, the smallest the
// configuration allows) within the function's 30 s timeout. Where the broker
// allows it (Kafka) the records are stamped 45 s in the past and produced
// once sluice consumes the partition (so the time sluice takes to start does
// not age them), and each scenario takes about 20 s; JetStream stamps the
// time it stored a message, so there the function throttles (429) until the
// oldest record of a batch is 40 s old and each scenario takes about 65 s
// of real time (they run in parallel with the rest of the contract, whose
// record-age expiry already waits 60 s).
const (
	ageLimit      = 60 * time.Second // max_record_age
	ageBackdate   = 45 * time.Second // how old Kafka records are stamped
	ageThrottleTo = 40 * time.Second // the function answers 429 until the oldest record of a batch is this old
)

// stamps returns the oldest and newest record timestamps of b.
func (b *fnBatch) stamps() (oldest, newest time.Time) {
	oldest, newest = b.Records[0].Timestamp, b.Records[0].Timestamp
	for _, r := range b.Records {
		if r.Timestamp.Before(oldest) {
			oldest = r.Timestamp
		}
		if r.Timestamp.After(newest) {
			newest = r.Timestamp
		}
	}
	return oldest, newest
}

// ageGate answers 429 while the oldest record of b is younger than
// ageThrottleTo, and reports whether it did.
func ageGate(b *fnBatch) (fnAnswer, bool) {
	if oldest, _ := b.stamps(); b.At.Sub(oldest) < ageThrottleTo {
		return fnAnswer{Status: http.StatusTooManyRequests, RetryAfter: "1"}, true
	}
	return fnAnswer{}, false
}

// startAged starts sluice over env and has the records produce writes
// consumed by it: on a broker that can backdate, sluice starts first and
// the records are produced once it owns the partition (produce gets the
// time to stamp them relative to); elsewhere they are produced first.
func startAged(t *testing.T, env streamEnv, cfg string, produce func(now time.Time) []produced) (*sluiceProc, []produced) {
	t.Helper()
	if !env.CanBackdate() {
		recs := produce(time.Time{})
		return startSluice(t, "sluice", cfg), recs
	}
	p := startSluice(t, "sluice", cfg)
	eventually(t, 60*time.Second, "sluice owns the partition", func() error {
		views, err := p.shards()
		if err == nil && len(views) == 0 {
			err = errors.New("no shard yet")
		}
		return err
	})
	return p, produce(time.Now().Truncate(time.Millisecond))
}

// sentYoung checks that no batch carried a record already past
// max_record_age when the function received it.
func sentYoung(t *testing.T, batches []*fnBatch) {
	t.Helper()
	for _, b := range batches {
		for _, r := range b.Records {
			if !b.At.Before(r.Timestamp.Add(ageLimit)) {
				t.Errorf("batch %d (attempt %d, status %d) sent record %d at age %s, past max_record_age %s",
					b.Seq, b.Attempt, b.Status, r.Offset, b.At.Sub(r.Timestamp).Round(time.Millisecond), ageLimit)
			}
		}
	}
}

// zeroMetric checks that a counter sample is absent or 0.
func zeroMetric(t *testing.T, p *sluiceProc, name string, labels map[string]string) {
	t.Helper()
	if n, err := p.metric(name, labels); err == nil && n != 0 {
		t.Errorf("%s%v = %v, want 0", name, labels, n)
	}
}

// contractInvocationOutlivesRecordAge: an invocation that is still running
// when its records reach max_record_age is not cut short: the function's
// answer (200, 3 s after the records passed 60 s) counts, the records are
// delivered and committed, and nothing is dead-lettered. (Before the fix the
// record age also bounded the running invocation: it was cut, counted as a
// timeout, and the records were dead-lettered as RecordAgeExceeded although
// the function had handled them.)
func contractInvocationOutlivesRecordAge(t *testing.T, be streamBackend) {
	env := be.Setup(t, 1)
	fn := newFnServer(t, func(b *fnBatch) fnAnswer {
		if a, ok := ageGate(b); ok {
			return a
		}
		_, newest := b.stamps() // answer once every record is past its age
		return fnAnswer{Sleep: max(0, newest.Add(ageLimit+3*time.Second).Sub(b.At))}
	})
	source := uniqueName(t, "src")
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": 10, "max_record_age": "60s", "max_retry_attempts": 2})
	p, recs := startAged(t, env, cfg, func(now time.Time) []produced {
		var o produceOpts
		if !now.IsZero() {
			o.Timestamp = func(int) time.Time { return now.Add(-ageBackdate) }
		}
		return env.Produce(t, 3, o)
	})

	waitDelivered(t, fn, len(recs), time.Until(recs[0].Timestamp.Add(ageLimit))+60*time.Second)
	eventually(t, 30*time.Second, "the partition is committed to its end", func() error { return env.AllCommitted(t, source) })

	batches := fn.snapshot()
	sentYoung(t, batches)
	var invoked []*fnBatch // the batches not answered 429
	for _, b := range batches {
		if b.Status != http.StatusTooManyRequests {
			invoked = append(invoked, b)
		}
	}
	if len(invoked) != 1 || invoked[0].Attempt != 1 || len(invoked[0].Records) != len(recs) {
		t.Fatalf("%d invocations besides the throttled tries, want one (attempt 1, all %d records): %+v", len(invoked), len(recs), invoked)
	}
	if n, err := p.metric("sluice_invocations_total", map[string]string{"function": "fn", "outcome": "success"}); err != nil || n != 1 {
		t.Errorf("sluice_invocations_total{outcome=\"success\"} = %v (%v), want 1", n, err)
	}
	zeroMetric(t, p, "sluice_invocations_total", map[string]string{"function": "fn", "outcome": "timeout"})
	zeroMetric(t, p, "sluice_dead_letters_total", map[string]string{"source": source, "condition": "RecordAgeExceeded"})
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	checkDeliveries(t, fn.snapshot(), recs, nil)
	if dl := env.DeadLetters(t); len(dl) != 0 {
		t.Errorf("%d records dead-lettered (first %s), want none: the function answered 200", len(dl), dl[0].Env.Condition)
	}
}

// contractNoRetryPastRecordAge: a batch of two old records and one 20 s
// younger fails (500) after its two old records passed max_record_age. The
// old records are dead-lettered as RecordAgeExceeded after that one attempt
// and never sent again; the young one alone is retried as attempt 2 and
// delivered. No batch ever carries a record past its max age.
func contractNoRetryPastRecordAge(t *testing.T, be streamBackend) {
	env := be.Setup(t, 1)
	failed := false // guarded by the server's lock
	fn := newFnServer(t, func(b *fnBatch) fnAnswer {
		if a, ok := ageGate(b); ok {
			return a
		}
		if !failed {
			failed = true
			// Answer once the old records are 62 s old (the young one 42 s).
			oldest, _ := b.stamps()
			return fnAnswer{Status: http.StatusInternalServerError, Sleep: max(0, oldest.Add(ageLimit+2*time.Second).Sub(b.At))}
		}
		return fnAnswer{}
	})
	source := uniqueName(t, "src")
	cfg := env.Config(t, source, fn.URL(), map[string]any{"batch_size": 10, "max_record_age": "60s", "max_retry_attempts": 2})
	p, recs := startAged(t, env, cfg, func(now time.Time) []produced {
		if !now.IsZero() {
			return env.Produce(t, 3, produceOpts{Timestamp: func(seq int) time.Time {
				if seq < 2 {
					return now.Add(-ageBackdate)
				}
				return now.Add(-ageBackdate + 20*time.Second)
			}})
		}
		recs := env.Produce(t, 2, produceOpts{})
		time.Sleep(20 * time.Second) // the third record is 20 s younger
		return append(recs, env.Produce(t, 1, produceOpts{First: 2})...)
	})
	old, young := recs[:2], recs[2]

	waitDelivered(t, fn, 1, time.Until(old[0].Timestamp.Add(ageLimit))+60*time.Second)
	var letters []deadLetter
	eventually(t, 30*time.Second, "the old records are dead-lettered", func() error {
		if letters = env.DeadLetters(t); len(letters) < len(old) {
			return fmt.Errorf("%d dead letters, want %d", len(letters), len(old))
		}
		return nil
	})
	eventually(t, 30*time.Second, "the partition is committed to its end", func() error { return env.AllCommitted(t, source) })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	batches := fn.snapshot()
	sentYoung(t, batches)
	var invoked []*fnBatch
	for _, b := range batches {
		if b.Status != http.StatusTooManyRequests {
			invoked = append(invoked, b)
		}
	}
	if len(invoked) != 2 {
		t.Fatalf("%d invocations besides the throttled tries, want 2 (the failed batch, the young record's retry): %+v", len(invoked), invoked)
	}
	if b := invoked[0]; b.Status != http.StatusInternalServerError || b.Attempt != 1 || len(b.Records) != 3 {
		t.Errorf("first invocation: status %d, attempt %d, %d records; want 500, 1, all 3", b.Status, b.Attempt, len(b.Records))
	}
	if b := invoked[1]; b.Status != http.StatusOK || b.Attempt != 2 || len(b.Records) != 1 || b.Records[0].Offset != young.Offset {
		t.Errorf("the retry: status %d, attempt %d, offsets %v; want 200, attempt 2, only the young record %d", b.Status, b.Attempt, b.offsets(), young.Offset)
	}
	letters = env.DeadLetters(t)
	if len(letters) != len(old) {
		t.Errorf("%d dead letters, want %d (the old records)", len(letters), len(old))
	}
	for _, dl := range letters {
		e := dl.Env
		if e.Condition != event.RecordAgeExceeded || e.Attempts != 1 || e.LastError.Status != http.StatusInternalServerError {
			t.Errorf("record %d dead-lettered with %s after %d attempts, last error %+v; want RecordAgeExceeded after 1, the 500",
				e.Record.Offset, e.Condition, e.Attempts, e.LastError)
		}
		if e.Record.Offset == young.Offset {
			t.Errorf("the young record %d was dead-lettered", young.Offset)
		}
	}
	skip := map[producedKey]bool{}
	for _, r := range old {
		skip[producedKey{r.Partition, r.Offset}] = true
	}
	checkDeliveries(t, batches, recs, skip)
}
