package integration

// Acceptance tests of Kafka async sources (issue 5, SPEC §2.2): each runs
// `sluice run` as a separate process against the real Kafka broker and an
// HTTP function that receives each event's payload as its body, and checks
// the invocations, the dead letters and the consumer group's commits.

import (
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

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sluicehq/sluice/event"
)

// asyncCall is one invocation of the async function.
type asyncCall struct {
	At      time.Time
	Attempt int // Sluice-Attempt
	Status  int // the answer
}

// asyncFn is an async function: it records each invocation by its body (the
// produced value) and answers with policy.
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
		f.mu.Lock()
		if err != nil || aerr != nil || r.Header.Get("Sluice-Source") == "" || r.Header.Get("Sluice-Event-Time") == "" {
			f.bad = append(f.bad, fmt.Sprintf("body error %v, Sluice-Attempt %q, headers %v", err, r.Header.Get("Sluice-Attempt"), r.Header))
			f.mu.Unlock()
			http.Error(w, "bad request", http.StatusBadRequest)
			return
		}
		status, retryAfter := f.policy(string(body), attempt)
		f.calls[string(body)] = append(f.calls[string(body)], asyncCall{At: time.Now(), Attempt: attempt, Status: status})
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

// snapshot returns the invocations so far, by value.
func (f *asyncFn) snapshot() map[string][]asyncCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]asyncCall, len(f.calls))
	for k, v := range f.calls {
		out[k] = slices.Clone(v)
	}
	return out
}

// asyncSettings are the source settings of an async test source.
func asyncSettings(attempts int, maxAge string, backoff time.Duration) map[string]any {
	return map[string]any{
		"mode":               "async",
		"max_retry_attempts": attempts,
		"max_event_age":      maxAge,
		"retry_backoff":      map[string]any{"initial": backoff.String(), "max": backoff.String(), "multiplier": 1, "jitter": 0},
	}
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

// checkExhausted checks that every produced event was invoked exactly with
// attempts 1, 2, 3 and dead-lettered once as RetryAttemptsExhausted with
// its original coordinates.
func checkExhausted(t *testing.T, fn *asyncFn, want []produced, topic, dlq string) {
	t.Helper()
	calls := fn.snapshot()
	for _, p := range want {
		var atts []int
		for _, c := range calls[p.Value] {
			atts = append(atts, c.Attempt)
		}
		if !slices.Equal(atts, []int{1, 2, 3}) {
			t.Errorf("event %s (%d@%d): invoked with attempts %v, want exactly [1 2 3]", p.Value, p.Partition, p.Offset, atts)
		}
	}
	if len(calls) != len(want) {
		t.Errorf("%d distinct events invoked, want %d", len(calls), len(want))
	}
	byKey := map[producedKey]produced{}
	for _, p := range want {
		byKey[producedKey{p.Partition, p.Offset}] = p
	}
	seen := map[producedKey]bool{}
	for _, dl := range readDeadLetters(t, dlq) {
		e := dl.Env
		k := producedKey{e.Record.Partition, e.Record.Offset}
		p, ok := byKey[k]
		switch {
		case e.Record.Topic != topic || !ok:
			t.Errorf("dead letter for %s/%d@%d: not an original record of %s", e.Record.Topic, k.p, k.o, topic)
			continue
		case seen[k]:
			t.Errorf("event %d@%d dead-lettered twice", k.p, k.o)
		case string(e.Record.Value) != p.Value:
			t.Errorf("dead letter %d@%d has value %q, want %q", k.p, k.o, e.Record.Value, p.Value)
		}
		seen[k] = true
		if e.Condition != event.RetryAttemptsExhausted || e.Attempts != 3 || e.Mode != "async" || e.LastError.Status != 500 {
			t.Errorf("dead letter %d@%d: condition %s, attempts %d, mode %s, last error %+v; want RetryAttemptsExhausted, 3, async, status 500",
				k.p, k.o, e.Condition, e.Attempts, e.Mode, e.LastError)
		}
		if !e.Record.Timestamp.Equal(p.Timestamp) {
			t.Errorf("dead letter %d@%d: record timestamp %v, want the original %v", k.p, k.o, e.Record.Timestamp, p.Timestamp)
		}
	}
	if len(seen) != len(want) {
		t.Errorf("%d events dead-lettered, want %d", len(seen), len(want))
	}
}

// TestKafkaAsyncRetryExhausted: a function answering 500 with
// max_retry_attempts 2 gets exactly 3 invocations per event, then each event
// is dead-lettered as RetryAttemptsExhausted with its original topic,
// partition and offset. While the events wait in the retry topic, the
// group's committed offset on the source topic is already at its end.
func TestKafkaAsyncRetryExhausted(t *testing.T) {
	t.Parallel()
	const (
		partitions = 2
		events     = 20
		backoff    = 3 * time.Second
	)
	topic := createTopic(t, partitions)
	deleteRetryTopics(t, topic)
	dlq := deadLetterTopic(t)
	want := produce(t, topic, partitions, events, produceOpts{})
	fn := newAsyncFn(t, func(string, int) (int, string) { return http.StatusInternalServerError, "" })
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: asyncSettings(2, "1h", backoff)})
	p := startSluice(t, "sluice", cfg)
	start := time.Now()

	// The source's offsets move to the end once every event is safely in
	// a retry topic, long before the retries are due.
	eventually(t, 30*time.Second, "the source topic committed to its end", func() error { return allCommitted(t, group, topic) })
	waiting := 0
	for _, cs := range fn.snapshot() {
		if len(cs) < 3 {
			waiting++
		}
	}
	dls := readDeadLetters(t, dlq)
	t.Logf("source topic committed to its end %v after sluice was running, with %d events still waiting to be retried, %d dead letters",
		time.Since(start).Round(time.Millisecond), waiting, len(dls))
	if waiting == 0 || len(dls) == len(want) {
		t.Errorf("when the source topic was committed, %d events were waiting and %d dead-lettered: want the commit while events still wait", waiting, len(dls))
	}

	eventually(t, 60*time.Second, "every event dead-lettered", func() error {
		if n := len(readDeadLetters(t, dlq)); n < events {
			return fmt.Errorf("%d dead letters", n)
		}
		return nil
	})
	time.Sleep(time.Second) // nothing more must come
	checkExhausted(t, fn, want, topic, dlq)
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
}

// TestKafkaAsyncThrottledUntilEventAge: a function answering 429 forever,
// with max_event_age 60s: each event is dead-lettered as EventAgeExceeded
// about 60 s after it was produced, with 0 attempts (every invocation was
// attempt 1), and the Retry-After of 1 s is respected between tries.
func TestKafkaAsyncThrottledUntilEventAge(t *testing.T) {
	t.Parallel()
	const events = 5
	topic := createTopic(t, 1)
	deleteRetryTopics(t, topic)
	dlq := deadLetterTopic(t)
	fn := newAsyncFn(t, func(string, int) (int, string) { return http.StatusTooManyRequests, "1" })
	source, _ := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: asyncSettings(2, "60s", 200*time.Millisecond)})
	p := startSluice(t, "sluice", cfg)
	started := time.Now()
	want := produce(t, topic, 1, events, produceOpts{})

	eventually(t, 85*time.Second, "every event dead-lettered", func() error {
		if n := len(readDeadLetters(t, dlq)); n < events {
			return fmt.Errorf("%d dead letters", n)
		}
		return nil
	})
	t.Logf("every event dead-lettered %v after sluice was running", time.Since(started).Round(time.Millisecond))
	byValue := map[string]produced{}
	for _, w := range want {
		byValue[w.Value] = w
	}
	dls := readDeadLetters(t, dlq)
	if len(dls) != events {
		t.Errorf("%d dead letters, want %d", len(dls), events)
	}
	calls := fn.snapshot()
	for _, dl := range dls {
		e := dl.Env
		w, ok := byValue[string(e.Record.Value)]
		if !ok || e.Record.Topic != topic || e.Record.Offset != w.Offset {
			t.Errorf("dead letter %s/%d@%d: not an original event", e.Record.Topic, e.Record.Partition, e.Record.Offset)
			continue
		}
		if e.Condition != event.EventAgeExceeded || e.Attempts != 0 || e.LastError.Kind != "throttled" ||
			e.LastError.Status != 429 || !strings.Contains(e.LastError.Message, "FunctionThrottled") {
			t.Errorf("dead letter %d: condition %s, attempts %d, last error %+v; want EventAgeExceeded, 0, a FunctionThrottled throttle with status 429",
				w.Offset, e.Condition, e.Attempts, e.LastError)
		}
		age := dl.Timestamp.Sub(w.Timestamp)
		if age < 59*time.Second || age > 80*time.Second {
			t.Errorf("event %d dead-lettered at age %v, want about 60s", w.Offset, age)
		}
		cs := calls[w.Value]
		// Retry-After 1 s over 60 s: at most ~60 tries; at least a few.
		if len(cs) < 10 || len(cs) > 62 {
			t.Errorf("event %d: %d tries in 60 s with Retry-After 1 s", w.Offset, len(cs))
		}
		for i, c := range cs {
			if c.Attempt != 1 {
				t.Errorf("event %d: try %d was attempt %d, want 1 (throttles consume no attempt)", w.Offset, i, c.Attempt)
				break
			}
			if i > 0 && c.At.Sub(cs[i-1].At) < 900*time.Millisecond {
				t.Errorf("event %d: tries %d and %d only %v apart, want at least the Retry-After (1s)", w.Offset, i-1, i, c.At.Sub(cs[i-1].At))
				break
			}
		}
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestKafkaAsyncKill9KeepsAttempts: sluice is killed (SIGKILL) while every
// event waits in the retry topic after its first failed attempt; a new
// process continues at attempt 2: exactly 3 invocations per event across
// both processes, then RetryAttemptsExhausted.
func TestKafkaAsyncKill9KeepsAttempts(t *testing.T) {
	t.Parallel()
	const (
		partitions = 2
		events     = 10
		backoff    = 3 * time.Second
	)
	topic := createTopic(t, partitions)
	deleteRetryTopics(t, topic)
	dlq := deadLetterTopic(t)
	want := produce(t, topic, partitions, events, produceOpts{})
	fn := newAsyncFn(t, func(string, int) (int, string) { return http.StatusInternalServerError, "" })
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: asyncSettings(2, "1h", backoff), Broker: kafkaFastFailover})
	p := startSluice(t, "sluice (first)", cfg)
	started := time.Now()

	// Every event failed once and is in the retry topic (the source is
	// committed to its end only then); its retry is due 3 s later.
	eventually(t, 30*time.Second, "the source topic committed to its end", func() error { return allCommitted(t, group, topic) })
	p.kill()
	before := fn.snapshot()
	for _, w := range want {
		if n := len(before[w.Value]); n != 1 {
			t.Fatalf("event %s: %d invocations before the kill, want 1 (the kill came too late; the test needs a longer backoff)", w.Value, n)
		}
	}

	// The restarted process gets the partitions once the broker gave up on
	// the killed member (its session timeout: 6 s here, 45 s by default).
	killedAt := time.Now()
	p2 := startSluice(t, "sluice (restarted)", cfg)
	eventually(t, 80*time.Second, "every event dead-lettered", func() error {
		if n := len(readDeadLetters(t, dlq)); n < events {
			return fmt.Errorf("%d dead letters", n)
		}
		return nil
	})
	t.Logf("every event dead-lettered %v after the first sluice was running, %v after the kill",
		time.Since(started).Round(time.Millisecond), time.Since(killedAt).Round(time.Millisecond))
	time.Sleep(time.Second) // nothing more must come
	checkExhausted(t, fn, want, topic, dlq)
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}
