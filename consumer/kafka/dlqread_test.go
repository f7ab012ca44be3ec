package kafka

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

func TestReaderScansToTheEndAtStart(t *testing.T) {
	seeds := newCluster(t, 3, "dead")
	broker := consumer.KafkaConfig{Seeds: seeds}
	w, err := NewWriter(broker, "dead")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var recs []event.Record
	for i := range 50 {
		recs = append(recs, event.Record{Key: fmt.Appendf(nil, "k%d", i%7), Value: fmt.Appendf(nil, "v%d", i),
			Headers: []event.Header{{Key: "sluice-source", Value: []byte("orders")}}})
	}
	if err := w.Append(ctx, recs); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(broker, "dead")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	last := map[int32]int64{}
	err = r.Scan(ctx, func(rec event.Record) error {
		if prev, ok := last[rec.Partition]; ok && rec.Offset <= prev {
			t.Errorf("partition %d: offset %d after %d", rec.Partition, rec.Offset, prev)
		}
		last[rec.Partition] = rec.Offset
		if len(rec.Headers) != 1 || string(rec.Headers[0].Value) != "orders" || rec.Timestamp.IsZero() {
			t.Errorf("record %+v lost its headers or timestamp", rec)
		}
		seen[string(rec.Value)] = true
		if len(seen) == 10 {
			// Written while scanning: not read by this Scan.
			if err := w.Append(ctx, []event.Record{{Key: []byte("late"), Value: []byte("late")}}); err != nil {
				t.Error(err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) != 50 || seen["late"] {
		t.Fatalf("scanned %d distinct records (late one: %v), want the 50 present at the start", len(seen), seen["late"])
	}

	stop := errors.New("stop")
	n := 0
	if err := r.Scan(ctx, func(event.Record) error { n++; return stop }); !errors.Is(err, stop) || n != 1 {
		t.Fatalf("Scan returned %v after %d records, want fn's error after 1", err, n)
	}

	if ok, err := r.Exists(ctx); !ok || err != nil {
		t.Fatalf("Exists = %v, %v", ok, err)
	}
	missing, _ := NewReader(broker, "nope")
	if ok, err := missing.Exists(ctx); ok || err != nil {
		t.Fatalf("Exists of a missing topic = %v, %v; want false, nil", ok, err)
	}
	if err := missing.Scan(ctx, func(event.Record) error { t.Error("a missing topic has records"); return nil }); err != nil {
		t.Fatalf("Scan of a missing topic: %v", err)
	}
}

func TestNewReaderRejects(t *testing.T) {
	if _, err := NewReader(consumer.KafkaConfig{Seeds: []string{"a:1"}}, ""); err == nil {
		t.Error("no topic: no error")
	}
	if _, err := NewReader(consumer.KafkaConfig{}, "t"); err == nil {
		t.Error("no seeds: no error")
	}
}
