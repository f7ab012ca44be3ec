package kafka

import (
	"encoding/json"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

// TestWriterLowersLimitAfterRefusal: a Writer that may not describe configs
// falls back to 1,000,012 bytes; when the topic (max.message.bytes 60,000)
// refuses a letter as too large, the next write of the same letter leaves
// its payload out and is stored: the shard is not blocked.
func TestWriterLowersLimitAfterRefusal(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	seeds := c.ListenAddrs()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	limit := "60000"
	if _, err := kadm.NewClient(cl).CreateTopic(t.Context(), 1, 1, map[string]*string{"max.message.bytes": &limit}, "dead"); err != nil {
		t.Fatal(err)
	}
	// No DescribeConfigs permission.
	c.ControlKey(kmsg.DescribeConfigs.Int16(), func(kreq kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := kreq.(*kmsg.DescribeConfigsRequest)
		resp := req.ResponseKind().(*kmsg.DescribeConfigsResponse)
		for _, r := range req.Resources {
			rr := kmsg.NewDescribeConfigsResponseResource()
			rr.ResourceType, rr.ResourceName = r.ResourceType, r.ResourceName
			rr.ErrorCode = kerr.TopicAuthorizationFailed.Code
			if r.ResourceType == kmsg.ConfigResourceTypeBroker {
				rr.ErrorCode = kerr.ClusterAuthorizationFailed.Code
			}
			resp.Resources = append(resp.Resources, rr)
		}
		return resp, nil, true
	})
	w, err := NewWriter(consumer.KafkaConfig{Seeds: seeds}, "dead", WithWriteTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if n, err := w.MaxRecordBytes(t.Context()); err != nil || n != fallbackLimit {
		t.Fatalf("MaxRecordBytes = %d, %v; want the fallback %d", n, err, fallbackLimit)
	}
	m, err := retention.NewStoreMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	store := retention.NewStore("dead", w, m)
	dl := event.DeadLetter{Source: "orders", Function: "fn", Mode: "stream", Condition: event.PermanentError, Attempts: 1,
		Record: event.Record{Topic: "orders", Partition: 0, Offset: 7, Timestamp: time.Now(), Value: noise(100_000)}}
	if err := store.DeadLetter(t.Context(), []event.DeadLetter{dl}); err == nil {
		t.Fatal("the first write of a 133 KB envelope to a 60 KB topic was stored")
	}
	body, err := json.Marshal(retention.NewEnvelope(dl))
	if err != nil {
		t.Fatal(err)
	}
	// The refused record is the body, its id as key and three short headers.
	if n, err := w.MaxRecordBytes(t.Context()); err != nil || n >= len(body)+200 {
		t.Fatalf("MaxRecordBytes after the refusal = %d, %v; want below the refused letter (%d bytes of body)", n, err, len(body))
	}
	if err := store.DeadLetter(t.Context(), []event.DeadLetter{dl}); err != nil {
		t.Fatalf("the second write (payload omitted): %v", err)
	}
	recs := consumeAll(t, seeds, "dead", 1)
	env, err := retention.DecodeEnvelope(recs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	if !env.Record.PayloadOmitted || env.Record.OriginalSize != 100_000 || env.Record.Offset != 7 || len(env.Record.Value) != 0 {
		t.Fatalf("stored letter: omitted %v, original size %d, offset %d, value %d bytes", env.Record.PayloadOmitted,
			env.Record.OriginalSize, env.Record.Offset, len(env.Record.Value))
	}
	// A letter that fits the lowered limit keeps its payload.
	dl.Record.Offset, dl.Record.Value = 8, noise(10_000)
	if err := store.DeadLetter(t.Context(), []event.DeadLetter{dl}); err != nil {
		t.Fatalf("a small letter: %v", err)
	}
	recs = consumeAll(t, seeds, "dead", 2)
	if env, err := retention.DecodeEnvelope(recs[1].Value); err != nil || env.Record.PayloadOmitted || len(env.Record.Value) != 10_000 {
		t.Fatalf("small letter: %+v, %v", env, err)
	}
}

// noise is n bytes that do not compress (the topic's limit counts
// compressed batches).
func noise(n int) []byte {
	b := make([]byte, n)
	r := rand.New(rand.NewPCG(uint64(n), 1))
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestLowerLimit(t *testing.T) {
	for _, c := range []struct{ limit, largest, n, want int }{
		{1_000_012, 133_000, 1, 132_999}, // one record refused: just below it
		{1_000_012, 80_000, 10, 500_006}, // a batch refused: half the limit
		{100, 200, 1, 99},                // never above the limit it lowers
		{1_000, 900, 3, 899},
	} {
		if got := consumer.LowerLimit(c.limit, c.largest, c.n); got != c.want {
			t.Errorf("LowerLimit(%d, %d, %d) = %d, want %d", c.limit, c.largest, c.n, got, c.want)
		}
	}
}
