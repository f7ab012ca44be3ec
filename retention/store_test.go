package retention

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sluicehq/sluice/event"
)

type fakeAppender struct {
	err  error
	recs []event.Record
}

func (f *fakeAppender) Append(_ context.Context, recs []event.Record) error {
	if f.err != nil {
		return f.err
	}
	f.recs = append(f.recs, recs...)
	return nil
}

func letter(off int64, cond event.Condition) event.DeadLetter {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	return event.DeadLetter{
		Source: "orders", Function: "thumbnail", Mode: "stream", Condition: cond, Attempts: 3,
		FirstAttemptAt: at, LastAttemptAt: at.Add(time.Minute),
		LastError: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"},
		Record: event.Record{Topic: "orders", Partition: 2, Offset: off, Timestamp: at.Add(-time.Hour),
			Key: []byte("k"), Value: []byte{0, 1, 0xff}, Headers: []event.Header{{Key: "tenant", Value: []byte("acme")}}},
	}
}

func TestStoreWritesEnvelopes(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewStoreMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	app := &fakeAppender{}
	s := NewStore("dead", app, m)
	if err := s.DeadLetter(context.Background(), []event.DeadLetter{letter(7, event.RetryAttemptsExhausted), letter(8, event.RecordAgeExceeded)}); err != nil {
		t.Fatal(err)
	}
	if len(app.recs) != 2 {
		t.Fatalf("%d records written, want one per letter", len(app.recs))
	}
	e, err := DecodeEnvelope(app.recs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	want := letter(7, event.RetryAttemptsExhausted)
	if e.Version != 1 || e.Source != "orders" || e.Function != "thumbnail" || e.Mode != "stream" ||
		e.Condition != event.RetryAttemptsExhausted || e.Attempts != 3 || e.Replays != 0 ||
		!e.FirstAttemptAt.Equal(want.FirstAttemptAt) || e.LastError != want.LastError ||
		e.Record.Offset != 7 || e.Record.Partition != 2 || string(e.Record.Value) != "\x00\x01\xff" ||
		len(e.Record.Headers) != 1 || string(e.Record.Headers[0].Value) != "acme" {
		t.Fatalf("envelope %+v", e)
	}
	if string(app.recs[0].Key) != e.ID {
		t.Fatalf("key %q, want the envelope id %q", app.recs[0].Key, e.ID)
	}
	hdr := map[string]string{}
	for _, h := range app.recs[0].Headers {
		hdr[h.Key] = string(h.Value)
	}
	if hdr[HeaderCondition] != "RetryAttemptsExhausted" || hdr[HeaderSource] != "orders" || hdr[HeaderFunction] != "thumbnail" {
		t.Fatalf("broker headers %v", hdr)
	}
	if again := NewEnvelope(letter(7, event.RetryAttemptsExhausted)); again.ID != e.ID {
		t.Fatal("the same record dead-lettered twice got two ids")
	}
	if other := NewEnvelope(letter(8, event.RetryAttemptsExhausted)); other.ID == e.ID {
		t.Fatal("two records share an id")
	}
	if v := testutil.ToFloat64(m.letters.WithLabelValues("orders", "RecordAgeExceeded")); v != 1 {
		t.Fatalf("sluice_dead_letters_total = %v", v)
	}
}

func TestStoreReportsWriteFailure(t *testing.T) {
	m, _ := NewStoreMetrics(nil)
	s := NewStore("dead", &fakeAppender{err: errors.New("UNKNOWN_TOPIC_OR_PARTITION")}, m)
	err := s.DeadLetter(context.Background(), []event.DeadLetter{letter(1, event.PermanentError)})
	if err == nil {
		t.Fatal("a failed write returned nil: the shard would move past records that were not stored")
	}
	if v := testutil.ToFloat64(m.errs.WithLabelValues("dead")); v != 1 {
		t.Fatalf("sluice_dead_letter_errors_total = %v", v)
	}
	if v := testutil.ToFloat64(m.letters.WithLabelValues("orders", "PermanentError")); v != 0 {
		t.Fatalf("counted %v dead letters that were not written", v)
	}
}

func TestDecodeEnvelopeRejects(t *testing.T) {
	for _, body := range []string{`nope`, `{"version":2,"id":"x","source":"s","condition":"PermanentError"}`, `{"version":1}`} {
		if _, err := DecodeEnvelope([]byte(body)); err == nil {
			t.Errorf("DecodeEnvelope(%s) accepted", body)
		}
	}
}
