package kafka

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// fakeDeliverer records what it delivered, per partition, and answers with
// its behave function (Delivered when nil). It honours ctx as the shard
// engine's Deliverer contract says.
type fakeDeliverer struct {
	behave func(ctx context.Context, d shard.Delivery) event.Result

	mu        sync.Mutex
	delivered map[int32][]int64 // offsets of successful deliveries, in order
	calls     map[int32]int
}

func newFakeDeliverer(behave func(ctx context.Context, d shard.Delivery) event.Result) *fakeDeliverer {
	return &fakeDeliverer{behave: behave, delivered: map[int32][]int64{}, calls: map[int32]int{}}
}

func (f *fakeDeliverer) Deliver(ctx context.Context, d shard.Delivery) event.Result {
	f.mu.Lock()
	f.calls[d.Shard.Partition]++
	f.mu.Unlock()
	res := event.Result{Outcome: event.Delivered}
	if f.behave != nil {
		res = f.behave(ctx, d)
	}
	if res.Outcome == event.Delivered {
		f.mu.Lock()
		for _, r := range d.Records {
			f.delivered[r.Partition] = append(f.delivered[r.Partition], r.Offset)
		}
		f.mu.Unlock()
	}
	return res
}

func (f *fakeDeliverer) offsets(p int32) []int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.delivered[p])
}

func (f *fakeDeliverer) count(p int32) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.delivered[p])
}

// distinct returns how many different offsets of p were delivered.
func (f *fakeDeliverer) distinct(p int32) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	seen := map[int64]bool{}
	for _, o := range f.delivered[p] {
		seen[o] = true
	}
	return len(seen)
}

// testWorkerConfig is the real default of a stream source, with short
// backoffs.
func testWorkerConfig() shard.WorkerConfig {
	c := consumer.DefaultSourceConfig(consumer.ModeStream)
	c.Function = "fn"
	c.BatchSize = 50
	wc := c.WorkerConfig("orders")
	wc.Backoff = event.Backoff{Initial: 10 * time.Millisecond, Max: 100 * time.Millisecond, Multiplier: 2}
	return wc
}

// quietLogger discards logs, unless SLUICE_TEST_LOG is set.
func quietLogger() *slog.Logger {
	if os.Getenv("SLUICE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// testSourceOpts returns Options for a test source against kfake: short
// group timers so that rebalances take well under a second.
func testSourceOpts(d shard.Deliverer, group string) Options {
	return Options{
		Group:      group,
		Worker:     testWorkerConfig(),
		Deliverer:  d,
		Logger:     quietLogger(),
		LagRefresh: 200 * time.Millisecond,
		ClientOpts: []kgo.Opt{
			kgo.HeartbeatInterval(100 * time.Millisecond),
			kgo.SessionTimeout(6 * time.Second),
			kgo.RebalanceTimeout(10 * time.Second),
			kgo.FetchMaxWait(200 * time.Millisecond),
		},
	}
}

// runSource starts s.Run and returns a stop function that cancels it and
// waits for Run to return nil (also called at cleanup).
func runSource(t *testing.T, s *Source) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-errc:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Errorf("Run did not return within 30s of cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// produce writes n records to each partition of topic, keyed, with values
// "p<partition>-<i>", and returns when all are acknowledged.
func produce(t testing.TB, seeds []string, topic string, partitions int32, n int) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.RecordPartitioner(kgo.ManualPartitioner()),
		kgo.ProducerBatchMaxBytes(1<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// In chunks of 100 per partition: record batches stay small, so that
	// fetch sizes (and pauses) act at a fine grain.
	for start := 0; start < n; start += 100 {
		var recs []*kgo.Record
		for p := range partitions {
			for i := start; i < min(n, start+100); i++ {
				recs = append(recs, &kgo.Record{
					Topic: topic, Partition: p,
					Key:   fmt.Appendf(nil, "key-%d", i%7),
					Value: fmt.Appendf(nil, "p%d-%d", p, i),
				})
			}
		}
		if err := cl.ProduceSync(t.Context(), recs...).FirstErr(); err != nil {
			t.Fatalf("produce: %v", err)
		}
	}
}

// committed returns the group's committed offsets of topic by partition.
func committed(t testing.TB, seeds []string, group, topic string) map[int32]int64 {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	offs, err := kadm.NewClient(cl).FetchOffsets(t.Context(), group)
	if err == nil {
		err = offs.Error()
	}
	if errors.Is(err, kerr.GroupIDNotFound) {
		return map[int32]int64{} // nothing committed yet
	}
	if err != nil {
		t.Fatalf("fetch offsets of %s: %v", group, err)
	}
	out := map[int32]int64{}
	offs.Each(func(o kadm.OffsetResponse) {
		if o.Topic == topic {
			out[o.Partition] = o.At
		}
	})
	return out
}

// waitFor polls cond every 20ms until it holds or timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// checkInOrder checks that the first deliveries of each offset of p are in
// increasing order and cover 0..n-1 (duplicates allowed when dups).
func checkInOrder(t testing.TB, f *fakeDeliverer, p int32, n int, dups bool) {
	t.Helper()
	offs := f.offsets(p)
	seen := map[int64]bool{}
	next := int64(0)
	for _, o := range offs {
		if seen[o] {
			if !dups {
				t.Errorf("partition %d: offset %d delivered twice", p, o)
			}
			continue
		}
		if o != next {
			t.Fatalf("partition %d: first delivery of %d came after %d, want %d next (out of order or a gap)", p, o, next-1, next)
		}
		seen[o] = true
		next++
	}
	if next != int64(n) {
		t.Errorf("partition %d: delivered offsets 0..%d, want 0..%d", p, next-1, n-1)
	}
}

func TestSourceDeliversInOrderPerPartition(t *testing.T) {
	const parts, n = 3, 400
	seeds := newCluster(t, parts, "orders")
	produce(t, seeds, "orders", parts, n)

	f := newFakeDeliverer(nil)
	reg := prometheus.NewPedanticRegistry()
	opts := testSourceOpts(f, "")
	opts.Registerer = reg
	s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if s.Group() != "sluice-orders" {
		t.Errorf("default group = %q", s.Group())
	}
	stop := runSource(t, s)

	waitFor(t, 20*time.Second, "every record delivered", func() bool {
		for p := range int32(parts) {
			if f.count(p) < n {
				return false
			}
		}
		return true
	})
	for p := range int32(parts) {
		checkInOrder(t, f, p, n, false)
	}
	waitFor(t, 10*time.Second, "offsets committed to the end", func() bool {
		c := committed(t, seeds, "sluice-orders", "orders")
		return c[0] == n && c[1] == n && c[2] == n
	})

	// The shard view and the metrics: every shard idle, nothing lagging.
	waitFor(t, 5*time.Second, "lag 0 on every shard", func() bool {
		sh := s.Shards()
		if len(sh) != parts {
			return false
		}
		for _, st := range sh {
			if st.Lag != 0 || st.HighWatermark != n || st.State != shard.StateIdle || st.IteratorAge != 0 {
				return false
			}
		}
		return true
	})
	for i, st := range s.Statuses() {
		if st.Shard != (shard.ID{Source: "orders", Partition: int32(i)}) || st.Position != n || st.Delivered != n {
			t.Errorf("status %d = %+v", i, st)
		}
	}
	want := `
# HELP sluice_offset_lag Records not yet checkpointed, summed over the source's partitions owned here: high watermark minus the next offset to commit.
# TYPE sluice_offset_lag gauge
sluice_offset_lag{source="orders"} 0
# HELP sluice_shards Shards (partitions owned here) of the source, by state.
# TYPE sluice_shards gauge
sluice_shards{source="orders",state="blocked"} 0
sluice_shards{source="orders",state="idle"} 3
sluice_shards{source="orders",state="retrying"} 0
sluice_shards{source="orders",state="running"} 0
sluice_shards{source="orders",state="throttled"} 0
# HELP sluice_iterator_age_seconds Age of the oldest record not yet checkpointed, the maximum over the source's partitions owned here; 0 when none.
# TYPE sluice_iterator_age_seconds gauge
sluice_iterator_age_seconds{source="orders"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	stop()
	if n, err := testutil.GatherAndCount(reg); err != nil || n != 0 {
		t.Errorf("after Run returned: %d series (err %v), want the collector unregistered", n, err)
	}
}

func TestSourceCommitsOnlyAfterSuccess(t *testing.T) {
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, 100)

	// The first batch (0..49) succeeds; the second fails (a function error,
	// retried with backoff) until released.
	release := make(chan struct{})
	f := newFakeDeliverer(func(ctx context.Context, d shard.Delivery) event.Result {
		if d.Records[0].Offset == 0 {
			return event.Result{Outcome: event.Delivered}
		}
		select {
		case <-release:
			return event.Result{Outcome: event.Delivered}
		default:
			return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500, Message: "boom"}}
		}
	})
	s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), testSourceOpts(f, "g"))
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)

	waitFor(t, 10*time.Second, "offset 50 committed", func() bool { return committed(t, seeds, "g", "orders")[0] == 50 })
	// Several periodic commit rounds pass while the second batch fails: the
	// commit stays before it.
	time.Sleep(3 * commitInterval)
	if c := committed(t, seeds, "g", "orders")[0]; c != 50 {
		t.Fatalf("committed %d while records 50.. were failing, want 50", c)
	}
	if st := s.Statuses()[0]; st.State != shard.StateRetrying {
		t.Errorf("shard state %s, want retrying", st.State)
	}
	close(release)
	waitFor(t, 10*time.Second, "offset 100 committed", func() bool { return committed(t, seeds, "g", "orders")[0] == 100 })
	checkInOrder(t, f, 0, 100, false)
}

// A partition whose batches are throttled blocks (and stops fetching) while
// the others keep flowing; it holds a bounded number of records meanwhile.
func TestSourceBlockedPartitionDoesNotStopOthers(t *testing.T) {
	const parts, n, slow = 4, 3000, int32(1)
	seeds := newCluster(t, parts, "orders")
	produce(t, seeds, "orders", parts, n)

	release := make(chan struct{})
	f := newFakeDeliverer(func(ctx context.Context, d shard.Delivery) event.Result {
		if d.Shard.Partition != slow {
			return event.Result{Outcome: event.Delivered}
		}
		select {
		case <-release:
			return event.Result{Outcome: event.Delivered}
		default:
			return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: 20 * time.Millisecond}
		}
	})
	opts := testSourceOpts(f, "g")
	opts.FetchMaxPartitionBytes = 16 << 10 // small fetches, so that the pause shows in the buffer
	s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)

	waitFor(t, 30*time.Second, "the other partitions delivered", func() bool {
		for p := range int32(parts) {
			if p != slow && f.count(p) < n {
				return false
			}
		}
		return true
	})
	if got := f.count(slow); got != 0 {
		t.Fatalf("throttled partition delivered %d records", got)
	}
	st := s.Shards()[slow]
	if st.State != shard.StateThrottled || st.Reason != "FunctionThrottled" {
		t.Errorf("throttled shard shows %s (%s)", st.State, st.Reason)
	}
	// Paused: it holds its buffer (500) plus at most a fetch or two, not the
	// 3000 records waiting in the partition.
	if st.Buffered >= n {
		t.Errorf("throttled shard holds %d records: its partition was not paused", st.Buffered)
	}
	if st.Lag <= 0 || st.IteratorAge <= 0 {
		t.Errorf("throttled shard: lag %d, iterator age %v; want both > 0", st.Lag, st.IteratorAge)
	}
	t.Logf("throttled shard: buffered %d, lag %d, iterator age %v", st.Buffered, st.Lag, st.IteratorAge)
	if c := committed(t, seeds, "g", "orders"); c[slow] != 0 {
		t.Errorf("throttled partition committed %d", c[slow])
	}

	close(release)
	waitFor(t, 30*time.Second, "the throttled partition delivered", func() bool { return f.count(slow) >= n })
	for p := range int32(parts) {
		checkInOrder(t, f, p, n, false)
	}
	waitFor(t, 10*time.Second, "every offset committed", func() bool {
		c := committed(t, seeds, "g", "orders")
		for p := range int32(parts) {
			if c[p] != n {
				return false
			}
		}
		return true
	})
}

// Two members of one group: partitions move when the second joins and again
// when the first leaves; every record is delivered, first deliveries stay in
// order, and the commits end at the end of each partition. Both moves happen
// mid-stream by construction: half the records are produced before b joins
// and half after; and deliveries are held (until the context ends) from
// before the second half is produced until a has left.
func TestSourceRebalanceLosesNothing(t *testing.T) {
	const parts, n = 4, 600
	seeds := newCluster(t, parts, "orders")
	produce(t, seeds, "orders", parts, n/2)

	// One delivery log for both members; slow enough that a rebalance lands
	// mid-stream.
	var held atomic.Bool
	release := make(chan struct{})
	f := newFakeDeliverer(func(ctx context.Context, d shard.Delivery) event.Result {
		if held.Load() {
			select {
			case <-release:
			case <-ctx.Done():
				return event.Result{Outcome: event.Throttled, Reason: "cancelled"}
			}
		}
		select {
		case <-time.After(5 * time.Millisecond):
			return event.Result{Outcome: event.Delivered}
		case <-ctx.Done():
			return event.Result{Outcome: event.Throttled, Reason: "cancelled"}
		}
	})
	newMember := func() *Source {
		opts := testSourceOpts(f, "g")
		opts.Worker.BatchSize = 10
		s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	a, b := newMember(), newMember()
	stopA := runSource(t, a)
	total := func() int {
		sum := 0
		for p := range int32(parts) {
			sum += f.distinct(p)
		}
		return sum
	}
	waitFor(t, 10*time.Second, "member a delivering", func() bool { return total() > 100 })
	runSource(t, b)
	waitFor(t, 15*time.Second, "partitions spread over both members", func() bool {
		return len(a.Statuses()) > 0 && len(b.Statuses()) > 0 && len(a.Statuses())+len(b.Statuses()) == parts
	})
	t.Logf("after b joined: a has %d, b has %d partitions; %d of %d delivered", len(a.Statuses()), len(b.Statuses()), total(), parts*n)
	held.Store(true)
	produce(t, seeds, "orders", parts, n/2) // offsets n/2..n-1 of each partition
	if got := total(); got >= parts*n {
		t.Fatalf("%d records delivered while deliveries were held, want fewer than %d", got, parts*n)
	}
	stopA()
	waitFor(t, 15*time.Second, "b owns every partition", func() bool { return len(b.Statuses()) == parts })
	close(release)
	waitFor(t, 30*time.Second, "every record delivered", func() bool { return total() == parts*n })
	dups := 0
	for p := range int32(parts) {
		checkInOrder(t, f, p, n, true)
		dups += len(f.offsets(p)) - f.distinct(p)
	}
	t.Logf("duplicates across the two rebalances: %d of %d", dups, parts*n)
	waitFor(t, 10*time.Second, "every offset committed", func() bool {
		c := committed(t, seeds, "g", "orders")
		for p := range int32(parts) {
			if c[p] != n {
				return false
			}
		}
		return true
	})
}

func TestSourceStartingPosition(t *testing.T) {
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, 10) // offsets 0..9
	time.Sleep(20 * time.Millisecond)
	middle := time.Now()
	time.Sleep(20 * time.Millisecond)
	produce(t, seeds, "orders", 1, 10) // offsets 10..19

	for _, tc := range []struct {
		name  string
		src   func(c *consumer.SourceConfig)
		first int64
	}{
		{"trim_horizon", func(c *consumer.SourceConfig) { c.StartingPosition = consumer.TrimHorizon }, 0},
		{"latest", func(c *consumer.SourceConfig) { c.StartingPosition = consumer.Latest }, 20},
		{"at_timestamp", func(c *consumer.SourceConfig) {
			c.StartingPosition = consumer.AtTimestamp
			c.StartingTimestamp = middle
		}, 10},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFakeDeliverer(nil)
			src := sourceConfig("orders")
			tc.src(&src)
			s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, src, testSourceOpts(f, "g-"+tc.name))
			if err != nil {
				t.Fatal(err)
			}
			runSource(t, s)
			waitFor(t, 10*time.Second, "partition assigned", func() bool { return len(s.Statuses()) == 1 })
			if tc.name == "latest" {
				// Give the fetch a moment to (wrongly) return old records,
				// then publish one new record.
				time.Sleep(500 * time.Millisecond)
				produceOne(t, seeds, "orders")
			}
			waitFor(t, 10*time.Second, "a delivery", func() bool { return f.count(0) > 0 })
			if got := f.offsets(0)[0]; got != tc.first {
				t.Errorf("first delivered offset %d, want %d", got, tc.first)
			}
		})
	}
}

func TestNewRejects(t *testing.T) {
	broker := consumer.KafkaConfig{Seeds: []string{"a:1"}}
	d := newFakeDeliverer(nil)
	bad := sourceConfig("orders")
	bad.StartingPosition = consumer.AtTimestamp
	for name, try := range map[string]func() error{
		"no name":  func() error { _, err := New("", broker, sourceConfig("t"), Options{Deliverer: d}); return err },
		"no topic": func() error { _, err := New("s", broker, sourceConfig(""), Options{Deliverer: d}); return err },
		"no seeds": func() error {
			_, err := New("s", consumer.KafkaConfig{}, sourceConfig("t"), Options{Deliverer: d})
			return err
		},
		"no deliverer": func() error { _, err := New("s", broker, sourceConfig("t"), Options{}); return err },
		"no timestamp": func() error { _, err := New("s", broker, bad, Options{Deliverer: d}); return err },
		"metrics twice": func() error {
			reg := prometheus.NewRegistry()
			if _, err := New("s", broker, sourceConfig("t"), Options{Deliverer: d, Registerer: reg}); err != nil {
				return nil // want the second to fail, not the first
			}
			_, err := New("s", broker, sourceConfig("t"), Options{Deliverer: d, Registerer: reg})
			return err
		},
	} {
		if try() == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func sourceConfig(topic string) consumer.SourceConfig {
	c := consumer.DefaultSourceConfig(consumer.ModeStream)
	c.Topic = topic
	c.Function = "fn"
	return c
}

func produceOne(t testing.TB, seeds []string, topic string) {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: topic, Value: []byte("new")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
}

// Members join and leave every few hundred milliseconds while records flow:
// nothing is lost, first deliveries stay in order per partition, and the
// commits end at the end of each partition.
func TestSourceChurnLosesNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("churn takes a few seconds")
	}
	const parts, n = 6, 1500
	seeds := newCluster(t, parts, "orders")
	produce(t, seeds, "orders", parts, n)
	f := newFakeDeliverer(func(ctx context.Context, d shard.Delivery) event.Result {
		select {
		case <-time.After(20 * time.Millisecond):
			return event.Result{Outcome: event.Delivered}
		case <-ctx.Done():
			return event.Result{Outcome: event.Throttled, Reason: "cancelled"}
		}
	})
	total := func() int {
		sum := 0
		for p := range int32(parts) {
			sum += f.distinct(p)
		}
		return sum
	}
	type member struct {
		s    *Source
		stop func()
	}
	start := func() member {
		opts := testSourceOpts(f, "g")
		opts.Worker.BatchSize = 10
		s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
		if err != nil {
			t.Fatal(err)
		}
		return member{s, runSource(t, s)}
	}
	members := []member{start()}
	rebalances := 0
	for i := 0; total() < parts*n && i < 40; i++ {
		time.Sleep(250 * time.Millisecond)
		if len(members) < 3 && (i%3 != 2 || len(members) == 1) {
			members = append(members, start())
		} else {
			members[0].stop()
			members = members[1:]
		}
		rebalances++
	}
	t.Logf("%d membership changes; %d of %d delivered during churn", rebalances, total(), parts*n)
	waitFor(t, 30*time.Second, "every record delivered", func() bool { return total() == parts*n })
	dups := 0
	for p := range int32(parts) {
		checkInOrder(t, f, p, n, true)
		dups += len(f.offsets(p)) - f.distinct(p)
	}
	t.Logf("duplicates: %d", dups)
	waitFor(t, 10*time.Second, "every offset committed", func() bool {
		c := committed(t, seeds, "g", "orders")
		for p := range int32(parts) {
			if c[p] != n {
				return false
			}
		}
		return true
	})
}

// stuckDeliverer ignores ctx until released, like a Deliverer with a bug: a
// revoke or loss must then give up waiting and fence the worker's hooks.
func TestSourceFencesAWorkerThatOutlivesItsPartition(t *testing.T) {
	for _, how := range []string{"lost", "revoked"} {
		t.Run(how, func(t *testing.T) {
			seeds := newCluster(t, 1, "orders")
			produce(t, seeds, "orders", 1, 5)
			entered, release := make(chan struct{}, 1), make(chan struct{})
			f := newFakeDeliverer(func(ctx context.Context, d shard.Delivery) event.Result {
				select {
				case entered <- struct{}{}:
				default:
				}
				<-release
				return event.Result{Outcome: event.Delivered}
			})
			opts := testSourceOpts(f, "g")
			opts.StopTimeout = 100 * time.Millisecond
			s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
			if err != nil {
				t.Fatal(err)
			}
			runSource(t, s)
			<-entered
			s.mu.Lock()
			cl, pt := s.cl, s.parts[0]
			s.mu.Unlock()

			// What franz-go would call; the worker is stuck in Deliver.
			m := map[string][]int32{"orders": {0}}
			if how == "lost" {
				s.lost(context.Background(), cl, m)
			} else {
				s.revoked(context.Background(), cl, m)
			}
			if len(s.Statuses()) != 0 {
				t.Fatalf("partition still listed after %s", how)
			}
			close(release) // the stuck delivery now succeeds and checkpoints
			waitFor(t, 5*time.Second, "the late delivery", func() bool { return f.count(0) == 5 })
			select {
			case <-pt.done:
			case <-time.After(5 * time.Second):
				t.Fatal("worker did not stop after its delivery returned")
			}
			if m := cl.MarkedOffsets()["orders"]; len(m) != 0 {
				t.Errorf("the late checkpoint was marked after %s: %v", how, m)
			}
			if p := cl.PauseFetchPartitions(nil)["orders"]; len(p) != 0 {
				t.Errorf("partition left paused after %s: %v", how, p)
			}
		})
	}
}

// By default a shard starts a batch only once the commit of the batch before
// it ended, so a crash redelivers at most the batch in flight; with
// CommitPipelineDepth d, once the commit of the batch d+1 before it ended,
// never later. And the last batch is committed without waiting for the
// auto-commit.
func TestSourceCommitsPipelined(t *testing.T) {
	t.Parallel()
	for _, depth := range []int{0, 1, 3} { // 0: the default
		t.Run(fmt.Sprintf("depth=%d", depth), func(t *testing.T) {
			t.Parallel()
			testCommitPipeline(t, depth)
		})
	}
}

func testCommitPipeline(t *testing.T, depth int) {
	seeds := newCluster(t, 1, "orders")
	produce(t, seeds, "orders", 1, 500) // ten batches of 50
	var (
		mu     sync.Mutex
		behind []string
	)
	ahead := int64(depth) * 50
	f := newFakeDeliverer(func(_ context.Context, d shard.Delivery) event.Result {
		// The batch starting at o: everything before o-ahead must be
		// committed (the batches after it may still be on the wire).
		if o := d.Records[0].Offset; o >= ahead+50 {
			if c := committed(t, seeds, "g", "orders")[0]; c < o-ahead {
				mu.Lock()
				behind = append(behind, fmt.Sprintf("delivering %d with %d committed", o, c))
				mu.Unlock()
			}
		}
		return event.Result{Outcome: event.Delivered}
	})
	opts := testSourceOpts(f, "g")
	opts.CommitPipelineDepth = depth
	s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, s)
	waitFor(t, 10*time.Second, "offset 500 committed", func() bool { return committed(t, seeds, "g", "orders")[0] == 500 })
	checkInOrder(t, f, 0, 500, false)
	mu.Lock()
	defer mu.Unlock()
	if len(behind) > 0 {
		t.Fatalf("a shard ran more than %d batches ahead of its commits: %v", ahead/50, behind)
	}
}

// A Kafka shard's buffer defaults to a loose record count (a poll brings
// thousands of records) bounded by bytes; explicit settings are kept.
func TestNewShardBufferDefaults(t *testing.T) {
	t.Parallel()
	opts := Options{Deliverer: newFakeDeliverer(nil), Worker: testWorkerConfig()}
	s, err := New("orders", consumer.KafkaConfig{Seeds: []string{"127.0.0.1:1"}}, sourceConfig("orders"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if w := s.opts.Worker; w.Buffer != minShardBuffer || w.BufferBytes != DefaultShardBufferBytes {
		t.Fatalf("defaults: Buffer %d, BufferBytes %d; want %d, %d", w.Buffer, w.BufferBytes, minShardBuffer, DefaultShardBufferBytes)
	}
	opts.Worker.Buffer, opts.Worker.BufferBytes = 100, 1<<10
	if s, err = New("orders", consumer.KafkaConfig{Seeds: []string{"127.0.0.1:1"}}, sourceConfig("orders"), opts); err != nil {
		t.Fatal(err)
	}
	if w := s.opts.Worker; w.Buffer != 100 || w.BufferBytes != 1<<10 {
		t.Fatalf("explicit: Buffer %d, BufferBytes %d; want 100, 1024", w.Buffer, w.BufferBytes)
	}
}

// A partition's first share of a fetch is a sixty-fourth of what its shard
// buffers, within 64 KiB..1 MiB, unless set (then the sizer leaves it).
func TestNewFetchPartitionBytesFromShardBuffer(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		bufferBytes int64
		set, want   int32
	}{
		{0, 0, 128 << 10}, // DefaultShardBufferBytes
		{1 << 20, 0, 64 << 10},
		{1 << 10, 0, 64 << 10},
		{64 << 20, 0, 1 << 20},
		{0, 512 << 10, 512 << 10},
	} {
		opts := Options{Deliverer: newFakeDeliverer(nil), Worker: testWorkerConfig(), FetchMaxPartitionBytes: c.set}
		opts.Worker.BufferBytes = c.bufferBytes
		s, err := New("orders", consumer.KafkaConfig{Seeds: []string{"127.0.0.1:1"}}, sourceConfig("orders"), opts)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.opts.FetchMaxPartitionBytes; got != c.want {
			t.Errorf("BufferBytes %d, FetchMaxPartitionBytes %d: got %d, want %d", c.bufferBytes, c.set, got, c.want)
		}
		if sized := s.sizer != nil; sized != (c.set == 0) {
			t.Errorf("FetchMaxPartitionBytes %d: sized by what shares decode to %v, want %v", c.set, sized, c.set == 0)
		}
	}
}

// With commit_pipeline_depth d, a lane asks for a commit round once half of
// d (rounded up) of its checkpoints wait for one, not after every batch:
// ten batches at depth 4 make five rounds, at depth 1 ten. The bound of
// testCommitPipeline holds meanwhile (TestSourceCommitsPipelined).
func TestSourceAsksForCommitRoundsAtHalfDepth(t *testing.T) {
	t.Parallel()
	for _, c := range []struct{ depth, maxRounds int }{{1, 12}, {4, 7}, {8, 4}} {
		t.Run(fmt.Sprintf("depth=%d", c.depth), func(t *testing.T) {
			t.Parallel()
			cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(cluster.Close)
			var rounds atomic.Int32
			cluster.ControlKey(kmsg.OffsetCommit.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
				cluster.KeepControl()
				rounds.Add(1)
				return nil, nil, false // counted, then handled as usual
			})
			seeds := cluster.ListenAddrs()
			produce(t, seeds, "orders", 1, 500) // ten batches of 50
			// Each batch takes longer than a round trip to kfake, so rounds
			// are not coalesced by chance.
			f := newFakeDeliverer(func(context.Context, shard.Delivery) event.Result {
				time.Sleep(20 * time.Millisecond)
				return event.Result{Outcome: event.Delivered}
			})
			opts := testSourceOpts(f, "g")
			opts.CommitPipelineDepth = c.depth
			s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
			if err != nil {
				t.Fatal(err)
			}
			stop := runSource(t, s)
			waitFor(t, 10*time.Second, "offset 500 committed", func() bool { return committed(t, seeds, "g", "orders")[0] == 500 })
			n := rounds.Load()
			stop()
			checkInOrder(t, f, 0, 500, false)
			if int(n) > c.maxRounds || (c.depth == 1 && n < 10) {
				t.Fatalf("%d commit rounds for ten batches at depth %d, want at most %d (and ten at depth 1)", n, c.depth, c.maxRounds)
			}
		})
	}
}

// A shard that is full (a quarter of its buffer) holds the fetching back
// while it is the only one: the poll loop stops polling, and franz-go sends
// no fetch past the one it keeps buffered. So the shard never reaches its
// whole buffer, is never paused, and nothing fetched is dropped and fetched
// again. (When shards paused at their whole buffer to hold fetches back, a
// blocked function let this one fetch its whole 20,000 records' buffer, and
// franz-go dropped what it fetched for the partition after the pause.)
func TestSourceFullShardHoldsFetchesBack(t *testing.T) {
	t.Parallel()
	const n = 30000
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	seeds := cluster.ListenAddrs()
	produce(t, seeds, "orders", 1, n)

	var fetched atomic.Int64
	release := make(chan struct{})
	f := newFakeDeliverer(func(ctx context.Context, _ shard.Delivery) event.Result {
		select {
		case <-release:
		case <-ctx.Done():
		}
		return event.Result{Outcome: event.Delivered}
	})
	opts := testSourceOpts(f, "g")
	opts.Worker.BatchSize = 500
	opts.Worker.Buffer = 20000             // whole; full at 5,000
	opts.Worker.BufferBytes = 1 << 30      // the count bounds this shard
	opts.FetchMaxPartitionBytes = 32 << 10 // ~1,000 of these records a fetch
	opts.ClientOpts = append(opts.ClientOpts, kgo.WithHooks(fetchCounter{&fetched}))
	s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := runSource(t, s)
	waitFor(t, 10*time.Second, "the shard full", func() bool {
		st := s.Shards()
		return len(st) == 1 && st[0].Buffered >= 5000
	})
	// Let any fetch still on its way land: none should have been sent.
	time.Sleep(500 * time.Millisecond)
	if got := fetched.Load(); got >= 10000 {
		t.Errorf("fetched %d records while the shard was full at 5,000 of 20,000 and blocked: fetching went on", got)
	}
	close(release)
	waitFor(t, 30*time.Second, "every record delivered", func() bool { return f.distinct(0) == n })
	stop()
	checkInOrder(t, f, 0, n, false)
	if got := fetched.Load(); got != n {
		t.Fatalf("fetched %d records for %d produced: what was fetched was dropped and fetched again", got, n)
	}
}

// fetchCounter counts the records of the batches a client fetched.
type fetchCounter struct{ n *atomic.Int64 }

func (c fetchCounter) OnFetchBatchRead(_ kgo.BrokerMetadata, _ string, _ int32, m kgo.FetchBatchMetrics) {
	c.n.Add(int64(m.NumRecords))
}

// A commit round that lanes asked for (and none waits for yet) starts only
// after a pause as long as the last round took: with rounds of 30 ms and
// four lanes asking in turn, rounds begin at most about every 60 ms, not
// back to back every 30.
func TestSourcePausesBetweenAskedCommitRounds(t *testing.T) {
	t.Parallel()
	const roundTrip = 30 * time.Millisecond
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(4, "orders"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	var mu sync.Mutex
	var starts []time.Time
	cluster.ControlKey(kmsg.OffsetCommit.Int16(), func(kmsg.Request) (kmsg.Response, error, bool) {
		cluster.KeepControl()
		mu.Lock()
		starts = append(starts, time.Now())
		mu.Unlock()
		cluster.SleepControl(func() { time.Sleep(roundTrip) })
		return nil, nil, false // then handled as usual
	})
	seeds := cluster.ListenAddrs()
	produce(t, seeds, "orders", 4, 3000) // sixty batches of 50 a partition
	// A batch takes a third of a round trip: a lane asks after four
	// (depth 8) and reaches its depth after eight, later than a round and
	// the pause after it; nobody has to wait, so no round is urgent.
	f := newFakeDeliverer(func(context.Context, shard.Delivery) event.Result {
		time.Sleep(roundTrip / 3)
		return event.Result{Outcome: event.Delivered}
	})
	opts := testSourceOpts(f, "g")
	opts.CommitPipelineDepth = 8
	s, err := New("orders", consumer.KafkaConfig{Seeds: seeds}, sourceConfig("orders"), opts)
	if err != nil {
		t.Fatal(err)
	}
	stop := runSource(t, s)
	waitFor(t, 30*time.Second, "offset 3000 committed on every partition", func() bool {
		c := committed(t, seeds, "g", "orders")
		return c[0] == 3000 && c[1] == 3000 && c[2] == 3000 && c[3] == 3000
	})
	stop()
	for p := range int32(4) {
		checkInOrder(t, f, p, 3000, false)
	}
	mu.Lock()
	defer mu.Unlock()
	span := starts[len(starts)-1].Sub(starts[0])
	// Back to back would be span/roundTrip; paused, at most about half.
	if limit := int(span/(2*roundTrip-5*time.Millisecond)) + 3; len(starts) > limit {
		t.Fatalf("%d commit rounds in %v (rounds of %v), want at most %d: rounds ran back to back", len(starts), span, roundTrip, limit)
	}
}
