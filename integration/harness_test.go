package integration

// Shared helpers of the end-to-end tests that run `sluice run` as a separate
// process against the real Kafka broker:
//
//   - sluiceBinary builds cmd/sluice once per test binary (with -race when
//     the tests run with -race, so the process under test is checked too);
//   - startSluice runs it with a generated configuration, waits for its
//     admin address, and stops it (or finds it dead) when the test ends;
//   - fnServer is a function (an httptest.Server) that decodes every batch
//     with aws-lambda-go's events.KafkaEvent, records what it saw, and answers
//     according to a policy the test can change at any time;
//   - produce, readDeadLetters, committedOffsets, endOffsets and shardsOf read
//     and write the broker and the admin API;
//   - eventually polls a condition instead of sleeping.

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-lambda-go/events"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/retention"
)

// binDir holds the sluice binary built for this test run; TestMain removes it.
var binDir string

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		_ = os.RemoveAll(binDir)
	}
	os.Exit(code)
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// raceEnabled reports whether this test binary was built with -race.
func raceEnabled() bool {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return false
	}
	for _, s := range bi.Settings {
		if s.Key == "-race" && s.Value == "true" {
			return true
		}
	}
	return false
}

// sluiceBinary builds cmd/sluice once per test binary run and returns its
// path. It is built with the race detector when the tests are, so a data race
// inside the process under test fails the test that ran it (see startSluice).
func sluiceBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "sluice-it-bin-")
		if err != nil {
			buildErr = err
			return
		}
		binDir = dir
		builtBin = filepath.Join(dir, "sluice")
		args := []string{"build", "-o", builtBin}
		if raceEnabled() {
			args = append(args, "-race")
		}
		args = append(args, "github.com/sluicehq/sluice/cmd/sluice")
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("building sluice: %v", buildErr)
	}
	return builtBin
}

// ---------------------------------------------------------------------------
// Configuration

// runConfig is what a test varies in the configuration of `sluice run`: one
// Kafka stream source bound to one HTTP function, and optionally a
// dead-letter topic as its on_failure destination.
type runConfig struct {
	Source      string         // source name; its consumer group is "sluice-" + Source
	Topic       string         // the topic consumed
	FunctionURL string         // where the function listens
	DeadLetters string         // dead-letter topic; "" for none (records are then dropped)
	Settings    map[string]any // further source settings (batch_size, max_record_age, ...)
	Broker      map[string]any // further settings of brokers.main.kafka (session_timeout)
}

// writeConfig writes cfg as a sluice YAML configuration file in a fresh
// directory (also its state_dir) and returns its path.
func writeConfig(t testing.TB, cfg runConfig) string {
	t.Helper()
	src := map[string]any{
		"topic":    cfg.Topic,
		"mode":     "stream",
		"function": "fn",
		// Short waits between retries keep the tests short; the backoff
		// itself is unit-tested in shard.
		"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"},
	}
	for k, v := range cfg.Settings {
		src[k] = v
	}
	kafka := map[string]any{"seeds": []string{kafkaAddr(t)}}
	for k, v := range cfg.Broker {
		kafka[k] = v
	}
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"main": map[string]any{"kafka": kafka}},
		"functions": map[string]any{"fn": map[string]any{"url": cfg.FunctionURL, "timeout": "30s"}},
		"sources":   map[string]any{cfg.Source: src},
	}
	if cfg.DeadLetters != "" {
		src["on_failure"] = "dead"
		doc["dead_letters"] = map[string]any{"dead": map[string]any{"topic": cfg.DeadLetters, "retention": "1h"}}
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

// ---------------------------------------------------------------------------
// The sluice process

// sluiceProc is one `sluice run` process.
type sluiceProc struct {
	t     testing.TB
	name  string // for messages: "sluice A", ...
	cmd   *exec.Cmd
	admin string        // host:port of the admin API
	done  chan struct{} // closed once the process exited and its stderr was read

	mu       sync.Mutex
	logs     []string // every stderr line
	race     bool     // the race detector reported something
	expected bool     // the test stopped or killed it; exiting is no failure
	waitErr  error    // cmd.Wait's result, once done is closed
}

// startSluice runs `sluice run -c cfgPath` and returns once it logged
// "sluice running" with its admin address. When the test ends the process is
// killed if still running; its log tail is printed if the test failed. A
// process that exits on its own while the test runs fails the test, and so
// does a data race it reports.
func startSluice(t testing.TB, name, cfgPath string) *sluiceProc {
	t.Helper()
	p := &sluiceProc{t: t, name: name, done: make(chan struct{})}
	p.cmd = exec.Command(sluiceBinary(t), "run", "-c", cfgPath)
	p.cmd.Env = append(os.Environ(), "GORACE=halt_on_error=0")
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	addr := make(chan string, 1) // the one admin address; buffered so the reader never blocks
	go p.readLogs(stderr, addr)
	t.Cleanup(func() {
		p.mu.Lock()
		p.expected = true
		p.mu.Unlock()
		_ = p.cmd.Process.Kill()
		<-p.done
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.race {
			t.Errorf("%s: the race detector reported a data race:\n%s", name, strings.Join(raceReport(p.logs), "\n"))
		}
		if t.Failed() {
			t.Logf("%s: last log lines:\n%s", name, strings.Join(tail(p.logs, 80), "\n"))
		}
	})
	select {
	case p.admin = <-addr:
		return p
	case <-p.done:
		t.Fatalf("%s exited before it was running: %v\n%s", name, p.waitErr, strings.Join(tail(p.logLines(), 40), "\n"))
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not log \"sluice running\" within 60s", name)
	}
	return nil
}

func (p *sluiceProc) readLogs(stderr io.Reader, addr chan<- string) {
	sc := bufio.NewScanner(stderr)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		var l struct {
			Msg   string `json:"msg"`
			Admin string `json:"admin"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "sluice running" {
			addr <- l.Admin
		}
		p.mu.Lock()
		p.logs = append(p.logs, line)
		if strings.Contains(line, "WARNING: DATA RACE") {
			p.race = true
		}
		p.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, stderr)
	err := p.cmd.Wait()
	p.mu.Lock()
	p.waitErr = err
	unexpected := !p.expected
	p.mu.Unlock()
	if unexpected {
		// Errorf is safe from another goroutine, and the test is still
		// running: its cleanup sets expected before it kills the process.
		p.t.Errorf("%s exited on its own: %v\n%s", p.name, err, strings.Join(tail(p.logLines(), 40), "\n"))
	}
	close(p.done)
}

func (p *sluiceProc) logLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.logs)
}

// stop sends sig and returns the exit code once the process ended; it fails
// the test if that takes longer than the grace sluice gives itself, with room.
func (p *sluiceProc) stop(sig syscall.Signal) int {
	p.t.Helper()
	p.mu.Lock()
	p.expected = true
	p.mu.Unlock()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatalf("signal %s to %s: %v", sig, p.name, err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.t.Fatalf("%s did not exit within 60s of %s", p.name, sig)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var ee *exec.ExitError
	switch {
	case p.waitErr == nil:
		return 0
	case errors.As(p.waitErr, &ee):
		return ee.ExitCode() // -1 when killed by a signal
	default:
		p.t.Fatalf("wait for %s: %v", p.name, p.waitErr)
		return -1
	}
}

// kill ends the process with SIGKILL (kill -9) and waits until it is gone.
func (p *sluiceProc) kill() {
	p.t.Helper()
	if code := p.stop(syscall.SIGKILL); code != -1 {
		p.t.Fatalf("%s: exit code %d after SIGKILL, want death by signal", p.name, code)
	}
}

// shardView is one shard as GET /v1/shards shows it.
type shardView struct {
	Source      string    `json:"source"`
	Shard       int32     `json:"shard"`
	State       string    `json:"state"`
	Since       time.Time `json:"since"`
	Reason      string    `json:"reason"`
	Position    int64     `json:"position"`
	Delivered   int64     `json:"delivered"`
	DeadLetters int64     `json:"deadLetters"`
}

// shards returns GET /v1/shards of p; an error when the API does not answer
// (e.g. the process is stopping).
func (p *sluiceProc) shards() ([]shardView, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/v1/shards", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return nil, fmt.Errorf("GET /v1/shards: %s: %s", resp.Status, b)
	}
	var body struct {
		Shards []shardView `json:"shards"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("GET /v1/shards: %w", err)
	}
	return body.Shards, nil
}

// metric returns the value of the sample of GET /metrics named name whose
// labels include labels; an error when the API does not answer or there is no
// such sample.
func (p *sluiceProc) metric(name string, labels map[string]string) (float64, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		series, value, ok := strings.Cut(line, " ")
		if i := strings.LastIndexByte(line, ' '); ok && i > 0 {
			series, value = line[:i], line[i+1:]
		}
		n, lbls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		have := map[string]string{}
		for _, m := range labelPair.FindAllStringSubmatch(lbls, -1) {
			have[m[1]] = m[2]
		}
		match := true
		for k, v := range labels {
			if have[k] != v {
				match = false
			}
		}
		if match {
			return strconv.ParseFloat(value, 64)
		}
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("no sample %s%v in /metrics", name, labels)
}

var labelPair = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

func tail(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// raceReport returns the race detector's reports among lines (at most a few).
func raceReport(lines []string) []string {
	var out []string
	in := false
	for _, l := range lines {
		if strings.Contains(l, "WARNING: DATA RACE") {
			in = true
		}
		if in {
			out = append(out, l)
			if strings.HasPrefix(l, "==================") && len(out) > 1 {
				in = false
			}
		}
		if len(out) > 400 {
			break
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// The function

// fnRecord is one record of a batch as the function decoded it.
type fnRecord struct {
	Partition int32
	Offset    int64
	Key       string
	Value     string
	Timestamp time.Time
}

// fnBatch is one invocation the function received, with its answer.
type fnBatch struct {
	Seq       int       // arrival order, from 0
	At        time.Time // arrival
	Attempt   int       // Sluice-Attempt
	Source    string    // Sluice-Source
	Partition int32
	Records   []fnRecord

	// The answer.
	Status int
	Failed []int64 // the offsets named in batchItemFailures (2xx only)
}

// accepted returns the records of b the function took: all of a 2xx answer
// without failed items, those before the lowest failed item of a partial
// answer, none otherwise.
func (b *fnBatch) accepted() []fnRecord {
	if b.Status < 200 || b.Status > 299 {
		return nil
	}
	if len(b.Failed) == 0 {
		return b.Records
	}
	lowest := slices.Min(b.Failed)
	for i, r := range b.Records {
		if r.Offset == lowest {
			return b.Records[:i]
		}
	}
	return b.Records
}

func (b *fnBatch) offsets() []int64 {
	out := make([]int64, len(b.Records))
	for i, r := range b.Records {
		out[i] = r.Offset
	}
	return out
}

func (b *fnBatch) contains(p int32, off int64) bool {
	if b.Partition != p {
		return false
	}
	for _, r := range b.Records {
		if r.Offset == off {
			return true
		}
	}
	return false
}

// fnAnswer is how the function answers one batch.
type fnAnswer struct {
	Status     int           // default 200
	RetryAfter string        // Retry-After header, if any
	Failed     []int64       // a partial batch response naming these offsets (with status 2xx)
	Sleep      time.Duration // wait this long before answering
}

// fnPolicy decides the answer to a batch. It runs under the server's lock,
// so it may keep state without locking, and sees the batches before b.
type fnPolicy func(b *fnBatch) fnAnswer

func answer(status int) fnPolicy {
	return func(*fnBatch) fnAnswer { return fnAnswer{Status: status} }
}

// fnServer is the function under test: an HTTP endpoint that decodes each
// batch as aws-lambda-go's events.KafkaEvent, records it and answers per its
// policy.
type fnServer struct {
	t   testing.TB
	srv *httptest.Server

	mu      sync.Mutex
	policy  fnPolicy
	batches []*fnBatch // every batch received, in arrival order
	bad     []string   // malformed requests
}

func newFnServer(t testing.TB, policy fnPolicy) *fnServer {
	t.Helper()
	f := &fnServer{t: t, policy: policy}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(func() {
		f.srv.CloseClientConnections()
		f.srv.Close()
		f.mu.Lock()
		defer f.mu.Unlock()
		if len(f.bad) > 0 {
			t.Errorf("the function received %d malformed requests, first: %s", len(f.bad), f.bad[0])
		}
	})
	return f
}

// URL is the function's endpoint for the configuration.
func (f *fnServer) URL() string { return f.srv.URL + "/invoke" }

// setPolicy changes how the function answers from now on.
func (f *fnServer) setPolicy(p fnPolicy) {
	f.mu.Lock()
	f.policy = p
	f.mu.Unlock()
}

func (f *fnServer) serve(w http.ResponseWriter, r *http.Request) {
	b, err := f.decode(r)
	if errors.Is(err, io.ErrUnexpectedEOF) {
		// The body was cut off: sluice was killed (kill -9 tests) while
		// sending it. Not a malformed request, and nobody reads the answer.
		return
	}
	if err != nil {
		f.mu.Lock()
		f.bad = append(f.bad, err.Error())
		f.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	f.mu.Lock()
	a := f.policy(b)
	if a.Status == 0 {
		a.Status = http.StatusOK
	}
	b.Seq, b.Status, b.Failed = len(f.batches), a.Status, a.Failed
	f.batches = append(f.batches, b)
	f.mu.Unlock()

	if a.Sleep > 0 {
		time.Sleep(a.Sleep)
	}
	if a.RetryAfter != "" {
		w.Header().Set("Retry-After", a.RetryAfter)
	}
	if len(a.Failed) > 0 {
		type item struct {
			ItemIdentifier string `json:"itemIdentifier"`
		}
		var body struct {
			BatchItemFailures []item `json:"batchItemFailures"`
		}
		for _, off := range a.Failed {
			body.BatchItemFailures = append(body.BatchItemFailures, item{strconv.FormatInt(off, 10)})
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(a.Status)
		_ = json.NewEncoder(w).Encode(body)
		return
	}
	w.WriteHeader(a.Status)
}

// decode reads a request the way a Lambda handler would: the body is an
// events.KafkaEvent (or, from a JetStream source, the sluice:nats event); a
// stream batch holds the records of one partition.
func (f *fnServer) decode(r *http.Request) (*fnBatch, error) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return nil, err
	}
	if b, ok, err := decodeJetStreamBatch(r, body); ok { // contract_nats_test.go
		return b, err
	}
	var ev events.KafkaEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("body is not an events.KafkaEvent: %w", err)
	}
	if ev.EventSource != "SelfManagedKafka" {
		return nil, fmt.Errorf("eventSource %q, want SelfManagedKafka", ev.EventSource)
	}
	if len(ev.Records) != 1 {
		return nil, fmt.Errorf("batch holds %d partitions, want 1", len(ev.Records))
	}
	attempt, err := strconv.Atoi(r.Header.Get("Sluice-Attempt"))
	if err != nil {
		return nil, fmt.Errorf("Sluice-Attempt %q: %w", r.Header.Get("Sluice-Attempt"), err)
	}
	b := &fnBatch{At: time.Now(), Attempt: attempt, Source: r.Header.Get("Sluice-Source")}
	for k, recs := range ev.Records {
		if len(recs) == 0 {
			return nil, fmt.Errorf("batch %s has no records", k)
		}
		for _, kr := range recs {
			key, err1 := base64.StdEncoding.DecodeString(kr.Key)
			val, err2 := base64.StdEncoding.DecodeString(kr.Value)
			if err := errors.Join(err1, err2); err != nil {
				return nil, fmt.Errorf("record %s@%d: %w", k, kr.Offset, err)
			}
			if want := fmt.Sprintf("%s-%d", kr.Topic, kr.Partition); want != k {
				return nil, fmt.Errorf("record %s/%d@%d under %q", kr.Topic, kr.Partition, kr.Offset, k)
			}
			b.Partition = int32(kr.Partition)
			b.Records = append(b.Records, fnRecord{
				Partition: int32(kr.Partition), Offset: kr.Offset,
				Key: string(key), Value: string(val), Timestamp: kr.Timestamp.Time,
			})
		}
	}
	return b, nil
}

// snapshot returns the batches received so far, in arrival order.
func (f *fnServer) snapshot() []*fnBatch {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.batches)
}

// acceptedCount returns how many distinct records the function has taken.
func (f *fnServer) acceptedCount() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	type po struct {
		p int32
		o int64
	}
	seen := make(map[po]struct{})
	for _, b := range f.batches {
		for _, r := range b.accepted() {
			seen[po{r.Partition, r.Offset}] = struct{}{}
		}
	}
	return len(seen)
}

// ---------------------------------------------------------------------------
// Kafka

// produced is one record the test wrote.
type produced struct {
	Partition int32
	Offset    int64
	Key       string
	Value     string
	Timestamp time.Time
}

type producedKey struct {
	p int32
	o int64
}

// produceOpts varies what produce writes.
type produceOpts struct {
	// First is the sequence number of the first record (for values), so a
	// test can produce more later with distinct values.
	First int
	// Timestamp, if set, stamps record i (by sequence number); otherwise the
	// client stamps the time of producing.
	Timestamp func(seq int) time.Time
}

// produce writes n keyed records to topic, spread round-robin over its
// partitions (record with sequence number s goes to partition s % partitions).
// The value carries the sequence number. It produces asynchronously and
// flushes once, so tens of thousands of records take well under a second,
// and returns the records by partition and offset.
func produce(t testing.TB, topic string, partitions int32, n int, o produceOpts) []produced {
	t.Helper()
	cl := newKafkaClient(t,
		kgo.DefaultProduceTopic(topic),
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(1<<20),
	)
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var (
		mu    sync.Mutex
		out   = make([]produced, 0, n)
		first error
	)
	for i := range n {
		seq := o.First + i
		r := &kgo.Record{
			Partition: int32(seq) % partitions,
			Key:       []byte(fmt.Sprintf("key-%d", seq%101)),
			Value:     []byte(fmt.Sprintf("seq-%07d", seq)),
		}
		if o.Timestamp != nil {
			r.Timestamp = o.Timestamp(seq)
		}
		cl.Produce(ctx, r, func(r *kgo.Record, err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if first == nil {
					first = err
				}
				return
			}
			out = append(out, produced{Partition: r.Partition, Offset: r.Offset, Key: string(r.Key),
				Value: string(r.Value), Timestamp: r.Timestamp})
		})
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatalf("produce to %s: flush: %v", topic, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if first != nil {
		t.Fatalf("produce to %s: %v", topic, first)
	}
	slices.SortFunc(out, func(a, b produced) int {
		if a.Partition != b.Partition {
			return int(a.Partition - b.Partition)
		}
		return int(a.Offset - b.Offset)
	})
	return out
}

// deadLetterTopic returns a unique name for a dead-letter topic (sluice
// creates it at start-up) and deletes the topic when the test ends.
func deadLetterTopic(t testing.TB) string {
	t.Helper()
	topic := uniqueName(t, "sluice-dlq")
	adm := kadm.NewClient(newKafkaClient(t))
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		resp, err := adm.DeleteTopic(ctx, topic)
		if err == nil {
			err = resp.Err
		}
		if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
			t.Errorf("delete topic %s: %v", topic, err)
		}
	})
	return topic
}

// deadLetter is one record of a dead-letter topic.
type deadLetter struct {
	Env       *retention.Envelope
	Headers   map[string]string
	Timestamp time.Time // when sluice wrote it
}

// readDeadLetters returns every record of the dead-letter topic, decoded; none
// when the topic does not exist.
func readDeadLetters(t testing.TB, topic string) []deadLetter {
	t.Helper()
	ends := endOffsets(t, topic)
	want := map[int32]int64{}
	for p, end := range ends {
		if end > 0 {
			want[p] = end
		}
	}
	if len(want) == 0 {
		return nil
	}
	parts := map[int32]kgo.Offset{}
	for p := range want {
		parts[p] = kgo.NewOffset().AtStart()
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(kafkaAddr(t)),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: parts}))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var out []deadLetter
	for len(want) > 0 {
		fs := cl.PollFetches(ctx)
		if ctx.Err() != nil {
			t.Fatalf("read dead letters of %s: %v (still waiting for %v)", topic, ctx.Err(), want)
		}
		fs.EachError(func(_ string, p int32, err error) {
			t.Fatalf("read dead letters of %s/%d: %v", topic, p, err)
		})
		fs.EachRecord(func(r *kgo.Record) {
			env, err := retention.DecodeEnvelope(r.Value)
			if err != nil {
				t.Fatalf("dead letter %s/%d@%d: %v", topic, r.Partition, r.Offset, err)
			}
			h := map[string]string{}
			for _, kh := range r.Headers {
				h[kh.Key] = string(kh.Value)
			}
			out = append(out, deadLetter{Env: env, Headers: h, Timestamp: r.Timestamp})
			if r.Offset+1 >= want[r.Partition] {
				delete(want, r.Partition)
			}
		})
	}
	return out
}

// endOffsets returns the high watermark of each partition of topic; none when
// the topic does not exist.
func endOffsets(t testing.TB, topic string) map[int32]int64 {
	t.Helper()
	adm := kadm.NewClient(newKafkaClient(t))
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	offs, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		t.Fatalf("list end offsets of %s: %v", topic, err)
	}
	out := map[int32]int64{}
	var failed error
	offs.Each(func(o kadm.ListedOffset) {
		switch {
		case errors.Is(o.Err, kerr.UnknownTopicOrPartition):
		case o.Err != nil:
			failed = o.Err
		default:
			out[o.Partition] = o.Offset
		}
	})
	if failed != nil {
		t.Fatalf("list end offsets of %s: %v", topic, failed)
	}
	return out
}

// committedOffsets returns the committed offset (the next offset to consume)
// of each partition of topic in group; partitions without a commit are left
// out.
func committedOffsets(t testing.TB, group, topic string) map[int32]int64 {
	t.Helper()
	adm := kadm.NewClient(newKafkaClient(t))
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	resp, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		t.Fatalf("fetch committed offsets of group %s: %v", group, err)
	}
	out := map[int32]int64{}
	resp.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic && o.At >= 0 {
			out[o.Partition] = o.At
		}
	})
	return out
}

// allCommitted reports nil once group committed every partition of topic up
// to its end.
func allCommitted(t testing.TB, group, topic string) error {
	t.Helper()
	ends, got := endOffsets(t, topic), committedOffsets(t, group, topic)
	for p, end := range ends {
		if got[p] != end {
			return fmt.Errorf("committed offsets %v, want the end offsets %v", got, ends)
		}
	}
	return nil
}

// ---------------------------------------------------------------------------
// Checks and polling

// eventually polls cond every 50 ms until it returns nil, and fails the test
// with cond's last error when timeout passes first (or at once when the test
// already failed, e.g. because sluice died).
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if t.Failed() {
			t.Fatalf("%s: giving up, the test already failed (last: %v)", what, err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// deliveryReport is what checkDeliveries found.
type deliveryReport struct {
	// Duplicates are the records accepted more than once, by partition and
	// offset, with how many extra times.
	Duplicates map[producedKey]int
	// FirstAt is the arrival order (fnBatch.Seq) of each record's first
	// acceptance.
	FirstAt map[producedKey]int
}

// checkDeliveries checks, for the records of want minus those in skip, that
// every one was accepted by the function at least once with its key and
// value, and that first acceptances came in offset order per partition; it
// fails the test otherwise. Records in skip (e.g. dead-lettered) must never
// have been accepted.
func checkDeliveries(t testing.TB, batches []*fnBatch, want []produced, skip map[producedKey]bool) deliveryReport {
	t.Helper()
	byKey := make(map[producedKey]produced, len(want))
	for _, r := range want {
		byKey[producedKey{r.Partition, r.Offset}] = r
	}
	rep := deliveryReport{Duplicates: map[producedKey]int{}, FirstAt: map[producedKey]int{}}
	lastFirst := map[int32]int64{} // partition -> offset of the latest first acceptance
	errs := 0
	fail := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	for _, b := range batches {
		for _, r := range b.accepted() {
			k := producedKey{r.Partition, r.Offset}
			p, ok := byKey[k]
			if !ok {
				continue // not one of want (e.g. produced later by the test)
			}
			if skip[k] {
				fail("record %d@%d was accepted by the function, but should not have been", k.p, k.o)
				continue
			}
			if r.Key != p.Key || r.Value != p.Value {
				fail("record %d@%d delivered as key %q value %q, produced as %q %q", k.p, k.o, r.Key, r.Value, p.Key, p.Value)
			}
			if _, seen := rep.FirstAt[k]; seen {
				rep.Duplicates[k]++
				continue
			}
			rep.FirstAt[k] = b.Seq
			if last, ok := lastFirst[k.p]; ok && k.o <= last {
				fail("partition %d: first delivery of offset %d came after that of offset %d (out of order)", k.p, k.o, last)
			}
			lastFirst[k.p] = k.o
		}
	}
	missing := 0
	for k := range byKey {
		if _, ok := rep.FirstAt[k]; !ok && !skip[k] {
			if missing++; missing <= 10 {
				fail("record %d@%d was never accepted by the function", k.p, k.o)
			}
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d records were never delivered", missing, len(byKey)-len(skip))
	}
	return rep
}

// duplicatesByPartition counts rep's duplicate deliveries per partition.
func (rep deliveryReport) duplicatesByPartition() map[int32]int {
	out := map[int32]int{}
	for k, n := range rep.Duplicates {
		out[k.p] += n
	}
	return out
}

func (rep deliveryReport) duplicates() int {
	n := 0
	for _, d := range rep.Duplicates {
		n += d
	}
	return n
}

// waitDelivered waits until the function accepted n distinct records.
func waitDelivered(t testing.TB, f *fnServer, n int, timeout time.Duration) {
	t.Helper()
	eventually(t, timeout, fmt.Sprintf("the function accepts %d records", n), func() error {
		if got := f.acceptedCount(); got < n {
			return fmt.Errorf("accepted %d", got)
		}
		return nil
	})
}
