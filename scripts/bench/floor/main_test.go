package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
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

// TestOrdered: with -ordered the floor keeps one request per partition in
// flight and posts each partition's records in offset order, as sluice does
// with parallelization_factor 1; without it, a partition's batches overlap
// (which is what the check below would catch).
func TestOrdered(t *testing.T) {
	for _, ordered := range []bool{true, false} {
		t.Run(fmt.Sprintf("ordered=%t", ordered), func(t *testing.T) {
			const partitions, perPartition, batch = 2, 1000, 50
			c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(partitions, "t"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			cl, err := kgo.NewClient(kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
			if err != nil {
				t.Fatal(err)
			}
			for p := range int32(partitions) {
				for i := range perPartition {
					cl.Produce(context.Background(), &kgo.Record{Topic: "t", Partition: p, Value: []byte(strconv.Itoa(i))}, nil)
				}
			}
			if err := cl.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			cl.Close()

			var (
				mu          sync.Mutex
				inflight    = map[int32]int{}
				maxInflight int
				next        = map[int32]int64{}
				seen        = map[int32]int{}
				outOfOrder  int
			)
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				var recs []struct {
					Partition int32
					Offset    int64
				}
				if err := json.NewDecoder(r.Body).Decode(&recs); err != nil || len(recs) == 0 {
					http.Error(w, "bad batch", http.StatusBadRequest)
					return
				}
				p := recs[0].Partition
				mu.Lock()
				inflight[p]++
				maxInflight = max(maxInflight, inflight[p])
				seen[p] += len(recs)
				for _, rec := range recs {
					if rec.Offset != next[p] {
						outOfOrder++
					}
					next[p] = rec.Offset + 1
				}
				mu.Unlock()
				time.Sleep(5 * time.Millisecond) // long enough for a second batch of p to arrive if it may
				mu.Lock()
				inflight[p]--
				mu.Unlock()
			}))
			defer srv.Close()

			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := run(ctx, c.ListenAddrs(), "t", "g", srv.URL, batch, 16, partitions*perPartition, ordered); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			for p := range int32(partitions) {
				if seen[p] != perPartition {
					t.Errorf("partition %d: %d records posted, want %d", p, seen[p], perPartition)
				}
			}
			if ordered && (maxInflight != 1 || outOfOrder != 0) {
				t.Errorf("ordered: up to %d requests of one partition in flight, %d records out of order; want 1 and 0", maxInflight, outOfOrder)
			}
			if !ordered && maxInflight < 2 {
				t.Errorf("unordered: at most %d request of one partition in flight; the check cannot tell the modes apart", maxInflight)
			}
		})
	}
}
