package retention

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// AsyncDeliverer invokes a function with one event (consumer.AsyncDeliverer,
// implemented by dispatch.AsyncDeliverer).
type AsyncDeliverer interface {
	Deliver(ctx context.Context, rec event.Record, attempt int, waitUntil time.Time) event.Result
}

// Targets sends letters back for Replay (ReplayOptions.Deliver): to their
// function (ToFunction) or to their source's topic or stream (ToSource).
// The lookups come from the wiring, so that a replay invokes functions
// exactly as live traffic does (same dispatcher, limits, encoders, scopes).
type Targets struct {
	// HasSource and HasFunction report whether the configuration still has
	// a letter's source and function.
	HasSource, HasFunction func(name string) bool
	// Stream returns the deliverer of stream source src, sending to
	// function fn; false when src is not a stream source.
	Stream func(src, fn string) (shard.Deliverer, bool)
	// Async returns the deliverer of async source src, sending to
	// function fn.
	Async func(src, fn string) AsyncDeliverer
	// Writer opens a writer to source src's topic or stream; it fails when
	// the topic or stream does not exist.
	Writer func(ctx context.Context, src string) (Appender, error)
	// Fetch reads the record at the coordinates of at (topic, partition,
	// offset; stream, sequence) from source src's broker, for a letter
	// stored without its payload (Envelope.Record.PayloadOmitted); nil
	// when there is no way to. An error says why (e.g. the source no longer
	// retains it). A JetStream record has the subject it was published to
	// (at's).
	Fetch func(ctx context.Context, src string, at event.Record) (event.Record, error)

	mu      sync.Mutex          // guards writers and broken; serializes Writer calls
	writers map[string]Appender // source → its writer (ToSource)
	broken  map[string]error    // source → why no writer can be had (a missing topic): fail fast
}

// ToFunction invokes e's function with the original record: a stream
// letter as a one-record batch encoded as its source encodes batches, an
// async letter as the raw payload; it is attempt e.Attempts+1.
func (t *Targets) ToFunction(ctx context.Context, e *Envelope) event.Result {
	if !t.HasSource(e.Source) {
		return notReplayable("source %q is not in the configuration", e.Source)
	}
	if !t.HasFunction(e.Function) {
		return notReplayable("function %q is not in the configuration", e.Function)
	}
	rec, bad, ok := t.original(ctx, e)
	if !ok {
		return bad
	}
	attempt := e.Attempts + 1
	if e.Mode == "async" {
		return t.Async(e.Source, e.Function).Deliver(ctx, rec, attempt, time.Time{}) // replay: no age bound on the wait
	}
	// The function that failed it, even if the source points elsewhere now.
	d, ok := t.Stream(e.Source, e.Function)
	if !ok {
		return notReplayable("source %q is not a stream source in the configuration", e.Source)
	}
	return d.Deliver(ctx, shard.Delivery{Records: []event.Record{rec}, Attempt: attempt})
}

// ToSource appends e's original record (key, value, headers) to its
// source's topic or stream again, for the source to consume as new.
func (t *Targets) ToSource(ctx context.Context, e *Envelope) event.Result {
	w, err := t.sourceWriter(ctx, e.Source)
	if err != nil {
		return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "connection", Message: err.Error()}}
	}
	rec, bad, ok := t.original(ctx, e)
	if !ok {
		return bad
	}
	// The subject stays: a JetStream record goes back to the subject it was
	// published to (a fetched one has the letter's, see Fetch).
	rec.Topic, rec.Partition, rec.Offset = "", 0, 0
	if err := w.Append(ctx, []event.Record{rec}); err != nil {
		return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "connection", Message: err.Error()}}
	}
	return event.Result{Outcome: event.Delivered}
}

// original is e's record: the one it carries or, when it was stored without
// its payload, the one its source still retains at its coordinates. When
// neither can be had, ok is false and res is the letter's failure, with the
// reason.
func (t *Targets) original(ctx context.Context, e *Envelope) (rec event.Record, res event.Result, ok bool) {
	if !e.Record.PayloadOmitted {
		return e.Original(), res, true
	}
	where := fmt.Sprintf("%s partition %d offset %d", e.Record.Topic, e.Record.Partition, e.Record.Offset)
	if e.Record.Subject != "" {
		where = fmt.Sprintf("stream %s sequence %d", e.Record.Topic, e.Record.Offset)
	}
	if t.Fetch == nil {
		return rec, notReplayable("the letter was stored without its payload (%d bytes) and the record at %s cannot be fetched", e.Record.OriginalSize, where), false
	}
	at := e.Original()
	got, err := t.Fetch(ctx, e.Source, at)
	if err != nil {
		return rec, notReplayable("the letter was stored without its payload (%d bytes), and fetching the original at %s from source %s failed: %v",
			e.Record.OriginalSize, where, e.Source, err), false
	}
	// The coordinates name another record once the topic or stream was
	// deleted and made again: the size and time must be the letter's.
	if n := recordBytes(&got); n != e.Record.OriginalSize || !sameTime(got.Timestamp, e.Record.Timestamp) {
		return rec, notReplayable("the letter was stored without its payload (%d bytes of %s), but the record now at %s is another (%d bytes of %s): was the topic or stream made again?",
			e.Record.OriginalSize, e.Record.Timestamp.UTC().Format(time.RFC3339Nano), where, n, got.Timestamp.UTC().Format(time.RFC3339Nano)), false
	}
	return got, res, true
}

// sourceWriter returns (once per source) a writer to src's topic or
// stream. Replay workers call it concurrently.
func (t *Targets) sourceWriter(ctx context.Context, src string) (Appender, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if w, ok := t.writers[src]; ok {
		return w, nil
	}
	if err, ok := t.broken[src]; ok {
		return nil, err
	}
	if !t.HasSource(src) {
		err := fmt.Errorf("dlq: source %q is not in the configuration", src)
		t.markBroken(src, err)
		return nil, err
	}
	w, err := t.Writer(ctx, src)
	if err != nil {
		t.markBroken(src, err)
		return nil, err
	}
	if t.writers == nil {
		t.writers = map[string]Appender{}
	}
	t.writers[src] = w
	return w, nil
}

func (t *Targets) markBroken(src string, err error) {
	if t.broken == nil {
		t.broken = map[string]error{}
	}
	t.broken[src] = err
}

func notReplayable(format string, args ...any) event.Result {
	return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "replay", Message: fmt.Sprintf(format, args...)}}
}

// sameTime reports whether a and b are the same record time: within a
// millisecond (Kafka keeps milliseconds; JSON and brokers may differ below).
func sameTime(a, b time.Time) bool {
	d := a.Sub(b)
	return d > -time.Millisecond && d < time.Millisecond
}
