package retention

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/event"
)

// memDest is a dead-letter destination in memory: an Appender and a Reader
// over one log, stamped with a fake clock.
type memDest struct {
	mu   sync.Mutex // guards recs and now
	recs []event.Record
	now  time.Time
	fail func(event.Record) error // Append fails for records it returns an error for
}

func newMemDest() *memDest {
	return &memDest{now: time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)}
}

func (m *memDest) Append(_ context.Context, recs []event.Record) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, r := range recs {
		if m.fail != nil {
			if err := m.fail(r); err != nil {
				return err
			}
		}
		m.now = m.now.Add(time.Second)
		r.Timestamp = m.now
		r.Offset = int64(len(m.recs))
		m.recs = append(m.recs, r)
	}
	return nil
}

func (m *memDest) Scan(ctx context.Context, fn func(event.Record) error) error {
	m.mu.Lock()
	recs := append([]event.Record(nil), m.recs...)
	m.mu.Unlock()
	for _, r := range recs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

func (m *memDest) count(header string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, r := range m.recs {
		if headerValue(r.Headers, header) != "" {
			n++
		}
	}
	return n
}

// fill writes n letters: source orders/function thumbnail, every third of
// source payments/function billing with PermanentError.
func fill(t *testing.T, d *memDest, n int) {
	t.Helper()
	m, _ := NewStoreMetrics(nil)
	s := NewStore("dead", d, m)
	for i := range n {
		l := letter(int64(i), event.RetryAttemptsExhausted)
		if i%3 == 2 {
			l.Source, l.Function, l.Condition = "payments", "billing", event.PermanentError
		}
		if err := s.DeadLetter(context.Background(), []event.DeadLetter{l}); err != nil {
			t.Fatal(err)
		}
	}
}

func load(t *testing.T, d *memDest) *Index {
	t.Helper()
	idx, err := Load(context.Background(), "dead", d)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestLoadAndFilter(t *testing.T) {
	d := newMemDest()
	fill(t, d, 9)
	_ = d.Append(context.Background(), []event.Record{{Key: []byte("x"), Value: []byte("not json")}})
	idx := load(t, d)
	if len(idx.Letters) != 9 || idx.Malformed != 1 {
		t.Fatalf("%d letters, %d malformed; want 9, 1", len(idx.Letters), idx.Malformed)
	}
	t0 := idx.Letters[0].DeadLetteredAt
	for _, tc := range []struct {
		name string
		f    Filter
		want int
	}{
		{"all", Filter{}, 9},
		{"source", Filter{Source: "payments"}, 3},
		{"function", Filter{Function: "thumbnail"}, 6},
		{"condition", Filter{Condition: event.PermanentError}, 3},
		{"source and condition", Filter{Source: "orders", Condition: event.PermanentError}, 0},
		{"since (inclusive)", Filter{Since: t0.Add(3 * time.Second)}, 6},
		{"until (exclusive)", Filter{Until: t0.Add(3 * time.Second)}, 3},
		{"window", Filter{Since: t0.Add(time.Second), Until: t0.Add(4 * time.Second)}, 3},
	} {
		pending, resolved := idx.Select(tc.f)
		if len(pending) != tc.want || len(resolved) != 0 {
			t.Errorf("%s: %d pending, %d resolved; want %d, 0", tc.name, len(pending), len(resolved), tc.want)
		}
		for _, l := range pending {
			if !tc.f.Match(l) {
				t.Errorf("%s: selected a letter that does not match", tc.name)
			}
		}
	}
	if l := idx.Find(idx.Letters[4].Envelope.ID); l != idx.Letters[4] {
		t.Error("Find did not find a letter by id")
	}
	if idx.Find("nope") != nil {
		t.Error("Find found a letter that does not exist")
	}
}

func TestReplayRecordsOutcomes(t *testing.T) {
	d := newMemDest()
	fill(t, d, 30)
	idx := load(t, d)
	pending, _ := idx.Select(Filter{})

	// Letters of payments fail; orders succeed.
	var delivered atomic.Int64
	deliver := func(_ context.Context, e *Envelope) event.Result {
		if e.Source == "payments" {
			return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500, Message: "still broken"}}
		}
		delivered.Add(1)
		return event.Result{Outcome: event.Delivered}
	}
	var progressCalls int
	sum := Replay(context.Background(), pending, d, ReplayOptions{Deliver: deliver, Parallel: 4,
		Progress: func(ReplayProgress) { progressCalls++ }})
	if sum.Succeeded != 20 || sum.Failed != 10 || sum.Interrupted || progressCalls != 30 {
		t.Fatalf("summary %+v after %d progress calls; want 20 succeeded, 10 failed, 30 calls", sum, progressCalls)
	}
	if !strings.Contains(sum.Failures[0].Error(), "status 500: still broken") {
		t.Errorf("failure %q does not say why", sum.Failures[0])
	}
	if n := d.count(HeaderResolved); n != 20 {
		t.Fatalf("%d resolution records, want 20", n)
	}

	idx = load(t, d)
	if len(idx.Letters) != 30 {
		t.Fatalf("%d letters after the replay, want still 30 (rewritten letters keep their id)", len(idx.Letters))
	}
	pending, resolved := idx.Select(Filter{})
	if len(pending) != 10 || len(resolved) != 20 {
		t.Fatalf("%d pending, %d resolved; want 10, 20", len(pending), len(resolved))
	}
	for _, l := range pending {
		if l.Envelope.Replays != 1 || l.Envelope.LastError.Message != "still broken" || l.Envelope.Source != "payments" {
			t.Fatalf("failed letter written back as %+v, want replays 1 and the new error", l.Envelope)
		}
	}

	// Again: only the failures are tried; their replays go up.
	sum = Replay(context.Background(), pending, d, ReplayOptions{Deliver: deliver})
	if sum.Succeeded != 0 || sum.Failed != 10 || delivered.Load() != 20 {
		t.Fatalf("second replay %+v with %d deliveries; want 10 failed and nothing delivered again", sum, delivered.Load())
	}
	pending, _ = load(t, d).Select(Filter{})
	if pending[0].Envelope.Replays != 2 {
		t.Fatalf("replays %d after two failed replays, want 2", pending[0].Envelope.Replays)
	}
}

func TestReplayInterruptedContinues(t *testing.T) {
	d := newMemDest()
	fill(t, d, 50)
	ctx, cancel := context.WithCancel(context.Background())
	var mu sync.Mutex
	seen := map[string]int{}
	deliver := func(ctx context.Context, e *Envelope) event.Result {
		mu.Lock()
		seen[e.ID]++
		n := len(seen)
		mu.Unlock()
		if n == 20 {
			cancel() // Ctrl-C while this one and others are in flight
		}
		time.Sleep(5 * time.Millisecond)
		if ctx.Err() != nil {
			t.Error("an in-flight delivery was cancelled instead of being allowed to finish")
		}
		return event.Result{Outcome: event.Delivered}
	}
	pending, _ := load(t, d).Select(Filter{})
	sum := Replay(ctx, pending, d, ReplayOptions{Deliver: deliver, Parallel: 4})
	if !sum.Interrupted || sum.Succeeded < 20 || sum.Succeeded >= 50 {
		t.Fatalf("interrupted replay: %+v", sum)
	}
	pending, resolved := load(t, d).Select(Filter{})
	if len(resolved) != sum.Succeeded || len(pending) != 50-sum.Succeeded {
		t.Fatalf("%d resolved, %d pending after %d succeeded", len(resolved), len(pending), sum.Succeeded)
	}
	sum = Replay(context.Background(), pending, d, ReplayOptions{Deliver: deliver})
	if sum.Interrupted || sum.Failed != 0 || len(seen) != 50 {
		t.Fatalf("re-run: %+v, %d distinct letters delivered", sum, len(seen))
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("letter %s delivered %d times", id, n)
		}
	}
}

func TestReplayThrottleRetriesAndRate(t *testing.T) {
	d := newMemDest()
	fill(t, d, 5)
	pending, _ := load(t, d).Select(Filter{})
	var calls atomic.Int64
	deliver := func(context.Context, *Envelope) event.Result {
		if calls.Add(1) == 1 {
			return event.Result{Outcome: event.Throttled, RetryAfter: 10 * time.Millisecond}
		}
		return event.Result{Outcome: event.Delivered}
	}
	start := time.Now()
	sum := Replay(context.Background(), pending, d, ReplayOptions{Deliver: deliver, Rate: 20})
	if sum.Succeeded != 5 || calls.Load() != 6 {
		t.Fatalf("%+v after %d calls; want 5 succeeded, 6 calls (one throttle retried)", sum, calls.Load())
	}
	// 5 letters at 20/s: the first at once, then 4 × 50 ms. A generous lower
	// bound only: the limiter must have made the replay wait.
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("5 letters at --rate 20 took %s, want at least ~200ms", el)
	}
}

func TestReplayResolutionNotWritten(t *testing.T) {
	d := newMemDest()
	fill(t, d, 1)
	pending, _ := load(t, d).Select(Filter{})
	d.fail = func(r event.Record) error {
		if headerValue(r.Headers, HeaderResolved) != "" {
			return fmt.Errorf("broker down")
		}
		return nil
	}
	sum := Replay(context.Background(), pending, d, ReplayOptions{
		Deliver: func(context.Context, *Envelope) event.Result { return event.Result{Outcome: event.Delivered} }})
	if sum.Failed != 1 || !strings.Contains(sum.Failures[0].Error(), "resolution was not recorded") {
		t.Fatalf("%+v: a delivery whose resolution was lost must count as failed", sum)
	}
}

func TestLoadResolutionIsFinal(t *testing.T) {
	d := newMemDest()
	fill(t, d, 1)
	e := load(t, d).Letters[0].Envelope
	_ = d.Append(context.Background(), []event.Record{resolutionRecord(e, ToFunction, time.Now())})
	rec, _ := letterRecord(e) // a late duplicate of the original write
	_ = d.Append(context.Background(), []event.Record{rec})
	if l := load(t, d).Letters[0]; !l.Resolved {
		t.Fatal("a duplicate envelope after the resolution made the letter pending again")
	}
}

type fakeMeasurer struct {
	calls  atomic.Int64
	bytes  int64
	oldest time.Time
	err    error
}

func (f *fakeMeasurer) Measure(context.Context) (int64, time.Time, error) {
	f.calls.Add(1)
	return f.bytes, f.oldest, f.err
}

func TestGauges(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	g := NewGauges(nil)
	g.now = func() time.Time { return now }
	full := &fakeMeasurer{bytes: 4096, oldest: now.Add(-time.Hour)}
	g.Add("dead", full)
	g.Add("empty", &fakeMeasurer{})
	g.Add("down", &fakeMeasurer{err: fmt.Errorf("unreachable")})
	reg := prometheus.NewRegistry()
	reg.MustRegister(g)
	want := `
# HELP sluice_dead_letter_oldest_age_seconds Age of the oldest record kept in a dead-letter destination; 0 when it is empty.
# TYPE sluice_dead_letter_oldest_age_seconds gauge
sluice_dead_letter_oldest_age_seconds{destination="dead"} 3600
sluice_dead_letter_oldest_age_seconds{destination="empty"} 0
# HELP sluice_dead_letter_stored_bytes Bytes a dead-letter destination holds on its broker (Kafka: log size of all replicas; JetStream: stream bytes).
# TYPE sluice_dead_letter_stored_bytes gauge
sluice_dead_letter_stored_bytes{destination="dead"} 4096
sluice_dead_letter_stored_bytes{destination="empty"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Second)
	_, _ = reg.Gather()
	if n := full.calls.Load(); n != 1 {
		t.Fatalf("measured %d times within the TTL, want once", n)
	}
	now = now.Add(DefaultGaugeTTL)
	_, _ = reg.Gather()
	if n := full.calls.Load(); n != 2 {
		t.Fatalf("measured %d times after the TTL, want twice", n)
	}
}
