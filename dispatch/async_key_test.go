package dispatch

import (
	"testing"

	"github.com/sluicehq/sluice/event"
)

// Two Kafka events at the same offset of different partitions are different
// events: their idempotency keys differ. JetStream keys keep their form.
func TestAsyncIdempotencyKey(t *testing.T) {
	a := asyncIdempotencyKey("s", &event.Record{Topic: "orders", Partition: 0, Offset: 7})
	b := asyncIdempotencyKey("s", &event.Record{Topic: "orders", Partition: 1, Offset: 7})
	if a == b || a != "s-orders-0-7" {
		t.Errorf("Kafka keys %q and %q; want distinct, the first s-orders-0-7", a, b)
	}
	if k := asyncIdempotencyKey("s", &event.Record{Topic: "SIGNUPS", Subject: "signups.x", Offset: 7}); k != "s-SIGNUPS-7" {
		t.Errorf("JetStream key %q, want s-SIGNUPS-7", k)
	}
}
