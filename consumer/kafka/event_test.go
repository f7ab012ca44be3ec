package kafka

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/event"
)

func testRecords() []event.Record {
	ts := time.UnixMilli(1714550400123)
	return []event.Record{
		{
			Topic: "orders", Partition: 3, Offset: 41, Timestamp: ts,
			Key: []byte("order-42"), Value: []byte(`{"amount":12.5}`),
			Headers: []event.Header{
				{Key: "tenant", Value: []byte("acme")},
				{Key: "bytes", Value: []byte{0x00, 0x7f, 0x80, 0xff}},
				{Key: "tenant", Value: []byte("again")}, // keys may repeat
				{Key: "empty", Value: nil},
			},
		},
		{
			Topic: "orders", Partition: 3, Offset: 42, Timestamp: ts.Add(time.Millisecond),
			Key: nil, Value: []byte{0xff, 0x00, 0xfe}, // nil key, binary value
		},
		{
			Topic: "orders", Partition: 3, Offset: 45, Timestamp: ts.Add(2 * time.Millisecond),
			Key: []byte{}, Value: nil, // empty key, tombstone
		},
	}
}

func TestEncodeEventDecodesAsLambdaKafkaEvent(t *testing.T) {
	recs := testRecords()
	body, err := EncodeEvent("b1:9092,b2:9092", recs)
	if err != nil {
		t.Fatal(err)
	}
	if !json.Valid(body) {
		t.Fatalf("not JSON: %s", body)
	}
	var ev events.KafkaEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatalf("events.KafkaEvent: %v\n%s", err, body)
	}
	if ev.EventSource != "SelfManagedKafka" || ev.BootstrapServers != "b1:9092,b2:9092" {
		t.Errorf("eventSource %q, bootstrapServers %q", ev.EventSource, ev.BootstrapServers)
	}
	if len(ev.Records) != 1 {
		t.Fatalf("records has keys %v, want only orders-3", keys(ev.Records))
	}
	got := ev.Records["orders-3"]
	if len(got) != len(recs) {
		t.Fatalf("orders-3 has %d records, want %d", len(got), len(recs))
	}
	for i, r := range recs {
		g := got[i]
		if g.Topic != r.Topic || g.Partition != int64(r.Partition) || g.Offset != r.Offset {
			t.Errorf("record %d at %s/%d@%d, want %s/%d@%d", i, g.Topic, g.Partition, g.Offset, r.Topic, r.Partition, r.Offset)
		}
		if !g.Timestamp.Equal(r.Timestamp) {
			t.Errorf("record %d timestamp %v, want %v", i, g.Timestamp.Time, r.Timestamp)
		}
		if g.TimestampType != "CREATE_TIME" {
			t.Errorf("record %d timestampType %q", i, g.TimestampType)
		}
		if k := decode64(t, g.Key); !bytes.Equal(k, r.Key) {
			t.Errorf("record %d key %q, want %q", i, k, r.Key)
		}
		if v := decode64(t, g.Value); !bytes.Equal(v, r.Value) {
			t.Errorf("record %d value %x, want %x", i, v, r.Value)
		}
		if len(g.Headers) != len(r.Headers) {
			t.Fatalf("record %d has %d headers, want %d", i, len(g.Headers), len(r.Headers))
		}
		for j, h := range r.Headers {
			v, ok := g.Headers[j][h.Key]
			if !ok || len(g.Headers[j]) != 1 || !bytes.Equal(v, h.Value) {
				t.Errorf("record %d header %d = %v, want {%s: %v}", i, j, g.Headers[j], h.Key, h.Value)
			}
		}
	}
	// The raw JSON: signed bytes, a nil key left out, headers always an array.
	s := string(body)
	for _, want := range []string{`{"bytes":[0,127,-128,-1]}`, `"headers":[]`, `"offset":42,"timestamp":1714550400124,"timestampType":"CREATE_TIME","value":"/wD+"`, `"key":""`} {
		if !strings.Contains(s, want) {
			t.Errorf("body lacks %s:\n%s", want, s)
		}
	}
	if strings.Contains(s, "255") {
		t.Errorf("a header byte 0xff must be -1, body has 255:\n%s", s)
	}
}

func TestEncodeEventGroupsPartitionsAndEscapes(t *testing.T) {
	recs := []event.Record{
		{Topic: "a\"b\\c\n\u2028\xff", Partition: 0, Offset: 1, Value: []byte("x")},
		{Topic: "t", Partition: 1, Offset: 7},
		{Topic: "a\"b\\c\n\u2028\xff", Partition: 0, Offset: 2, Headers: []event.Header{{Key: "<&>\x01", Value: []byte{1}}}},
	}
	body, err := EncodeEvent("", recs)
	if err != nil {
		t.Fatal(err)
	}
	// encoding/json is the reference for escaping.
	var generic map[string]any
	if err := json.Unmarshal(body, &generic); err != nil {
		t.Fatalf("%v\n%s", err, body)
	}
	var ev events.KafkaEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatal(err)
	}
	wantTopic := "a\"b\\c\n\u2028\ufffd" // invalid UTF-8 becomes U+FFFD, as encoding/json does
	first := ev.Records[wantTopic+"-0"]
	if len(first) != 2 || first[0].Offset != 1 || first[1].Offset != 2 || first[0].Topic != wantTopic {
		t.Errorf("group %q = %+v", wantTopic+"-0", first)
	}
	if h := first[1].Headers; len(h) != 1 || !bytes.Equal(h[0]["<&>\x01"], []byte{1}) {
		t.Errorf("headers = %v", h)
	}
	if second := ev.Records["t-1"]; len(second) != 1 || second[0].Offset != 7 {
		t.Errorf("group t-1 = %+v", second)
	}
	if len(ev.Records) != 2 {
		t.Errorf("keys %v", keys(ev.Records))
	}
}

func TestEncodeEventZeroTimestamp(t *testing.T) {
	// A record from a create-time batch (the zero timestamp type).
	body, err := EncodeEvent("b", []event.Record{{Topic: "t", TimestampType: event.CreateTime}})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"timestamp":-1,"timestampType":"CREATE_TIME"`) {
		t.Errorf("zero timestamp / create time: %s", body)
	}
}

// A record of a log-append-time topic says so: the type rides on the
// record (convert reads it from the batch attributes).
func TestEncodeEventLogAppendTime(t *testing.T) {
	recs := []event.Record{{Topic: "t", Timestamp: time.UnixMilli(1714550400124), TimestampType: event.LogAppendTime}}
	body, err := EncodeEvent("b", recs)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(body), `"timestamp":1714550400124,"timestampType":"LOG_APPEND_TIME"`) {
		t.Errorf("log append time: %s", body)
	}
	if got := timestampTypeOf(&kgo.Record{}); got != event.CreateTime {
		t.Errorf("zero attributes: %v, want CreateTime", got)
	}
}

func TestEncodeEventEmpty(t *testing.T) {
	if _, err := EncodeEvent("b", nil); !errors.Is(err, ErrEmptyBatch) {
		t.Errorf("err = %v, want ErrEmptyBatch", err)
	}
}

func TestEncodeEventAllocatesOnce(t *testing.T) {
	recs := testRecords()
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := EncodeEvent("b1:9092", recs); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("EncodeEvent allocates %v times per call, want 1", allocs)
	}
}

func decode64(t *testing.T, s string) []byte {
	t.Helper()
	if s == "" {
		return nil
	}
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("base64 %q: %v", s, err)
	}
	return b
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// BenchmarkEncodeEvent reports the encoder against encoding/json marshalling
// the same event as aws-lambda-go's structs (the obvious alternative), as a
// ratio from one run (STYLE 21): x-encoding/json < 1 is faster.
func BenchmarkEncodeEvent(b *testing.B) {
	recs := make([]event.Record, 100)
	for i := range recs {
		recs[i] = event.Record{
			Topic: "orders", Partition: 3, Offset: int64(i), Timestamp: time.UnixMilli(1714550400123),
			Key: []byte("order-42"), Value: bytes.Repeat([]byte("v"), 512),
			Headers: []event.Header{{Key: "tenant", Value: []byte("acme")}},
		}
	}
	lambdaEvent := func() events.KafkaEvent {
		ev := events.KafkaEvent{EventSource: EventSource, BootstrapServers: "b1:9092", Records: map[string][]events.KafkaRecord{}}
		for _, r := range recs {
			hs := make([]map[string]events.JSONNumberBytes, len(r.Headers))
			for i, h := range r.Headers {
				hs[i] = map[string]events.JSONNumberBytes{h.Key: h.Value}
			}
			ev.Records["orders-3"] = append(ev.Records["orders-3"], events.KafkaRecord{
				Topic: r.Topic, Partition: int64(r.Partition), Offset: r.Offset,
				TimestampType: "CREATE_TIME",
				Key:           base64.StdEncoding.EncodeToString(r.Key),
				Value:         base64.StdEncoding.EncodeToString(r.Value),
				Headers:       hs,
			})
		}
		return ev
	}
	// Ours and the baseline alternate in the same loop, so both see the
	// same machine.
	var ours, base time.Duration
	for b.Loop() {
		t0 := time.Now()
		if _, err := EncodeEvent("b1:9092", recs); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if _, err := json.Marshal(lambdaEvent()); err != nil {
			b.Fatal(err)
		}
		ours, base = ours+t1.Sub(t0), base+time.Since(t1)
	}
	b.ReportMetric(float64(ours.Nanoseconds())/float64(b.N), "ns/batch")
	b.ReportMetric(ours.Seconds()/base.Seconds(), "x-encoding/json")
}
