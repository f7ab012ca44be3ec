package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestEncode: a batch is a JSON array of its records, with base64 key and
// value, and one "offset" field per record (what procbench counts).
func TestEncode(t *testing.T) {
	recs := []*kgo.Record{
		{Partition: 3, Offset: 7, Timestamp: time.UnixMilli(1700000000000), Key: []byte("k"), Value: []byte(`v"\`)},
		{Partition: 3, Offset: 8, Value: []byte{0xff, 0}},
	}
	var b bytes.Buffer
	encode(&b, recs)
	var got []struct {
		Partition int32
		Offset    int64
		Timestamp int64
		Key       string
		Value     string
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("not JSON: %v: %s", err, b.String())
	}
	if len(got) != 2 || got[0].Offset != 7 || got[1].Offset != 8 || got[0].Partition != 3 || got[0].Timestamp != 1700000000000 {
		t.Fatalf("decoded %+v", got)
	}
	if v, _ := base64.StdEncoding.DecodeString(got[0].Value); string(v) != `v"\` {
		t.Errorf("value %q", v)
	}
	if n := bytes.Count(b.Bytes(), []byte(`"offset":`)); n != 2 {
		t.Errorf("%d offset fields, want 2", n)
	}
	encode(&b, recs[:1]) // reuses the buffer
	if bytes.Count(b.Bytes(), []byte(`"offset":`)) != 1 {
		t.Errorf("a reused buffer kept the previous batch: %s", b.String())
	}
}
