package kafka

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// asyncCall is one invocation an asyncFake saw.
type asyncCall struct {
	rec     event.Record
	attempt int
	at      time.Time
}

// asyncFake is an AsyncDeliverer answering with behave, and recording each
// call; and a DeadLetterer recording each letter.
type asyncFake struct {
	behave func(rec event.Record, attempt int) event.Result

	mu       sync.Mutex
	calls    map[int64][]asyncCall // by original offset
	ok       map[[2]int64]int      // successful deliveries by original partition and offset
	letters  []event.DeadLetter
	storedAt []time.Time // when each letter was stored
}

func newAsyncFake(behave func(rec event.Record, attempt int) event.Result) *asyncFake {
	return &asyncFake{behave: behave, calls: map[int64][]asyncCall{}, ok: map[[2]int64]int{}}
}

func (f *asyncFake) Deliver(_ context.Context, rec event.Record, attempt int, _ time.Time) event.Result {
	f.mu.Lock()
	f.calls[rec.Offset] = append(f.calls[rec.Offset], asyncCall{rec: rec, attempt: attempt, at: time.Now()})
	f.mu.Unlock()
	res := f.behave(rec, attempt)
	if res.Outcome == event.Delivered {
		f.mu.Lock()
		f.ok[[2]int64{int64(rec.Partition), rec.Offset}]++
		f.mu.Unlock()
	}
	return res
}

func (f *asyncFake) deliveredCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.ok)
}

func (f *asyncFake) DeadLetter(_ context.Context, dls []event.DeadLetter) error {
	f.mu.Lock()
	f.letters = append(f.letters, dls...)
	for range dls {
		f.storedAt = append(f.storedAt, time.Now())
	}
	f.mu.Unlock()
	return nil
}

func (f *asyncFake) deadLetters() []event.DeadLetter {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.letters)
}

func (f *asyncFake) callsOf(off int64) []asyncCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls[off])
}

func asyncSourceConfig(topic string, attempts int, maxAge time.Duration) consumer.SourceConfig {
	c := consumer.DefaultSourceConfig(consumer.ModeAsync)
	c.Topic, c.Function = topic, "fn"
	c.MaxRetryAttempts = attempts
	c.MaxEventAge = maxAge
	c.RetryBackoff = consumer.Backoff{Initial: 20 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2}
	return c
}

// testAsyncOpts returns AsyncOptions against kfake: short retry tiers and
// group timers.
func testAsyncOpts(f *asyncFake, group string) AsyncOptions {
	return AsyncOptions{
		Group: group, Deliverer: f, DeadLetterer: f, Logger: quietLogger(),
		RetryTiers:   []time.Duration{20 * time.Millisecond, 200 * time.Millisecond},
		FetchMaxWait: 100 * time.Millisecond,
		ClientOpts: []kgo.Opt{
			kgo.HeartbeatInterval(100 * time.Millisecond),
			kgo.SessionTimeout(6 * time.Second),
			kgo.RebalanceTimeout(10 * time.Second),
		},
	}
}

func runAsync(t *testing.T, a *Async) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- a.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

var fail500 = event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"}}

// A function that always fails: each event is tried 1 + max_retry_attempts
// times with attempts 1, 2, 3, then dead-lettered as RetryAttemptsExhausted
// with its original coordinates; the group commits the source topic and the
// retry topics to their ends.
func TestAsyncRetriesThenDeadLetters(t *testing.T) {
	const n = 20
	seeds := newCluster(t, 2, "orders")
	produce(t, seeds, "orders", 2, n/2)
	f := newAsyncFake(func(event.Record, int) event.Result { return fail500 })
	a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, asyncSourceConfig("orders", 2, time.Hour), testAsyncOpts(f, "g"))
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, a)

	waitFor(t, 20*time.Second, "every event dead-lettered", func() bool { return len(f.deadLetters()) >= n })
	seen := map[[2]int64]bool{}
	for _, dl := range f.deadLetters() {
		r := dl.Record
		k := [2]int64{int64(r.Partition), r.Offset}
		if seen[k] {
			t.Errorf("event %d@%d dead-lettered twice", r.Partition, r.Offset)
		}
		seen[k] = true
		if dl.Condition != event.RetryAttemptsExhausted || dl.Attempts != 3 || dl.LastError.Status != 500 {
			t.Errorf("dead letter %s attempts %d error %+v, want RetryAttemptsExhausted, 3, status 500", dl.Condition, dl.Attempts, dl.LastError)
		}
		if r.Topic != "orders" || r.Timestamp.IsZero() || dl.Mode != "async" || dl.Source != "orders" {
			t.Errorf("dead letter record %s/%d@%d ts %v mode %s: want the original coordinates", r.Topic, r.Partition, r.Offset, r.Timestamp, dl.Mode)
		}
		for _, h := range r.Headers {
			if len(h.Key) >= len(retryHeaderPrefix) && h.Key[:len(retryHeaderPrefix)] == retryHeaderPrefix {
				t.Errorf("dead letter carries the internal header %s", h.Key)
			}
		}
		if !dl.FirstAttemptAt.Before(dl.LastAttemptAt) {
			t.Errorf("firstAttemptAt %v not before lastAttemptAt %v", dl.FirstAttemptAt, dl.LastAttemptAt)
		}
	}
	// Calls per original (partition, offset): exactly attempts 1, 2, 3.
	f.mu.Lock()
	per := map[[2]int64][]int{}
	for _, cs := range f.calls {
		for _, c := range cs {
			k := [2]int64{int64(c.rec.Partition), c.rec.Offset}
			per[k] = append(per[k], c.attempt)
		}
	}
	f.mu.Unlock()
	if len(per) != n {
		t.Errorf("%d events invoked, want %d", len(per), n)
	}
	for k, atts := range per {
		if !slices.Equal(atts, []int{1, 2, 3}) {
			t.Errorf("event %v invoked with attempts %v, want [1 2 3]", k, atts)
		}
	}
	waitFor(t, 10*time.Second, "source topic committed to its end", func() bool {
		c := committed(t, seeds, "g", "orders")
		return c[0] == n/2 && c[1] == n/2
	})
	// Every retry record written was committed past (2 retries per event).
	waitFor(t, 10*time.Second, "retry topics committed to their ends", func() bool {
		total := int64(0)
		for _, rt := range a.RetryTopics() {
			for _, o := range committed(t, seeds, "g", rt) {
				total += o
			}
		}
		return total == 2*n
	})
}

// Throttles never consume attempts: an event throttled until it is too old
// is dead-lettered as EventAgeExceeded with 0 attempts, every try being
// attempt 1; a Retry-After is waited out.
func TestAsyncThrottledUntilExpired(t *testing.T) {
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, 3)
	const maxAge = 1500 * time.Millisecond
	f := newAsyncFake(func(event.Record, int) event.Result {
		return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: 300 * time.Millisecond,
			Error: event.ErrorInfo{Kind: "throttled", Status: 429, Message: "slow down"}}
	})
	a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, asyncSourceConfig("orders", 2, maxAge), testAsyncOpts(f, "g"))
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, a)
	waitFor(t, 20*time.Second, "3 dead letters", func() bool { return len(f.deadLetters()) >= 3 })
	f.mu.Lock()
	storedAt := slices.Clone(f.storedAt)
	f.mu.Unlock()
	for i, dl := range f.deadLetters() {
		if dl.Condition != event.EventAgeExceeded || dl.Attempts != 0 || dl.LastError.Status != 429 {
			t.Errorf("dead letter %s attempts %d error %+v, want EventAgeExceeded, 0, 429", dl.Condition, dl.Attempts, dl.LastError)
		}
		if age := storedAt[i].Sub(dl.Record.Timestamp); age < maxAge-10*time.Millisecond || age > maxAge+time.Second {
			t.Errorf("dead-lettered at age %v, want just after max_event_age %v", age, maxAge)
		}
		calls := f.callsOf(dl.Record.Offset)
		if len(calls) < 2 || len(calls) > 6 {
			t.Errorf("offset %d: %d tries in %v with Retry-After 300ms, want 2..6", dl.Record.Offset, len(calls), maxAge)
		}
		for i, c := range calls {
			if c.attempt != 1 {
				t.Errorf("offset %d: try %d was attempt %d, want 1 (throttles are not attempts)", dl.Record.Offset, i, c.attempt)
			}
			if i > 0 && c.at.Sub(calls[i-1].at) < 290*time.Millisecond {
				t.Errorf("offset %d: tries %v apart, want at least the Retry-After (300ms)", dl.Record.Offset, c.at.Sub(calls[i-1].at))
			}
		}
	}
}

// A restart keeps the attempt count: the first process fails every event
// once and stops; the second continues at attempt 2.
func TestAsyncRestartKeepsAttempts(t *testing.T) {
	const n = 5
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, n)
	cfg := asyncSourceConfig("orders", 2, time.Hour)
	cfg.RetryBackoff = consumer.Backoff{Initial: 500 * time.Millisecond, Max: 500 * time.Millisecond, Multiplier: 1}
	f := newAsyncFake(func(event.Record, int) event.Result { return fail500 })
	opts := testAsyncOpts(f, "g")
	opts.RetryTiers = []time.Duration{100 * time.Millisecond}
	a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := runAsync(t, a)
	// Every event failed once and is in the retry topic: the source topic
	// is committed to its end only then.
	waitFor(t, 10*time.Second, "source topic committed", func() bool { return committed(t, seeds, "g", "orders")[0] == n })
	stop()
	for o := range int64(n) {
		if c := f.callsOf(o); len(c) != 1 {
			t.Fatalf("offset %d: %d calls before the restart, want 1 (the retry was due in 500ms)", o, len(c))
		}
	}

	b, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, cfg, opts)
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, b)
	waitFor(t, 20*time.Second, "every event dead-lettered", func() bool { return len(f.deadLetters()) >= n })
	// Nothing more can come once the group committed the source topic and
	// every retry topic to its end.
	waitFor(t, 20*time.Second, "source and retry topics committed to their ends", func() bool {
		return committedToEnd(t, seeds, "g", append([]string{"orders"}, b.RetryTopics()...)...)
	})
	for o := range int64(n) {
		var atts []int
		for _, c := range f.callsOf(o) {
			atts = append(atts, c.attempt)
		}
		if !slices.Equal(atts, []int{1, 2, 3}) {
			t.Errorf("offset %d: attempts %v across the restart, want [1 2 3]", o, atts)
		}
	}
	if len(f.deadLetters()) != n {
		t.Errorf("%d dead letters, want %d", len(f.deadLetters()), n)
	}
}

// A permanent error is dead-lettered at once; a success is not retried; a
// success after failures counts its attempts.
func TestAsyncOutcomes(t *testing.T) {
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, 3)
	f := newAsyncFake(func(rec event.Record, attempt int) event.Result {
		switch {
		case rec.Offset == 0:
			return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 400, Message: "bad"}}
		case rec.Offset == 1 && attempt < 2:
			return fail500
		default:
			return event.Result{Outcome: event.Delivered}
		}
	})
	a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, asyncSourceConfig("orders", 2, time.Hour), testAsyncOpts(f, "g"))
	if err != nil {
		t.Fatal(err)
	}
	runAsync(t, a)
	waitFor(t, 10*time.Second, "everything committed", func() bool { return committed(t, seeds, "g", "orders")[0] == 3 })
	waitFor(t, 10*time.Second, "offset 1 delivered on attempt 2", func() bool { return len(f.callsOf(1)) == 2 })
	dls := f.deadLetters()
	if len(dls) != 1 || dls[0].Condition != event.PermanentError || dls[0].Record.Offset != 0 || dls[0].Attempts != 1 {
		t.Fatalf("dead letters %+v, want offset 0 PermanentError after 1 attempt", dls)
	}
	if c := f.callsOf(2); len(c) != 1 {
		t.Errorf("offset 2: %d calls, want 1", len(c))
	}
}

func TestTierFor(t *testing.T) {
	tiers, err := retryTopics("orders", "my source", []time.Duration{time.Second, 10 * time.Second, time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if tiers[0].topic != "orders.sluice-retry.my_source.1s" || tiers[2].topic != "orders.sluice-retry.my_source.1m0s" && tiers[2].topic != "orders.sluice-retry.my_source.1m" {
		t.Errorf("topics %v", tiers)
	}
	for _, c := range []struct {
		d    time.Duration
		want int
	}{{0, 0}, {100 * time.Millisecond, 0}, {time.Second, 0}, {9 * time.Second, 0}, {10 * time.Second, 1}, {59 * time.Second, 1}, {time.Hour, 2}} {
		if got := tierFor(tiers, c.d); got != c.want {
			t.Errorf("tierFor(%v) = %d, want %d", c.d, got, c.want)
		}
	}
	if _, err := retryTopics("orders", "x", []time.Duration{time.Minute, time.Second}); err == nil {
		t.Error("decreasing tiers accepted")
	}
	long := string(make([]byte, 240))
	if _, err := retryTopics(long, "x", DefaultRetryTiers); err == nil {
		t.Error("a retry topic name over 249 characters accepted")
	}
}

func TestRetryRecordRoundTrip(t *testing.T) {
	ts := time.UnixMilli(1_700_000_000_123)
	ev := retryEvent{
		rec: event.Record{Topic: "orders", Partition: 3, Offset: 42, Timestamp: ts, Key: []byte("k"), Value: []byte("v"),
			Headers: []event.Header{{Key: "tenant", Value: []byte("a")}}},
		attempts: 2, throttles: 5, first: ts.Add(time.Second), last: ts.Add(2 * time.Second), due: ts.Add(3 * time.Second),
		lastError: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"},
	}
	kr := retryRecord(&ev, "src", "orders.sluice-retry.src.1s")
	kr.Partition, kr.Offset = 0, 7
	got, err := eventOf(kr, "src")
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got.rec) != fmt.Sprint(ev.rec) || got.attempts != 2 || got.throttles != 5 || !got.first.Equal(ev.first) ||
		!got.last.Equal(ev.last) || !got.due.Equal(ev.due) || got.lastError != ev.lastError {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, ev)
	}
	// Another source's record, or broken headers: a fresh event at the
	// record's own coordinates, with an error to log.
	if _, err := eventOf(kr, "other"); err == nil {
		t.Error("another source's retry record accepted")
	}
	kr.Headers = append(kr.Headers[:0:0], kgo.RecordHeader{Key: hdrSource, Value: []byte("src")}, kgo.RecordHeader{Key: hdrAttempts, Value: []byte("x")})
	bad, err := eventOf(kr, "src")
	if err == nil || bad.rec.Topic != kr.Topic || bad.rec.Offset != 7 || bad.attempts != 0 {
		t.Errorf("broken headers: %+v, %v; want a fresh event at the retry record's coordinates and an error", bad, err)
	}
	// A plain record is a fresh event.
	plain, err := eventOf(&kgo.Record{Topic: "orders", Offset: 1, Timestamp: ts}, "src")
	if err != nil || plain.attempts != 0 || !plain.due.IsZero() || plain.rec.Offset != 1 {
		t.Errorf("plain record: %+v, %v", plain, err)
	}
}

// A retry partition starts a record only once it is due, in offset order:
// it pauses while its head is not due, a record behind a later head waits
// for it (head of line), an event found expired when due is dead-lettered
// then, and the mark never passes a record that is not finished. The
// client is replaced by hooks so the clock is synctest's.
func TestAsyncRetryPartitionWaitsForDue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newAsyncFake(func(event.Record, int) event.Result { return event.Result{Outcome: event.Delivered} })
		const maxAge = time.Minute
		a, err := NewAsync("orders", consumer.KafkaConfig{Seeds: []string{"127.0.0.1:1"}},
			asyncSourceConfig("orders", 2, maxAge), testAsyncOpts(f, "g"))
		if err != nil {
			t.Fatal(err)
		}
		var (
			mu     sync.Mutex
			pauses []bool
			marks  []int64
		)
		a.hooks = &asyncHooks{
			pause: func(_ topicPartition, paused bool) { mu.Lock(); pauses = append(pauses, paused); mu.Unlock() },
			mark:  func(kr *kgo.Record) { mu.Lock(); marks = append(marks, kr.Offset); mu.Unlock() },
		}
		state := func() ([]bool, []int64) {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(pauses), slices.Clone(marks)
		}
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		topic := a.RetryTopics()[0]
		pt := &apart{tp: topicPartition{topic, 0}, retry: true, ctx: ctx, cancel: cancel}
		a.workCtx = ctx

		start := time.Now()
		// Original offsets 100..103, due in 2s, 1s (behind the first: head
		// of line), 5s, and 6s for an event whose max_event_age passes at
		// 4s (dead-lettered when read, at 6s).
		dues := []time.Duration{2 * time.Second, time.Second, 5 * time.Second, 6 * time.Second}
		var krs []*kgo.Record
		for i, d := range dues {
			ev := retryEvent{
				rec:      event.Record{Topic: "orders", Offset: int64(100 + i), Timestamp: start, Value: []byte("v")},
				attempts: 1, first: start, last: start, due: start.Add(d),
			}
			if i == 3 {
				ev.rec.Timestamp = start.Add(4*time.Second - maxAge)
			}
			kr := retryRecord(&ev, "orders", topic)
			kr.Offset = int64(i)
			krs = append(krs, kr)
		}
		a.mu.Lock()
		a.feedLocked(pt, krs)
		a.mu.Unlock()

		synctest.Wait()
		f.mu.Lock()
		calls := len(f.calls)
		f.mu.Unlock()
		if p, m := state(); !slices.Equal(p, []bool{true}) || len(m) != 0 || calls != 0 {
			t.Fatalf("at 0s: pauses %v, marks %v, %d calls; want paused, nothing started", p, m, calls)
		}
		time.Sleep(2 * time.Second)
		synctest.Wait()
		if c0, c1 := f.callsOf(100), f.callsOf(101); len(c0) != 1 || len(c1) != 1 || c0[0].at.Sub(start) != 2*time.Second ||
			c1[0].at.Sub(start) != 2*time.Second || c0[0].attempt != 2 {
			t.Fatalf("at 2s: calls %v %v; want offsets 100 and 101 at 2s, attempt 2", c0, c1)
		}
		if _, m := state(); m[len(m)-1] != 1 {
			t.Fatalf("at 2s: marks %v, want up to retry offset 1", m)
		}
		time.Sleep(3 * time.Second)
		synctest.Wait()
		if c := f.callsOf(102); len(c) != 1 || c[0].at.Sub(start) != 5*time.Second {
			t.Fatalf("at 5s: calls of 102 %v, want one at 5s", c)
		}
		if p, m := state(); m[len(m)-1] != 2 || !slices.Equal(p, []bool{true}) {
			t.Fatalf("at 5s: pauses %v, marks %v; want still paused (103 not due), marked up to 2", p, m)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		dls := f.deadLetters()
		if len(dls) != 1 || dls[0].Condition != event.EventAgeExceeded || dls[0].Record.Offset != 103 || dls[0].Attempts != 1 {
			t.Fatalf("at 6s: dead letters %+v, want 103 EventAgeExceeded after 1 attempt", dls)
		}
		if len(f.callsOf(103)) != 0 {
			t.Errorf("the expired event was invoked")
		}
		if p, m := state(); m[len(m)-1] != 3 || !slices.Equal(p, []bool{true, false}) {
			t.Fatalf("at 6s: pauses %v, marks %v; want resumed, marked up to 3", p, m)
		}
	})
}

// A second member joins while events wait in retry topics and fail or
// succeed: every event is delivered (on its second attempt), none is
// dead-lettered, and the source topic is committed to its end. The join
// happens mid-stream by construction: half the events are produced, a
// delivers some, b joins and is assigned partitions, and only then is the
// other half produced; b must deliver some of them before it is stopped.
func TestAsyncRebalanceLosesNothing(t *testing.T) {
	const parts, n = 2, 200
	seeds := newCluster(t, parts, "orders")
	produce(t, seeds, "orders", parts, n/parts/2)
	behave := func(_ event.Record, attempt int) event.Result {
		if attempt == 1 {
			return fail500
		}
		return event.Result{Outcome: event.Delivered}
	}
	fa, fb := newAsyncFake(behave), newAsyncFake(behave) // what a and b delivered
	delivered := func() int {
		fa.mu.Lock()
		defer fa.mu.Unlock()
		fb.mu.Lock()
		defer fb.mu.Unlock()
		all := maps.Clone(fa.ok)
		maps.Copy(all, fb.ok)
		return len(all)
	}
	cfg := asyncSourceConfig("orders", 2, time.Hour)
	cfg.RetryBackoff = consumer.Backoff{Initial: 300 * time.Millisecond, Max: 300 * time.Millisecond, Multiplier: 1}
	newMember := func(f *asyncFake) *Async {
		opts := testAsyncOpts(f, "g")
		opts.Concurrency = 16 // several poll rounds, so the join lands mid-way
		m, err := NewAsync("orders", consumer.KafkaConfig{Seeds: seeds}, cfg, opts)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	a := newMember(fa)
	runAsync(t, a)
	waitFor(t, 10*time.Second, "some events delivered", func() bool { return delivered() >= 10 })
	b := newMember(fb)
	stopB := runAsync(t, b)
	waitFor(t, 30*time.Second, "b is assigned a partition of the source topic", func() bool {
		b.mu.Lock()
		defer b.mu.Unlock()
		for tp := range b.parts {
			if tp.topic == "orders" {
				return true
			}
		}
		return false
	})
	// The second half: offsets n/parts/2 .. n/parts-1 of each partition.
	produce(t, seeds, "orders", parts, n/parts/2)
	waitFor(t, 30*time.Second, "every event delivered", func() bool { return delivered() == n })
	if fb.deliveredCount() == 0 {
		t.Fatalf("b delivered nothing although it owned a partition when the second half was produced")
	}
	stopB() // and its partitions move back to a
	waitFor(t, 20*time.Second, "source topic committed to its end", func() bool {
		c := committed(t, seeds, "g", "orders")
		return c[0] == n/parts && c[1] == n/parts
	})
	if dls := append(fa.deadLetters(), fb.deadLetters()...); len(dls) != 0 {
		t.Errorf("%d dead letters, want none (first: %+v)", len(dls), dls[0])
	}
}

// committedToEnd reports whether group committed every partition of topics
// to its end offset: nothing is left for the group to read.
func committedToEnd(t testing.TB, seeds []string, group string, topics ...string) bool {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ends, err := kadm.NewClient(cl).ListEndOffsets(t.Context(), topics...)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatalf("end offsets of %v: %v", topics, err)
	}
	ok := true
	ends.Each(func(o kadm.ListedOffset) {
		if committed(t, seeds, group, o.Topic)[o.Partition] != o.Offset {
			ok = false
		}
	})
	return ok
}
