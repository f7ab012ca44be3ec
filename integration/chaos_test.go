package integration

// The fault-injection suite of issue 7: `sluice run` (the built binary, out
// of process) consumes a Kafka topic into an HTTP function and dead-letters
// into a JetStream stream, under a scripted mix of faults:
//
//   - kill -9 of one of two sluice processes, restarted at once (the two
//     alternate, so the group always has a live member and every kill also
//     moves partitions between processes once the dead member's session
//     expires);
//   - a Kafka broker restart (down.sh / up.sh on the same data and ports);
//   - the dead-letter store unreachable for a while: the nats-server holding
//     the dead-letter stream is stopped and started again;
//   - a graceful rebalance: a third process joins, takes partitions, and is
//     stopped with SIGTERM;
//   - a function that flips every 1-3 s between success, slow answers, 429
//     (Retry-After 1), 503, 500, time-outs and a flaky mix of them all, and
//     always answers 400 for a few "poison" records (PermanentError).
//
// A producer writes keyed records at a steady rate all along. At the end an
// invariant checker compares what was produced with what the function
// accepted (2xx) and what the dead-letter stream holds:
//
//   - every produced record was delivered or dead-lettered (lost = 0);
//   - first deliveries kept per-key order;
//   - no dead letter exists for a record that was only ever throttled
//     (max_record_age is 1h, far beyond the run);
//   - dead letters carry a condition the record's history explains;
//   - the group committed every partition to its end;
//   - the counters of /metrics agree with what the function and the store
//     saw (see compareCounters for what is compared across kills).
//
// It restarts brokers, so it never runs against shared ones: it runs only
// when SLUICE_CHAOS is "short" (CI: ~5 kills, one broker restart of each
// kind, under 3 minutes) or "long" (`make chaos`: ≥ 20 kills), and those
// make targets start brokers of their own with scripts/brokers/with-brokers.sh
// (which sets SLUICE_TEST_BROKERS_DIR for the restarts).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kgo"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
	"github.com/sluicehq/sluice/shard"
)

// chaosEnv selects the chaos run: "short" or "long"; unset skips it.
const chaosEnv = "SLUICE_CHAOS"

// chaosPlan is what one run does.
type chaosPlan struct {
	Kills          int           // kill -9 cycles
	KillEvery      time.Duration // between two kills
	KafkaRestarts  int
	NATSOutages    int
	NATSOutage     time.Duration // how long the dead-letter store stays down
	Rebalances     int           // a third process joins and leaves
	Rate           int           // records produced per second
	Partitions     int32
	Drain          time.Duration // how long the end may take to deliver the rest
	FunctionTimout time.Duration
}

func chaosPlanFor(mode string) (chaosPlan, bool) {
	switch mode {
	case "short":
		return chaosPlan{Kills: 5, KillEvery: 8 * time.Second, KafkaRestarts: 1, NATSOutages: 1,
			NATSOutage: 14 * time.Second, Rebalances: 1, Rate: 150, Partitions: 4,
			Drain: 120 * time.Second, FunctionTimout: time.Second}, true
	case "long":
		return chaosPlan{Kills: 22, KillEvery: 12 * time.Second, KafkaRestarts: 2, NATSOutages: 2,
			NATSOutage: 18 * time.Second, Rebalances: 3, Rate: 200, Partitions: 6,
			Drain: 180 * time.Second, FunctionTimout: time.Second}, true
	}
	return chaosPlan{}, false
}

// Settings of the source under test.
const (
	chaosMaxRetries = 4
	chaosKeys       = 60 // key i goes to partition i % partitions: per-key order is checkable
	chaosPoisonMod  = 997
)

// chaosPoison reports whether the record with sequence number seq is one the
// function always refuses with 400.
func chaosPoison(seq int) bool { return seq%chaosPoisonMod == 500 }

// fnMode is how the function answers during one phase.
type fnMode string

const (
	modeOK      fnMode = "ok"
	modeSlow    fnMode = "slow"
	mode429     fnMode = "429"
	mode503     fnMode = "503"
	mode500     fnMode = "500"
	modeTimeout fnMode = "timeout"
	modeFlaky   fnMode = "flaky"
	modePoison  fnMode = "400-poison" // only as an answer kind
	modeForced  fnMode = "400-outage" // every batch while the dead-letter store is down
)

// chaosFunction decides the fnServer's answers. Its fields are guarded by
// the fnServer's lock (the policy runs under it; the flipper takes it).
type chaosFunction struct {
	timeout time.Duration
	rng     *rand.Rand

	mode    fnMode
	outage  bool           // the dead-letter store is down: answer 400 to everything
	force   int            // when not 0, the status of every answer (a fault every event must meet)
	phases  map[fnMode]int // phases started, by mode
	answers map[fnMode]int // answers given, by kind
	end     map[*fnBatch]time.Time
}

// pick returns the answer kind for one batch in mode m.
func (c *chaosFunction) pick(m fnMode) fnMode {
	if m != modeFlaky {
		return m
	}
	switch x := c.rng.IntN(100); {
	case x < 50:
		return modeOK
	case x < 65:
		return mode500
	case x < 78:
		return mode429
	case x < 88:
		return mode503
	case x < 94:
		return modeTimeout
	default:
		return modeSlow
	}
}

func (c *chaosFunction) policy(b *fnBatch) fnAnswer {
	kind := c.pick(c.mode)
	if c.outage {
		// Every record now needs the dead-letter store, which is down:
		// the shards must block, not skip or drop anything.
		kind = modeForced
	}
	if c.force != 0 {
		kind = fnMode(fmt.Sprintf("%d-forced", c.force))
		c.answers[kind]++
		c.end[b] = b.At
		return fnAnswer{Status: c.force}
	}
	var a fnAnswer
	switch kind {
	case modeForced:
		a = fnAnswer{Status: http.StatusBadRequest}
	case mode429:
		a = fnAnswer{Status: http.StatusTooManyRequests, RetryAfter: "1"}
	case mode503:
		a = fnAnswer{Status: http.StatusServiceUnavailable}
	default:
		if slices.ContainsFunc(b.Records, func(r fnRecord) bool { return chaosPoison(seqOf(r.Value)) }) {
			kind, a = modePoison, fnAnswer{Status: http.StatusBadRequest}
			break
		}
		switch kind {
		case modeSlow:
			a = fnAnswer{Sleep: time.Duration(100+c.rng.IntN(400)) * time.Millisecond}
		case mode500:
			a = fnAnswer{Status: http.StatusInternalServerError}
		case modeTimeout:
			// sluice gives up after the function's timeout and never sees
			// this answer; 504 keeps the batch out of accepted().
			a = fnAnswer{Status: http.StatusGatewayTimeout, Sleep: c.timeout + 300*time.Millisecond}
		}
	}
	c.answers[kind]++
	c.end[b] = b.At.Add(a.Sleep)
	return a
}

// seqOf reads the sequence number out of a value "seq-0001234"; -1 if none.
func seqOf(v string) int {
	n, err := strconv.Atoi(strings.TrimPrefix(v, "seq-"))
	if err != nil {
		return -1
	}
	return n
}

// flip changes the mode every 1-3 s until ctx ends, then leaves it at ok.
func (c *chaosFunction) flip(ctx context.Context, fn *fnServer) {
	weights := []struct {
		m fnMode
		w int
	}{{modeOK, 30}, {modeSlow, 10}, {mode429, 12}, {mode503, 8}, {mode500, 10}, {modeTimeout, 8}, {modeFlaky, 22}}
	for {
		fn.mu.Lock()
		x := c.rng.IntN(100)
		for _, w := range weights {
			if x < w.w {
				c.mode = w.m
				break
			}
			x -= w.w
		}
		c.phases[c.mode]++
		d := time.Duration(1000+c.rng.IntN(2000)) * time.Millisecond
		fn.mu.Unlock()
		select {
		case <-ctx.Done():
			fn.mu.Lock()
			c.mode = modeOK
			fn.mu.Unlock()
			return
		case <-time.After(d):
		}
	}
}

// newChaosFnServer is newFnServer with the same recording and answering, for
// a function whose callers get killed: a request whose body breaks off (the
// sluice process died while sending it) is not malformed, it is ignored, as
// a real function would. decode reads a complete body.
func newChaosFnServer(t *testing.T, policy fnPolicy, decode func(r *http.Request, body []byte) (*fnBatch, error)) *fnServer {
	t.Helper()
	f := &fnServer{t: t, policy: policy}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return // the caller is gone
		}
		b, err := decode(r, body)
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
		b.Seq, b.Status = len(f.batches), a.Status
		f.batches = append(f.batches, b)
		f.mu.Unlock()
		if a.Sleep > 0 {
			time.Sleep(a.Sleep)
		}
		if a.RetryAfter != "" {
			w.Header().Set("Retry-After", a.RetryAfter)
		}
		w.WriteHeader(a.Status)
	}))
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

// decodeKafkaBatch decodes a complete Kafka batch body as fnServer does.
func decodeKafkaBatch(r *http.Request, body []byte) (*fnBatch, error) {
	r.Body = io.NopCloser(bytes.NewReader(body))
	return (&fnServer{}).decode(r)
}

// chaosRecord is one produced record.
type chaosRecord struct {
	produced
	Seq int
}

// chaosProducer writes keyed records at a steady rate until stopped.
type chaosProducer struct {
	paused atomic.Bool // while Kafka restarts: a record produced then may fail yet be written
	mu     sync.Mutex
	recs   []chaosRecord
	failed int // produce errors: such a record may or may not be in the topic (the checker reads the topic)
}

func (pr *chaosProducer) run(ctx context.Context, t *testing.T, cl *kgo.Client, partitions int32, rate int) {
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	perTick := max(1, rate/50)
	seq := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if pr.paused.Load() {
			continue
		}
		for i := 0; i < perTick && !pr.paused.Load(); i++ {
			s := seq
			seq++
			key := s % chaosKeys
			r := &kgo.Record{
				Partition: int32(key) % partitions,
				Key:       fmt.Appendf(nil, "key-%d", key),
				Value:     fmt.Appendf(nil, "seq-%07d", s),
			}
			// Not ctx: records already handed over must be written even
			// though producing stops.
			cl.Produce(context.WithoutCancel(ctx), r, func(r *kgo.Record, err error) {
				pr.mu.Lock()
				defer pr.mu.Unlock()
				if err != nil {
					pr.failed++
					t.Logf("produce seq %d: %v", s, err)
					return
				}
				pr.recs = append(pr.recs, chaosRecord{Seq: s, produced: produced{Partition: r.Partition, Offset: r.Offset,
					Key: string(r.Key), Value: string(r.Value), Timestamp: r.Timestamp}})
			})
		}
	}
}

func (pr *chaosProducer) failedCount() int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.failed
}

func (pr *chaosProducer) snapshot() []chaosRecord {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return slices.Clone(pr.recs)
}

// scrape is one read of a process's /metrics.
type scrape struct {
	at      time.Time
	samples map[string]float64 // "name{labels}" as exposed → value
}

// sum adds the samples of metric name whose labels include all of want.
func (s scrape) sum(name string, want map[string]string) float64 {
	total := 0.0
	for series, v := range s.samples {
		n, lbls, _ := strings.Cut(series, "{")
		if n != name {
			continue
		}
		have := map[string]string{}
		for _, m := range labelPair.FindAllStringSubmatch(lbls, -1) {
			have[m[1]] = m[2]
		}
		ok := true
		for k, w := range want {
			if have[k] != w {
				ok = false
			}
		}
		if ok {
			total += v
		}
	}
	return total
}

func scrapeMetrics(p *sluiceProc) (scrape, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.admin+"/metrics", nil)
	if err != nil {
		return scrape{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return scrape{}, err
	}
	defer resp.Body.Close()
	s := scrape{at: time.Now(), samples: map[string]float64{}}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "sluice_") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		s.samples[line[:i]] = v
	}
	return s, sc.Err()
}

// chaosRun holds the processes of one run and their metrics.
type chaosRun struct {
	t       *testing.T
	cfgPath func() string

	mu      sync.Mutex
	live    map[string]*sluiceProc
	last    map[*sluiceProc]scrape // the latest scrape of every process ever started
	blind   [][2]time.Time         // from the last scrape of a process to its end
	started int
}

func (r *chaosRun) start(slot string) *sluiceProc {
	r.mu.Lock()
	r.started++
	name := fmt.Sprintf("sluice %s#%d", slot, r.started)
	r.mu.Unlock()
	p := startSluice(r.t, name, r.cfgPath())
	r.mu.Lock()
	r.live[slot] = p
	r.mu.Unlock()
	return p
}

// scrapeAll scrapes every live process once.
func (r *chaosRun) scrapeAll() {
	r.mu.Lock()
	procs := make([]*sluiceProc, 0, len(r.live))
	for _, p := range r.live {
		procs = append(procs, p)
	}
	r.mu.Unlock()
	for _, p := range procs {
		r.scrape(p)
	}
}

func (r *chaosRun) scrape(p *sluiceProc) time.Time {
	s, err := scrapeMetrics(p)
	if err != nil {
		return time.Time{}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if s.at.After(r.last[p].at) {
		r.last[p] = s
	}
	return r.last[p].at
}

// end stops the process in slot (kill -9 or SIGTERM) right after a last
// scrape; the time between the two is a blind window of the counters.
func (r *chaosRun) end(slot string, sig syscall.Signal) {
	r.t.Helper()
	r.mu.Lock()
	p := r.live[slot]
	delete(r.live, slot)
	r.mu.Unlock()
	r.scrape(p)
	r.mu.Lock()
	from := r.last[p].at
	r.mu.Unlock()
	if from.IsZero() {
		from = time.Now().Add(-time.Hour) // never scraped: everything it did is unseen
	}
	if sig == syscall.SIGKILL {
		p.kill()
	} else if code := p.stop(sig); code != 0 {
		r.t.Errorf("%s: exit code %d after %s, want 0", p.name, code, sig)
	}
	r.mu.Lock()
	r.blind = append(r.blind, [2]time.Time{from, time.Now()})
	r.mu.Unlock()
}

// inBlind reports whether the interval [from, to] of an event comes within
// slack of a blind window: the counters may not include it.
func (r *chaosRun) inBlind(from, to time.Time) bool {
	const slack = 500 * time.Millisecond
	for _, w := range r.blind {
		if !to.Before(w[0].Add(-slack)) && !from.After(w[1].Add(slack)) {
			return true
		}
	}
	return false
}

// waitOwned waits until the live processes own at least n shards between
// them: right after a kill the group may own nothing until the dead
// member's session (Kafka) or pin (JetStream) expires, and a fault meant to
// meet shards at work must wait for that.
func (r *chaosRun) waitOwned(n int) {
	r.t.Helper()
	eventually(r.t, 150*time.Second, fmt.Sprintf("the live processes own %d partitions", n), func() error {
		r.mu.Lock()
		procs := maps.Clone(r.live)
		r.mu.Unlock()
		owned := map[int32]bool{}
		for _, p := range procs {
			views, err := p.shards()
			if err != nil {
				return err
			}
			for _, v := range views {
				owned[v.Shard] = true
			}
		}
		if len(owned) < n {
			return fmt.Errorf("they own %d", len(owned))
		}
		return nil
	})
}

// watchBlocked polls GET /v1/shards of the live processes for d and returns
// how many (process, shard) pairs it saw blocked.
func (r *chaosRun) watchBlocked(d time.Duration) int {
	blocked := map[string]bool{}
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(250 * time.Millisecond) {
		r.mu.Lock()
		procs := maps.Clone(r.live)
		r.mu.Unlock()
		for slot, p := range procs {
			views, err := p.shards()
			if err != nil {
				continue
			}
			for _, v := range views {
				if v.State == string(shard.StateBlocked) {
					blocked[fmt.Sprintf("%s/%d", slot, v.Shard)] = true
				}
			}
		}
	}
	return len(blocked)
}

// counter sums metric name (samples whose labels include labels) over the
// last scrape of every process.
func (r *chaosRun) counter(name string, labels map[string]string) float64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	total := 0.0
	for _, sc := range r.last {
		total += sc.sum(name, labels)
	}
	return total
}

// brokerCtl runs scripts/brokers/{up,down}.sh on the run's own brokers.
func brokerCtl(t *testing.T, script, component string) time.Duration {
	t.Helper()
	dir := os.Getenv("SLUICE_TEST_BROKERS_DIR")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, filepath.Join("..", "scripts", "brokers", script), dir, component)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s %s: %v\n%s", script, dir, component, err, out)
	}
	return time.Since(start)
}

// TestChaos: see the top of this file. SLUICE_CHAOS=short|long runs it
// (make chaos-short, make chaos).
func TestChaos(t *testing.T) {
	c := newChaos(t, "Kafka stream source", decodeKafkaBatch)
	plan := c.plan

	topic := createTopic(t, plan.Partitions)
	_, js := newJetStream(t)
	dlqStream := strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "DLQ"), "_"))
	dlqSubject := strings.ToLower(dlqStream) + ".>"

	fn, cf := c.fn, c.cf
	source := uniqueName(t, "src")
	group := "sluice-" + source

	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers": map[string]any{
			"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}},
			"bus":  map[string]any{"nats": map[string]any{"url": natsURL(t)}},
		},
		"functions": map[string]any{"fn": map[string]any{"url": fn.URL(), "timeout": plan.FunctionTimout.String()}},
		"sources": map[string]any{source: map[string]any{
			"broker": "main", "topic": topic, "mode": "stream", "function": "fn",
			"batch_size": 100, "max_retry_attempts": chaosMaxRetries, "max_record_age": "1h",
			"bisect_batch_on_error": true, "on_failure": "dead",
			"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"},
		}},
		"dead_letters": map[string]any{"dead": map[string]any{
			"broker": "bus", "stream": dlqStream, "subject": dlqSubject, "retention": "1h"}},
	}
	cfgBytes, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		_ = js.DeleteStream(ctx, dlqStream) // the brokers go away with the run anyway
	})
	c.useConfig(cfgBytes)
	run := c.run

	a := run.start("A")
	b := run.start("B")
	eventually(t, 90*time.Second, "A and B share the partitions", func() error {
		na, ea := a.shards()
		nb, eb := b.shards()
		if err := errors.Join(ea, eb); err != nil {
			return err
		}
		if len(na)+len(nb) != int(plan.Partitions) || len(na) == 0 || len(nb) == 0 {
			return fmt.Errorf("A owns %d shards, B %d", len(na), len(nb))
		}
		return nil
	})

	// Background: the producer, the function's flipping, the scraper.
	prodCl := newKafkaClient(t, kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	pr := &chaosProducer{}
	c.background(func(ctx context.Context) { pr.run(ctx, t, prodCl, plan.Partitions, plan.Rate) })
	faults, note := c.faults, c.note

	// The script. Kills are spread between the other faults; the dead-letter
	// store and Kafka are never down while a process starts (sluice needs
	// both to start: it ensures the dead-letter stream).
	killCycle := func() {
		victim := "A"
		if faults["kill-9"]%2 == 1 {
			victim = "B"
		}
		time.Sleep(plan.KillEvery)
		run.end(victim, syscall.SIGKILL)
		run.start(victim)
		note("kill-9", "killed sluice %s and restarted it", victim)
	}
	kafkaRestart := func() {
		// Producing pauses (the consumers do not), so that produce errors
		// stay few; a record whose produce fails in the restart may still
		// be written, and the checker reads it from the topic anyway.
		pr.paused.Store(true)
		if err := prodCl.Flush(t.Context()); err != nil {
			t.Fatalf("flush the producer: %v", err)
		}
		defer pr.paused.Store(false)
		down := brokerCtl(t, "down.sh", "kafka")
		time.Sleep(3 * time.Second)
		up := brokerCtl(t, "up.sh", "kafka")
		note("kafka-restart", "Kafka stopped in %s, started again in %s", down.Round(time.Millisecond), up.Round(time.Millisecond))
	}
	blockedSeen := 0
	natsOutage := func() {
		// The outage must meet shards at work: right after a kill the
		// group may own nothing until the dead member's session expires.
		run.waitOwned(int(plan.Partitions))
		down := brokerCtl(t, "down.sh", "nats")
		fn.mu.Lock()
		cf.outage = true
		fn.mu.Unlock()
		// Shards that need the store must block.
		blocked := run.watchBlocked(plan.NATSOutage)
		fn.mu.Lock()
		cf.outage = false
		fn.mu.Unlock()
		brokerCtl(t, "up.sh", "nats")
		blockedSeen += blocked
		note("dlq-outage", "the dead-letter store (nats-server) was down for %s; the function answered 400 to everything meanwhile; %d shards seen blocked",
			(down + plan.NATSOutage).Round(time.Second), blocked)
	}
	rebalance := func() {
		c := run.start("C")
		eventually(t, 90*time.Second, "the third process gets partitions", func() error {
			v, err := c.shards()
			if err != nil {
				return err
			}
			if len(v) == 0 {
				return errors.New("C owns no shard yet")
			}
			return nil
		})
		time.Sleep(2 * time.Second) // C works for a while before it leaves
		run.end("C", syscall.SIGTERM)
		note("rebalance", "a third process joined, took partitions and left (SIGTERM)")
	}

	// A process that joins waits for the group to drop a member killed
	// less than a session timeout (45 s) ago, and until then the partitions
	// of the dead member stand still; so the first rebalance, Kafka restart
	// and store outage come before any kill; the other faults are spread
	// between the kills.
	time.Sleep(3 * time.Second)
	var steps []func()
	nKafka, nNATS, nRebal := plan.KafkaRestarts, plan.NATSOutages, plan.Rebalances
	if nRebal > 0 {
		rebalance()
		nRebal--
	}
	if nKafka > 0 && !t.Failed() {
		kafkaRestart()
		nKafka--
	}
	if nNATS > 0 && !t.Failed() {
		natsOutage()
		nNATS--
	}
	for nKafka+nNATS+nRebal > 0 {
		if nNATS > 0 {
			steps, nNATS = append(steps, natsOutage), nNATS-1
		}
		if nKafka > 0 {
			steps, nKafka = append(steps, kafkaRestart), nKafka-1
		}
		if nRebal > 0 {
			steps, nRebal = append(steps, rebalance), nRebal-1
		}
	}
	perGap := max(1, plan.Kills/(len(steps)+1))
	for _, step := range steps {
		for i := 0; i < perGap && faults["kill-9"] < plan.Kills && !t.Failed(); i++ {
			killCycle()
		}
		if t.Failed() {
			break
		}
		step()
	}
	for faults["kill-9"] < plan.Kills && !t.Failed() {
		killCycle()
	}
	time.Sleep(3 * time.Second) // the last restarted process works under the flipping function a while
	c.endFaults(func() error { return prodCl.Flush(t.Context()) })

	c.drainAndCheck(kafkaChaosSource{seeds: []string{kafkaAddr(t)}, topic: topic, group: group}, pr.snapshot(),
		func() []chaosLetter { return readChaosLetters(t, js, dlqStream) },
		chaosOutcome{variant: "kafka source, JetStream dead letters", source: source, topic: topic, failed: pr.failedCount()})
	if dlErrs := run.counter("sluice_dead_letter_errors_total", nil); plan.NATSOutages > 0 && blockedSeen == 0 && dlErrs == 0 {
		t.Errorf("no shard was seen blocked and no dead-letter write failed while the store was down: the outage was not exercised")
	}
	if faults["kill-9"] < plan.Kills {
		t.Errorf("only %d kill -9 cycles ran, the plan has %d", faults["kill-9"], plan.Kills)
	}
}

// chaosOutcome is what one chaos run leaves for the checker.
type chaosOutcome struct {
	variant  string // kafka, jetstream
	mode     string
	seed     uint64
	start    time.Time
	source   string
	topic    string        // the topic (or stream) the dead letters' records must name
	want     []chaosRecord // read from the source's broker
	acked    int           // records the producer saw acknowledged
	failed   int           // produce errors
	lost     []chaosRecord
	letters  []chaosLetter
	fn       *fnServer
	cf       *chaosFunction
	run      *chaosRun
	faults   map[string]int
	faultLog []string
}

// checkChaos checks the invariants of the top of this file on what a run
// left, and prints (and with SLUICE_CHAOS_REPORT writes) the figures.
func checkChaos(t *testing.T, o chaosOutcome) {
	t.Helper()
	fn, cf, want, topic, letters, lost, run := o.fn, o.cf, o.want, o.topic, o.letters, o.lost, o.run
	source, mode, seed, runStart, faults, faultLog := o.source, o.mode, o.seed, o.start, o.faults, o.faultLog
	// ------------------------------------------------------------ checks
	batches := fn.snapshot()
	fn.mu.Lock()
	ends := cf.end
	answers := maps.Clone(cf.answers)
	phases := maps.Clone(cf.phases)
	fn.mu.Unlock()

	byKey := map[producedKey]chaosRecord{}
	for _, r := range want {
		byKey[producedKey{r.Partition, r.Offset}] = r
	}

	// History of every record: the answers of the batches that held it.
	type history struct{ throttled, other, poisoned int }
	hist := map[producedKey]*history{}
	for _, bt := range batches {
		for _, r := range bt.Records {
			k := producedKey{r.Partition, r.Offset}
			h := hist[k]
			if h == nil {
				h = &history{}
				hist[k] = h
			}
			switch bt.Status {
			case http.StatusTooManyRequests, http.StatusServiceUnavailable:
				h.throttled++
			case http.StatusBadRequest:
				h.poisoned++
				h.other++
			default:
				h.other++
			}
		}
	}

	// Dead letters: one per record (duplicates share the id), with a
	// condition its history explains, never for a record only throttled.
	deadByCond := map[event.Condition]int{}
	rawByCond := map[event.Condition]int{}
	deadKeys := map[producedKey]bool{}
	for _, l := range letters {
		e := l.Env
		k := producedKey{e.Record.Partition, e.Record.Offset}
		rawByCond[e.Condition]++
		p, ok := byKey[k]
		if !ok {
			t.Errorf("dead letter %s for %d@%d, a record the test did not produce", e.ID, k.p, k.o)
			continue
		}
		if string(e.Record.Key) != p.Key || string(e.Record.Value) != p.Value || e.Record.Topic != topic {
			t.Errorf("dead letter %s holds %s %q=%q, produced %q=%q", e.ID, e.Record.Topic, e.Record.Key, e.Record.Value, p.Key, p.Value)
		}
		if deadKeys[k] {
			continue
		}
		deadKeys[k] = true
		deadByCond[e.Condition]++
		h := hist[k]
		switch {
		case h == nil || h.other == 0:
			t.Errorf("record %d@%d (seq %d) was dead-lettered with %s although the function only ever throttled it (%v) and it was younger than max_record_age",
				k.p, k.o, p.Seq, e.Condition, h)
		case e.Condition == event.PermanentError && h.poisoned == 0:
			t.Errorf("record %d@%d dead-lettered with PermanentError, but no batch holding it was answered 400", k.p, k.o)
		case e.Condition == event.RetryAttemptsExhausted && e.Attempts != chaosMaxRetries+1:
			t.Errorf("record %d@%d dead-lettered with RetryAttemptsExhausted after %d attempts, want %d", k.p, k.o, e.Attempts, chaosMaxRetries+1)
		case e.Condition != event.PermanentError && e.Condition != event.RetryAttemptsExhausted:
			t.Errorf("record %d@%d dead-lettered with %s, want PermanentError or RetryAttemptsExhausted (max_record_age is 1h)", k.p, k.o, e.Condition)
		}
	}
	poison := 0
	for _, r := range want {
		if chaosPoison(r.Seq) {
			poison++
			if k := (producedKey{r.Partition, r.Offset}); !deadKeys[k] {
				t.Errorf("poison record %d@%d (seq %d) was not dead-lettered", k.p, k.o, r.Seq)
			}
		}
	}
	// Deliveries: duplicates, and per-key order (a key lives on one
	// partition, so its order is its offsets') of
	//   - first deliveries: the first time the function received each
	//     record, whatever it answered;
	//   - first acceptances of the records never dead-lettered. (A record
	//     dead-lettered, then redelivered after a kill because its offset
	//     was not committed yet, may be accepted on that replay, after
	//     later records: at-least-once allows it; it is counted below.)
	accepted := map[producedKey]int{}
	seen := map[producedKey]bool{}
	lastSeen := map[string]int64{}
	lastAccepted := map[string]int64{}
	orderErrs := 0
	outOfOrder := func(what, key string, k producedKey, seq int, last int64) {
		if orderErrs++; orderErrs <= 10 {
			t.Errorf("key %s: the %s of %d@%d (seq %d) came after that of offset %d (out of order)", key, what, k.p, k.o, seq, last)
		}
	}
	for _, bt := range batches {
		for _, r := range bt.Records {
			k := producedKey{r.Partition, r.Offset}
			p, ok := byKey[k]
			if !ok || seen[k] {
				continue // not produced by the test (a produce error), or not the first time
			}
			seen[k] = true
			if last, ok := lastSeen[p.Key]; ok && k.o < last {
				outOfOrder("first delivery", p.Key, k, p.Seq, last)
			}
			lastSeen[p.Key] = k.o
		}
		for _, r := range bt.accepted() {
			k := producedKey{r.Partition, r.Offset}
			p, ok := byKey[k]
			if !ok {
				continue
			}
			if r.Key != p.Key || r.Value != p.Value {
				t.Errorf("record %d@%d delivered as %q=%q, produced as %q=%q", k.p, k.o, r.Key, r.Value, p.Key, p.Value)
			}
			accepted[k]++
			if accepted[k] > 1 || deadKeys[k] {
				continue
			}
			if last, ok := lastAccepted[p.Key]; ok && k.o < last {
				outOfOrder("first acceptance", p.Key, k, p.Seq, last)
			}
			lastAccepted[p.Key] = k.o
		}
	}
	duplicates := 0
	for _, n := range accepted {
		duplicates += n - 1
	}
	deadThenDelivered := 0
	for k := range deadKeys {
		if accepted[k] > 0 {
			deadThenDelivered++
		}
	}

	reportLost(t, lost)

	// Counters vs what the function and the store saw.
	cmp := run.compareCounters(t, source, batches, ends, letters)

	// ------------------------------------------------------------ figures
	var fig strings.Builder
	fmt.Fprintf(&fig, "chaos %s, %s: figures (seed %d, %s):\n", mode, o.variant, seed, time.Since(runStart).Round(time.Second))
	fmt.Fprintf(&fig, "  records in the source %d, read from the broker (%d acknowledged to the producer, %d produce errors)\n", len(want), o.acked, o.failed)
	fmt.Fprintf(&fig, "  delivered (2xx)       %d distinct\n", len(accepted))
	fmt.Fprintf(&fig, "  dead-lettered         %d distinct records (%d letters in the store): %v\n", len(deadKeys), len(letters), deadByCond)
	fmt.Fprintf(&fig, "  poison records        %d\n", poison)
	fmt.Fprintf(&fig, "  duplicates            %d extra deliveries of %d records\n", duplicates, countDup(accepted))
	fmt.Fprintf(&fig, "  lost                  %d\n", len(lost))
	fmt.Fprintf(&fig, "  order violations      %d\n", orderErrs)
	fmt.Fprintf(&fig, "  dead-lettered, then   %d records were also accepted (redelivered after a kill before their offset was committed)\n", deadThenDelivered)
	fmt.Fprintf(&fig, "  faults injected       %s\n", fmtCounts(faults, "end-of-faults"))
	fmt.Fprintf(&fig, "  function phases       %s\n", fmtCounts(phases))
	fmt.Fprintf(&fig, "  function answers      %s (%d invocations)\n", fmtCounts(answers), len(batches))
	fmt.Fprintf(&fig, "  sluice processes      %d started\n", run.started)
	fmt.Fprintf(&fig, "  metrics vs observed   %s\n", cmp)
	t.Log(fig.String())
	if path := os.Getenv("SLUICE_CHAOS_REPORT"); path != "" {
		// Appended: one file for the runs of both variants.
		f, err := os.OpenFile(path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err == nil {
			_, err = f.WriteString(fig.String() + "\nfault log:\n" + strings.Join(faultLog, "\n") + "\n\n")
			err = errors.Join(err, f.Close())
		}
		if err != nil {
			t.Errorf("write %s: %v", path, err)
		}
	}
}

// chaosLetter is one message of the dead-letter stream.
type chaosLetter struct {
	Env *retention.Envelope
	At  time.Time // when the stream stored it
}

// readChaosLetters reads every message of the dead-letter stream.
func readChaosLetters(t *testing.T, js jetstream.JetStream, stream string) []chaosLetter {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	var s jetstream.Stream
	var err error
	// The nats-server may just have been restarted: give it a moment.
	for {
		if s, err = js.Stream(ctx, stream); err == nil || ctx.Err() != nil {
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("dead-letter stream %s: %v", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatalf("dead-letter stream %s: %v", stream, err)
	}
	var out []chaosLetter
	if info.State.Msgs == 0 {
		return nil
	}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("dead-letter stream %s seq %d: %v", stream, seq, err)
		}
		env, err := retention.DecodeEnvelope(m.Data)
		if err != nil {
			t.Fatalf("dead-letter stream %s seq %d: %v", stream, seq, err)
		}
		if got := m.Header.Get(retention.HeaderCondition); got != string(env.Condition) {
			t.Errorf("dead letter %s: header %s %q, envelope condition %q", env.ID, retention.HeaderCondition, got, env.Condition)
		}
		out = append(out, chaosLetter{Env: env, At: m.Time})
	}
	return out
}

// compareCounters compares the counters of /metrics, summed over the last
// scrape of every process (counters restart at 0 with each process; each
// process was scraped every 250 ms and right before it was killed or
// stopped), with what the function and the dead-letter store saw:
//
//   - sluice_dead_letters_total by condition vs the letters in the store:
//     never more than the store holds (a letter is counted once the stream
//     acknowledged it), and at least the distinct records dead-lettered,
//     except those stored in a blind window (between a process's last scrape
//     and its death, ±0.5 s);
//   - sluice_throttles_total{reason="FunctionThrottled"} vs the 429 and 503
//     answers the function gave: the same bounds, the blind windows counted
//     by the answers' times;
//   - sluice_invocations_total (all outcomes) vs the requests the function
//     received: the same bounds; a request counts in a blind window when it
//     was still being answered then.
func (r *chaosRun) compareCounters(t *testing.T, source string, batches []*fnBatch, ends map[*fnBatch]time.Time, letters []chaosLetter) string {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	total := func(name string, labels map[string]string) float64 {
		s := 0.0
		for _, sc := range r.last {
			s += sc.sum(name, labels)
		}
		return s
	}
	var out []string
	check := func(what string, metric float64, observed, distinct, blind int) {
		out = append(out, fmt.Sprintf("%s %g/%d", what, metric, observed))
		lo := float64(distinct - blind)
		if metric > float64(observed) || metric < lo {
			t.Errorf("%s: the counters (summed over processes) say %g; the test observed %d (%d distinct, %d within a blind window around a kill): want %g..%d",
				what, metric, observed, distinct, blind, lo, observed)
		}
	}

	// Dead letters per condition.
	conds := map[event.Condition]bool{}
	for _, l := range letters {
		conds[l.Env.Condition] = true
	}
	for _, c := range []event.Condition{event.PermanentError, event.RetryAttemptsExhausted, event.RecordAgeExceeded} {
		conds[c] = true
	}
	for _, c := range sortedConds(conds) {
		raw, blind := 0, 0
		ids := map[string]bool{}
		blindIDs := map[string]bool{}
		for _, l := range letters {
			if l.Env.Condition != c {
				continue
			}
			raw++
			ids[l.Env.ID] = true
			if r.inBlind(l.At, l.At) {
				blindIDs[l.Env.ID] = true
			}
		}
		blind = len(blindIDs)
		check(fmt.Sprintf("dead_letters{%s}", c), total("sluice_dead_letters_total", map[string]string{"source": source, "condition": string(c)}),
			raw, len(ids), blind)
	}

	// Throttles and invocations.
	thr, thrBlind, inv, invBlind := 0, 0, 0, 0
	for _, b := range batches {
		if b.Source != "" && b.Source != source {
			continue
		}
		end := ends[b]
		if end.IsZero() {
			end = b.At
		}
		inv++
		blind := r.inBlind(b.At, end)
		if blind {
			invBlind++
		}
		if b.Status == http.StatusTooManyRequests || b.Status == http.StatusServiceUnavailable {
			thr++
			if blind {
				thrBlind++
			}
		}
	}
	check("throttles{FunctionThrottled}", total("sluice_throttles_total", map[string]string{"function": "fn", "reason": "FunctionThrottled"}), thr, thr, thrBlind)
	// Invocations are reported, not checked: one abandoned by a graceful
	// stop may be counted without ever reaching the function.
	out = append(out, fmt.Sprintf("invocations %g/%d (%d in blind windows)",
		total("sluice_invocations_total", map[string]string{"function": "fn"}), inv, invBlind))
	// Reported: how often a dead-letter write failed (the store outage).
	out = append(out, fmt.Sprintf("dead_letter_errors %g", total("sluice_dead_letter_errors_total", map[string]string{"destination": "dead"})))
	return strings.Join(out, ", ") + fmt.Sprintf(" (counter/observed; %d blind windows)", len(r.blind))
}

func sortedConds(m map[event.Condition]bool) []event.Condition {
	out := make([]event.Condition, 0, len(m))
	for c := range m {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

func countDup(m map[producedKey]int) int {
	n := 0
	for _, c := range m {
		if c > 1 {
			n++
		}
	}
	return n
}

func fmtCounts[K ~string](m map[K]int, skip ...K) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		if !slices.Contains(skip, k) {
			keys = append(keys, string(k))
		}
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[K(k)])
	}
	return strings.Join(parts, " ")
}
