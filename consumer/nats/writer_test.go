package nats

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/event"
)

func TestEnsureStream(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	ctx := t.Context()

	created, changed, err := EnsureStream(ctx, js, "DEAD", []string{"sluice.dead.>"}, 336*time.Hour, 1<<30)
	if err != nil || !created || changed != nil {
		t.Fatalf("first EnsureStream: created %v changed %v err %v", created, changed, err)
	}
	st, _ := js.Stream(ctx, "DEAD")
	cfg := st.CachedInfo().Config
	if cfg.MaxAge != 336*time.Hour || cfg.MaxBytes != 1<<30 || cfg.Retention != jetstream.LimitsPolicy || cfg.Storage != jetstream.FileStorage {
		t.Fatalf("created %+v", cfg)
	}

	created, changed, err = EnsureStream(ctx, js, "DEAD", []string{"sluice.dead.>"}, 336*time.Hour, 1<<30)
	if err != nil || created || len(changed) != 0 {
		t.Fatalf("same settings: created %v changed %v err %v, want nothing to do", created, changed, err)
	}

	created, changed, err = EnsureStream(ctx, js, "DEAD", []string{"sluice.dead.>", "more.*"}, -1, 0)
	if err != nil || created {
		t.Fatalf("reconcile: created %v err %v", created, err)
	}
	want := []string{"subjects: +more.*", "max_age: 336h -> forever", "max_bytes: 1GiB -> none"}
	if strings.Join(changed, "|") != strings.Join(want, "|") {
		t.Fatalf("changed %q, want %q", changed, want)
	}
	info, _ := st.Info(ctx)
	if info.Config.MaxAge != 0 || info.Config.MaxBytes != -1 || len(info.Config.Subjects) != 2 {
		t.Fatalf("reconciled %+v", info.Config)
	}

	if _, _, err := EnsureStream(ctx, js, "DEAD", []string{"x.>"}, 0, 0); err == nil {
		t.Fatal("max age 0 accepted")
	}
}

func TestWriterAppend(t *testing.T) {
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
	recs := []event.Record{
		{Key: []byte("abc123"), Value: []byte(`{"n":1}`), Headers: []event.Header{
			{Key: "sluice-condition", Value: []byte("PermanentError")}, {Key: "multi", Value: []byte("a")}, {Key: "multi", Value: []byte("b")},
		}},
		{Key: []byte("odd.key *>"), Value: []byte(`{"n":2}`)},
		{Value: []byte(`{"n":3}`)},
	}
	if err := w.Append(ctx, recs); err != nil {
		t.Fatalf("Append: %v", err)
	}
	st, _ := js.Stream(ctx, "DEAD")
	wantSubj := []string{"sluice.dead.abc123", "sluice.dead.odd_key___", "sluice.dead._"}
	for i, want := range wantSubj {
		m, err := st.GetMsg(ctx, uint64(i+1))
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != want || string(m.Data) != string(recs[i].Value) {
			t.Fatalf("message %d: %s %s, want %s %s", i+1, m.Subject, m.Data, want, recs[i].Value)
		}
		if i == 0 {
			if m.Header.Get("sluice-condition") != "PermanentError" || strings.Join(m.Header.Values("multi"), ",") != "a,b" {
				t.Fatalf("headers %v", m.Header)
			}
		}
	}
	if err := w.Append(ctx, nil); err != nil {
		t.Fatalf("empty Append: %v", err)
	}

	// A subject no stream holds (or another stream's) is refused, not lost.
	w2, _ := NewWriter(nc, "DEAD", "elsewhere", WithWriteTimeout(2*time.Second))
	if err := w2.Append(ctx, []event.Record{{Key: []byte("k"), Value: []byte("x")}}); err == nil {
		t.Fatal("Append to a subject outside the stream succeeded")
	}
	if _, err := NewWriter(nc, "DEAD", "sluice.dead.>"); err == nil {
		t.Fatal("a wildcard prefix accepted")
	}
}

func TestEncodeEvent(t *testing.T) {
	ts := time.UnixMilli(1714000000123)
	recs := []event.Record{
		{Topic: "CLICKS", Subject: "clicks.user\"1", Partition: 3, Offset: 17, Timestamp: ts, Value: []byte{0, 1, 0xff},
			Headers: []event.Header{{Key: "a", Value: []byte("1")}, {Key: "a", Value: []byte("2")}, {Key: "b", Value: []byte("x\ny")}}},
		{Topic: "CLICKS", Subject: "clicks.user2", Partition: 3, Offset: 19, Timestamp: ts, Value: nil},
	}
	body, err := EncodeEvent("CLICKS", recs)
	if err != nil {
		t.Fatal(err)
	}
	var ev struct {
		EventSource string `json:"eventSource"`
		Records     map[string][]struct {
			Subject   string              `json:"subject"`
			Stream    string              `json:"stream"`
			Sequence  int64               `json:"sequence"`
			Timestamp int64               `json:"timestamp"`
			Data      []byte              `json:"data"`
			Headers   map[string][]string `json:"headers"`
		} `json:"records"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatalf("%v: %s", err, body)
	}
	rs := ev.Records["CLICKS-3"]
	if ev.EventSource != "sluice:nats" || len(ev.Records) != 1 || len(rs) != 2 {
		t.Fatalf("event %s", body)
	}
	r := rs[0]
	if r.Subject != `clicks.user"1` || r.Stream != "CLICKS" || r.Sequence != 17 || r.Timestamp != 1714000000123 ||
		string(r.Data) != "\x00\x01\xff" || strings.Join(r.Headers["a"], ",") != "1,2" || r.Headers["b"][0] != "x\ny" {
		t.Fatalf("record %+v", r)
	}
	if rs[1].Headers == nil || len(rs[1].Headers) != 0 || rs[1].Sequence != 19 {
		t.Fatalf("second record %+v, want empty headers {}", rs[1])
	}
	if _, err := EncodeEvent("CLICKS", nil); !errors.Is(err, ErrEmptyBatch) {
		t.Fatalf("empty batch: %v", err)
	}
}

func TestEmbeddedRestartKeepsStreams(t *testing.T) {
	dir := t.TempDir()
	e, err := StartEmbedded(dir, WithPort(-1))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := natsgo.Connect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, _, err := EnsureStream(t.Context(), js, "KEEP", []string{"keep.>"}, time.Hour, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(t.Context(), "keep.a", []byte("x")); err != nil {
		t.Fatal(err)
	}
	nc.Close()
	e.Shutdown()

	e2, err := StartEmbedded(dir, WithPort(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Shutdown()
	_, js2 := connect(t, e2.ClientURL())
	st, err := js2.Stream(context.Background(), "KEEP")
	if err != nil {
		t.Fatalf("stream lost over a restart: %v", err)
	}
	if info, _ := st.Info(t.Context()); info.State.Msgs != 1 {
		t.Fatalf("%d messages after a restart, want 1", info.State.Msgs)
	}
}

func TestEmbeddedPortInUse(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	_, err = StartEmbedded(t.TempDir(), WithPort(port))
	if err == nil || !strings.Contains(err.Error(), strconv.Itoa(port)) || !strings.Contains(err.Error(), "brokers") {
		t.Fatalf("err %v, want one naming the port and what to do", err)
	}
}

// A Writer's limit is the stream's max_msg_size, or the server's
// max_payload when that is lower or the stream sets none.
func TestWriterMaxRecordBytes(t *testing.T) {
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
		t.Fatalf("MaxRecordBytes = %d, %v; want the server's max_payload %d", n, err, nc.MaxPayload())
	}
	st, _ := js.Stream(ctx, "DEAD")
	cfg := st.CachedInfo().Config
	cfg.MaxMsgSize = 5000
	if _, err := js.UpdateStream(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	w2, _ := NewWriter(nc, "DEAD", "sluice.dead")
	if n, err := w2.MaxRecordBytes(ctx); err != nil || n != 5000 {
		t.Fatalf("MaxRecordBytes = %d, %v; want the stream's max_msg_size 5000", n, err)
	}
}
