package nats

import (
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

// TestWriterRelearnsLoweredLimit: the stream's max_msg_size goes down after
// the Writer learned it; the first letter over the new limit is refused, the
// Writer asks again, and the next write leaves the payload out and is
// stored.
func TestWriterRelearnsLoweredLimit(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	ctx := t.Context()
	if _, _, err := EnsureStream(ctx, js, "DEAD", []string{"sluice.dead.>"}, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	w, err := NewWriter(nc, "DEAD", "sluice.dead")
	if err != nil {
		t.Fatal(err)
	}
	if n, err := w.MaxRecordBytes(ctx); err != nil || n != int(nc.MaxPayload()) {
		t.Fatalf("MaxRecordBytes = %d, %v; want max_payload", n, err)
	}
	st, _ := js.Stream(ctx, "DEAD")
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = 6000
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	m, err := retention.NewStoreMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	store := retention.NewStore("dead", w, m)
	dl := event.DeadLetter{Source: "signups", Function: "fn", Mode: "async", Condition: event.PermanentError, Attempts: 1,
		Record: event.Record{Topic: "SIGNUPS", Subject: "signups.u1", Offset: 3, Timestamp: time.Now(), Value: []byte(strings.Repeat("x", 5000))}}
	if err := store.DeadLetter(ctx, []event.DeadLetter{dl}); err == nil {
		t.Fatal("a 6.8 KB letter was stored in a stream of max_msg_size 6000")
	}
	if n, err := w.MaxRecordBytes(ctx); err != nil || n != 6000 {
		t.Fatalf("MaxRecordBytes after the refusal = %d, %v; want the new max_msg_size 6000", n, err)
	}
	if err := store.DeadLetter(ctx, []event.DeadLetter{dl}); err != nil {
		t.Fatalf("the second write (payload omitted): %v", err)
	}
	msg, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	env, err := retention.DecodeEnvelope(msg.Data)
	if err != nil || !env.Record.PayloadOmitted || env.Record.OriginalSize != 5000 {
		t.Fatalf("stored letter: %+v, %v", env, err)
	}
}
