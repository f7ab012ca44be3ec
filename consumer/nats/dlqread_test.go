package nats

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
)

func TestReaderScansAndMeasures(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	r, err := NewReader(nc, "DEAD")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Scan(ctx, func(event.Record) error { t.Error("a missing stream has records"); return nil }); err != nil {
		t.Fatalf("Scan of a missing stream: %v", err)
	}
	if _, _, err := EnsureStream(ctx, js, "DEAD", []string{"sluice.dead.>"}, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	if b, oldest, err := r.Measure(ctx); err != nil || b != 0 || !oldest.IsZero() {
		t.Fatalf("Measure of an empty stream = %d, %v, %v", b, oldest, err)
	}
	w, err := NewWriter(nc, "DEAD", "sluice.dead")
	if err != nil {
		t.Fatal(err)
	}
	var recs []event.Record
	for i := range 1200 { // more than one fetch
		recs = append(recs, event.Record{Key: fmt.Appendf(nil, "id%d", i%50), Value: fmt.Appendf(nil, "v%d", i),
			Headers: []event.Header{{Key: "sluice-source", Value: []byte("orders")}}})
	}
	if err := w.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	var got []event.Record
	err = r.Scan(ctx, func(rec event.Record) error {
		got = append(got, rec)
		if len(got) == 1 {
			// Stored while scanning: not read by this Scan.
			if err := w.Append(ctx, []event.Record{{Key: []byte("late"), Value: []byte("late")}}); err != nil {
				t.Error(err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1200 {
		t.Fatalf("scanned %d records, want the 1200 present at the start", len(got))
	}
	for i, rec := range got {
		if string(rec.Value) != fmt.Sprintf("v%d", i) || rec.Offset != int64(i+1) || rec.Subject != fmt.Sprintf("sluice.dead.id%d", i%50) ||
			!hasHeader(rec.Headers, "sluice-source", "orders") || rec.Timestamp.IsZero() {
			t.Fatalf("record %d: %+v", i, rec)
		}
	}
	b, oldest, err := r.Measure(ctx)
	if err != nil || b <= 0 || time.Since(oldest) > time.Minute || time.Since(oldest) < 0 {
		t.Fatalf("Measure = %d bytes, oldest %v, %v", b, oldest, err)
	}
}

func hasHeader(hs []event.Header, k, v string) bool {
	for _, h := range hs {
		if h.Key == k && string(h.Value) == v {
			return true
		}
	}
	return false
}
