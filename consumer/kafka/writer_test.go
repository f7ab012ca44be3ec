package kafka

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
)

func TestWriterAppendRoundTrip(t *testing.T) {
	seeds := newCluster(t, 2, "dead")
	w, err := NewWriter(consumer.KafkaConfig{Seeds: seeds}, "dead")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	old := time.Now().Add(-30 * 24 * time.Hour)
	recs := []event.Record{
		{Topic: "ignored", Offset: 99, Timestamp: old, Key: []byte("k1"), Value: []byte("v1"),
			Headers: []event.Header{{Key: "sluice-condition", Value: []byte("RecordAgeExceeded")}, {Key: "bin", Value: []byte{0xff}}}},
		{Key: []byte("k1"), Value: []byte("v2")},
		{Key: nil, Value: []byte("v3")},
	}
	before := time.Now()
	if err := w.Append(t.Context(), recs); err != nil {
		t.Fatalf("Append: %v", err)
	}

	got := consumeAll(t, seeds, "dead", len(recs))
	byValue := map[string]*kgo.Record{}
	for _, r := range got {
		byValue[string(r.Value)] = r
	}
	for _, want := range recs {
		g := byValue[string(want.Value)]
		if g == nil {
			t.Fatalf("record %q not written; got %d records", want.Value, len(got))
		}
		if !bytes.Equal(g.Key, want.Key) {
			t.Errorf("%s: key %q, want %q", want.Value, g.Key, want.Key)
		}
		if len(g.Headers) != len(want.Headers) {
			t.Fatalf("%s: headers %v, want %v", want.Value, g.Headers, want.Headers)
		}
		for i, h := range want.Headers {
			if g.Headers[i].Key != h.Key || !bytes.Equal(g.Headers[i].Value, h.Value) {
				t.Errorf("%s: header %d = %v, want %v", want.Value, i, g.Headers[i], h)
			}
		}
		if g.Timestamp.Before(before.Add(-time.Second)) {
			t.Errorf("%s: timestamp %v copied from the input; want the time of writing", want.Value, g.Timestamp)
		}
	}
	// Same key, same partition (the sticky key partitioner), in order.
	if a, b := byValue["v1"], byValue["v2"]; a.Partition != b.Partition || a.Offset > b.Offset {
		t.Errorf("records of key k1 at %d@%d and %d@%d, want one partition in order", a.Partition, a.Offset, b.Partition, b.Offset)
	}
	if err := w.Append(t.Context(), nil); err != nil {
		t.Errorf("Append(nil) = %v", err)
	}
}

// A missing topic must fail Append in bounded time: franz-go would retry
// UNKNOWN_TOPIC_OR_PARTITION, and a dead-letter write that hangs blocks its
// shard without a word in the log.
func TestWriterMissingTopicFailsInTime(t *testing.T) {
	seeds := newCluster(t, 1, "other")
	w, err := NewWriter(consumer.KafkaConfig{Seeds: seeds}, "missing")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	err = w.Append(t.Context(), []event.Record{{Value: []byte("x")}})
	took := time.Since(start)
	if err == nil {
		t.Fatal("Append to a missing topic succeeded")
	}
	if took > DefaultWriteTimeout+2*time.Second {
		t.Errorf("Append took %v, want at most ~%v", took, DefaultWriteTimeout)
	}
	t.Logf("missing topic: error after %v: %v", took.Round(time.Millisecond), err)
}

func TestWriterUnreachableClusterFailsInTime(t *testing.T) {
	w, err := NewWriter(consumer.KafkaConfig{Seeds: []string{"127.0.0.1:1"}}, "t", WithWriteTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	start := time.Now()
	err = w.Append(t.Context(), []event.Record{{Value: []byte("x")}})
	took := time.Since(start)
	if err == nil {
		t.Fatal("Append to an unreachable cluster succeeded")
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Logf("error is not DeadlineExceeded (fine, but note): %v", err)
	}
	if took > 4*time.Second {
		t.Errorf("Append took %v, want about the 2s write timeout", took)
	}
}

func TestWriterClosed(t *testing.T) {
	seeds := newCluster(t, 1, "dead")
	w, err := NewWriter(consumer.KafkaConfig{Seeds: seeds}, "dead")
	if err != nil {
		t.Fatal(err)
	}
	w.Close()
	if err := w.Append(t.Context(), []event.Record{{Value: []byte("x")}}); !errors.Is(err, ErrWriterClosed) {
		t.Errorf("Append after Close = %v, want ErrWriterClosed", err)
	}
}

func TestNewWriterRejects(t *testing.T) {
	if _, err := NewWriter(consumer.KafkaConfig{Seeds: []string{"a:1"}}, ""); err == nil {
		t.Error("no topic: no error")
	}
	if _, err := NewWriter(consumer.KafkaConfig{}, "t"); err == nil {
		t.Error("no seeds: no error")
	}
}

// newCluster starts a kfake cluster with topics of the given partitions and
// returns its addresses.
func newCluster(t testing.TB, partitions int32, topics ...string) []string {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, topics...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c.ListenAddrs()
}

// consumeAll reads n records of topic from the start, without a group.
func consumeAll(t testing.TB, seeds []string, topic string, n int) []*kgo.Record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumeTopics(topic),
		kgo.ConsumeStartOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var out []*kgo.Record
	for len(out) < n {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read %d of %d records of %s: %v", len(out), n, topic, err)
		}
		out = append(out, fs.Records()...)
	}
	return out
}

// A Writer learns its topic's max.message.bytes before it produces, and
// its producer refuses what the topic would refuse.
func TestWriterLearnsTopicLimit(t *testing.T) {
	seeds := newCluster(t, 1)
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	limit := "60000"
	if _, err := kadm.NewClient(cl).CreateTopic(t.Context(), 1, 1, map[string]*string{"max.message.bytes": &limit}, "dead"); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(consumer.KafkaConfig{Seeds: seeds}, "dead")
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	n, err := w.MaxRecordBytes(t.Context())
	if err != nil || n != 60000 {
		t.Fatalf("MaxRecordBytes = %d, %v; want 60000", n, err)
	}
	if err := w.Append(t.Context(), []event.Record{{Value: make([]byte, 50000)}}); err != nil {
		t.Fatalf("a record under the limit: %v", err)
	}
	if err := w.Append(t.Context(), []event.Record{{Value: make([]byte, 70000)}}); err == nil {
		t.Fatal("a record over the topic's limit was accepted")
	}
}

// A retry record its producer or topic refuses as too large is
// errRetryTooLarge, which the async source dead-letters (RetryTooLarge)
// instead of retrying the write forever.
func TestProduceRetryTooLarge(t *testing.T) {
	seeds := newCluster(t, 1, "orders.sluice-retry.src.1s")
	cl, err := newRetryProducer(consumer.KafkaConfig{Seeds: seeds}, 10_000, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	kr := &kgo.Record{Topic: "orders.sluice-retry.src.1s", Value: make([]byte, 50_000)}
	if err := produceRetry(t.Context(), cl, kr); !errors.Is(err, errRetryTooLarge) {
		t.Fatalf("produceRetry of a record over the limit: %v, want errRetryTooLarge", err)
	}
	kr = &kgo.Record{Topic: "orders.sluice-retry.src.1s", Value: make([]byte, 5_000)}
	if err := produceRetry(t.Context(), cl, kr); err != nil {
		t.Fatalf("produceRetry under the limit: %v", err)
	}
}
