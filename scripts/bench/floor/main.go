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
	flag.Parse()
	if *topic == "" || *group == "" || *url == "" {
		fmt.Fprintln(os.Stderr, "floor: -topic, -group and -url are required")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, strings.Split(*brokers, ","), *topic, *group, *url, *batch, *inflight, *records); err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, seeds []string, topic, group, url string, batch, inflight int, limit int64) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.ConsumerGroup(group), kgo.ConsumeTopics(topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.DisableAutoCommit())
	if err != nil {
		return err
	}
	defer cl.Close()
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns, tr.MaxIdleConnsPerHost = inflight*2, inflight*2
	hc := &http.Client{Transport: tr}
	bufs := sync.Pool{New: func() any { return new(bytes.Buffer) }}
	slots := make(chan struct{}, inflight)
	var posted, failed atomic.Int64
	for ctx.Err() == nil && (limit == 0 || posted.Load() < limit) {
		fs := cl.PollFetches(ctx)
		if fs.IsClientClosed() || ctx.Err() != nil {
			break
		}
		var wg sync.WaitGroup
		fs.EachPartition(func(p kgo.FetchTopicPartition) {
			for recs := p.Records; len(recs) > 0; {
				n := min(batch, len(recs))
				chunk := recs[:n]
				recs = recs[n:]
				slots <- struct{}{}
				wg.Go(func() {
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
					posted.Add(int64(len(chunk)))
				})
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
