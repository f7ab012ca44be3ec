package retention

import (
	"context"
	"errors"
	"strings"
	"testing"

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
			return event.Record{Topic: "orders", Partition: 2, Offset: 7, Value: make([]byte, 900_000)}, nil
		},
	}
	if res := tg.ToFunction(t.Context(), &e); res.Outcome != event.Delivered || len(d.got) != 1 || len(d.got[0].Value) != 900_000 {
		t.Fatalf("replay: %+v, delivered %d records", res, len(d.got))
	}
	gone = true
	res := tg.ToFunction(t.Context(), &e)
	if res.Outcome == event.Delivered || !strings.Contains(res.Error.Message, "without its payload") ||
		!strings.Contains(res.Error.Message, "no longer retains") {
		t.Fatalf("replay of a gone record: %+v", res)
	}
}
