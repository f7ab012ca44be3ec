package nats

import (
	"errors"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/shard"
)

// smallDeadLetters makes the dead-letter stream DEAD with max_msg_size
// maxMsgSize and returns it with a store writing to it.
func smallDeadLetters(t *testing.T, nc *natsgo.Conn, js jetstream.JetStream, maxMsgSize int32) (jetstream.Stream, *retention.Store) {
	t.Helper()
	ctx := t.Context()
	if _, _, err := EnsureStream(ctx, js, "DEAD", []string{"sluice.dead.>"}, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "DEAD")
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = maxMsgSize
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(nc, "DEAD", "sluice.dead")
	if err != nil {
		t.Fatal(err)
	}
	m, err := retention.NewStoreMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	return st, retention.NewStore("dead", w, m, retention.WithLogger(testLogger()))
}

// TestStreamKeepsRecordOnWorkQueue: a stream source over a work queue (an
// acknowledged message is deleted) keeps a record whose letter omits its
// payload, and Broker.FetchRecord gives it back with the letter's key and
// published subject, so that a replay delivers it as it was.
func TestStreamKeepsRecordOnWorkQueue(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	ctx := t.Context()
	src := streamSource("CLICKS", "clicks", 1)
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CLICKS", Subjects: []string{"clicks.*"},
		SubjectTransform: &jetstream.SubjectTransformConfig{Source: "clicks.*", Destination: "clicks.{{partition(1,1)}}.{{wildcard(1)}}"},
		Retention:        jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	dst, store := smallDeadLetters(t, nc, js, 6000)
	big := strings.Repeat("y", 5000)
	d := &fakeDeliverer{answer: func(dl shard.Delivery) event.Result {
		for _, r := range dl.Records {
			if string(r.Value) == big {
				return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 400}}
			}
		}
		return event.Result{Outcome: event.Delivered}
	}}
	opts := fastStream(d, store, src)
	opts.Worker.BatchSize = 1
	opts.KeepFor = time.Hour
	s, err := NewStream("clicks", nc, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 2, 1)
	if _, err := js.PublishMsg(ctx, &natsgo.Msg{Subject: "clicks.k0", Data: []byte(big), Header: natsgo.Header{"tenant": {"t0"}}}); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 3, 1, 1)
	runSource(t, s.Run)
	waitFor(t, 10*time.Second, "the work queue emptied", func() bool {
		st, err := js.Stream(ctx, "CLICKS")
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
	msg, err := dst.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	env, err := retention.DecodeEnvelope(msg.Data)
	if err != nil || !env.Record.PayloadOmitted || env.Record.Offset != 3 || string(env.Record.Key) != "k0" {
		t.Fatalf("letter: %+v, %v", env, err)
	}
	b := &Broker{nc: nc}
	rec, err := b.FetchRecord(ctx, env.Original())
	if err != nil {
		t.Fatalf("FetchRecord: %v", err)
	}
	if string(rec.Value) != big || rec.Subject != "clicks.k0" || string(rec.Key) != "k0" || len(rec.Headers) != 1 ||
		!rec.Timestamp.Equal(env.Record.Timestamp) {
		t.Fatalf("fetched %q key %q subject %q headers %v at %v", rec.Value[:min(len(rec.Value), 10)], rec.Key, rec.Subject, rec.Headers, rec.Timestamp)
	}
	// A delivered record is not kept.
	if _, err := FetchRecord(ctx, nc, "CLICKS", 1); !errors.Is(err, consumer.ErrRecordGone) {
		t.Fatalf("FetchRecord of a delivered record: %v, want ErrRecordGone", err)
	}
}
