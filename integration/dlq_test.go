package integration

// End-to-end tests of the dead-letter store's reading side (issue 5, SPEC §4):
// records dead-lettered by a real `sluice run`, then listed, filtered and
// replayed with the real `sluice dlq` binary through the same dispatcher and
// limits, and the retention of the destinations reconciled on restart.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/consumer/kafka"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

// replayFn is a function for the dlq tests: it takes any sluice event body
// (Kafka or JetStream), counts every record value it is invoked with, and
// measures its own concurrency. It fails with status fail until fixed.
type replayFn struct {
	srv *httptest.Server

	mu       sync.Mutex
	fail     int           // status to answer; 0 or 200: accept
	sleep    time.Duration // time each invocation takes
	inFlight int
	maxSeen  int            // the most invocations it ever had at once
	seen     map[string]int // record value → invocations that carried it
	calls    int
	onCall   func(n int) // called with the number of invocations so far (outside the lock)
}

func newReplayFn(t *testing.T, fail int) *replayFn {
	t.Helper()
	f := &replayFn{fail: fail, seen: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.CloseClientConnections()
		f.srv.Close()
	})
	return f
}

func (f *replayFn) url() string { return f.srv.URL + "/invoke" }

func (f *replayFn) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	var ev struct {
		Records map[string][]struct {
			Value string `json:"value"` // Kafka
			Data  string `json:"data"`  // JetStream
		} `json:"records"`
	}
	if err == nil {
		err = json.Unmarshal(body, &ev)
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	f.inFlight++
	f.maxSeen = max(f.maxSeen, f.inFlight)
	f.calls++
	n, status, sleep, onCall := f.calls, f.fail, f.sleep, f.onCall
	for _, recs := range ev.Records {
		for _, rec := range recs {
			v, _ := base64.StdEncoding.DecodeString(rec.Value + rec.Data)
			f.seen[string(v)]++
		}
	}
	f.mu.Unlock()
	if onCall != nil {
		onCall(n)
	}
	time.Sleep(sleep)
	f.mu.Lock()
	f.inFlight--
	f.mu.Unlock()
	if status == 0 {
		status = http.StatusOK
	}
	w.WriteHeader(status)
}

// fix makes the function accept from now on, taking sleep per invocation,
// and forgets what it saw.
func (f *replayFn) fix(sleep time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.sleep, f.maxSeen, f.calls, f.seen = 0, sleep, 0, 0, map[string]int{}
}

// stats returns the distinct values seen, the invocations and the most at
// once.
func (f *replayFn) stats() (distinct, deliveries, maxConcurrent int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, n := range f.seen {
		deliveries += n
	}
	return len(f.seen), deliveries, f.maxSeen
}

// dlqRun runs the sluice binary (dlq commands) and returns its exit code and
// output; it fails the test if it takes over 90 s.
func dlqRun(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	cmd := exec.Command(sluiceBinary(t), args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.Env = append(os.Environ(), "GORACE=halt_on_error=1")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1) // Wait's one result; buffered so the waiter never blocks
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return exitCode(t, err), out.String(), errb.String()
	case <-time.After(90 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		t.Fatalf("sluice %s did not finish within 90s\nstderr:\n%s", strings.Join(args, " "), errb.String())
		return 0, "", ""
	}
}

func exitCode(t *testing.T, err error) int {
	t.Helper()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.ExitCode()
	default:
		t.Fatal(err)
		return -1
	}
}

// jsonLetters decodes `dlq list --json` output.
func jsonLetters(t *testing.T, out string) []retention.Envelope {
	t.Helper()
	var es []retention.Envelope
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var e retention.Envelope
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("dlq output is not JSON envelopes: %v\n%s", err, out)
		}
		es = append(es, e)
	}
	return es
}

// listLetters runs `dlq list --json` with args and returns the letters.
func listLetters(t *testing.T, cfg string, args ...string) []retention.Envelope {
	t.Helper()
	code, out, errs := dlqRun(t, append([]string{"dlq", "list", "-c", cfg, "--json"}, args...)...)
	if code != 0 {
		t.Fatalf("dlq list %v: exit %d\n%s", args, code, errs)
	}
	return jsonLetters(t, out)
}

// writeYAML writes doc as a configuration file in dir.
func writeYAML(t *testing.T, dir string, doc map[string]any) string {
	t.Helper()
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// recordCount is how many records topic holds (from offset 0: nothing is
// old enough for retention to have removed any).
func recordCount(t *testing.T, topic string) int64 {
	t.Helper()
	var n int64
	for _, end := range endOffsets(t, topic) {
		n += end
	}
	return n
}

// TestDLQReplayKafka is issue 5's replay acceptance on a Kafka destination:
// 1,000 records dead-lettered by a failing function are listed and filtered,
// then replayed once the function is fixed, under a reservation of 5.
func TestDLQReplayKafka(t *testing.T) {
	t.Parallel()
	testStart := time.Now()
	sluiceBinary(t) // built before the clock of the phases below matters
	t.Logf("%s: sluice built", time.Since(testStart).Round(time.Millisecond))
	ordersTopic, paymentsTopic := createTopic(t, 2), createTopic(t, 1)
	dlt := deadLetterTopic(t)
	fnA, fnB := newReplayFn(t, http.StatusInternalServerError), newReplayFn(t, http.StatusBadRequest)
	dir := t.TempDir()
	cfg := writeYAML(t, dir, map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}}},
		"functions": map[string]any{
			"thumbnail": map[string]any{"url": fnA.url(), "timeout": "30s", "reserved_concurrency": 5},
			"billing":   map[string]any{"url": fnB.url(), "timeout": "30s"},
		},
		"sources": map[string]any{
			"orders": map[string]any{"topic": ordersTopic, "function": "thumbnail", "on_failure": "dead",
				"batch_size": 100, "max_retry_attempts": 0, "parallelization_factor": 2},
			"payments": map[string]any{"topic": paymentsTopic, "function": "billing", "on_failure": "dead"},
		},
		"dead_letters": map[string]any{"dead": map[string]any{"topic": dlt, "retention": "1h"}},
	})

	// 1,000 orders dead-lettered (500 → RetryAttemptsExhausted), then 30
	// payments (400 → PermanentError), each group at its own time.
	p := startSluice(t, "sluice run", cfg)
	produce(t, ordersTopic, 2, 1000, produceOpts{})
	eventually(t, 60*time.Second, "1000 orders dead-lettered", func() error {
		if n := recordCount(t, dlt); n < 1000 {
			return fmt.Errorf("%d letters", n)
		}
		return nil
	})
	time.Sleep(20 * time.Millisecond)
	mid := time.Now()
	time.Sleep(20 * time.Millisecond)
	produce(t, paymentsTopic, 1, 30, produceOpts{First: 5000})
	eventually(t, 60*time.Second, "30 payments dead-lettered", func() error {
		if n := recordCount(t, dlt); n < 1030 {
			return fmt.Errorf("%d letters", n)
		}
		return nil
	})
	// The gauges of run see the destination.
	eventually(t, 30*time.Second, "dead-letter gauges", func() error {
		b, err := p.metric("sluice_dead_letter_stored_bytes", map[string]string{"destination": "dead"})
		if err != nil {
			return err
		}
		if b <= 0 {
			return fmt.Errorf("stored bytes %v", b)
		}
		age, err := p.metric("sluice_dead_letter_oldest_age_seconds", map[string]string{"destination": "dead"})
		if err != nil {
			return err
		}
		if age <= 0 || age > 600 {
			return fmt.Errorf("oldest age %vs", age)
		}
		return nil
	})
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("sluice run exited %d", code)
	}

	t.Logf("%s: 1030 letters dead-lettered", time.Since(testStart).Round(time.Millisecond))

	// Each filter selects exactly the matching letters.
	all := listLetters(t, cfg)
	if len(all) != 1030 {
		t.Fatalf("dlq list: %d letters, want 1030 (one per record)", len(all))
	}
	count := func(es []retention.Envelope, pred func(e retention.Envelope) bool) int {
		n := 0
		for _, e := range es {
			if pred(e) {
				n++
			}
		}
		return n
	}
	isOrder := func(e retention.Envelope) bool {
		return e.Source == "orders" && e.Function == "thumbnail" && e.Condition == event.RetryAttemptsExhausted
	}
	isPayment := func(e retention.Envelope) bool {
		return e.Source == "payments" && e.Function == "billing" && e.Condition == event.PermanentError
	}
	if o, pm := count(all, isOrder), count(all, isPayment); o != 1000 || pm != 30 {
		t.Fatalf("dlq list: %d orders and %d payments letters, want 1000 and 30", o, pm)
	}
	// Three at a time: each is a process reading the whole destination.
	bin := sluiceBinary(t)
	sem := make(chan struct{}, 3) // bounds the processes at once
	var wg sync.WaitGroup
	for _, tc := range []struct {
		args []string
		want func(e retention.Envelope) bool
		n    int
	}{
		{[]string{"--source", "payments"}, isPayment, 30},
		{[]string{"--function", "billing"}, isPayment, 30},
		{[]string{"--condition", "RetryAttemptsExhausted"}, isOrder, 1000},
		{[]string{"--condition", "RecordAgeExceeded"}, isOrder, 0},
		{[]string{"--until", mid.UTC().Format(time.RFC3339Nano)}, isOrder, 1000},
		{[]string{"--since", mid.UTC().Format(time.RFC3339Nano)}, isPayment, 30},
		{[]string{"--since", mid.UTC().Format(time.RFC3339Nano), "--function", "thumbnail", "--source", "orders"}, isOrder, 0},
	} {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			cmd := exec.Command(bin, append([]string{"dlq", "list", "-c", cfg, "--json"}, tc.args...)...)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			out, err := cmd.Output()
			if err != nil {
				t.Errorf("dlq list %v: %v\n%s", tc.args, err, errb.String())
				return
			}
			var got []retention.Envelope
			dec := json.NewDecoder(bytes.NewReader(out))
			for dec.More() {
				var e retention.Envelope
				if err := dec.Decode(&e); err != nil {
					t.Errorf("dlq list %v: %v", tc.args, err)
					return
				}
				got = append(got, e)
			}
			if len(got) != tc.n || count(got, tc.want) != tc.n {
				t.Errorf("dlq list %v: %d letters, %d of the expected kind; want exactly %d", tc.args, len(got), count(got, tc.want), tc.n)
			}
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}

	t.Logf("%s: filters checked", time.Since(testStart).Round(time.Millisecond))

	// A dry run delivers nothing and writes nothing, and lists what it
	// would send.
	fnA.fix(10 * time.Millisecond)
	before := endOffsets(t, dlt)
	code, out, errs := dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "orders", "--dry-run", "--json")
	if code != 0 || len(jsonLetters(t, out)) != 1000 || !strings.Contains(errs, "would replay 1000") {
		t.Fatalf("dry run: exit %d, %d letters listed\n%s", code, len(jsonLetters(t, out)), errs)
	}
	if d, n, _ := fnA.stats(); d != 0 || n != 0 {
		t.Fatalf("the dry run delivered %d records", n)
	}
	if after := endOffsets(t, dlt); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("the dry run wrote to the destination: %v -> %v", before, after)
	}

	// The replay delivers all 1,000 under the reservation of 5, with more
	// letters in flight than the reservation allows.
	start := time.Now()
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "orders", "--parallel", "20")
	t.Logf("replay of 1000 letters took %s", time.Since(start).Round(time.Millisecond))
	if code != 0 || strings.TrimSpace(out) != "replayed 1000: 1000 succeeded, 0 failed, 0 skipped" {
		t.Fatalf("replay: exit %d, stdout %q\nstderr:\n%s", code, out, errs)
	}
	distinct, deliveries, maxConc := fnA.stats()
	if distinct != 1000 || deliveries != 1000 {
		t.Fatalf("the function got %d deliveries of %d distinct records, want 1000 of 1000", deliveries, distinct)
	}
	if maxConc > 5 {
		t.Fatalf("the function ran %d invocations at once; its reservation is 5", maxConc)
	}
	if maxConc < 2 {
		t.Errorf("the function never ran more than %d at once: the replay did not run in parallel", maxConc)
	}
	if !strings.Contains(errs, "replay dead: 1000/1000 done (1000 succeeded, 0 failed)") {
		t.Errorf("no plain progress line on a non-terminal stderr:\n%s", errs)
	}

	// Running it again delivers nothing.
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "orders")
	if code != 0 || strings.TrimSpace(out) != "replayed 0: 0 succeeded, 0 failed, 1000 skipped" {
		t.Fatalf("second replay: exit %d, stdout %q\nstderr:\n%s", code, out, errs)
	}
	if _, n, _ := fnA.stats(); n != 1000 {
		t.Fatalf("the second replay delivered %d more", n-1000)
	}
	if left := listLetters(t, cfg, "--source", "orders"); len(left) != 0 {
		t.Fatalf("dlq list still shows %d replayed letters", len(left))
	}
	if withAll := listLetters(t, cfg, "--source", "orders", "--all"); len(withAll) != 1000 {
		t.Fatalf("dlq list --all shows %d letters, want the 1000 replayed", len(withAll))
	}

	// Payments still fail: exit 1, written back with replays+1.
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "payments")
	if code != 1 || strings.TrimSpace(out) != "replayed 30: 0 succeeded, 30 failed, 0 skipped" || !strings.Contains(errs, "status 400") {
		t.Fatalf("failing replay: exit %d, stdout %q\nstderr:\n%s", code, out, errs)
	}
	left := listLetters(t, cfg, "--source", "payments")
	if len(left) != 30 || left[0].Replays != 1 || left[0].LastError.Status != 400 {
		t.Fatalf("after a failed replay: %d letters, first %+v; want 30 with replays 1", len(left), left[0])
	}

	// --to source appends the original records to the source's topic
	// (nothing consumes it now: sluice run is stopped) and resolves them.
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "payments", "--to", "source")
	if code != 0 || strings.TrimSpace(out) != "replayed 30: 30 succeeded, 0 failed, 0 skipped" {
		t.Fatalf("replay --to source: exit %d, stdout %q\n%s", code, out, errs)
	}
	if ends := endOffsets(t, paymentsTopic); ends[0] != 60 {
		t.Fatalf("payments topic ends at %v after the replay to source, want 60 (30 + 30 again)", ends)
	}
	// By content: offsets 30..59 are the 30 original records again.
	recs, err := kafkaChaosSource{seeds: []string{kafkaAddr(t)}, topic: paymentsTopic}.Records(t.Context())
	if err != nil {
		t.Fatalf("read the payments topic: %v", err)
	}
	checkReplayedToSource(t, recs, 30)
	if again := listLetters(t, cfg, "--source", "payments"); len(again) != 0 {
		t.Fatalf("%d payments letters still pending after the replay to source", len(again))
	}

	// show prints one envelope (replayed ones too).
	code, out, errs = dlqRun(t, "dlq", "show", "-c", cfg, left[0].ID)
	var shown retention.Envelope
	if code != 0 || json.Unmarshal([]byte(out), &shown) != nil || shown.ID != left[0].ID || !strings.Contains(out, "\n  \"") {
		t.Fatalf("dlq show: exit %d\n%s\n%s", code, out, errs)
	}
	if code, _, errs = dlqRun(t, "dlq", "show", "-c", cfg, "nope"); code != 1 || !strings.Contains(errs, `no dead letter with id "nope"`) {
		t.Fatalf("dlq show of an unknown id: exit %d\n%s", code, errs)
	}
}

// TestDLQReplayInterrupted sends SIGINT to a replay mid-way; a re-run
// delivers the rest, and nothing that succeeded is delivered twice.
func TestDLQReplayInterrupted(t *testing.T) {
	t.Parallel()
	topic := createTopic(t, 1)
	dlt := deadLetterTopic(t)
	fn := newReplayFn(t, 0)
	fn.fix(10 * time.Millisecond)
	broker := consumer.KafkaConfig{Seeds: []string{kafkaAddr(t)}}
	if _, _, err := kafka.EnsureTopic(t.Context(), broker, dlt, 1, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	w, err := kafka.NewWriter(broker, dlt)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	m, _ := retention.NewStoreMetrics(nil)
	store := retention.NewStore("dead", w, m)
	const n = 300
	letters := make([]event.DeadLetter, n)
	now := time.Now()
	for i := range letters {
		letters[i] = event.DeadLetter{Source: "orders", Function: "fn", Mode: "stream", Condition: event.RetryAttemptsExhausted,
			Attempts: 1, FirstAttemptAt: now, LastAttemptAt: now, LastError: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"},
			Record: event.Record{Topic: topic, Offset: int64(i), Timestamp: now, Key: []byte("k"), Value: fmt.Appendf(nil, "v-%03d", i)}}
	}
	if err := store.DeadLetter(t.Context(), letters); err != nil {
		t.Fatal(err)
	}
	cfg := writeYAML(t, t.TempDir(), map[string]any{
		"admin":        map[string]any{"listen": "127.0.0.1:0"},
		"state_dir":    "./state",
		"brokers":      map[string]any{"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}}},
		"functions":    map[string]any{"fn": map[string]any{"url": fn.url(), "timeout": "30s", "reserved_concurrency": 5}},
		"sources":      map[string]any{"orders": map[string]any{"topic": topic, "function": "fn", "on_failure": "dead"}},
		"dead_letters": map[string]any{"dead": map[string]any{"topic": dlt, "retention": "1h"}},
	})

	cmd := exec.Command(sluiceBinary(t), "dlq", "replay", "-c", cfg)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	fn.mu.Lock()
	fn.onCall = func(calls int) {
		if calls == 100 {
			once.Do(func() { _ = cmd.Process.Signal(syscall.SIGINT) })
		}
	}
	fn.mu.Unlock()
	done := make(chan error, 1) // Wait's one result
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(60 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("the interrupted replay did not exit within 60s\n%s", errb.String())
	}
	if code := exitCode(t, err); code != 1 || !strings.Contains(errb.String(), "interrupted") {
		t.Fatalf("interrupted replay: exit %d, stdout %q\n%s", code, out.String(), errb.String())
	}
	first, _, _ := fn.stats()
	if first < 100 || first >= n {
		t.Fatalf("%d letters delivered before the interrupt took effect, want 100..%d", first, n-1)
	}

	code, stdout, stderr := dlqRun(t, "dlq", "replay", "-c", cfg)
	if code != 0 {
		t.Fatalf("re-run: exit %d, %q\n%s", code, stdout, stderr)
	}
	distinct, deliveries, maxConc := fn.stats()
	t.Logf("interrupted after %d letters; %d deliveries of %d letters in all; at most %d at once", first, deliveries, distinct, maxConc)
	if want := fmt.Sprintf("replayed %d: %d succeeded, 0 failed, %d skipped", n-first, n-first, first); strings.TrimSpace(stdout) != want {
		t.Errorf("re-run summary %q, want %q", strings.TrimSpace(stdout), want)
	}
	if distinct != n || deliveries != n {
		t.Fatalf("%d deliveries of %d distinct letters, want each of the %d exactly once", deliveries, distinct, n)
	}
	if maxConc > 5 {
		t.Fatalf("%d at once under a reservation of 5", maxConc)
	}
}

// TestDLQReplayJetStream is the replay acceptance on a JetStream
// destination, with a JetStream stream source.
func TestDLQReplayJetStream(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	srcStream, srcPrefix := natsStreamName(t, js)
	dlStream, dlPrefix := natsStreamName(t, js)
	fn := newReplayFn(t, http.StatusInternalServerError)
	cfg := writeYAML(t, t.TempDir(), map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"nats": map[string]any{"nats": map[string]any{"url": natsURL(t)}}},
		"functions": map[string]any{"fn": map[string]any{"url": fn.url(), "timeout": "30s", "reserved_concurrency": 3}},
		"sources": map[string]any{"clicks": map[string]any{"stream": srcStream, "subject": srcPrefix + ".*", "partitions": 2,
			"function": "fn", "on_failure": "dead", "max_retry_attempts": 0,
			"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"}}},
		"dead_letters": map[string]any{"dead": map[string]any{"stream": dlStream, "subject": dlPrefix + ".>", "retention": "1h"}},
	})
	p := startSluice(t, "sluice run", cfg)
	const n = 60
	for i := range n {
		if _, err := js.Publish(t.Context(), fmt.Sprintf("%s.k%d", srcPrefix, i%7), fmt.Appendf(nil, "click-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 60*time.Second, "60 clicks dead-lettered", func() error {
		st, err := js.Stream(t.Context(), dlStream)
		if err != nil {
			return err
		}
		if m := st.CachedInfo().State.Msgs; m < n {
			return fmt.Errorf("%d letters", m)
		}
		return nil
	})
	eventually(t, 30*time.Second, "dead-letter gauges", func() error {
		b, err := p.metric("sluice_dead_letter_stored_bytes", map[string]string{"destination": "dead"})
		if err == nil && b <= 0 {
			err = fmt.Errorf("stored bytes %v", b)
		}
		return err
	})
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("sluice run exited %d", code)
	}
	if got := listLetters(t, cfg, "--source", "clicks", "--condition", "RetryAttemptsExhausted"); len(got) != n {
		t.Fatalf("dlq list: %d letters, want %d", len(got), n)
	}

	fn.fix(10 * time.Millisecond)
	code, out, errs := dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "clicks", "--rate", "1000")
	if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("replayed %d: %d succeeded, 0 failed, 0 skipped", n, n) {
		t.Fatalf("replay: exit %d, %q\n%s", code, out, errs)
	}
	distinct, deliveries, maxConc := fn.stats()
	if distinct != n || deliveries != n || maxConc > 3 {
		t.Fatalf("%d deliveries of %d distinct clicks, %d at once; want %d, %d, at most 3", deliveries, distinct, maxConc, n, n)
	}
	code, out, _ = dlqRun(t, "dlq", "replay", "-c", cfg)
	if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("replayed 0: 0 succeeded, 0 failed, %d skipped", n) {
		t.Fatalf("second replay: exit %d, %q", code, out)
	}
	if _, d, _ := fn.stats(); d != n {
		t.Fatalf("the second replay delivered %d more", d-n)
	}
}

// checkReplayedToSource checks that recs, everything a source holds after
// `dlq replay --to source` of its first n records, are those n records
// followed by the same n again (same keys and values, in any order).
func checkReplayedToSource(t *testing.T, recs []chaosRecord, n int) {
	t.Helper()
	if len(recs) != 2*n {
		t.Fatalf("the source holds %d records after the replay to source, want %d", len(recs), 2*n)
	}
	content := func(rs []chaosRecord) []string {
		out := make([]string, len(rs))
		for i, r := range rs {
			out[i] = r.Key + "=" + r.Value
		}
		slices.Sort(out)
		return out
	}
	if orig, again := content(recs[:n]), content(recs[n:]); !slices.Equal(orig, again) {
		t.Errorf("replayed to source:\n%q\nwant the original records:\n%q", again, orig)
	}
}

// TestDLQReplayToSourceJetStream: `dlq replay --to source` of letters from
// a JetStream stream source publishes the original messages to that stream
// again (same key and data), where sluice consumes them anew.
func TestDLQReplayToSourceJetStream(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	srcStream, srcPrefix := natsStreamName(t, js)
	dlStream, dlPrefix := natsStreamName(t, js)
	fn := newReplayFn(t, http.StatusInternalServerError)
	cfg := writeYAML(t, t.TempDir(), map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"nats": map[string]any{"nats": map[string]any{"url": natsURL(t)}}},
		"functions": map[string]any{"fn": map[string]any{"url": fn.url(), "timeout": "30s"}},
		"sources": map[string]any{"clicks": map[string]any{"stream": srcStream, "subject": srcPrefix + ".*", "partitions": 2,
			"function": "fn", "on_failure": "dead", "max_retry_attempts": 0,
			"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"}}},
		"dead_letters": map[string]any{"dead": map[string]any{"stream": dlStream, "subject": dlPrefix + ".>", "retention": "1h"}},
	})
	p := startSluice(t, "sluice run", cfg)
	const n = 20
	for i := range n {
		if _, err := js.Publish(t.Context(), fmt.Sprintf("%s.k%d", srcPrefix, i%7), fmt.Appendf(nil, "click-%03d", i)); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 60*time.Second, "20 clicks dead-lettered", func() error {
		if got := listLetters(t, cfg, "--source", "clicks"); len(got) < n {
			return fmt.Errorf("%d letters", len(got))
		}
		return nil
	})
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Fatalf("sluice run exited %d", code)
	}
	code, out, errs := dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "clicks", "--to", "source")
	if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("replayed %d: %d succeeded, 0 failed, 0 skipped", n, n) {
		t.Fatalf("replay --to source: exit %d, %q\n%s", code, out, errs)
	}
	if left := listLetters(t, cfg, "--source", "clicks"); len(left) != 0 {
		t.Fatalf("%d letters still pending after the replay to source", len(left))
	}
	recs, err := jsChaosSource{js: js, stream: srcStream}.Records(t.Context())
	if err != nil {
		t.Fatalf("read the source stream: %v", err)
	}
	checkReplayedToSource(t, recs, n)
}

// TestDLQRetentionReconciled: destinations created with 14 days keep records
// 14 days; a changed retention is applied (and logged) at the next start.
func TestDLQRetentionReconciled(t *testing.T) {
	t.Parallel()
	topic := createTopic(t, 1)
	dlt := deadLetterTopic(t)
	_, js := newJetStream(t)
	dlStream, dlPrefix := natsStreamName(t, js)
	fn := newReplayFn(t, 0)
	dir := t.TempDir()
	config := func(retentionAge string) string {
		return writeYAML(t, dir, map[string]any{
			"admin":     map[string]any{"listen": "127.0.0.1:0"},
			"state_dir": "./state",
			"brokers": map[string]any{
				"kafka": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}},
				"nats":  map[string]any{"nats": map[string]any{"url": natsURL(t)}},
			},
			"functions": map[string]any{"fn": map[string]any{"url": fn.url()}},
			"sources": map[string]any{
				"orders":  map[string]any{"broker": "kafka", "topic": topic, "function": "fn", "on_failure": "dead"},
				"orders2": map[string]any{"broker": "kafka", "topic": topic, "function": "fn", "on_failure": "jsdead"},
			},
			"dead_letters": map[string]any{
				"dead":   map[string]any{"broker": "kafka", "topic": dlt, "retention": retentionAge},
				"jsdead": map[string]any{"broker": "nats", "stream": dlStream, "subject": dlPrefix + ".>", "retention": retentionAge},
			},
		})
	}
	retentionMs := func() string {
		t.Helper()
		adm := kadm.NewClient(newKafkaClient(t))
		rcs, err := adm.DescribeTopicConfigs(t.Context(), dlt)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := rcs.On(dlt, nil)
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range rc.Configs {
			if c.Key == "retention.ms" && c.Value != nil {
				return *c.Value
			}
		}
		t.Fatalf("topic %s has no retention.ms", dlt)
		return ""
	}
	maxAge := func() time.Duration {
		t.Helper()
		st, err := js.Stream(t.Context(), dlStream)
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().Config.MaxAge
	}
	logged := func(p *sluiceProc, msg, want string) {
		t.Helper()
		for _, l := range p.logLines() {
			if strings.Contains(l, `"msg":"`+msg+`"`) && strings.Contains(l, want) {
				return
			}
		}
		t.Errorf("no log line %q with %q:\n%s", msg, want, strings.Join(tail(p.logLines(), 30), "\n"))
	}

	p := startSluice(t, "sluice A", config("336h"))
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("sluice A: exit code %d after SIGTERM, want 0", code)
	}
	if got := retentionMs(); got != "1209600000" {
		t.Errorf("created with retention.ms %s, want 1209600000 (14 days)", got)
	}
	if got := maxAge(); got != 14*24*time.Hour {
		t.Errorf("stream created with MaxAge %s, want 336h", got)
	}
	logged(p, "dead-letter topic created", dlt)
	logged(p, "dead-letter stream created", dlStream)

	p = startSluice(t, "sluice B", config("168h"))
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("sluice B: exit code %d after SIGTERM, want 0", code)
	}
	if got := retentionMs(); got != "604800000" {
		t.Errorf("after the change retention.ms is %s, want 604800000 (7 days)", got)
	}
	if got := maxAge(); got != 7*24*time.Hour {
		t.Errorf("after the change MaxAge is %s, want 168h", got)
	}
	logged(p, "dead-letter topic reconciled", "retention.ms: 1209600000 -")
	logged(p, "dead-letter topic reconciled", "604800000")
	logged(p, "dead-letter stream reconciled", "max_age")

	// The stream is jetstream's; make sure the test's own handle agrees.
	if _, err := js.Stream(context.Background(), dlStream); errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatal("the dead-letter stream vanished")
	}
}
