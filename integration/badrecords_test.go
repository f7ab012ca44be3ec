package integration

// Issue 12: no record can stop a shard forever. Records with bytes HTTP
// cannot carry in a header are delivered (the scope percent-encoded, a
// malformed traceparent dropped); a record the function rejects whose dead
// letter would not fit the dead-letter topic is stored without its payload
// and replayed from the source; a record over max_batch_bytes is
// RecordTooLarge; an async event over 1 MB retries through retry topics
// sized to its source topic. Each runs through an out-of-process
// `sluice run` on the real Kafka broker.

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	natssrc "github.com/sluicehq/sluice/consumer/nats"
	"github.com/sluicehq/sluice/event"
)

// hostileCall is one invocation as the function saw it.
type hostileCall struct {
	Source, Scope, ScopeEncoding, TraceParent string
	Attempt                                   int
	Offsets                                   []int64
	Sizes                                     []int // value sizes, by record
}

// hostileFn records every invocation and answers 400 to those holding a
// record (or an async event) whose value is reject bytes long (while
// rejecting).
type hostileFn struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	calls     []hostileCall
	reject    int
	failAsync int // answer 500 to the first failAsync async invocations
}

func newHostileFn(t *testing.T, reject int) *hostileFn {
	f := &hostileFn{t: t, reject: reject}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *hostileFn) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		w.WriteHeader(http.StatusInternalServerError)
		return
	}
	c := hostileCall{Source: r.Header.Get("Sluice-Source"), Scope: r.Header.Get("Sluice-Scope"),
		ScopeEncoding: r.Header.Get("Sluice-Scope-Encoding"), TraceParent: r.Header.Get("Traceparent")}
	c.Attempt, _ = strconv.Atoi(r.Header.Get("Sluice-Attempt"))
	async := r.Header.Get("Sluice-Event-Time") != ""
	var peek struct {
		EventSource string `json:"eventSource"`
		Records     map[string][]struct {
			Sequence int64  `json:"sequence"`
			Data     string `json:"data"`
		} `json:"records"`
	}
	_ = json.Unmarshal(body, &peek)
	switch {
	case async:
		c.Sizes = []int{len(body)}
	case peek.EventSource == natssrc.EventSource:
		for _, recs := range peek.Records {
			for _, r := range recs {
				v, _ := base64.StdEncoding.DecodeString(r.Data)
				c.Offsets = append(c.Offsets, r.Sequence)
				c.Sizes = append(c.Sizes, len(v))
			}
		}
	default:
		var ev events.KafkaEvent
		if err := json.Unmarshal(body, &ev); err != nil {
			f.t.Errorf("function: body is not a Kafka event: %v", err)
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		for _, recs := range ev.Records {
			for _, kr := range recs {
				v, _ := base64.StdEncoding.DecodeString(kr.Value)
				c.Offsets = append(c.Offsets, kr.Offset)
				c.Sizes = append(c.Sizes, len(v))
			}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, c)
	switch {
	case async && f.failAsync > 0:
		f.failAsync--
		w.WriteHeader(http.StatusInternalServerError)
	case f.reject > 0 && slices.Contains(c.Sizes, f.reject):
		w.WriteHeader(http.StatusBadRequest)
		_, _ = io.WriteString(w, "too big for me")
	}
}

func (f *hostileFn) snapshot() []hostileCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

func (f *hostileFn) setReject(n int) {
	f.mu.Lock()
	f.reject = n
	f.mu.Unlock()
}

// accepted returns, per source, the offsets of the stream invocations the
// function accepted, in arrival order.
func (f *hostileFn) accepted(reject int) map[string][]int64 {
	out := map[string][]int64{}
	for _, c := range f.snapshot() {
		if c.Offsets == nil || (reject > 0 && slices.Contains(c.Sizes, reject)) {
			continue
		}
		out[c.Source] = append(out[c.Source], c.Offsets...)
	}
	return out
}

// createTopicWith creates a topic of one partition with configs.
func createTopicWith(t *testing.T, configs map[string]string) string {
	t.Helper()
	adm := kadm.NewClient(newKafkaClient(t))
	topic := uniqueName(t, "sluice-bad")
	cfg := map[string]*string{}
	for k, v := range configs {
		cfg[k] = &v
	}
	resp, err := adm.CreateTopic(t.Context(), 1, 1, cfg, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		_, _ = adm.DeleteTopic(ctx, topic)
	})
	return topic
}

const (
	bigRecord  = 900_000   // under Kafka's default 1 MB; its envelope (base64) is not
	hugeRecord = 7_000_000 // over the default max_batch_bytes (6 MiB)
)

// TestBadRecordsKafkaStream: one partition holding, among ordinary records,
// a key with \x00 and \n (scope: key), a scope header with them (scope:
// header:tenant), a traceparent with \r\n, a 900 KB record the function
// rejects with 400 and a 7 MB record. Both sources deliver every other
// record in order within seconds; the two others are dead-lettered (payload
// omitted: the envelopes do not fit the dead-letter topic), logged, shown by
// `dlq show`, and the 900 KB and 7 MB ones are replayed from the source.
func TestBadRecordsKafkaStream(t *testing.T) {
	t.Parallel()
	topic := createTopicWith(t, map[string]string{"max.message.bytes": "10485760"})
	dlq := deadLetterTopic(t)

	const n = 20
	const (
		hostileKey, hostileHeader, hostileTrace, big, huge = 3, 9, 6, 12, 15
	)
	cl := newKafkaClient(t, kgo.DefaultProduceTopic(topic), kgo.ProducerBatchMaxBytes(10<<20), kgo.MaxBufferedBytes(64<<20))
	for i := range n {
		r := &kgo.Record{Key: []byte("tenant-a"), Value: []byte(fmt.Sprintf("seq-%d", i)),
			Headers: []kgo.RecordHeader{{Key: "tenant", Value: []byte("acme")}}}
		switch i {
		case hostileKey:
			r.Key = []byte("a\x00b\nc")
		case hostileHeader:
			r.Headers[0].Value = []byte("evil\x00\r\nX-Injected: 1")
		case hostileTrace:
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: "traceparent",
				Value: []byte("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\nX-Injected: 1")})
		case big:
			r.Value = make([]byte, bigRecord)
		case huge:
			r.Value = make([]byte, hugeRecord)
		}
		if err := cl.ProduceSync(t.Context(), r).FirstErr(); err != nil {
			t.Fatalf("produce record %d: %v", i, err)
		}
	}

	fn := newHostileFn(t, bigRecord)
	dir := t.TempDir()
	src := func(scope string, batch int) map[string]any {
		return map[string]any{"topic": topic, "mode": "stream", "function": "fn", "scope": scope,
			"batch_size": batch, "bisect_batch_on_error": true, "on_failure": "dead",
			"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"}}
	}
	keys, hdrs := uniqueName(t, "keys"), uniqueName(t, "hdrs")
	cfg := writeYAML(t, dir, map[string]any{
		"admin":        map[string]any{"listen": "127.0.0.1:0"},
		"state_dir":    "./state",
		"brokers":      map[string]any{"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}}},
		"functions":    map[string]any{"fn": map[string]any{"url": fn.srv.URL + "/invoke", "timeout": "30s"}},
		"sources":      map[string]any{keys: src("key", 1), hdrs: src("header:tenant", 5)},
		"dead_letters": map[string]any{"dead": map[string]any{"topic": dlq, "retention": "1h"}},
	})
	start := time.Now()
	p := startSluice(t, "sluice", cfg)

	var want []int64
	for i := range int64(n) {
		if i != big && i != huge {
			want = append(want, i)
		}
	}
	eventually(t, 60*time.Second, "both sources deliver every other record, in order", func() error {
		got := fn.accepted(bigRecord)
		for _, s := range []string{keys, hdrs} {
			if !slices.Equal(got[s], want) {
				return fmt.Errorf("source %s delivered %v, want %v", s, got[s], want)
			}
		}
		return nil
	})
	eventually(t, 60*time.Second, "four dead letters", func() error {
		if l := readDeadLetters(t, dlq); len(l) != 4 {
			return fmt.Errorf("%d dead letters", len(l))
		}
		return nil
	})
	eventually(t, 30*time.Second, "both sources committed to the end", func() error {
		return errors.Join(allCommitted(t, "sluice-"+keys, topic), allCommitted(t, "sluice-"+hdrs, topic))
	})
	t.Logf("both shards moved past the bad records in %s", time.Since(start).Round(time.Millisecond))

	for _, c := range fn.snapshot() {
		if c.Source != keys || len(c.Offsets) != 1 {
			continue
		}
		switch c.Offsets[0] {
		case hostileKey:
			if c.ScopeEncoding != "percent" {
				t.Errorf("the hostile key went as Sluice-Scope %q with encoding %q, want percent", c.Scope, c.ScopeEncoding)
			} else if dec, err := url.PathUnescape(c.Scope); err != nil || dec != "a\x00b\nc" {
				t.Errorf("Sluice-Scope %q decodes to %q (%v)", c.Scope, dec, err)
			}
		case hostileTrace:
			if c.TraceParent != "" {
				t.Errorf("a malformed traceparent was sent: %q", c.TraceParent)
			}
		default:
			if c.Scope != "tenant-a" || c.ScopeEncoding != "" {
				t.Errorf("record %d: Sluice-Scope %q (%q), want tenant-a as is", c.Offsets[0], c.Scope, c.ScopeEncoding)
			}
		}
	}

	conds := map[string]event.Condition{}
	for _, l := range readDeadLetters(t, dlq) {
		e := l.Env
		r := e.Record
		conds[fmt.Sprintf("%s@%d", e.Source, r.Offset)] = e.Condition
		if !r.PayloadOmitted || r.Value != nil || r.Topic != topic || r.Partition != 0 {
			t.Errorf("letter %s@%d: payloadOmitted %v, %d value bytes, at %s/%d", e.Source, r.Offset, r.PayloadOmitted, len(r.Value), r.Topic, r.Partition)
		}
		if wantSize := map[int64]int{big: bigRecord, huge: hugeRecord}[r.Offset]; r.OriginalSize < wantSize {
			t.Errorf("letter %s@%d: originalSize %d, want at least %d", e.Source, r.Offset, r.OriginalSize, wantSize)
		}
	}
	for _, s := range []string{keys, hdrs} {
		if conds[fmt.Sprintf("%s@%d", s, big)] != event.PermanentError || conds[fmt.Sprintf("%s@%d", s, huge)] != event.RecordTooLarge {
			t.Errorf("source %s: dead letters %v, want the 900 KB record PermanentError and the 7 MB one RecordTooLarge", s, conds)
		}
	}

	// One Warn line per dead letter, in a default run.
	logged := 0
	for _, line := range p.logLines() {
		if strings.Contains(line, "record dead-lettered") && strings.Contains(line, `"level":"WARN"`) {
			logged++
		}
	}
	if logged != 4 {
		t.Errorf("%d dead-letter log lines, want 4", logged)
	}
	p.stop(syscall.SIGTERM)

	// dlq list / show say the payload was omitted.
	letters := listLetters(t, cfg, "--source", keys, "--condition", "PermanentError")
	if len(letters) != 1 {
		t.Fatalf("dlq list: %d letters, want 1", len(letters))
	}
	code, out, errs := dlqRun(t, "dlq", "show", "-c", cfg, letters[0].ID)
	if code != 0 || !strings.Contains(out, `"payloadOmitted": true`) {
		t.Fatalf("dlq show: exit %d\n%s\n%s", code, out, errs)
	}
	code, out, errs = dlqRun(t, "dlq", "show", "-c", cfg, "-o", "table", letters[0].ID)
	if code != 0 || !strings.Contains(out, "omitted (") || !strings.Contains(out, fmt.Sprintf("offset %d", big)) {
		t.Fatalf("dlq show -o table: exit %d\n%s\n%s", code, out, errs)
	}
	// Replay fetches the original from the source; the function takes it now.
	fn.setReject(0)
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", keys, "--condition", "PermanentError")
	if code != 0 {
		t.Fatalf("dlq replay: exit %d\n%s\n%s", code, out, errs)
	}
	found := false
	for _, c := range fn.snapshot() {
		if c.Source == keys && slices.Equal(c.Offsets, []int64{big}) && slices.Equal(c.Sizes, []int{bigRecord}) && c.Attempt == 2 {
			found = true
		}
	}
	if !found {
		t.Errorf("the replay did not deliver the original 900 KB record (offset %d)", big)
	}
	// The 7 MB letter (RecordTooLarge) is replayed from the source too: one
	// invocation of the function with the whole record.
	hugeCalls := func() int {
		n := 0
		for _, c := range fn.snapshot() {
			if c.Source == keys && slices.Equal(c.Offsets, []int64{huge}) && slices.Equal(c.Sizes, []int{hugeRecord}) {
				n++
			}
		}
		return n
	}
	before := hugeCalls()
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", keys, "--condition", "RecordTooLarge")
	if code != 0 {
		t.Fatalf("dlq replay of the 7 MB letter: exit %d\n%s\n%s", code, out, errs)
	}
	if got := hugeCalls(); got != before+1 {
		t.Errorf("the replay delivered the original 7 MB record (offset %d) %d times, want once:\n%s", huge, got-before, out)
	}
}

// TestBadRecordsKafkaAsync: a 1.1 MB async event on a topic that allows
// 2 MB must retry twice: its retry topics take it (created with the source
// topic's max.message.bytes and room for the retry headers), and it is
// delivered on its third attempt, not held or dead-lettered.
func TestBadRecordsKafkaAsync(t *testing.T) {
	t.Parallel()
	topic := createTopicWith(t, map[string]string{"max.message.bytes": "2097152"})
	dlq := deadLetterTopic(t)
	fn := newHostileFn(t, 0)
	fn.failAsync = 2
	source := uniqueName(t, "async")
	cfg := writeYAML(t, t.TempDir(), map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}}},
		"functions": map[string]any{"fn": map[string]any{"url": fn.srv.URL + "/invoke", "timeout": "30s"}},
		"sources": map[string]any{source: map[string]any{"topic": topic, "mode": "async", "function": "fn",
			"on_failure": "dead", "max_retry_attempts": 5,
			"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"}}},
		"dead_letters": map[string]any{"dead": map[string]any{"topic": dlq, "retention": "1h"}},
	})
	p := startSluice(t, "sluice", cfg)
	defer p.stop(syscall.SIGTERM)
	cl := newKafkaClient(t, kgo.DefaultProduceTopic(topic), kgo.ProducerBatchMaxBytes(4<<20))
	const size = 1_100_000
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Value: make([]byte, size)}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 90*time.Second, "the event is delivered on its third attempt", func() error {
		var attempts []int
		for _, c := range fn.snapshot() {
			if slices.Equal(c.Sizes, []int{size}) {
				attempts = append(attempts, c.Attempt)
			}
		}
		if !slices.Equal(attempts, []int{1, 2, 3}) {
			return fmt.Errorf("attempts %v, want [1 2 3]", attempts)
		}
		return nil
	})
	if l := readDeadLetters(t, dlq); len(l) != 0 {
		t.Errorf("%d dead letters, want none", len(l))
	}
	failed := 0
	for _, line := range p.logLines() {
		if strings.Contains(line, "retry topic failed") {
			t.Errorf("a retry write failed: %s", line)
		}
		if strings.Contains(line, "invocation failed") && strings.Contains(line, `"level":"WARN"`) {
			failed++
		}
	}
	if failed != 2 {
		t.Errorf("%d failed-invocation log lines, want 2 (one per failed attempt)", failed)
	}
}

// TestBadRecordsNATSStream: a JetStream partition holding, among ordinary
// messages, a scope header with a \x00, a malformed traceparent and a
// 900 KB message the function rejects with 400. Every other message is
// delivered in order within seconds; the 900 KB one is dead-lettered
// without its payload (its envelope is over the server's max_payload),
// shown so by `dlq show`, and replayed from the stream by its sequence.
func TestBadRecordsNATSStream(t *testing.T) {
	t.Parallel()
	env := natsBackend{}.Setup(t, 1).(*natsEnv)
	const n = 10
	const hostileHeader, hostileTrace, big = 3, 5, 7
	var seqs []int64
	for i := range n {
		msg := &nats.Msg{Subject: env.prefix + ".key-0", Data: fmt.Appendf(nil, "seq-%d", i), Header: nats.Header{}}
		msg.Header.Set("tenant", "acme")
		switch i {
		case hostileHeader:
			msg.Header.Set("tenant", "evil\x00\x01")
		case hostileTrace:
			msg.Header.Set("traceparent", "not-a-traceparent")
		case big:
			msg.Data = make([]byte, bigRecord)
		}
		ack, err := env.js.PublishMsg(t.Context(), msg, jetstream.WithExpectStream(env.stream))
		if err != nil {
			t.Fatalf("publish message %d: %v", i, err)
		}
		seqs = append(seqs, int64(ack.Sequence))
	}
	fn := newHostileFn(t, bigRecord)
	source := uniqueName(t, "nats")
	cfg := env.Config(t, source, fn.srv.URL+"/invoke", map[string]any{"scope": "header:tenant", "batch_size": 1})
	start := time.Now()
	p := startSluice(t, "sluice", cfg)

	var want []int64
	for i, s := range seqs {
		if i != big {
			want = append(want, s)
		}
	}
	eventually(t, 60*time.Second, "every other message is delivered, in order", func() error {
		if got := fn.accepted(bigRecord)[source]; !slices.Equal(got, want) {
			return fmt.Errorf("delivered %v, want %v", got, want)
		}
		return nil
	})
	var letters []deadLetter
	eventually(t, 60*time.Second, "the 900 KB message is dead-lettered", func() error {
		if letters = env.DeadLetters(t); len(letters) != 1 {
			return fmt.Errorf("%d dead letters", len(letters))
		}
		return nil
	})
	eventually(t, 30*time.Second, "the partition is acknowledged to its end", func() error { return env.AllCommitted(t, source) })
	t.Logf("the shard moved past the bad messages in %s", time.Since(start).Round(time.Millisecond))
	for _, c := range fn.snapshot() {
		if len(c.Offsets) != 1 {
			continue
		}
		switch c.Offsets[0] {
		case seqs[hostileHeader]:
			if dec, err := url.PathUnescape(c.Scope); c.ScopeEncoding != "percent" || err != nil || dec != "evil\x00\x01" {
				t.Errorf("the hostile scope went as %q (%q), decoding to %q", c.Scope, c.ScopeEncoding, dec)
			}
		case seqs[hostileTrace]:
			if c.TraceParent != "" {
				t.Errorf("a malformed traceparent was sent: %q", c.TraceParent)
			}
		}
	}
	e := letters[0].Env
	if r := e.Record; !r.PayloadOmitted || r.Value != nil || r.Topic != env.stream || r.Offset != seqs[big] ||
		r.OriginalSize < bigRecord || e.Condition != event.PermanentError {
		t.Errorf("dead letter %s: %+v", e.Condition, r)
	}
	p.stop(syscall.SIGTERM)

	code, out, errs := dlqRun(t, "dlq", "show", "-c", cfg, "-o", "table", e.ID)
	if code != 0 || !strings.Contains(out, "omitted (") || !strings.Contains(out, fmt.Sprintf("sequence %d", seqs[big])) {
		t.Fatalf("dlq show -o table: exit %d\n%s\n%s", code, out, errs)
	}
	fn.setReject(0)
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", source)
	if code != 0 {
		t.Fatalf("dlq replay: exit %d\n%s\n%s", code, out, errs)
	}
	found := false
	for _, c := range fn.snapshot() {
		if slices.Equal(c.Offsets, []int64{seqs[big]}) && slices.Equal(c.Sizes, []int{bigRecord}) && c.Attempt == 2 {
			found = true
		}
	}
	if !found {
		t.Errorf("the replay did not deliver the original 900 KB message (sequence %d)", seqs[big])
	}
}

// TestBadRecordsNATSAsync: a 900 KB event on a JetStream async source whose
// stream sluice creates (a work queue: a terminated event is deleted),
// which the function rejects with 400. Its dead letter (1.2 MB of base64)
// is over the server's max_payload, so it is stored without its payload,
// and the event is kept in the sluice-kept-<stream> bucket before it is
// terminated: `dlq replay` delivers the original 900 KB although the
// stream no longer holds it. The other events are delivered.
func TestBadRecordsNATSAsync(t *testing.T) {
	t.Parallel()
	_, js := newJetStream(t)
	stream := strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "BA"), "_"))
	prefix := strings.ToLower(stream)
	dlStream, dlPrefix := stream+"-DLQ", prefix+"-dlq"
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		for _, s := range []string{stream, dlStream, "OBJ_sluice-kept-" + stream} {
			_ = js.DeleteStream(ctx, s)
		}
	})
	fn := newHostileFn(t, bigRecord)
	source := uniqueName(t, "nasync")
	cfg := writeNATSConfig(t, fn.srv.URL+"/invoke", nil, map[string]any{source: map[string]any{
		"stream": stream, "subject": prefix + ".>", "mode": "async", "function": "fn", "on_failure": "dead",
		"max_retry_attempts": 2, "retry_backoff": map[string]any{"initial": "100ms", "max": "1s"},
	}}, map[string]any{"dead": map[string]any{"stream": dlStream, "subject": dlPrefix + ".>", "retention": "1h"}})
	p := startSluice(t, "sluice", cfg)
	var bigSeq uint64
	for i, size := range []int{10, bigRecord, 20} {
		ack, err := js.Publish(t.Context(), fmt.Sprintf("%s.e%d", prefix, i), make([]byte, size))
		if err != nil {
			t.Fatalf("publish event %d: %v", i, err)
		}
		if size == bigRecord {
			bigSeq = ack.Sequence
		}
	}
	var letters []deadLetter
	eventually(t, 60*time.Second, "the small events are delivered and the 900 KB one dead-lettered", func() error {
		delivered := 0
		for _, c := range fn.snapshot() {
			if slices.Equal(c.Sizes, []int{10}) || slices.Equal(c.Sizes, []int{20}) {
				delivered++
			}
		}
		if letters = readNATSDeadLetters(t, js, dlStream); delivered != 2 || len(letters) != 1 {
			return fmt.Errorf("%d small events delivered, %d dead letters", delivered, len(letters))
		}
		return nil
	})
	e := letters[0].Env
	if r := e.Record; !r.PayloadOmitted || r.Value != nil || r.Topic != stream || r.Offset != int64(bigSeq) ||
		r.OriginalSize != bigRecord || e.Condition != event.PermanentError {
		t.Errorf("dead letter %s: %+v", e.Condition, r)
	}
	eventually(t, 30*time.Second, "the work queue is empty (the event was terminated)", func() error {
		st, err := js.Stream(t.Context(), stream)
		if err != nil {
			return err
		}
		info, err := st.Info(t.Context())
		if err != nil {
			return err
		}
		if info.State.Msgs != 0 || info.Config.Retention != jetstream.WorkQueuePolicy {
			return fmt.Errorf("stream %s: %d messages, retention %v; want an empty work queue", stream, info.State.Msgs, info.Config.Retention)
		}
		return nil
	})
	p.stop(syscall.SIGTERM)

	code, out, errs := dlqRun(t, "dlq", "show", "-c", cfg, "-o", "table", e.ID)
	if code != 0 || !strings.Contains(out, "omitted (") {
		t.Fatalf("dlq show -o table: exit %d\n%s\n%s", code, out, errs)
	}
	fn.setReject(0)
	code, out, errs = dlqRun(t, "dlq", "replay", "-c", cfg, "--source", source)
	if code != 0 {
		t.Fatalf("dlq replay: exit %d\n%s\n%s", code, out, errs)
	}
	found := false
	for _, c := range fn.snapshot() {
		if slices.Equal(c.Sizes, []int{bigRecord}) && c.Attempt == 2 {
			found = true
		}
	}
	if !found {
		t.Errorf("the replay did not deliver the original 900 KB event (sequence %d) from the kept bucket:\n%s", bigSeq, out)
	}
}
