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
	err = r.Scan(scanCtx, func(event.Record) error {
		n++
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
}
