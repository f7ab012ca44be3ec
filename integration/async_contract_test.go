package integration

// The async contract (SPEC §2.2), written once and run on every broker, as
// contract_test.go does for stream sources: each scenario runs `sluice run`
// as a separate process against the real broker and an HTTP function that
// receives each event's payload as its body, and checks the invocations,
// the dead letters, the metrics and what the broker holds at the end.
//
//   - RetryExhausted: a function answering 500, max_retry_attempts 2,
//     retry_backoff 2 s × 2: each event is invoked exactly 3 times (attempts
//     1, 2, 3, at least 2 s then 4 s apart), then dead-lettered once as
//     RetryAttemptsExhausted with its original coordinates;
//   - ThrottledUntilEventAge: a function answering 429 (Retry-After 1)
//     forever, max_event_age 60 s: every try is attempt 1, at least the
//     Retry-After apart, and each event is dead-lettered as EventAgeExceeded
//     with 0 attempts about 60 s after it was stored;
//   - Kill9KeepsAttempts: sluice is killed (SIGKILL) once every event's first
//     failed attempt is recorded, and restarted: exactly 3 invocations per
//     event across both processes, then RetryAttemptsExhausted.
//
// A scenario that needs "nothing more happens" waits for the broker to hold
// nothing more for the source (asyncEnv.Settled), never for a fixed time.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

type asyncBackend interface {
	Name() string
	// Setup prepares a fresh topic or stream name with the given partitions
	// (Kafka; a JetStream async source has none) and a dead-letter
	// destination, all removed when the test ends.
	Setup(t *testing.T, partitions int) asyncEnv
}

// asyncEnv is one async source's topic or stream.
type asyncEnv interface {
	// Topic is the topic or stream, as dead-letter envelopes name it.
	Topic() string
	// Config writes the configuration of async source `source` invoking
	// fnURL, dead letters to this environment's destination, with further
	// source settings.
	Config(t *testing.T, source, fnURL string, settings map[string]any) string
	// ShortenFailover makes Config's configurations hand a killed
	// process's work over after seconds (failover_test.go).
	ShortenFailover()
	// Publish writes n events with distinct values (after sluice started:
	// on JetStream sluice creates the stream) and returns them with the
	// time the broker stamped each.
	Publish(t *testing.T, n int) []produced
	// CheckRecord checks a dead letter's record against the event's
	// broker coordinates.
	CheckRecord(t *testing.T, ev produced, r retention.EnvelopeRecord)
	// DeadLetters returns every dead letter written so far.
	DeadLetters(t *testing.T) []deadLetter
	// Recorded returns nil once n events' failed first attempts are
	// recorded where a restarted process finds them (Kafka: in a retry
	// topic, the source committed to its end; JetStream: in the retry-state
	// bucket).
	Recorded(t *testing.T, source string, n int) error
	// Settled returns nil once the broker holds nothing more for source
	// (Kafka: the source and retry topics committed to their ends;
	// JetStream: nothing pending or unacknowledged on its consumer).
	Settled(t *testing.T, source string) error
	// DuePrecision is how much earlier than its delay a retry may come
	// because the broker carries its due time rounded (Kafka: a retry
	// record's due time is in Unix milliseconds; JetStream: 0).
	DuePrecision() time.Duration
	// CommitsBeforeRetry reports whether the source's position passes an
	// event as soon as it is safely in a retry topic (Kafka), rather than
	// once it is finished (JetStream).
	CommitsBeforeRetry() bool
}

func asyncBackends() []asyncBackend { return []asyncBackend{kafkaAsyncBackend{}, natsAsyncBackend{}} }

// TestAsyncContract runs every async scenario on every broker, in parallel.
func TestAsyncContract(t *testing.T) {
	t.Parallel()
	scenarios := []struct {
		name string
		run  func(*testing.T, asyncBackend)
	}{
		{"RetryExhausted", asyncRetryExhausted},
		{"ThrottledUntilEventAge", asyncThrottledUntilEventAge},
		{"Kill9KeepsAttempts", asyncKill9KeepsAttempts},
	}
	for _, be := range asyncBackends() {
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

// asyncCall is one invocation of the async function.
type asyncCall struct {
	At        time.Time
	Attempt   int    // Sluice-Attempt
	Source    string // Sluice-Source
	EventTime time.Time
	Status    int // the answer
}

// asyncFn is an async function (SPEC §3: the event unchanged as the body):
// it records each invocation by its body and answers with policy.
type asyncFn struct {
	srv *httptest.Server

	mu     sync.Mutex
	policy func(value string, attempt int) (status int, retryAfter string)
	calls  map[string][]asyncCall
	bad    []string
}

func newAsyncFn(t *testing.T, policy func(value string, attempt int) (int, string)) *asyncFn {
	t.Helper()
	f := &asyncFn{policy: policy, calls: map[string][]asyncCall{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		attempt, aerr := strconv.Atoi(r.Header.Get("Sluice-Attempt"))
		et, terr := time.Parse(time.RFC3339Nano, r.Header.Get("Sluice-Event-Time"))
		src := r.Header.Get("Sluice-Source")
		f.mu.Lock()
		if err := errors.Join(err, aerr, terr); err != nil || src == "" {
			f.bad = append(f.bad, fmt.Sprintf("body or header error %v, Sluice-Source %q, headers %v", err, src, r.Header))
			f.mu.Unlock()
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		status, retryAfter := f.policy(string(body), attempt)
		f.calls[string(body)] = append(f.calls[string(body)], asyncCall{At: time.Now(), Attempt: attempt, Source: src, EventTime: et, Status: status})
		f.mu.Unlock()
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(func() {
		f.srv.CloseClientConnections()
		f.srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.bad) > 0 {
			t.Errorf("the function received %d malformed requests, first: %s", len(f.bad), f.bad[0])
		}
	})
	return f
}

func (f *asyncFn) URL() string { return f.srv.URL + "/invoke" }

// snapshot returns the invocations so far, by value, in arrival order.
func (f *asyncFn) snapshot() map[string][]asyncCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]asyncCall, len(f.calls))
	for k, v := range f.calls {
		out[k] = slices.Clone(v)
	}
	return out
}

// waitAsyncLetters waits until n events are dead-lettered and returns the
// dead letters by event value (an event dead-lettered twice is an error).
func waitAsyncLetters(t *testing.T, env asyncEnv, n int, timeout time.Duration) map[string]deadLetter {
	t.Helper()
	var letters []deadLetter
	eventually(t, timeout, fmt.Sprintf("%d events are dead-lettered", n), func() error {
		if letters = env.DeadLetters(t); len(letters) < n {
			return fmt.Errorf("%d dead letters", len(letters))
		}
		return nil
	})
	out := map[string]deadLetter{}
	for _, dl := range letters {
		ev := string(dl.Env.Record.Value)
		if _, dup := out[ev]; dup {
			t.Errorf("%s dead-lettered twice", ev)
		}
		out[ev] = dl
	}
	return out
}

// checkAsyncLetter checks the envelope and headers of an async dead letter
// of event ev.
func checkAsyncLetter(t *testing.T, env asyncEnv, source string, ev produced, dl deadLetter, cond event.Condition, attempts int) {
	t.Helper()
	e := dl.Env
	if e.Source != source || e.Function != "fn" || e.Mode != "async" || e.Condition != cond || e.Attempts != attempts || e.Replays != 0 {
		t.Errorf("%s: envelope source %q function %q mode %q condition %q attempts %d replays %d, want %q fn async %s %d 0",
			ev.Value, e.Source, e.Function, e.Mode, e.Condition, e.Attempts, e.Replays, source, cond, attempts)
	}
	r := e.Record
	if r.Topic != env.Topic() || string(r.Value) != ev.Value || !r.Timestamp.Equal(ev.Timestamp) {
		t.Errorf("%s: envelope record %s %q at %s, want the original %s %q at %s", ev.Value, r.Topic, r.Value, r.Timestamp, env.Topic(), ev.Value, ev.Timestamp)
	}
	env.CheckRecord(t, ev, r)
	if dl.Headers[retention.HeaderCondition] != string(cond) || dl.Headers[retention.HeaderSource] != source || dl.Headers[retention.HeaderFunction] != "fn" {
		t.Errorf("%s: dead letter headers %v", ev.Value, dl.Headers)
	}
	if e.FirstAttemptAt.IsZero() || e.LastAttemptAt.Before(e.FirstAttemptAt) {
		t.Errorf("%s: envelope firstAttemptAt %s, lastAttemptAt %s", ev.Value, e.FirstAttemptAt, e.LastAttemptAt)
	}
}

// checkExhausted checks that every event was invoked exactly with attempts
// 1, 2, 3, at least minGaps apart and growing, and dead-lettered once as
// RetryAttemptsExhausted (last error 500) after its last attempt, and that
// nothing else was invoked or dead-lettered.
func checkExhausted(t *testing.T, env asyncEnv, source string, fn *asyncFn, want []produced, minGaps [2]time.Duration) {
	t.Helper()
	calls := fn.snapshot()
	letters := map[string]deadLetter{}
	all := env.DeadLetters(t)
	for _, dl := range all {
		ev := string(dl.Env.Record.Value)
		if _, dup := letters[ev]; dup {
			t.Errorf("%s dead-lettered twice", ev)
		}
		letters[ev] = dl
	}
	for _, ev := range want {
		cs := calls[ev.Value]
		var atts []int
		for _, c := range cs {
			atts = append(atts, c.Attempt)
			if c.Source != source {
				t.Errorf("%s: Sluice-Source %q, want %q", ev.Value, c.Source, source)
			}
		}
		if !slices.Equal(atts, []int{1, 2, 3}) {
			t.Errorf("event %s (%d@%d): invoked with attempts %v, want exactly [1 2 3] (max_retry_attempts 2)", ev.Value, ev.Partition, ev.Offset, atts)
		} else if g1, g2 := cs[1].At.Sub(cs[0].At), cs[2].At.Sub(cs[1].At); g1 < minGaps[0]-env.DuePrecision() || g2 < minGaps[1]-env.DuePrecision() || g2 <= g1 {
			t.Errorf("%s: waits between attempts %s and %s, want at least %s and %s (less %s of the broker's rounding), growing", ev.Value,
				g1, g2, minGaps[0], minGaps[1], env.DuePrecision())
		}
		dl, ok := letters[ev.Value]
		if !ok {
			t.Errorf("%s was not dead-lettered", ev.Value)
			continue
		}
		checkAsyncLetter(t, env, source, ev, dl, event.RetryAttemptsExhausted, 3)
		if dl.Env.LastError.Status != http.StatusInternalServerError {
			t.Errorf("%s: envelope lastError %+v, want status 500", ev.Value, dl.Env.LastError)
		}
		// (Kafka stamps records to the millisecond.)
		if len(cs) > 0 && dl.Timestamp.Before(cs[len(cs)-1].At.Truncate(time.Millisecond)) {
			t.Errorf("%s: dead-lettered at %s, before its last attempt at %s", ev.Value, dl.Timestamp, cs[len(cs)-1].At)
		}
	}
	if len(calls) != len(want) {
		t.Errorf("%d distinct events invoked, want %d", len(calls), len(want))
	}
	if len(all) != len(want) {
		t.Errorf("%d dead letters, want %d", len(all), len(want))
	}
}

// asyncSettings are the source settings of an async scenario.
func asyncSettings(attempts int, maxAge string, initial, maxBackoff time.Duration, multiplier float64) map[string]any {
	return map[string]any{
		"max_retry_attempts": attempts,
		"max_event_age":      maxAge,
		"retry_backoff":      map[string]any{"initial": initial.String(), "max": maxBackoff.String(), "multiplier": multiplier, "jitter": 0},
	}
}

// asyncRetryExhausted: see the top of this file. On Kafka the source topic
// is committed to its end while the events still wait in the retry topic.
func asyncRetryExhausted(t *testing.T, be asyncBackend) {
	const events = 20
	env := be.Setup(t, 2)
	fn := newAsyncFn(t, func(string, int) (int, string) { return http.StatusInternalServerError, "" })
	source := uniqueName(t, "async")
	p := startSluice(t, "sluice", env.Config(t, source, fn.URL(), asyncSettings(2, "1h", 2*time.Second, 10*time.Second, 2)))
	start := time.Now()
	want := env.Publish(t, events)

	if env.CommitsBeforeRetry() {
		// The source's offsets move to the end once every event is safely
		// in a retry topic, long before the retries are due.
		eventually(t, 30*time.Second, "every event's first attempt recorded", func() error { return env.Recorded(t, source, events) })
		waiting := 0
		for _, w := range want {
			if len(fn.snapshot()[w.Value]) < 3 {
				waiting++
			}
		}
		dls := env.DeadLetters(t)
		t.Logf("source committed to its end %v after sluice was running, with %d events still waiting to be retried, %d dead letters",
			time.Since(start).Round(time.Millisecond), waiting, len(dls))
		if waiting == 0 || len(dls) == len(want) {
			t.Errorf("when the source was committed, %d events were waiting and %d dead-lettered: want the commit while events still wait", waiting, len(dls))
		}
	}

	waitAsyncLetters(t, env, events, 90*time.Second)
	eventually(t, 30*time.Second, "the broker holds nothing more for the source", func() error { return env.Settled(t, source) })
	checkExhausted(t, env, source, fn, want, [2]time.Duration{2 * time.Second, 4 * time.Second})
	// SPEC §6: every try is a received event (1 + 2 retries each), and
	// each give-up is counted by reason.
	if v, err := p.metric("sluice_async_events_dropped_total", map[string]string{"source": source, "reason": "RetryAttemptsExhausted"}); err != nil || v != events {
		t.Errorf("sluice_async_events_dropped_total{reason=RetryAttemptsExhausted} = %v (%v), want %d", v, err, events)
	}
	if v, err := p.metric("sluice_async_events_received_total", map[string]string{"source": source}); err != nil || v != 3*events {
		t.Errorf("sluice_async_events_received_total = %v (%v), want %d", v, err, 3*events)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if n := len(env.DeadLetters(t)); n != events {
		t.Errorf("%d dead letters in the end, want %d", n, events)
	}
}

// asyncThrottledUntilEventAge: see the top of this file.
func asyncThrottledUntilEventAge(t *testing.T, be asyncBackend) {
	const (
		events = 10
		age    = 60 * time.Second
	)
	env := be.Setup(t, 1)
	fn := newAsyncFn(t, func(string, int) (int, string) { return http.StatusTooManyRequests, "1" })
	source := uniqueName(t, "async")
	p := startSluice(t, "sluice", env.Config(t, source, fn.URL(), asyncSettings(2, "60s", time.Second, 8*time.Second, 2)))
	started := time.Now()
	want := env.Publish(t, events)

	letters := waitAsyncLetters(t, env, events, age+60*time.Second)
	t.Logf("every event dead-lettered %v after sluice was running", time.Since(started).Round(time.Millisecond))
	calls := fn.snapshot()
	for _, ev := range want {
		dl, ok := letters[ev.Value]
		if !ok {
			t.Errorf("%s was not dead-lettered", ev.Value)
			continue
		}
		checkAsyncLetter(t, env, source, ev, dl, event.EventAgeExceeded, 0)
		// The last error is the function's throttle (dispatch keeps the
		// reason, not the HTTP status, of a throttle).
		if le := dl.Env.LastError; le.Kind != "throttled" || le.Status != 429 || !strings.Contains(le.Message, "FunctionThrottled") {
			t.Errorf("%s: envelope lastError %+v, want the function's throttle (kind throttled, status 429, FunctionThrottled)", ev.Value, le)
		}
		// About 60 s after it was stored: not before (1 s of slack for
		// the clocks of the producer, the broker and sluice), and not much
		// after (the last wait is cut at the event's expiry).
		if a := dl.Timestamp.Sub(ev.Timestamp); a < age-time.Second || a > age+20*time.Second {
			t.Errorf("%s: dead-lettered at age %s, want %s (+ at most 20 s)", ev.Value, a.Round(time.Millisecond), age)
		}
		cs := calls[ev.Value]
		// Retry-After 1 s over 60 s: tried again and again (not only at
		// the start and the end), at most ~60 times, never consuming an
		// attempt, never sooner than the Retry-After.
		if len(cs) < 10 || len(cs) > 62 {
			t.Errorf("%s: %d tries in %s with Retry-After 1 s, want 10..62", ev.Value, len(cs), age)
		}
		for i, c := range cs {
			if c.Attempt != 1 {
				t.Errorf("%s: try %d was attempt %d, want 1 (throttles consume no attempt)", ev.Value, i, c.Attempt)
				break
			}
			if i > 0 && c.At.Sub(cs[i-1].At) < 900*time.Millisecond {
				t.Errorf("%s: tries %d and %d only %v apart, want at least the Retry-After (1s)", ev.Value, i-1, i, c.At.Sub(cs[i-1].At))
				break
			}
		}
	}
	if len(letters) != events {
		t.Errorf("%d dead letters, want %d", len(letters), events)
	}
	if n, err := p.metric("sluice_async_events_dropped_total", map[string]string{"source": source, "reason": "EventAgeExceeded"}); err != nil || n != events {
		t.Errorf("sluice_async_events_dropped_total{reason=\"EventAgeExceeded\"} = %v (%v), want %d", n, err, events)
	}
	if n, err := p.metric("sluice_throttles_total", map[string]string{"function": "fn", "reason": "FunctionThrottled"}); err != nil || n < 5*events {
		t.Errorf("sluice_throttles_total{reason=\"FunctionThrottled\"} = %v (%v), want at least %d", n, err, 5*events)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// asyncKill9KeepsAttempts: see the top of this file. retry_backoff 4 s × 2:
// the kill comes while every event waits for its second attempt.
func asyncKill9KeepsAttempts(t *testing.T, be asyncBackend) {
	const events = 20
	env := be.Setup(t, 2)
	// The restarted process gets the work once the broker gave up on the
	// killed one: seconds, not the defaults' 30-45 s.
	env.ShortenFailover()
	fn := newAsyncFn(t, func(string, int) (int, string) { return http.StatusInternalServerError, "" })
	source := uniqueName(t, "async")
	cfg := env.Config(t, source, fn.URL(), asyncSettings(2, "1h", 4*time.Second, 20*time.Second, 2))
	p := startSluice(t, "sluice (first)", cfg)
	started := time.Now()
	want := env.Publish(t, events)

	// Kill once every event's first failed attempt is recorded where the
	// next process finds it, and before any second attempt.
	eventually(t, 30*time.Second, "every event's first attempt recorded", func() error { return env.Recorded(t, source, events) })
	p.kill()
	killedAt := time.Now()
	before := fn.snapshot()
	for _, w := range want {
		if n := len(before[w.Value]); n != 1 {
			t.Fatalf("event %s: %d invocations before the kill, want 1 (the kill came too late; the test needs a longer backoff)", w.Value, n)
		}
	}
	p2 := startSluice(t, "sluice (restarted)", cfg)
	t.Logf("restarted %s after the kill", time.Since(killedAt).Round(time.Millisecond))

	letters := waitAsyncLetters(t, env, events, 90*time.Second)
	t.Logf("every event dead-lettered %v after the first sluice was running, %v after the kill",
		time.Since(started).Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
	eventually(t, 30*time.Second, "the broker holds nothing more for the source", func() error { return env.Settled(t, source) })
	checkExhausted(t, env, source, fn, want, [2]time.Duration{4 * time.Second, 8 * time.Second})
	for _, ev := range want {
		if dl, ok := letters[ev.Value]; ok && !dl.Env.FirstAttemptAt.Before(killedAt) {
			t.Errorf("%s: envelope firstAttemptAt %s is after the kill: the first process's attempt was forgotten", ev.Value, dl.Env.FirstAttemptAt)
		}
	}
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// ---------------------------------------------------------------------------
// Kafka: retry topics

type kafkaAsyncBackend struct{}

func (kafkaAsyncBackend) Name() string { return "kafka" }

func (kafkaAsyncBackend) Setup(t *testing.T, partitions int) asyncEnv {
	t.Helper()
	e := &kafkaAsyncEnv{topic: createTopic(t, int32(partitions)), partitions: int32(partitions), dlq: deadLetterTopic(t)}
	deleteRetryTopics(t, e.topic)
	return e
}

type kafkaAsyncEnv struct {
	topic      string
	partitions int32
	dlq        string
	broker     map[string]any
}

func (e *kafkaAsyncEnv) Topic() string               { return e.topic }
func (e *kafkaAsyncEnv) ShortenFailover()            { e.broker = kafkaFastFailover }
func (e *kafkaAsyncEnv) CommitsBeforeRetry() bool    { return true }
func (e *kafkaAsyncEnv) DuePrecision() time.Duration { return time.Millisecond }

func (e *kafkaAsyncEnv) Config(t *testing.T, source, fnURL string, settings map[string]any) string {
	t.Helper()
	s := map[string]any{"mode": "async"}
	for k, v := range settings {
		s[k] = v
	}
	return writeConfig(t, runConfig{Source: source, Topic: e.topic, FunctionURL: fnURL, DeadLetters: e.dlq, Settings: s, Broker: e.broker})
}

func (e *kafkaAsyncEnv) Publish(t *testing.T, n int) []produced {
	t.Helper()
	return produce(t, e.topic, e.partitions, n, produceOpts{})
}

func (e *kafkaAsyncEnv) CheckRecord(t *testing.T, ev produced, r retention.EnvelopeRecord) {
	t.Helper()
	if r.Partition != ev.Partition || r.Offset != ev.Offset {
		t.Errorf("%s: dead letter of %d@%d, want the original %d@%d", ev.Value, r.Partition, r.Offset, ev.Partition, ev.Offset)
	}
}

func (e *kafkaAsyncEnv) DeadLetters(t *testing.T) []deadLetter {
	t.Helper()
	return readDeadLetters(t, e.dlq)
}

// Recorded: the source topic is committed to its end only once every event
// is in a retry topic.
func (e *kafkaAsyncEnv) Recorded(t *testing.T, source string, _ int) error {
	t.Helper()
	return allCommitted(t, "sluice-"+source, e.topic)
}

func (e *kafkaAsyncEnv) Settled(t *testing.T, source string) error {
	t.Helper()
	group := "sluice-" + source
	if err := allCommitted(t, group, e.topic); err != nil {
		return err
	}
	for _, rt := range retryTopics(t, e.topic) {
		if err := allCommitted(t, group, rt); err != nil {
			return fmt.Errorf("retry topic %s: %w", rt, err)
		}
	}
	return nil
}

// retryTopics lists the retry topics sluice created for topic.
func retryTopics(t *testing.T, topic string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	tds, err := kadm.NewClient(newKafkaClient(t)).ListTopics(ctx)
	if err != nil {
		t.Fatalf("list topics: %v", err)
	}
	var names []string
	for _, name := range tds.Names() {
		if strings.HasPrefix(name, topic+".sluice-retry.") {
			names = append(names, name)
		}
	}
	return names
}

// deleteRetryTopics deletes, when the test ends, the retry topics sluice
// creates for topic.
func deleteRetryTopics(t *testing.T, topic string) {
	t.Helper()
	adm := kadm.NewClient(newKafkaClient(t))
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		tds, err := adm.ListTopics(ctx)
		if err != nil {
			t.Errorf("list topics: %v", err)
			return
		}
		var names []string
		for _, name := range tds.Names() {
			if strings.HasPrefix(name, topic+".sluice-retry.") {
				names = append(names, name)
			}
		}
		if len(names) == 0 {
			return
		}
		resps, err := adm.DeleteTopics(ctx, names...)
		if err == nil {
			err = resps.Error()
		}
		if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			t.Errorf("delete retry topics %v: %v", names, err)
		}
	})
}

// ---------------------------------------------------------------------------
// JetStream: NakWithDelay and a retry-state bucket

type natsAsyncBackend struct{}

func (natsAsyncBackend) Name() string { return "nats" }

// Setup: sluice creates the source's stream, its bucket and the dead-letter
// stream; they are deleted when the test ends.
func (natsAsyncBackend) Setup(t *testing.T, _ int) asyncEnv {
	t.Helper()
	_, js := newJetStream(t)
	e := &jsAsyncEnv{js: js}
	e.stream = strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "AS"), "_"))
	e.prefix = strings.ToLower(e.stream)
	e.dlStream, e.dlPrefix = e.stream+"-DLQ", e.prefix+"-dlq"
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		names := []string{e.stream, e.dlStream}
		for _, s := range e.sources {
			names = append(names, "KV_sluice-async-"+s)
		}
		for _, s := range names {
			if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	return e
}

// jsAsyncEnv is one async source's stream, its retry-state bucket and its
// dead-letter stream.
type jsAsyncEnv struct {
	js                 jetstream.JetStream
	stream, prefix     string
	dlStream, dlPrefix string
	sources            []string       // the sources configured (their buckets are deleted at the end)
	broker             map[string]any // further brokers.bus.nats settings
}

func (e *jsAsyncEnv) Topic() string               { return e.stream }
func (e *jsAsyncEnv) ShortenFailover()            { e.broker = natsFastFailover }
func (e *jsAsyncEnv) CommitsBeforeRetry() bool    { return false }
func (e *jsAsyncEnv) DuePrecision() time.Duration { return 0 }

// Config: the async source over <prefix>.>.
func (e *jsAsyncEnv) Config(t *testing.T, source, fnURL string, settings map[string]any) string {
	t.Helper()
	e.sources = append(e.sources, source)
	src := map[string]any{
		"stream":     e.stream,
		"subject":    e.prefix + ".>",
		"mode":       "async",
		"function":   "fn",
		"on_failure": "dead",
	}
	for k, v := range settings {
		src[k] = v
	}
	return writeNATSConfig(t, fnURL, e.broker, map[string]any{source: src},
		map[string]any{"dead": map[string]any{"stream": e.dlStream, "subject": e.dlPrefix + ".>", "retention": "1h"}})
}

// Publish publishes events "event-<i>" to <prefix>.<i>; each is returned
// with its stream sequence as offset and the time the stream stored it.
func (e *jsAsyncEnv) Publish(t *testing.T, n int) []produced {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, e.stream)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]produced, 0, n)
	for i := range n {
		ev := fmt.Sprintf("event-%d", i)
		subject := fmt.Sprintf("%s.%d", e.prefix, i)
		ack, err := e.js.Publish(ctx, subject, []byte(ev), jetstream.WithExpectStream(e.stream))
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		m, err := st.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatalf("get message %d: %v", ack.Sequence, err)
		}
		out = append(out, produced{Offset: int64(ack.Sequence), Key: subject, Value: ev, Timestamp: m.Time})
	}
	return out
}

func (e *jsAsyncEnv) CheckRecord(t *testing.T, ev produced, r retention.EnvelopeRecord) {
	t.Helper()
	if r.Subject != ev.Key {
		t.Errorf("%s: dead letter of subject %q, want the original %q", ev.Value, r.Subject, ev.Key)
	}
}

func (e *jsAsyncEnv) DeadLetters(t *testing.T) []deadLetter {
	t.Helper()
	return readNATSDeadLetters(t, e.js, e.dlStream)
}

// Recorded: the retry-state bucket holds n events' attempts (written before
// the NAK, right after the answer).
func (e *jsAsyncEnv) Recorded(t *testing.T, source string, n int) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	kv, err := e.js.KeyValue(ctx, "sluice-async-"+source)
	if err != nil {
		return err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return err
	}
	got := 0
	for range keys.Keys() {
		got++
	}
	if got < n {
		return fmt.Errorf("the retry-state bucket holds %d events, want %d", got, n)
	}
	return nil
}

func (e *jsAsyncEnv) Settled(t *testing.T, source string) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	c, err := e.js.Consumer(ctx, e.stream, "sluice-"+source)
	if err != nil {
		return err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return err
	}
	if info.NumPending != 0 || info.NumAckPending != 0 {
		return fmt.Errorf("consumer %s: %d pending, %d unacknowledged", info.Name, info.NumPending, info.NumAckPending)
	}
	return nil
}
