package integration

// Acceptance tests of JetStream async sources (issue 4, SPEC §2.2) against
// the real nats-server through an out-of-process `sluice run`: retries with
// growing delays until max_retry_attempts, then RetryAttemptsExhausted;
// throttles until max_event_age, then EventAgeExceeded without consuming
// attempts; kill -9 between attempts keeps the attempt counts.

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

	"github.com/sluicehq/sluice/event"
)

// jsAsyncCall is one invocation of an async function.
type jsAsyncCall struct {
	At        time.Time
	Event     string // the body: the event as published
	Attempt   int    // Sluice-Attempt
	Source    string // Sluice-Source
	EventTime time.Time
}

// jsAsyncFn is an async function (SPEC §3: the event unchanged as the body)
// that answers every invocation with one status and records them all.
type jsAsyncFn struct {
	srv *httptest.Server

	mu    sync.Mutex
	calls []jsAsyncCall
	bad   []string
}

func newJSAsyncFn(t *testing.T, status int, retryAfter string) *jsAsyncFn {
	t.Helper()
	f := &jsAsyncFn{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		attempt, aerr := strconv.Atoi(r.Header.Get("Sluice-Attempt"))
		et, terr := time.Parse(time.RFC3339Nano, r.Header.Get("Sluice-Event-Time"))
		f.mu.Lock()
		if err := errors.Join(err, aerr, terr); err != nil {
			f.bad = append(f.bad, err.Error())
		} else {
			f.calls = append(f.calls, jsAsyncCall{At: time.Now(), Event: string(body), Attempt: attempt,
				Source: r.Header.Get("Sluice-Source"), EventTime: et})
		}
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

func (f *jsAsyncFn) URL() string { return f.srv.URL + "/invoke" }

// byEvent returns the invocations so far, per event, in arrival order.
func (f *jsAsyncFn) byEvent() map[string][]jsAsyncCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string][]jsAsyncCall{}
	for _, c := range f.calls {
		out[c.Event] = append(out[c.Event], c)
	}
	return out
}

// jsAsyncEnv is one async source's stream, its retry-state bucket and its
// dead-letter stream, all deleted when the test ends.
type jsAsyncEnv struct {
	js                 jetstream.JetStream
	source             string
	stream, prefix     string
	dlStream, dlPrefix string
	broker             map[string]any // further brokers.bus.nats settings
}

func newJSAsyncEnv(t *testing.T) *jsAsyncEnv {
	t.Helper()
	_, js := newJetStream(t)
	e := &jsAsyncEnv{js: js, source: uniqueName(t, "async")}
	e.stream = strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "AS"), "_"))
	e.prefix = strings.ToLower(e.stream)
	e.dlStream, e.dlPrefix = e.stream+"-DLQ", e.prefix+"-dlq"
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		// sluice creates the source's stream, its bucket and the
		// dead-letter stream.
		for _, s := range []string{e.stream, e.dlStream, "KV_sluice-async-" + e.source} {
			if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	return e
}

// config writes the configuration of the async source over <prefix>.>,
// dead letters to the dead-letter stream, with further settings.
func (e *jsAsyncEnv) config(t *testing.T, fnURL string, settings map[string]any) string {
	t.Helper()
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
	return writeNATSConfig(t, fnURL, e.broker, map[string]any{e.source: src},
		map[string]any{"dead": map[string]any{"stream": e.dlStream, "subject": e.dlPrefix + ".>", "retention": "1h"}})
}

// publish publishes n events "event-<i>" to <prefix>.<i> and returns them
// with the time the stream stored each.
func (e *jsAsyncEnv) publish(t *testing.T, n int) map[string]time.Time {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st, err := e.js.Stream(ctx, e.stream)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]time.Time{}
	for i := range n {
		ev := fmt.Sprintf("event-%d", i)
		ack, err := e.js.Publish(ctx, fmt.Sprintf("%s.%d", e.prefix, i), []byte(ev), jetstream.WithExpectStream(e.stream))
		if err != nil {
			t.Fatalf("publish: %v", err)
		}
		m, err := st.GetMsg(ctx, ack.Sequence)
		if err != nil {
			t.Fatalf("get message %d: %v", ack.Sequence, err)
		}
		out[ev] = m.Time
	}
	return out
}

func (e *jsAsyncEnv) deadLetters(t *testing.T) []deadLetter {
	t.Helper()
	return readNATSDeadLetters(t, e.js, e.dlStream)
}

// waitDeadLetters waits until n events are dead-lettered and returns the
// dead letters by event.
func (e *jsAsyncEnv) waitDeadLetters(t *testing.T, n int, timeout time.Duration) map[string]deadLetter {
	t.Helper()
	var letters []deadLetter
	eventually(t, timeout, fmt.Sprintf("%d events are dead-lettered", n), func() error {
		if letters = e.deadLetters(t); len(letters) < n {
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

// checkJSAsyncLetter checks the envelope of an async dead letter.
func checkJSAsyncLetter(t *testing.T, e *jsAsyncEnv, ev string, dl deadLetter, cond event.Condition, attempts int, storedAt time.Time) {
	t.Helper()
	env := dl.Env
	if env.Source != e.source || env.Function != "fn" || env.Mode != "async" || env.Condition != cond || env.Attempts != attempts || env.Replays != 0 {
		t.Errorf("%s: envelope source %q function %q mode %q condition %q attempts %d replays %d, want %q fn async %s %d 0",
			ev, env.Source, env.Function, env.Mode, env.Condition, env.Attempts, env.Replays, e.source, cond, attempts)
	}
	r := env.Record
	if r.Topic != e.stream || !strings.HasPrefix(r.Subject, e.prefix+".") || !r.Timestamp.Equal(storedAt) {
		t.Errorf("%s: envelope record stream %q subject %q timestamp %s, want %s %s.* %s", ev, r.Topic, r.Subject, r.Timestamp, e.stream, e.prefix, storedAt)
	}
	if dl.Headers["sluice-condition"] != string(cond) || dl.Headers["sluice-source"] != e.source || dl.Headers["sluice-function"] != "fn" {
		t.Errorf("%s: dead letter headers %v", ev, dl.Headers)
	}
	if env.FirstAttemptAt.IsZero() || env.LastAttemptAt.Before(env.FirstAttemptAt) {
		t.Errorf("%s: envelope firstAttemptAt %s, lastAttemptAt %s", ev, env.FirstAttemptAt, env.LastAttemptAt)
	}
}

// checkJSExhausted checks that each event was invoked exactly 3 times
// (max_retry_attempts 2), as attempts 1, 2, 3, the waits between them at
// least minGaps, and growing; it returns the gaps by event.
func checkJSExhausted(t *testing.T, calls map[string][]jsAsyncCall, events map[string]time.Time, minGaps [2]time.Duration) {
	t.Helper()
	for ev := range events {
		cs := calls[ev]
		var attempts []int
		for _, c := range cs {
			attempts = append(attempts, c.Attempt)
		}
		if !slices.Equal(attempts, []int{1, 2, 3}) {
			t.Errorf("%s: invoked with Sluice-Attempt %v, want exactly [1 2 3] (max_retry_attempts 2)", ev, attempts)
			continue
		}
		g1, g2 := cs[1].At.Sub(cs[0].At), cs[2].At.Sub(cs[1].At)
		if g1 < minGaps[0] || g2 < minGaps[1] || g2 <= g1 {
			t.Errorf("%s: waits between attempts %s and %s, want at least %s and %s, growing", ev,
				g1.Round(time.Millisecond), g2.Round(time.Millisecond), minGaps[0], minGaps[1])
		}
	}
}

// TestNatsAsyncRetryAttemptsExhausted: a function answering 500 to
// everything, max_retry_attempts 2, retry_backoff 1s × 2: each event is
// invoked exactly 3 times, with waits of at least 1 s then 2 s, then
// dead-lettered with RetryAttemptsExhausted after 3 attempts.
func TestNatsAsyncRetryAttemptsExhausted(t *testing.T) {
	t.Parallel()
	const events = 20
	e := newJSAsyncEnv(t)
	fn := newJSAsyncFn(t, http.StatusInternalServerError, "")
	cfg := e.config(t, fn.URL(), map[string]any{
		"max_retry_attempts": 2,
		"retry_backoff":      map[string]any{"initial": "1s", "max": "10s", "multiplier": 2, "jitter": 0},
	})
	p := startSluice(t, "sluice", cfg)
	stored := e.publish(t, events)

	letters := e.waitDeadLetters(t, events, 60*time.Second)
	// Nothing more comes once an event is dead-lettered (it was
	// terminated): give a stray redelivery time to show.
	time.Sleep(2 * time.Second)
	calls := fn.byEvent()
	checkJSExhausted(t, calls, stored, [2]time.Duration{time.Second, 2 * time.Second})
	for ev, at := range stored {
		dl, ok := letters[ev]
		if !ok {
			t.Errorf("%s was not dead-lettered", ev)
			continue
		}
		checkJSAsyncLetter(t, e, ev, dl, event.RetryAttemptsExhausted, 3, at)
		if dl.Env.LastError.Status != http.StatusInternalServerError {
			t.Errorf("%s: envelope lastError %+v, want status 500", ev, dl.Env.LastError)
		}
		if cs := calls[ev]; len(cs) > 0 && dl.Timestamp.Before(cs[len(cs)-1].At) {
			t.Errorf("%s: dead-lettered at %s, before its last attempt at %s", ev, dl.Timestamp, cs[len(cs)-1].At)
		}
	}
	if len(calls) != events {
		t.Errorf("%d distinct events invoked, want %d", len(calls), events)
	}
	if n, err := p.metric("sluice_async_events_dropped_total", map[string]string{"source": e.source, "reason": "RetryAttemptsExhausted"}); err != nil || n != events {
		t.Errorf("sluice_async_events_dropped_total{reason=\"RetryAttemptsExhausted\"} = %v (%v), want %d", n, err, events)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
	if n := len(e.deadLetters(t)); n != events {
		t.Errorf("%d dead letters in the end, want %d", n, events)
	}
}

// TestNatsAsyncEventAgeExceeded: a function answering 429 forever, with
// max_event_age 60s: each event is retried (throttles consume no attempt:
// every invocation is attempt 1) until it is 60 s old, then dead-lettered
// with EventAgeExceeded and 0 attempts, about 60 s after it was stored.
func TestNatsAsyncEventAgeExceeded(t *testing.T) {
	t.Parallel()
	const (
		events = 10
		age    = 60 * time.Second
	)
	e := newJSAsyncEnv(t)
	fn := newJSAsyncFn(t, http.StatusTooManyRequests, "1")
	cfg := e.config(t, fn.URL(), map[string]any{
		"max_event_age":      "60s",
		"max_retry_attempts": 2,
		"retry_backoff":      map[string]any{"initial": "1s", "max": "8s"},
	})
	p := startSluice(t, "sluice", cfg)
	stored := e.publish(t, events)

	letters := e.waitDeadLetters(t, events, age+60*time.Second)
	calls := fn.byEvent()
	for ev, at := range stored {
		dl, ok := letters[ev]
		if !ok {
			t.Errorf("%s was not dead-lettered", ev)
			continue
		}
		checkJSAsyncLetter(t, e, ev, dl, event.EventAgeExceeded, 0, at)
		// About 60 s after it was stored: not before, and not much after
		// (the last wait is cut at the event's expiry).
		if a := dl.Timestamp.Sub(at); a < age || a > age+20*time.Second {
			t.Errorf("%s: dead-lettered at age %s, want %s (+ at most 20 s)", ev, a.Round(time.Millisecond), age)
		}
		// The last error is the function's throttle (dispatch keeps the
		// reason, not the HTTP status, of a throttle).
		if le := dl.Env.LastError; le.Kind != "throttled" || le.Status != 429 || !strings.Contains(le.Message, "FunctionThrottled") {
			t.Errorf("%s: envelope lastError %+v, want the function's throttle (kind throttled, status 429, FunctionThrottled)", ev, le)
		}
		cs := calls[ev]
		// Tried again and again (not only at the start and the end),
		// never consuming an attempt.
		if len(cs) < 5 {
			t.Errorf("%s: invoked %d times in %s, want it retried throughout (≥ 5)", ev, len(cs), age)
		}
		for _, c := range cs {
			if c.Attempt != 1 {
				t.Errorf("%s: invoked with Sluice-Attempt %d, want 1 (throttles consume no attempt)", ev, c.Attempt)
				break
			}
		}
	}
	if n, err := p.metric("sluice_async_events_dropped_total", map[string]string{"source": e.source, "reason": "EventAgeExceeded"}); err != nil || n != events {
		t.Errorf("sluice_async_events_dropped_total{reason=\"EventAgeExceeded\"} = %v (%v), want %d", n, err, events)
	}
	if n, err := p.metric("sluice_throttles_total", map[string]string{"function": "fn", "reason": "FunctionThrottled"}); err != nil || n < 5*events {
		t.Errorf("sluice_throttles_total{reason=\"FunctionThrottled\"} = %v (%v), want at least %d", n, err, 5*events)
	}
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}

// TestNatsAsyncKill9KeepsAttempts: a function answering 500 forever,
// max_retry_attempts 2, retry_backoff 4s × 2. sluice is killed with SIGKILL
// after every event's first attempt (while they wait on the server for
// their second) and restarted: each event is still invoked exactly 3 times
// in all, as attempts 1, 2, 3, and dead-lettered with
// RetryAttemptsExhausted after 3 attempts.
func TestNatsAsyncKill9KeepsAttempts(t *testing.T) {
	t.Parallel()
	const events = 20
	e := newJSAsyncEnv(t)
	// Events in flight at the kill (none, if the timing holds) would come
	// back after ack_wait: 10 s rather than 30 s.
	e.broker = natsFastFailover
	fn := newJSAsyncFn(t, http.StatusInternalServerError, "")
	cfg := e.config(t, fn.URL(), map[string]any{
		"max_retry_attempts": 2,
		"retry_backoff":      map[string]any{"initial": "4s", "max": "20s", "multiplier": 2, "jitter": 0},
	})
	p := startSluice(t, "sluice (first)", cfg)
	stored := e.publish(t, events)

	// Kill once every event had its first attempt and none its second:
	// each waits out its 4 s on the server; the failure was recorded
	// before the NAK, right after the answer.
	eventually(t, 30*time.Second, "every event had its first attempt", func() error {
		calls := fn.byEvent()
		if len(calls) < events {
			return fmt.Errorf("%d events invoked", len(calls))
		}
		return nil
	})
	time.Sleep(time.Second)
	for ev, cs := range fn.byEvent() {
		if len(cs) != 1 {
			t.Fatalf("%s was invoked %d times before the kill, want 1 (the test's timing does not hold on this machine)", ev, len(cs))
		}
	}
	p.kill()
	killedAt := time.Now()
	p2 := startSluice(t, "sluice (restarted)", cfg)
	t.Logf("restarted %s after the kill", time.Since(killedAt).Round(time.Millisecond))

	letters := e.waitDeadLetters(t, events, 90*time.Second)
	time.Sleep(2 * time.Second) // a stray extra invocation would show by now
	calls := fn.byEvent()
	checkJSExhausted(t, calls, stored, [2]time.Duration{4 * time.Second, 8 * time.Second})
	for ev, at := range stored {
		dl, ok := letters[ev]
		if !ok {
			t.Errorf("%s was not dead-lettered", ev)
			continue
		}
		checkJSAsyncLetter(t, e, ev, dl, event.RetryAttemptsExhausted, 3, at)
		if cs := calls[ev]; len(cs) > 0 && !dl.Env.FirstAttemptAt.Before(killedAt) {
			t.Errorf("%s: envelope firstAttemptAt %s is after the kill: the first process's attempt was forgotten", ev, dl.Env.FirstAttemptAt)
		}
	}
	if code := p2.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}
