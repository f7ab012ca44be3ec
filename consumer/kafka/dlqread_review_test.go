package kafka

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

// Records removed (retention, DeleteRecords) while a Scan reads them: the
// Scan ends with what it could read instead of waiting forever for offsets
// that no longer exist.
func TestReaderScanEndsWhenTheRestIsDeleted(t *testing.T) {
	seeds := newCluster(t, 1, "dead")
	broker := consumer.KafkaConfig{Seeds: seeds}
	w, err := NewWriter(broker, "dead")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for i := range 5 { // separate batches, so one fetch can return the first alone
		if err := w.Append(ctx, []event.Record{{Key: []byte("k"), Value: fmt.Appendf(nil, "v%d", i)}}); err != nil {
			t.Fatal(err)
		}
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	r, err := NewReader(broker, "dead", kgo.FetchMaxPartitionBytes(1))
	if err != nil {
		t.Fatal(err)
	}
	scanCtx, scanCancel := context.WithTimeout(ctx, 10*time.Second)
	defer scanCancel()
	n := 0
	var values []string
	err = r.Scan(scanCtx, func(rec event.Record) error {
		n++
		values = append(values, string(rec.Value))
		if n == 1 {
			var o kadm.Offsets
			o.Add(kadm.Offset{Topic: "dead", Partition: 0, At: 5})
			if _, err := kadm.NewClient(cl).DeleteRecords(ctx, o); err != nil {
				t.Errorf("delete records: %v", err)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Scan = %v after %d records; want it to end once the rest was deleted", err, n)
	}
	// What it read is the start of what was written, in order, and not all
	// of it: the deletion met the scan mid-way.
	if n == 0 || n >= 5 {
		t.Fatalf("Scan read %d records (%q), want 1..4: the deletion did not meet the scan mid-way", n, values)
	}
	for i, v := range values {
		if want := fmt.Sprintf("v%d", i); v != want {
			t.Errorf("record %d read is %q, want %q", i, v, want)
		}
	}
}
