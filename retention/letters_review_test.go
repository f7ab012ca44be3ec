package retention

import (
	"context"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
)

// A resolution covers the failures before it, not a new failure of the same
// record afterwards (same id: the source re-read after an offset reset, a
// crash that re-dead-lettered it after the replay): that one must be
// pending again, or no replay would ever deliver it.
func TestLoadNewFailureAfterResolutionIsPending(t *testing.T) {
	d := newMemDest()
	fill(t, d, 1)
	e := load(t, d).Letters[0].Envelope
	resolvedAt := e.LastAttemptAt.Add(time.Hour)
	_ = d.Append(context.Background(), []event.Record{resolutionRecord(e, ToFunction, resolvedAt)})
	if l := load(t, d).Letters[0]; !l.Resolved {
		t.Fatal("the letter is not resolved after its resolution")
	}
	again := *e
	again.FirstAttemptAt = resolvedAt.Add(time.Hour)
	again.LastAttemptAt = resolvedAt.Add(2 * time.Hour)
	rec, err := letterRecord(&again)
	if err != nil {
		t.Fatal(err)
	}
	_ = d.Append(context.Background(), []event.Record{rec})
	idx := load(t, d)
	if len(idx.Letters) != 1 {
		t.Fatalf("%d letters, want 1", len(idx.Letters))
	}
	if l := idx.Letters[0]; l.Resolved {
		t.Fatal("a failure after the resolution is hidden as resolved: no replay would deliver it")
	}
	if pending, _ := idx.Select(Filter{}); len(pending) != 1 {
		t.Fatalf("%d pending, want 1", len(pending))
	}
	// And a replay that delivers it resolves it again.
	_ = d.Append(context.Background(), []event.Record{resolutionRecord(&again, ToFunction, again.LastAttemptAt.Add(time.Minute))})
	if l := load(t, d).Letters[0]; !l.Resolved {
		t.Fatal("the second resolution did not resolve it")
	}
}
