// Command floor is the bare floor that `sluice run` is measured against
// (scripts/bench/procbench, `make bench`): the least a Kafka-to-HTTP
// forwarder must do. A franz-go PollFetches loop in a consumer group posts
// each partition's records as JSON arrays of -batch records to -url with a
// pooled http.Client, -inflight requests at a time, and commits the
// polled offsets synchronously after each poll. It has none of sluice's
// guarantees beyond at-least-once (no retries: a failed request is counted
// and dropped) and exits after -records records were posted, or on
// SIGTERM/SIGINT.
//
// With -ordered it keeps each partition's order as sluice does with
// parallelization_factor 1: one request per partition in flight (its
// batches one after another), partitions side by side within -inflight.
// That is the floor of any forwarder with Lambda's ordering; the default
// (batches of one partition in flight together) is the floor of one
// without it.
//
//	go run ./scripts/bench/floor -brokers 127.0.0.1:9092 -topic t -group g -url http://127.0.0.1:8080/
package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:9092", "seed brokers, comma-separated")
	topic := flag.String("topic", "", "topic to read")
	group := flag.String("group", "", "consumer group")
	url := flag.String("url", "", "function URL")
	batch := flag.Int("batch", 100, "records per request")
	inflight := flag.Int("inflight", 16, "requests in flight")
	records := flag.Int64("records", 0, "exit after this many records were posted (0: never)")
	ordered := flag.Bool("ordered", false, "one request per partition in flight, as parallelization_factor 1")
	flag.Parse()
	if *topic == "" || *group == "" || *url == "" {
		fmt.Fprintln(os.Stderr, "floor: -topic, -group and -url are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, strings.Split(*brokers, ","), *topic, *group, *url, *batch, *inflight, *records, *ordered); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, seeds []string, topic, group, url string, batch, inflight int, limit int64, ordered bool) error {
	commits := kgo.DisableAutoCommit()
	if ordered {
		// Records are posted after the poll that fetched them: commit
		// what was posted (marked), not what was polled.
		commits = kgo.AutoCommitMarks()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), commits)
	if err != nil {
		return err
	}
	defer cl.Close()
	// Cancelled once limit records were posted: a poll waiting for records
	// that will not come (all of them are posted) ends with it.
	ctx, done := context.WithCancel(ctx)
	defer done()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = inflight*2, inflight*2
	hc := &http.Client{Transport: tr}
	bufs := sync.Pool{New: func() any { return new(bytes.Buffer) }}
	slots := make(chan struct{}, inflight)
	var posted, failed atomic.Int64
	queues := map[int32]chan []*kgo.Record{} // -ordered: each partition's batches, posted one at a time
	// post posts chunk in a slot taken by the caller.
	post := func(chunk []*kgo.Record) {
		defer func() { <-slots }()
		b := bufs.Get().(*bytes.Buffer)
		defer bufs.Put(b)
		encode(b, chunk)
		resp, err := hc.Post(url, "application/json", bytes.NewReader(b.Bytes()))
		if err != nil {
			failed.Add(int64(len(chunk)))
			return
		}
		_ = resp.Body.Close()
		if n := posted.Add(int64(len(chunk))); limit > 0 && n >= limit {
			done()
		}
	}
	for ctx.Err() == nil && (limit == 0 || posted.Load() < limit) {
		fs := cl.PollFetches(ctx)
		if fs.IsClientClosed() || ctx.Err() != nil {
			break
		}
		if ordered {
			fs.EachPartition(func(p kgo.FetchTopicPartition) {
				q := queues[p.Partition]
				if q == nil {
					q = make(chan []*kgo.Record, 64)
					queues[p.Partition] = q
					go func() {
						for chunk := range q {
							slots <- struct{}{}
							post(chunk)
							cl.MarkCommitRecords(chunk[len(chunk)-1])
						}
					}()
				}
				for recs := p.Records; len(recs) > 0; {
					n := min(batch, len(recs))
					q <- recs[:n]
					recs = recs[n:]
				}
			})
			if err := cl.CommitMarkedOffsets(context.WithoutCancel(ctx)); err != nil {
				fmt.Fprintln(os.Stderr, "floor: commit:", err)
			}
			continue
		}
		var wg sync.WaitGroup
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			for recs := p.Records; len(recs) > 0; {
				n := min(batch, len(recs))
				chunk := recs[:n]
				recs = recs[n:]
				slots <- struct{}{}
				wg.Go(func() { post(chunk) })
			}
		})
		wg.Wait()
		if err := cl.CommitUncommittedOffsets(context.WithoutCancel(ctx)); err != nil {
			fmt.Fprintln(os.Stderr, "floor: commit:", err)
		}
	}
	fmt.Fprintf(os.Stderr, "floor: posted %d records, %d failed\n", posted.Load(), failed.Load())
	return nil
}

// encode writes recs as a JSON array of {partition, offset, timestamp, key,
// value} with base64 key and value (as the Lambda event carries them).
func encode(b *bytes.Buffer, recs []*kgo.Record) {
	b.Reset()
	b.WriteByte('[')
	var num [20]byte
	for i, r := range recs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(`{"partition":`)
		b.Write(strconv.AppendInt(num[:0], int64(r.Partition), 10))
		b.WriteString(`,"offset":`)
		b.Write(strconv.AppendInt(num[:0], r.Offset, 10))
		b.WriteString(`,"timestamp":`)
		b.Write(strconv.AppendInt(num[:0], r.Timestamp.UnixMilli(), 10))
		b.WriteString(`,"key":"`)
		b64(b, r.Key)
		b.WriteString(`","value":"`)
		b64(b, r.Value)
		b.WriteString(`"}`)
	}
	b.WriteByte(']')
}

func b64(b *bytes.Buffer, v []byte) {
	n := base64.StdEncoding.EncodedLen(len(v))
	b.Grow(n)
	buf := b.AvailableBuffer()[:n]
	base64.StdEncoding.Encode(buf, v)
	b.Write(buf)
}
