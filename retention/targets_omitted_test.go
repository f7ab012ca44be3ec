package retention

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

type recordingDeliverer struct{ got []event.Record }

func (r *recordingDeliverer) Deliver(_ context.Context, d shard.Delivery) event.Result {
	r.got = append(r.got, d.Records...)
	return event.Result{Outcome: event.Delivered}
}

// A letter stored without its payload is replayed with the original fetched
// from the source by its coordinates; when the source no longer has it, the
// letter fails with the reason.
func TestReplayFetchesOmittedPayload(t *testing.T) {
	e := NewEnvelope(letter(7, event.PermanentError))
	e.Record.Key, e.Record.Value, e.Record.Headers = nil, nil, nil
	e.Record.PayloadOmitted, e.Record.OriginalSize = true, 900_000
	d := &recordingDeliverer{}
	gone := false
	fetchedAt, fetchedSize := e.Record.Timestamp, 900_000
	tg := &Targets{
		HasSource:   func(string) bool { return true },
		HasFunction: func(string) bool { return true },
		Stream:      func(string, string) (shard.Deliverer, bool) { return d, true },
		Fetch: func(_ context.Context, src string, at event.Record) (event.Record, error) {
			if gone {
				return event.Record{}, errors.New("the source no longer retains the record")
			}
			if src != "orders" || at.Topic != "orders" || at.Partition != 2 || at.Offset != 7 {
				t.Errorf("fetched %s %s/%d@%d", src, at.Topic, at.Partition, at.Offset)
			}
			return event.Record{Topic: "orders", Partition: 2, Offset: 7, Timestamp: fetchedAt, Value: make([]byte, fetchedSize)}, nil
		},
	}
	if res := tg.ToFunction(t.Context(), &e); res.Outcome != event.Delivered || len(d.got) != 1 || len(d.got[0].Value) != 900_000 {
		t.Fatalf("replay: %+v, delivered %d records", res, len(d.got))
	}
	// The topic was made again: another record at the same coordinates
	// (another time, or another size) is not replayed.
	for _, c := range []struct {
		at   time.Time
		size int
	}{{e.Record.Timestamp.Add(time.Hour), 900_000}, {e.Record.Timestamp, 899_999}} {
		fetchedAt, fetchedSize = c.at, c.size
		res := tg.ToFunction(t.Context(), &e)
		if res.Outcome == event.Delivered || !strings.Contains(res.Error.Message, "is another") || len(d.got) != 1 {
			t.Fatalf("replay of another record at the coordinates (%v, %d bytes): %+v, delivered %d records", c.at, c.size, res, len(d.got))
		}
	}
	gone = true
	res := tg.ToFunction(t.Context(), &e)
	if res.Outcome == event.Delivered || !strings.Contains(res.Error.Message, "without its payload") ||
		!strings.Contains(res.Error.Message, "no longer retains") {
		t.Fatalf("replay of a gone record: %+v", res)
	}
}
