package integration

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"

	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/retention"
)

// natsBackend runs the stream contract on the real nats-server: a stream
// per test, partitioned the way sluice partitions it (publishers publish to
// <prefix>.<key>, the server stores <prefix>.<p>.<key>), the partition
// consumers "sluice-<source>-<p>", dead letters in a JetStream stream.
type natsBackend struct{}

func (natsBackend) Name() string { return "nats" }

// keysPerPartition is how many distinct keys Produce uses per partition.
const keysPerPartition = 25

func (natsBackend) Setup(t *testing.T, partitions int) streamEnv {
	t.Helper()
	nc, js := newJetStream(t)
	e := &natsEnv{nc: nc, js: js, partitions: partitions}
	e.stream = strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "CS"), "_"))
	e.prefix = strings.ToLower(e.stream)
	e.dlStream = e.stream + "-DLQ"
	e.dlPrefix = e.prefix + "-dlq"
	// The stream exists before sluice starts, as a producer that was there
	// first would have made it: with the subject transform sluice sets up
	// (so sluice finds it up to date), and the records produced before
	// `sluice run` are kept.
	_, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name:     e.stream,
		Subjects: []string{e.prefix + ".*"},
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source:      e.prefix + ".*",
			Destination: fmt.Sprintf("%s.{{partition(%d,1)}}.{{wildcard(1)}}", e.prefix, partitions),
		},
		Retention: jetstream.LimitsPolicy,
		Storage:   jetstream.FileStorage,
	})
	if err != nil {
		t.Fatalf("create stream %s: %v", e.stream, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		for _, s := range []string{e.stream, e.dlStream} {
			if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	// Keys that land in each partition: nats-server's {{partition(N,1)}}
	// is FNV-1a of the key token modulo N. Produce checks where each
	// record was stored, so a different hash fails loudly.
	e.keys = make([][]string, partitions)
	for i := 0; ; i++ {
		k := fmt.Sprintf("key-%d", i)
		h := fnv.New32a()
		_, _ = h.Write([]byte(k))
		p := int(h.Sum32() % uint32(partitions))
		if len(e.keys[p]) < keysPerPartition {
			e.keys[p] = append(e.keys[p], k)
		}
		if !slices.ContainsFunc(e.keys, func(ks []string) bool { return len(ks) < keysPerPartition }) {
			break
		}
	}
	return e
}

type natsEnv struct {
	nc                 *nats.Conn
	js                 jetstream.JetStream
	stream, prefix     string // the source's stream; publishers publish to <prefix>.<key>
	dlStream, dlPrefix string // the dead-letter stream, over <dlPrefix>.>
	partitions         int
	keys               [][]string     // by partition: the keys Produce uses
	broker             map[string]any // further brokers.bus.nats settings
}

func (e *natsEnv) ShortenFailover() time.Duration {
	e.broker = natsFastFailover
	return natsFastFailoverTime
}

func (e *natsEnv) Topic() string     { return e.stream }
func (e *natsEnv) CanBackdate() bool { return false }

// RedeliveryBound: the batch in flight (a batch is acknowledged before the
// lane's next).
func (e *natsEnv) RedeliveryBound(batchSize int) int { return batchSize }

// Produce publishes record s to <prefix>.<key>, the key one that hashes to
// partition s % partitions, then reads the stream back for the partition
// and timestamp the server gave each record (and fails the test if a record
// is not in the partition it was meant for).
func (e *natsEnv) Produce(t *testing.T, n int, o produceOpts) []produced {
	t.Helper()
	if o.Timestamp != nil {
		t.Fatal("JetStream stamps each message with the time it stored it: Produce cannot backdate")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	futures := make([]jetstream.PubAckFuture, 0, n)
	out := make([]produced, 0, n)
	wait := func() {
		select {
		case <-e.js.PublishAsyncComplete():
		case <-ctx.Done():
			t.Fatalf("publish to %s: %v", e.stream, ctx.Err())
		}
	}
	for i := range n {
		seq := o.First + i
		p := seq % e.partitions
		ks := e.keys[p]
		key := ks[(seq/e.partitions)%len(ks)]
		msg := &nats.Msg{Subject: e.prefix + "." + key, Data: fmt.Appendf(nil, "seq-%07d", seq)}
		f, err := e.js.PublishMsgAsync(msg, jetstream.WithExpectStream(e.stream))
		if err != nil {
			t.Fatalf("publish to %s: %v", e.stream, err)
		}
		futures = append(futures, f)
		out = append(out, produced{Partition: int32(p), Key: key, Value: string(msg.Data)})
		if i%1000 == 999 { // bounded in flight (the client's own bound stalls)
			wait()
		}
	}
	wait()
	bySeq := make(map[uint64]int, n) // stream sequence -> index in out
	minSeq := uint64(0)
	for i, f := range futures {
		select {
		case ack := <-f.Ok():
			out[i].Offset = int64(ack.Sequence)
			bySeq[ack.Sequence] = i
			if minSeq == 0 || ack.Sequence < minSeq {
				minSeq = ack.Sequence
			}
		case err := <-f.Err():
			t.Fatalf("publish to %s: %v", e.stream, err)
		}
	}

	cons, err := e.js.OrderedConsumer(ctx, e.stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: minSeq,
	})
	if err != nil {
		t.Fatalf("read back %s: %v", e.stream, err)
	}
	left := n
	for left > 0 {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("read back %s: %v", e.stream, err)
		}
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				t.Fatalf("read back %s: %v", e.stream, err)
			}
			i, ok := bySeq[md.Sequence.Stream]
			if !ok {
				continue
			}
			delete(bySeq, md.Sequence.Stream)
			left--
			want := fmt.Sprintf("%s.%d.%s", e.prefix, out[i].Partition, out[i].Key)
			if m.Subject() != want {
				t.Fatalf("record %d was stored as %s, want %s (the server's partition hash is not FNV-1a?)", md.Sequence.Stream, m.Subject(), want)
			}
			out[i].Timestamp = md.Timestamp
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("read back %s: %v", e.stream, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("read back %s: %d records not seen", e.stream, left)
		}
	}
	slices.SortFunc(out, func(a, b produced) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	return out
}

func (e *natsEnv) Config(t *testing.T, source, fnURL string, settings map[string]any) string {
	t.Helper()
	src := map[string]any{
		"stream":     e.stream,
		"subject":    e.prefix + ".*",
		"partitions": e.partitions,
		"mode":       "stream",
		"function":   "fn",
		"on_failure": "dead",
		// Short waits between retries keep the tests short; the backoff
		// itself is unit-tested in shard.
		"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"},
	}
	for k, v := range settings {
		src[k] = v
	}
	return writeNATSConfig(t, fnURL, e.broker, map[string]any{source: src},
		map[string]any{"dead": map[string]any{"stream": e.dlStream, "subject": e.dlPrefix + ".>", "retention": "1h"}})
}

// writeNATSConfig writes a sluice configuration with the test nats-server
// as its one broker (with further settings, e.g. ack_wait, from broker; nil
// for none), the function "fn" at fnURL, and sources and dead-letter
// destinations as given; it returns the file's path.
func writeNATSConfig(t *testing.T, fnURL string, broker, sources, deadLetters map[string]any) string {
	t.Helper()
	bus := map[string]any{"url": natsURL(t)}
	for k, v := range broker {
		bus[k] = v
	}
	doc := map[string]any{
		"admin":        map[string]any{"listen": "127.0.0.1:0"},
		"state_dir":    "./state",
		"brokers":      map[string]any{"bus": map[string]any{"nats": bus}},
		"functions":    map[string]any{"fn": map[string]any{"url": fnURL, "timeout": "30s"}},
		"sources":      sources,
		"dead_letters": deadLetters,
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatalf("encode config: %v", err)
	}
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func (e *natsEnv) DeadLetters(t *testing.T) []deadLetter {
	t.Helper()
	return readNATSDeadLetters(t, e.js, e.dlStream)
}

// partitionInfos returns the info of each partition consumer of source.
func (e *natsEnv) partitionInfos(t *testing.T, source string) ([]*jetstream.ConsumerInfo, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	out := make([]*jetstream.ConsumerInfo, e.partitions)
	for p := range e.partitions {
		c, err := e.js.Consumer(ctx, e.stream, fmt.Sprintf("sluice-%s-%d", source, p))
		if err != nil {
			return nil, fmt.Errorf("partition %d: %w", p, err)
		}
		if out[p], err = c.Info(ctx); err != nil {
			return nil, fmt.Errorf("partition %d: %w", p, err)
		}
	}
	return out, nil
}

// Committed is each partition consumer's ack floor + 1: sluice acknowledges
// in order, so every record of the partition below it was acknowledged.
func (e *natsEnv) Committed(t *testing.T, source string) map[int32]int64 {
	t.Helper()
	infos, err := e.partitionInfos(t, source)
	if err != nil {
		t.Fatalf("partition consumers of %s: %v", source, err)
	}
	out := map[int32]int64{}
	for p, info := range infos {
		if info.AckFloor.Stream > 0 {
			out[int32(p)] = int64(info.AckFloor.Stream) + 1
		}
	}
	return out
}

func (e *natsEnv) AllCommitted(t *testing.T, source string) error {
	t.Helper()
	infos, err := e.partitionInfos(t, source)
	if err != nil {
		return err
	}
	for p, info := range infos {
		if info.NumPending != 0 || info.NumAckPending != 0 {
			return fmt.Errorf("partition %d: %d not delivered, %d not acknowledged (ack floor %d)",
				p, info.NumPending, info.NumAckPending, info.AckFloor.Stream)
		}
	}
	return nil
}

// readNATSDeadLetters returns every dead letter in the JetStream stream,
// decoded, with the time the stream stored it; none when the stream does
// not exist (yet).
func readNATSDeadLetters(t testing.TB, js jetstream.JetStream, stream string) []deadLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	st, err := js.Stream(ctx, stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil
	}
	if err != nil {
		t.Fatalf("dead-letter stream %s: %v", stream, err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatalf("dead-letter stream %s: %v", stream, err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	last := info.State.LastSeq
	cons, err := js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("read dead letters of %s: %v", stream, err)
	}
	var out []deadLetter
	for {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("read dead letters of %s: %v", stream, err)
		}
		done := false
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				t.Fatalf("read dead letters of %s: %v", stream, err)
			}
			env, err := retention.DecodeEnvelope(m.Data())
			if err != nil {
				t.Fatalf("dead letter %s@%d: %v", stream, md.Sequence.Stream, err)
			}
			h := map[string]string{}
			for k, vs := range m.Headers() {
				if len(vs) > 0 {
					h[k] = vs[0]
				}
			}
			out = append(out, deadLetter{Env: env, Headers: h, Timestamp: md.Timestamp})
			done = md.Sequence.Stream >= last
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			t.Fatalf("read dead letters of %s: %v", stream, err)
		}
		if done {
			return out
		}
		if ctx.Err() != nil {
			t.Fatalf("read dead letters of %s: %v (read %d, up to sequence %d)", stream, ctx.Err(), len(out), last)
		}
	}
}

// decodeJetStreamBatch decodes the request body of a JetStream stream batch
// (SPEC §3, eventSource "sluice:nats") as a function would; ok is false
// when body is not one (the caller then decodes a Kafka event).
func decodeJetStreamBatch(r *http.Request, body []byte) (b *fnBatch, ok bool, err error) {
	var peek struct {
		EventSource string `json:"eventSource"`
	}
	if json.Unmarshal(body, &peek) != nil || peek.EventSource != natssrc.EventSource {
		return nil, false, nil
	}
	var ev struct {
		Records map[string][]struct {
			Subject   string              `json:"subject"`
			Stream    string              `json:"stream"`
			Sequence  int64               `json:"sequence"`
			Timestamp int64               `json:"timestamp"`
			Data      string              `json:"data"`
			Headers   map[string][]string `json:"headers"`
		} `json:"records"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, true, fmt.Errorf("body is not a sluice:nats event: %w", err)
	}
	if len(ev.Records) != 1 {
		return nil, true, fmt.Errorf("batch holds %d partitions, want 1", len(ev.Records))
	}
	attempt, err := strconv.Atoi(r.Header.Get("Sluice-Attempt"))
	if err != nil {
		return nil, true, fmt.Errorf("Sluice-Attempt %q: %w", r.Header.Get("Sluice-Attempt"), err)
	}
	b = &fnBatch{At: time.Now(), Attempt: attempt, Source: r.Header.Get("Sluice-Source")}
	for k, recs := range ev.Records {
		if len(recs) == 0 {
			return nil, true, fmt.Errorf("batch %s has no records", k)
		}
		i := strings.LastIndexByte(k, '-')
		part, perr := strconv.ParseInt(k[i+1:], 10, 32)
		if i < 0 || perr != nil {
			return nil, true, fmt.Errorf("batch key %q is not <stream>-<partition>", k)
		}
		for _, jr := range recs {
			val, err := base64.StdEncoding.DecodeString(jr.Data)
			if err != nil {
				return nil, true, fmt.Errorf("record %s@%d: %w", k, jr.Sequence, err)
			}
			if jr.Stream+"-"+strconv.FormatInt(part, 10) != k || jr.Headers == nil {
				return nil, true, fmt.Errorf("record %s@%d under %q (headers %v)", jr.Stream, jr.Sequence, k, jr.Headers)
			}
			// The key is the subject's "*" token: the last one of
			// "<prefix>.<key>".
			key := jr.Subject[strings.LastIndexByte(jr.Subject, '.')+1:]
			b.Partition = int32(part)
			b.Records = append(b.Records, fnRecord{
				Partition: int32(part), Offset: jr.Sequence,
				Key: key, Value: string(val), Timestamp: time.UnixMilli(jr.Timestamp),
			})
		}
	}
	return b, true, nil
}
