package retention

import (
	"context"
	"errors"
	"testing"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

type recordingAppender struct {
	recs []event.Record
}

func (a *recordingAppender) Append(_ context.Context, recs []event.Record) error {
	a.recs = append(a.recs, recs...)
	return nil
}

// Targets: a letter whose source or function left the configuration is not
// replayable; a source whose writer cannot be had fails fast after the
// first try; a record sent back to its source loses its old position.
func TestTargets(t *testing.T) {
	ctx := context.Background()
	has := func(names ...string) func(string) bool {
		return func(n string) bool {
			for _, m := range names {
				if m == n {
					return true
				}
			}
			return false
		}
	}
	opens := 0
	w := &recordingAppender{}
	tg := &Targets{
		HasSource:   has("src", "gone-topic"),
		HasFunction: has("fn"),
		Stream:      func(string, string) (shard.Deliverer, bool) { return nil, false },
		Writer: func(_ context.Context, src string) (Appender, error) {
			opens++
			if src == "gone-topic" {
				return nil, errors.New("topic does not exist")
			}
			return w, nil
		},
	}
	for _, e := range []*Envelope{
		{Source: "nope", Function: "fn"},
		{Source: "src", Function: "nope"},
		{Source: "src", Function: "fn", Mode: "stream"},
	} {
		if r := tg.ToFunction(ctx, e); r.Outcome != event.Permanent || r.Error.Kind != "replay" {
			t.Errorf("ToFunction(%s → %s) = %+v, want a permanent replay error", e.Source, e.Function, r)
		}
	}
	for range 2 {
		if r := tg.ToSource(ctx, &Envelope{Source: "gone-topic"}); r.Outcome != event.Failed {
			t.Errorf("ToSource to a missing topic = %+v, want Failed", r)
		}
	}
	e := &Envelope{Source: "src", Record: EnvelopeRecord{Topic: "t", Partition: 3, Offset: 9, Key: []byte("k"), Value: []byte("v")}}
	for range 2 {
		if r := tg.ToSource(ctx, e); r.Outcome != event.Delivered {
			t.Fatalf("ToSource = %+v, want Delivered", r)
		}
	}
	if opens != 2 {
		t.Errorf("writers opened %d times, want once per source (2)", opens)
	}
	if r := w.recs[0]; r.Topic != "" || r.Partition != 0 || r.Offset != 0 || string(r.Key) != "k" || string(r.Value) != "v" {
		t.Errorf("appended %+v, want key and value without the old position", r)
	}
}
