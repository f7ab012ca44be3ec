package integration

// The scaffold and the checker every chaos test shares (chaos_test.go,
// chaos_nats_test.go, chaos_async_test.go):
//
//   - chaosScaffold: the plan for SLUICE_CHAOS, the seed, the flipping
//     function, the background producer / flipper / scraper, the fault log,
//     and the end of the faults (producing stops and the producer goroutine
//     is waited for before anything is read);
//   - chaosSource: the source as its broker holds it. The checker's expected
//     set is read from the broker after the producer stopped (every Kafka
//     partition from its start to its end offset; every message of the
//     JetStream stream from FirstSeq to LastSeq), never taken from the
//     producer's acknowledgements: a record whose produce failed yet landed
//     is expected too, and a record the producer saw acknowledged but the
//     broker does not hold is an error of its own;
//   - checkAgainstSource: every record read from the broker was accepted by
//     the function (2xx) or is in the dead-letter store, and the source ends
//     settled: the Kafka group committed to the end of every partition, or
//     every JetStream partition consumer with NumPending = NumAckPending = 0.
//
// TestLossCheckerCatchesInjectedLoss shows the checker failing on an injected loss.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// chaosSource is the source under test as its broker holds it.
type chaosSource interface {
	// Records reads every record the source holds, with the key the
	// function's batches and the dead letters identify it by.
	Records(ctx context.Context) ([]chaosRecord, error)
	// Settled reports nil once sluice has committed (Kafka) or acknowledged
	// (JetStream) every record of every partition.
	Settled(ctx context.Context) error
}

// kafkaChaosSource is a Kafka topic consumed by group.
type kafkaChaosSource struct {
	seeds        []string
	topic, group string
}

// admin returns an admin client of the broker, closed by close.
func (s kafkaChaosSource) admin() (adm *kadm.Client, closeAdm func(), err error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.seeds...))
	if err != nil {
		return nil, nil, err
	}
	return kadm.NewClient(cl), cl.Close, nil
}

func (s kafkaChaosSource) Records(ctx context.Context) ([]chaosRecord, error) {
	adm, closeAdm, err := s.admin()
	if err != nil {
		return nil, err
	}
	defer closeAdm()
	starts, err := adm.ListStartOffsets(ctx, s.topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("start offsets of %s: %w", s.topic, err)
	}
	ends, err := adm.ListEndOffsets(ctx, s.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("end offsets of %s: %w", s.topic, err)
	}
	from := map[int32]kgo.Offset{}
	left := map[int32]int64{} // partition -> end offset still to reach
	starts.Each(func(o kadm.ListedOffset) {
		end, _ := ends.Lookup(s.topic, o.Partition)
		if end.Offset > o.Offset {
			from[o.Partition] = kgo.NewOffset().At(o.Offset)
			left[o.Partition] = end.Offset
		}
	})
	if len(left) == 0 {
		return nil, nil
	}
	cl, err := kgo.NewClient(kgo.SeedBrokers(s.seeds...),
		kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{s.topic: from}))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var out []chaosRecord
	for len(left) > 0 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("read %s: %d partitions not read to their end: %w", s.topic, len(left), err)
		}
		if errs := fs.Errors(); len(errs) > 0 {
			return nil, fmt.Errorf("read %s partition %d: %w", s.topic, errs[0].Partition, errs[0].Err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			out = append(out, chaosRecord{Seq: seqOf(string(r.Value)), produced: produced{Partition: r.Partition, Offset: r.Offset,
				Key: string(r.Key), Value: string(r.Value), Timestamp: r.Timestamp}})
			if end, ok := left[r.Partition]; ok && r.Offset+1 >= end {
				delete(left, r.Partition)
			}
		})
	}
	return out, nil
}

func (s kafkaChaosSource) Settled(ctx context.Context) error {
	adm, closeAdm, err := s.admin()
	if err != nil {
		return err
	}
	defer closeAdm()
	ends, err := adm.ListEndOffsets(ctx, s.topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return err
	}
	resp, err := adm.FetchOffsets(ctx, s.group)
	if err == nil {
		err = resp.Error()
	}
	if err != nil {
		return err
	}
	var behind []string
	ends.Each(func(o kadm.ListedOffset) {
		c, ok := resp.Lookup(s.topic, o.Partition)
		at := c.At
		if !ok || at < 0 {
			at = 0 // nothing committed: the group is at the start
		}
		if at != o.Offset {
			behind = append(behind, fmt.Sprintf("partition %d committed %d, end %d", o.Partition, at, o.Offset))
		}
	})
	if len(behind) > 0 {
		slices.Sort(behind)
		return fmt.Errorf("group %s is not committed to the end: %v", s.group, behind)
	}
	return nil
}

// jsChaosSource is a partitioned JetStream stream consumed by a sluice
// source (one durable consumer per partition). Its records are keyed
// (0, stream sequence), as decodeJSBatch and the dead letters identify them.
type jsChaosSource struct {
	js         jetstream.JetStream
	stream     string
	source     string // sluice source name: consumers sluice-<source>-<p>
	partitions int
}

func (s jsChaosSource) Records(ctx context.Context) ([]chaosRecord, error) {
	st, err := s.js.Stream(ctx, s.stream)
	if err != nil {
		return nil, err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return nil, err
	}
	if info.State.Msgs == 0 {
		return nil, nil
	}
	first, last := info.State.FirstSeq, info.State.LastSeq
	if first != 1 || info.State.Msgs != last-first+1 {
		// Nothing in these tests deletes from the source stream: a gap
		// would be records the checker cannot see.
		return nil, fmt.Errorf("stream %s holds %d messages in %d..%d: some are missing", s.stream, info.State.Msgs, first, last)
	}
	oc, err := s.js.OrderedConsumer(ctx, s.stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		return nil, err
	}
	out := make([]chaosRecord, 0, info.State.Msgs)
	for seq := uint64(0); seq < last; {
		batch, err := oc.Fetch(500, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			return nil, err
		}
		n := 0
		for m := range batch.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return nil, err
			}
			seq = md.Sequence.Stream
			subj := m.Subject()
			key := subj[lastDot(subj)+1:]
			out = append(out, chaosRecord{Seq: seqOf(string(m.Data())), produced: produced{Offset: int64(seq), Key: key,
				Value: string(m.Data()), Timestamp: md.Timestamp}})
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if n == 0 && seq < last {
			return nil, fmt.Errorf("stream %s: read to sequence %d of %d, then nothing more", s.stream, seq, last)
		}
	}
	return out, nil
}

func lastDot(s string) int {
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '.' {
			return i
		}
	}
	return -1
}

func (s jsChaosSource) Settled(ctx context.Context) error {
	var errs []error
	for p := range s.partitions {
		c, err := s.js.Consumer(ctx, s.stream, fmt.Sprintf("sluice-%s-%d", s.source, p))
		if err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
		info, err := c.Info(ctx)
		if err != nil {
			return fmt.Errorf("partition %d: %w", p, err)
		}
		if info.NumPending != 0 || info.NumAckPending != 0 {
			errs = append(errs, fmt.Errorf("partition %d: NumPending %d, NumAckPending %d (ack floor %d)",
				p, info.NumPending, info.NumAckPending, info.AckFloor.Stream))
		}
	}
	return errors.Join(errs...)
}

// reporter is the part of testing.TB the checker reports through (a test of
// the checker records what it reports).
type reporter interface {
	Helper()
	Errorf(format string, args ...any)
}

// unresolved returns the records of want neither accepted by the function
// (2xx) nor in the dead-letter store.
func unresolved(want []chaosRecord, batches []*fnBatch, letters []chaosLetter) []chaosRecord {
	done := map[producedKey]bool{}
	for _, l := range letters {
		done[producedKey{l.Env.Record.Partition, l.Env.Record.Offset}] = true
	}
	for _, b := range batches {
		for _, r := range b.accepted() {
			done[producedKey{r.Partition, r.Offset}] = true
		}
	}
	var out []chaosRecord
	for _, r := range want {
		if !done[producedKey{r.Partition, r.Offset}] {
			out = append(out, r)
		}
	}
	return out
}

// checkAcked reports every record the producer saw acknowledged that the
// broker does not hold (with the same key and value) at that position.
func checkAcked(r reporter, held, acked []chaosRecord) {
	r.Helper()
	byKey := make(map[producedKey]chaosRecord, len(held))
	for _, h := range held {
		byKey[producedKey{h.Partition, h.Offset}] = h
	}
	bad := 0
	for _, a := range acked {
		h, ok := byKey[producedKey{a.Partition, a.Offset}]
		if !ok || h.Value != a.Value || h.Key != a.Key {
			if bad++; bad <= 10 {
				r.Errorf("record seq %d was acknowledged to the producer at %d@%d, but the broker holds %q=%q there (present: %v)",
					a.Seq, a.Partition, a.Offset, h.Key, h.Value, ok)
			}
		}
	}
}

// reportLost reports every lost record.
func reportLost(r reporter, lost []chaosRecord) {
	r.Helper()
	for i, l := range lost {
		if i < 10 {
			r.Errorf("LOST: record %d@%d (seq %d) was neither delivered nor dead-lettered", l.Partition, l.Offset, l.Seq)
		}
	}
	if len(lost) > 10 {
		r.Errorf("LOST: %d records in all", len(lost))
	}
}

// chaosScaffold is one chaos run: its plan, seed, function, processes,
// background work and fault log.
type chaosScaffold struct {
	t     *testing.T
	mode  string
	plan  chaosPlan
	seed  uint64
	start time.Time

	cf  *chaosFunction
	fn  *fnServer
	run *chaosRun

	faults   map[string]int
	faultLog []string
	windows  [][2]time.Time // when faults were under way (async invariants)

	bg             context.Context
	stopBG         context.CancelFunc
	wg             sync.WaitGroup // flipper and scraper
	prodWG         sync.WaitGroup // the producer
	stopProducing  context.CancelFunc
	stopFlipping   context.CancelFunc
	producingEnded bool
}

// newChaos reads SLUICE_CHAOS (skipping the test when unset) and prepares a
// run of variant, with a function decoding batches with decode.
func newChaos(t *testing.T, variant string, decode func(r *http.Request, body []byte) (*fnBatch, error)) *chaosScaffold {
	t.Helper()
	mode := os.Getenv(chaosEnv)
	if mode == "" {
		t.Skipf("%s is not set: the chaos suite restarts brokers, run it with `make chaos-short` or `make chaos` (own brokers)", chaosEnv)
	}
	plan, ok := chaosPlanFor(mode)
	if !ok {
		t.Fatalf("%s=%q: want short or long", chaosEnv, mode)
	}
	if os.Getenv("SLUICE_TEST_BROKERS_DIR") == "" {
		t.Fatalf("%s is set but SLUICE_TEST_BROKERS_DIR is not: run it under scripts/brokers/with-brokers.sh (make chaos-short)", chaosEnv)
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("SLUICE_CHAOS_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("chaos %s (%s): seed %d (SLUICE_CHAOS_SEED replays the function's answers and phase lengths, not the timing)", mode, variant, seed)
	c := &chaosScaffold{t: t, mode: mode, plan: plan, seed: seed, start: time.Now(), faults: map[string]int{}}
	c.cf = &chaosFunction{timeout: plan.FunctionTimout, rng: rand.New(rand.NewPCG(seed, seed^0x5eed)),
		mode: modeOK, phases: map[fnMode]int{}, answers: map[fnMode]int{}, end: map[*fnBatch]time.Time{}}
	c.fn = newChaosFnServer(t, c.cf.policy, decode)
	c.bg, c.stopBG = context.WithCancel(t.Context())
	t.Cleanup(c.stopBG)
	return c
}

// useConfig sets the run's processes up with the config cfg (each process
// its own copy and state_dir).
func (c *chaosScaffold) useConfig(cfg []byte) {
	c.run = &chaosRun{t: c.t, live: map[string]*sluiceProc{}, last: map[*sluiceProc]scrape{},
		cfgPath: func() string {
			path := filepath.Join(c.t.TempDir(), "sluice.yaml")
			if err := os.WriteFile(path, cfg, 0o600); err != nil {
				c.t.Fatal(err)
			}
			return path
		}}
}

// background starts the producer (produce runs until its ctx ends), the
// function's flipping and the scraper of every live process.
func (c *chaosScaffold) background(produce func(ctx context.Context)) {
	prodCtx, stopProducing := context.WithCancel(c.bg)
	c.stopProducing = stopProducing
	c.prodWG.Go(func() { produce(prodCtx) })
	flipCtx, stopFlipping := context.WithCancel(c.bg)
	c.stopFlipping = stopFlipping
	c.wg.Go(func() { c.cf.flip(flipCtx, c.fn) })
	c.wg.Go(func() {
		for {
			select {
			case <-c.bg.Done():
				return
			case <-time.After(250 * time.Millisecond):
				c.run.scrapeAll()
			}
		}
	})
}

// note logs one fault.
func (c *chaosScaffold) note(kind, format string, args ...any) {
	c.faults[kind]++
	msg := fmt.Sprintf("%6.1fs %-16s %s", time.Since(c.start).Seconds(), kind, fmt.Sprintf(format, args...))
	c.faultLog = append(c.faultLog, msg)
	c.t.Log(msg)
}

// endFaults stops producing and flipping (the function answers 200 from
// now on) and waits for the producer goroutine: after it, nothing more is
// written to the source. flush, when set, then waits for records handed to
// the producer's client.
func (c *chaosScaffold) endFaults(flush func() error) {
	c.stopProducing()
	c.stopFlipping()
	c.prodWG.Wait()
	if flush != nil {
		if err := flush(); err != nil {
			c.t.Fatalf("flush the producer: %v", err)
		}
	}
	c.producingEnded = true
	c.note("end-of-faults", "producing stopped, the function answers 200 from now on")
}

// drain reads the source from its broker, waits until every record it
// holds was delivered or dead-lettered and the source is settled, and stops
// the background work and the processes. acked is what the producer saw
// acknowledged (each must be in the broker); letters reads the dead-letter
// store. It returns the records read and those still unresolved (lost).
func (c *chaosScaffold) drain(src chaosSource, acked []chaosRecord, letters func() []chaosLetter) (want, lost []chaosRecord) {
	t := c.t
	t.Helper()
	if !c.producingEnded {
		t.Fatal("drain before endFaults: the producer may still write")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	want, err := readWithRetry(ctx, src)
	cancel()
	if err != nil {
		t.Fatalf("read the source from its broker: %v", err)
	}
	checkAcked(t, want, acked)

	drainStart := time.Now()
	for {
		lost = unresolved(want, c.fn.snapshot(), letters())
		if len(lost) == 0 || time.Since(drainStart) > c.plan.Drain || t.Failed() {
			break
		}
		time.Sleep(time.Second)
	}
	t.Logf("drain took %s", time.Since(drainStart).Round(time.Millisecond))
	if len(lost) == 0 {
		eventually(t, 90*time.Second, "the source is settled (committed / acknowledged to its end)", func() error {
			ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
			defer cancel()
			return src.Settled(ctx)
		})
	}
	c.run.scrapeAll()
	c.stopBG()
	c.wg.Wait()
	c.run.end("A", syscall.SIGTERM)
	c.run.end("B", syscall.SIGTERM)
	return want, lost
}

// drainAndCheck drains (see drain) and runs checkChaos; o carries the
// variant's fields of chaosOutcome.
func (c *chaosScaffold) drainAndCheck(src chaosSource, acked []chaosRecord, letters func() []chaosLetter, o chaosOutcome) {
	c.t.Helper()
	want, lost := c.drain(src, acked, letters)
	o.mode, o.seed, o.start = c.mode, c.seed, c.start
	o.want, o.lost, o.letters, o.fn, o.cf, o.run = want, lost, letters(), c.fn, c.cf, c.run
	o.faults, o.faultLog = c.faults, c.faultLog
	o.acked = len(acked)
	checkChaos(c.t, o)
}

// readWithRetry reads src, retrying while a broker restarted a moment ago
// is not ready yet.
func readWithRetry(ctx context.Context, src chaosSource) ([]chaosRecord, error) {
	for {
		recs, err := src.Records(ctx)
		if err == nil || ctx.Err() != nil {
			return recs, err
		}
		time.Sleep(time.Second)
	}
}

// recorder is a reporter that keeps what it is told.
type recorder struct {
	mu   sync.Mutex
	errs []string
}

func (r *recorder) Helper() {}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

// TestLossCheckerCatchesInjectedLoss shows that the chaos checker fails on a lost
// record that the producer never saw acknowledged and that the source's
// committed position has passed, the loss a dropped commit guard causes.
// On each broker: sluice consumes a few records and stops (SIGTERM); then the
// test writes one record more with a client of its own (a produce whose
// acknowledgement was lost), and moves the source past it without delivering
// it (Kafka: commits the group's offsets to the end; JetStream: fetches the
// message on its partition consumer and acknowledges it). The checker must
// report that record LOST, although the source is settled and the producer's
// own record of what it wrote holds nothing undelivered. Before the
// injection, the checker reports nothing.
func TestLossCheckerCatchesInjectedLoss(t *testing.T) {
	t.Parallel()
	for _, be := range streamBackends() {
		t.Run(be.Name(), func(t *testing.T) {
			t.Parallel()
			env := be.Setup(t, 2)
			source := uniqueName(t, "src")
			var (
				src    chaosSource
				decode func(*http.Request, []byte) (*fnBatch, error)
				inject func(ctx context.Context) producedKey
			)
			switch e := env.(type) {
			case *kafkaEnv:
				decode = decodeKafkaBatch
				ks := kafkaChaosSource{seeds: []string{kafkaAddr(t)}, topic: e.topic, group: "sluice-" + source}
				src = ks
				inject = func(ctx context.Context) producedKey {
					cl := newKafkaClient(t)
					r, err := cl.ProduceSync(ctx, &kgo.Record{Topic: e.topic, Partition: 0, Key: []byte("key-0"), Value: []byte("seq-9999999")}).First()
					if err != nil {
						t.Fatalf("produce the injected record: %v", err)
					}
					adm := kadm.NewClient(cl)
					ends, err := adm.ListEndOffsets(ctx, e.topic)
					if err == nil {
						err = ends.Error()
					}
					if err != nil {
						t.Fatal(err)
					}
					offs := kadm.Offsets{}
					ends.Each(func(o kadm.ListedOffset) { offs.AddOffset(o.Topic, o.Partition, o.Offset, -1) })
					resp, err := adm.CommitOffsets(ctx, ks.group, offs)
					if err == nil {
						err = resp.Error()
					}
					if err != nil {
						t.Fatalf("commit %s past the injected record: %v", ks.group, err)
					}
					return producedKey{r.Partition, r.Offset}
				}
			case *natsEnv:
				decode = decodeJSBatch
				src = jsChaosSource{js: e.js, stream: e.stream, source: source, partitions: e.partitions}
				inject = func(ctx context.Context) producedKey {
					key := e.keys[0][0]
					ack, err := e.js.Publish(ctx, e.prefix+"."+key, []byte("seq-9999999"))
					if err != nil {
						t.Fatalf("publish the injected record: %v", err)
					}
					c, err := e.js.Consumer(ctx, e.stream, fmt.Sprintf("sluice-%s-0", source))
					if err != nil {
						t.Fatal(err)
					}
					// sluice's graceful stop released its pin: the test's
					// fetch in the same priority group gets the message.
					var acked bool
					eventually(t, 30*time.Second, "the injected message is fetched from partition 0 and acknowledged", func() error {
						b, err := c.Fetch(1, jetstream.FetchMaxWait(2*time.Second), jetstream.FetchPriorityGroup("sluice"))
						if err != nil {
							return err
						}
						for m := range b.Messages() {
							md, err := m.Metadata()
							if err != nil {
								return err
							}
							if md.Sequence.Stream != ack.Sequence {
								return fmt.Errorf("fetched sequence %d, injected %d", md.Sequence.Stream, ack.Sequence)
							}
							if err := m.DoubleAck(ctx); err != nil {
								return err
							}
							acked = true
						}
						if !acked {
							return fmt.Errorf("nothing fetched: %w", b.Error())
						}
						return nil
					})
					return producedKey{0, int64(ack.Sequence)}
				}
			default:
				t.Fatalf("no chaos source for backend %s", be.Name())
			}

			fn := newChaosFnServer(t, answer(http.StatusOK), decode)
			p := startSluice(t, "sluice", env.Config(t, source, fn.URL(), nil))
			var acked []chaosRecord // what the producer saw acknowledged, keyed as the checker keys
			for _, r := range env.Produce(t, 20, produceOpts{}) {
				if _, ok := env.(*natsEnv); ok {
					r.Partition = 0 // identified by stream sequence
				}
				acked = append(acked, chaosRecord{produced: r, Seq: seqOf(r.Value)})
			}
			letters := func() []chaosLetter {
				var out []chaosLetter
				for _, dl := range env.DeadLetters(t) {
					out = append(out, chaosLetter{Env: dl.Env, At: dl.Timestamp})
				}
				return out
			}
			ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
			defer cancel()
			eventually(t, 90*time.Second, "sluice delivers every record and settles", func() error {
				want, err := src.Records(ctx)
				if err != nil {
					return err
				}
				if lost := unresolved(want, fn.snapshot(), letters()); len(lost) > 0 {
					return fmt.Errorf("%d records not delivered yet", len(lost))
				}
				return src.Settled(ctx)
			})
			if code := p.stop(syscall.SIGTERM); code != 0 {
				t.Fatalf("sluice exited with %d after SIGTERM, want 0", code)
			}

			check := func() (*recorder, error) {
				rec := &recorder{}
				want, err := src.Records(ctx)
				if err != nil {
					t.Fatalf("read the source: %v", err)
				}
				checkAcked(rec, want, acked)
				reportLost(rec, unresolved(want, fn.snapshot(), letters()))
				return rec, src.Settled(ctx)
			}
			if rec, settled := check(); len(rec.errs) > 0 || settled != nil {
				t.Fatalf("before the injection the checker reports %q, settled: %v; want nothing", rec.errs, settled)
			}

			k := inject(ctx)
			rec, settled := check()
			if settled != nil {
				t.Errorf("after the injection the source is not settled (%v): the injection must pass the committed position", settled)
			}
			if len(unresolved(acked, fn.snapshot(), letters())) != 0 {
				t.Errorf("the producer's acknowledged records are not all delivered: the injection must be invisible to a checker that trusts the producer")
			}
			wantErr := fmt.Sprintf("LOST: record %d@%d ", k.p, k.o)
			if len(rec.errs) != 1 || !strings.HasPrefix(rec.errs[0], wantErr) {
				t.Errorf("the checker reported %q, want exactly one error starting %q", rec.errs, wantErr)
			}
		})
	}
}
