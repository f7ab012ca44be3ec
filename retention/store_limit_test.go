package retention

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/event"
)

type limitedAppender struct {
	fakeAppender
	limit int
}

func (l *limitedAppender) MaxRecordBytes(context.Context) (int, error) { return l.limit, nil }

// A letter whose envelope would not fit its destination is written without
// its payload, with its size and coordinates; one that fits keeps it. Each
// stored letter is one Warn line, which a default (Info) logger shows.
func TestStoreOmitsPayloadThatDoesNotFit(t *testing.T) {
	m, err := NewStoreMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	app := &limitedAppender{limit: 100_000}
	var logs bytes.Buffer
	s := NewStore("dead", app, m, WithLogger(slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelInfo}))))
	small, big := letter(1, event.PermanentError), letter(2, event.PermanentError)
	big.Record.Value = make([]byte, 900_000)
	if err := s.DeadLetter(t.Context(), []event.DeadLetter{small, big}); err != nil {
		t.Fatal(err)
	}
	for i, r := range app.recs {
		if len(r.Value)+len(r.Key) > app.limit {
			t.Errorf("letter %d: %d bytes, over the limit", i, len(r.Value))
		}
	}
	e0, err := DecodeEnvelope(app.recs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if e0.Record.PayloadOmitted || !bytes.Equal(e0.Record.Value, small.Record.Value) {
		t.Errorf("a letter that fits lost its payload: %+v", e0.Record)
	}
	e1, err := DecodeEnvelope(app.recs[1].Value)
	if err != nil {
		t.Fatal(err)
	}
	r := e1.Record
	if !r.PayloadOmitted || r.Value != nil || !bytes.Equal(r.Key, big.Record.Key) || r.OriginalSize != 900_000+1+6+4 ||
		r.Topic != "orders" || r.Partition != 2 || r.Offset != 2 {
		t.Errorf("omitted letter: %+v", r)
	}
	out := logs.String()
	if got := strings.Count(out, "record dead-lettered"); got != 2 {
		t.Fatalf("%d dead-letter lines, want 2:\n%s", got, out)
	}
	for _, want := range []string{"level=WARN", "source=orders", "function=thumbnail", "shard=orders/2", "offset=2",
		"condition=PermanentError", "error=boom", "payload_omitted=true"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}
}

// A flood of letters of one shard is logged as the first lines, not all.
func TestStoreLogIsRateLimited(t *testing.T) {
	m, err := NewStoreMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	s := NewStore("dead", &fakeAppender{}, m, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	for i := range 100 {
		if err := s.DeadLetter(t.Context(), []event.DeadLetter{letter(int64(i), event.RetryAttemptsExhausted)}); err != nil {
			t.Fatal(err)
		}
	}
	if got := strings.Count(logs.String(), "record dead-lettered"); got != 10 {
		t.Fatalf("%d lines for 100 letters of one shard, want the first 10", got)
	}
}

// An omitted letter keeps the record's key unless the key is what does not
// fit; a Keep hook runs before a letter without its payload is written, and
// its failure fails the write.
func TestStoreOmittedKeyAndKeep(t *testing.T) {
	m, err := NewStoreMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	app := &limitedAppender{limit: 100_000}
	s := NewStore("dead", app, m)
	huge := letter(3, event.PermanentError)
	huge.Record.Key = make([]byte, 200_000)
	kept := 0
	huge.Keep = func(context.Context) error { kept++; return nil }
	if err := s.DeadLetter(t.Context(), []event.DeadLetter{huge}); err != nil {
		t.Fatal(err)
	}
	e, err := DecodeEnvelope(app.recs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Record.PayloadOmitted || e.Record.Key != nil || e.Record.OriginalSize != 200_000+3+6+4 || kept != 1 {
		t.Fatalf("letter of a huge key: %+v, kept %d times", e.Record, kept)
	}
	small := letter(4, event.PermanentError)
	small.Keep = func(context.Context) error { kept++; return nil }
	if err := s.DeadLetter(t.Context(), []event.DeadLetter{small}); err != nil || kept != 1 {
		t.Fatalf("a letter that fits: %v, kept %d times (want no keep)", err, kept)
	}
	huge.Keep = func(context.Context) error { return context.DeadlineExceeded }
	if err := s.DeadLetter(t.Context(), []event.DeadLetter{huge}); err == nil || len(app.recs) != 2 {
		t.Fatalf("a failed keep: %v, %d letters written (want an error, none more)", err, len(app.recs))
	}
}
