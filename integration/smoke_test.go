package integration

import (
	"bytes"
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// TestKafkaSmoke proves the test Kafka broker works end to end the way sluice
// uses it: create a topic, produce a record with headers, consume it back in
// a consumer group and commit it.
func TestKafkaSmoke(t *testing.T) {
	topic := createTopic(t, 1)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	want := &kgo.Record{
		Topic: topic,
		Key:   []byte("order-42"),
		Value: []byte(`{"amount":12.5}`),
		Headers: []kgo.RecordHeader{
			{Key: "tenant", Value: []byte("acme")},
			{Key: "bytes", Value: []byte{0x00, 0x7f, 0x80, 0xff}},
		},
	}
	producer := newKafkaClient(t)
	if err := producer.ProduceSync(ctx, want).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}
	if want.Offset != 0 || want.Partition != 0 {
		t.Fatalf("produced to %d@%d, want partition 0 offset 0 of a new topic", want.Partition, want.Offset)
	}

	group := uniqueName(t, "sluice-it")
	consumer := newKafkaClient(t,
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
	)
	got := pollOne(ctx, t, consumer)

	if got.Topic != topic || got.Partition != 0 || got.Offset != 0 {
		t.Errorf("got record at %s/%d@%d, want %s/0@0", got.Topic, got.Partition, got.Offset, topic)
	}
	if !bytes.Equal(got.Key, want.Key) {
		t.Errorf("key = %q, want %q", got.Key, want.Key)
	}
	if !bytes.Equal(got.Value, want.Value) {
		t.Errorf("value = %q, want %q", got.Value, want.Value)
	}
	if len(got.Headers) != len(want.Headers) {
		t.Fatalf("headers = %v, want %v", got.Headers, want.Headers)
	}
	for i, h := range want.Headers {
		if got.Headers[i].Key != h.Key || !bytes.Equal(got.Headers[i].Value, h.Value) {
			t.Errorf("header %d = %s:%v, want %s:%v", i, got.Headers[i].Key, got.Headers[i].Value, h.Key, h.Value)
		}
	}

	// Commit through the group and read the commit back through the admin
	// API: the group coordinator works too.
	if err := consumer.CommitRecords(ctx, got); err != nil {
		t.Fatalf("commit: %v", err)
	}
	offsets, err := kadm.NewClient(newKafkaClient(t)).FetchOffsets(ctx, group)
	if err == nil {
		err = offsets.Error()
	}
	if err != nil {
		t.Fatalf("fetch committed offsets of group %s: %v", group, err)
	}
	if o, ok := offsets.Lookup(topic, 0); !ok || o.At != 1 {
		t.Errorf("committed offset of %s/0 = %+v (found %v), want 1", topic, o, ok)
	}
}

// pollOne polls cl until it returns one record, failing the test on any
// fetch error or when ctx ends first.
func pollOne(ctx context.Context, t *testing.T, cl *kgo.Client) *kgo.Record {
	t.Helper()
	for {
		fs := cl.PollRecords(ctx, 1)
		if err := ctx.Err(); err != nil {
			t.Fatalf("no record consumed: %v", err)
		}
		for _, fe := range fs.Errors() {
			if !errors.Is(fe.Err, context.DeadlineExceeded) && !errors.Is(fe.Err, context.Canceled) {
				t.Fatalf("fetch %s/%d: %v", fe.Topic, fe.Partition, fe.Err)
			}
		}
		if recs := fs.Records(); len(recs) > 0 {
			return recs[0]
		}
	}
}

// TestJetStreamSmoke proves the test nats-server's JetStream works end to end
// the way sluice uses it: create a stream, publish with headers, read it back
// through a durable pull consumer and acknowledge it.
func TestJetStreamSmoke(t *testing.T) {
	_, js := newJetStream(t)
	stream, prefix := createStream(t, js)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	subject := prefix + ".orders.42"
	msg := nats.NewMsg(subject)
	msg.Data = []byte(`{"amount":12.5}`)
	msg.Header.Set("tenant", "acme")
	msg.Header.Add("multi", "v1")
	msg.Header.Add("multi", "v2")
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	if ack.Stream != stream.CachedInfo().Config.Name || ack.Sequence != 1 || ack.Duplicate {
		t.Fatalf("publish ack = %+v, want sequence 1 in %s", ack, stream.CachedInfo().Config.Name)
	}

	cons, err := stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       "smoke",
		AckPolicy:     jetstream.AckExplicitPolicy,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: prefix + ".orders.>",
		AckWait:       30 * time.Second,
	})
	if err != nil {
		t.Fatalf("create durable consumer: %v", err)
	}

	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	var got []jetstream.Msg
	for m := range batch.Messages() {
		got = append(got, m)
	}
	if err := batch.Error(); err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if len(got) != 1 {
		t.Fatalf("fetched %d messages, want 1", len(got))
	}
	m := got[0]
	if m.Subject() != subject {
		t.Errorf("subject = %q, want %q", m.Subject(), subject)
	}
	if !bytes.Equal(m.Data(), msg.Data) {
		t.Errorf("data = %q, want %q", m.Data(), msg.Data)
	}
	if v := m.Headers().Get("tenant"); v != "acme" {
		t.Errorf("header tenant = %q, want acme", v)
	}
	if v := m.Headers().Values("multi"); len(v) != 2 || v[0] != "v1" || v[1] != "v2" {
		t.Errorf("header multi = %q, want [v1 v2]", v)
	}
	meta, err := m.Metadata()
	if err != nil {
		t.Fatalf("metadata: %v", err)
	}
	if meta.Sequence.Stream != 1 || meta.NumDelivered != 1 {
		t.Errorf("metadata = stream seq %d, delivered %d; want 1, 1", meta.Sequence.Stream, meta.NumDelivered)
	}

	// DoubleAck waits for the server to confirm the ack.
	if err := m.DoubleAck(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatalf("consumer info: %v", err)
	}
	if info.NumAckPending != 0 || info.AckFloor.Stream != 1 || info.NumPending != 0 {
		t.Errorf("after ack: ack pending %d, ack floor %d, pending %d; want 0, 1, 0",
			info.NumAckPending, info.AckFloor.Stream, info.NumPending)
	}
}
