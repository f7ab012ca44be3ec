package nats

import (
	"context"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

func TestPartitioning(t *testing.T) {
	tests := []struct {
		subject, dest, filter2 string
		stored                 string
		p                      int32
		key, published         string
		parseErr               bool
	}{
		{"clicks.*", "clicks.{{partition(8,1)}}.{{wildcard(1)}}", "clicks.2.*", "clicks.3.user42", 3, "user42", "clicks.user42", false},
		{"app.*.click", "app.{{partition(8,1)}}.{{wildcard(1)}}.click", "app.2.*.click", "app.0.u.click", 0, "u", "app.u.click", false},
		{"*", "{{partition(8,1)}}.{{wildcard(1)}}", "2.*", "7.k", 7, "k", "k", false},
		{"clicks.*", "", "", "clicks.user42", 0, "", "", true},
		{"clicks.*", "", "", "clicks.x.user42", 0, "", "", true},
	}
	for _, tt := range tests {
		pt, err := newPartitioning(tt.subject, 8)
		if err != nil {
			t.Fatalf("%s: %v", tt.subject, err)
		}
		if tt.dest != "" {
			if got := pt.destination(); got != tt.dest {
				t.Errorf("%s: destination %q, want %q", tt.subject, got, tt.dest)
			}
			if got := pt.filter(2); got != tt.filter2 {
				t.Errorf("%s: filter(2) %q, want %q", tt.subject, got, tt.filter2)
			}
		}
		p, key, pub, err := pt.parse(tt.stored)
		if (err != nil) != tt.parseErr {
			t.Fatalf("%s: parse(%q) error %v, want error %v", tt.subject, tt.stored, err, tt.parseErr)
		}
		if err == nil && (p != tt.p || key != tt.key || pub != tt.published) {
			t.Errorf("%s: parse(%q) = %d %q %q, want %d %q %q", tt.subject, tt.stored, p, key, pub, tt.p, tt.key, tt.published)
		}
	}
	for _, bad := range []string{"clicks", "clicks.>", "a.*.*", "a..b", "a.b*"} {
		if _, err := newPartitioning(bad, 4); err == nil {
			t.Errorf("newPartitioning(%q) accepted", bad)
		}
	}
	if _, err := newPartitioning("a.*", 0); err == nil {
		t.Error("0 partitions accepted")
	}
}

func TestSubsumes(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want bool
	}{
		{"clicks.*", "clicks.*", true},
		{"clicks.>", "clicks.*", true},
		{">", "clicks.*", true},
		{"clicks.*", "clicks.>", false},
		{"clicks.a", "clicks.*", false},
		{"clicks.*.x", "clicks.*", false},
		{"clicks.*", "clicks.*.x", false},
	} {
		if got := subsumes(tt.a, tt.b); got != tt.want {
			t.Errorf("subsumes(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

// valueIndex returns i of a value "v<i>".
func valueIndex(t testing.TB, r event.Record) int {
	t.Helper()
	i, err := strconv.Atoi(strings.TrimPrefix(string(r.Value), "v"))
	if err != nil {
		t.Fatalf("value %q", r.Value)
	}
	return i
}

// checkOrder fails unless every partition's records are in sequence order,
// each key's values in publish order, and each record sits in the partition
// its key hashes to (one partition per key).
func checkOrder(t testing.TB, got map[int32][]event.Record) {
	t.Helper()
	keyPart := map[string]int32{}
	lastByKey := map[string]int{}
	for p, recs := range got {
		if !slices.IsSortedFunc(recs, func(a, b event.Record) int { return int(a.Offset - b.Offset) }) {
			t.Fatalf("partition %d delivered out of sequence order", p)
		}
		for _, r := range recs {
			k := string(r.Key)
			if q, ok := keyPart[k]; ok && q != p {
				t.Fatalf("key %s in partitions %d and %d", k, q, p)
			}
			keyPart[k] = p
			if r.Partition != p {
				t.Fatalf("record of partition %d delivered as shard %d", r.Partition, p)
			}
			i := valueIndex(t, r)
			if last, ok := lastByKey[k]; ok && i <= last {
				t.Fatalf("key %s: value %d after %d", k, i, last)
			}
			lastByKey[k] = i
		}
	}
}

func TestStreamDeliversPerPartitionInOrder(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 4)
	d := &fakeDeliverer{}
	s, err := NewStream("clicks", nc, src, fastStream(d, nil, src))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 100, 13)
	runSource(t, s.Run)
	publishKeys(t, js, "clicks", 100, 100, 13)
	waitFor(t, 20*time.Second, "200 records delivered", func() bool { return d.count() == 200 })
	got := d.delivered()
	if len(got) != 4 {
		t.Fatalf("delivered to %d partitions, want all 4 (13 keys)", len(got))
	}
	checkOrder(t, got)
	r := got[0][0]
	if r.Topic != "CLICKS" || !strings.HasPrefix(r.Subject, "clicks.k") || r.Subject != "clicks."+string(r.Key) ||
		r.Timestamp.IsZero() || r.Offset < 1 {
		t.Fatalf("record %+v: want stream CLICKS, the published subject, its key, a timestamp and a sequence", r)
	}
	if len(r.Headers) != 1 || r.Headers[0].Key != "tenant" {
		t.Fatalf("headers %+v, want only tenant (no Nats-Pin-Id)", r.Headers)
	}
	for p := range 4 {
		name := s.ConsumerName(p)
		waitFor(t, 10*time.Second, name+" fully acknowledged", func() bool {
			info := consumerInfo(t, js, "CLICKS", name)
			return info.NumAckPending == 0 && info.NumPending == 0
		})
	}
	// The partition subjects are the server's: publishing by key is enough.
	st, _ := js.Stream(t.Context(), "CLICKS")
	info, _ := st.Info(t.Context())
	if info.Config.SubjectTransform == nil || info.Config.SubjectTransform.Destination != "clicks.{{partition(4,1)}}.{{wildcard(1)}}" {
		t.Fatalf("stream transform %+v", info.Config.SubjectTransform)
	}
	sts := s.Statuses()
	if len(sts) != 4 {
		t.Fatalf("%d statuses, want 4", len(sts))
	}
}

func TestStreamThrottledPartitionDoesNotStopOthers(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 4)
	var throttling atomic.Bool
	throttling.Store(true)
	var hot atomic.Int32
	hot.Store(-1)
	d := &fakeDeliverer{}
	d.answer = func(dl shard.Delivery) event.Result {
		if throttling.Load() && dl.Shard.Partition == hot.Load() {
			return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled", RetryAfter: 100 * time.Millisecond}
		}
		return event.Result{Outcome: event.Delivered}
	}
	opts := fastStream(d, nil, src)
	opts.AckWait = time.Second // the throttle lasts several AckWaits: InProgress must hold the batch
	opts.PinnedTTL = 2 * time.Second
	s, err := NewStream("clicks", nc, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	hot.Store(partitionOf(t, s, js, "clicks.hot"))
	for i := 1; i < 40; i++ {
		if _, err := js.Publish(t.Context(), "clicks.hot", []byte("v"+strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	publishKeys(t, js, "clicks", 1000, 200, 29)
	runSource(t, s.Run)

	// Every other partition flows to the end while hot is throttled.
	for p := range 4 {
		if int32(p) == hot.Load() {
			continue
		}
		waitFor(t, 20*time.Second, "partition "+strconv.Itoa(p)+" delivered and acknowledged", func() bool {
			info := consumerInfo(t, js, "CLICKS", s.ConsumerName(p))
			return info.NumPending == 0 && info.NumAckPending == 0 &&
				len(d.delivered()[int32(p)]) == int(info.Delivered.Consumer)
		})
	}
	var hotStatus shard.Status
	for _, st := range s.Statuses() {
		if st.Shard.Partition == hot.Load() {
			hotStatus = st
		}
	}
	if hotStatus.State != shard.StateThrottled || hotStatus.Reason != "FunctionThrottled" {
		t.Fatalf("hot partition %d state %s (%s), want throttled", hot.Load(), hotStatus.State, hotStatus.Reason)
	}
	if n := len(d.delivered()[hot.Load()]); n != 0 {
		t.Fatalf("%d records of the throttled partition delivered", n)
	}
	// Held across several AckWaits without a redelivery: InProgress works.
	time.Sleep(3 * time.Second)
	info := consumerInfo(t, js, "CLICKS", s.ConsumerName(int(hot.Load())))
	if info.NumRedelivered != 0 {
		t.Fatalf("%d redeliveries of the throttled partition: the held batch lost its lease", info.NumRedelivered)
	}
	if info.NumAckPending == 0 {
		t.Fatal("the throttled partition's batch is acknowledged")
	}
	// Paused: it fetched no more than its buffer and one pull.
	if int(info.NumAckPending) > s.maxAckPending {
		t.Fatalf("%d messages held, more than MaxAckPending %d", info.NumAckPending, s.maxAckPending)
	}
	throttling.Store(false)
	waitFor(t, 20*time.Second, "the hot partition delivered", func() bool {
		info := consumerInfo(t, js, "CLICKS", s.ConsumerName(int(hot.Load())))
		return info.NumPending == 0 && info.NumAckPending == 0
	})
	checkOrder(t, d.delivered())
	if n := len(d.delivered()[hot.Load()]); n < 40 {
		t.Fatalf("%d records of the hot partition delivered, want at least the 40 of key hot", n)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, c := range d.calls {
		if c.Attempt != 1 {
			t.Fatalf("a throttled batch consumed an attempt: attempt %d", c.Attempt)
		}
	}
}

// partitionOf publishes v0 to subject and returns the partition the
// server stored it in.
func partitionOf(t testing.TB, s *Stream, js jetstream.JetStream, subject string) int32 {
	t.Helper()
	ack, err := js.Publish(context.Background(), subject, []byte("v0"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(context.Background(), ack.Stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetMsg(context.Background(), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	p, _, _, err := s.pt.parse(m.Subject)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestStreamAcksOnlyAfterSuccess(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 2)
	src.MaxRetryAttempts = -1
	failing := &fakeDeliverer{answer: func(shard.Delivery) event.Result {
		return event.Result{Outcome: event.Failed, Error: event.ErrorInfo{Kind: "status", Status: 500}}
	}}
	s, err := NewStream("clicks", nc, src, fastStream(failing, nil, src))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 30, 5)
	stop := runSource(t, s.Run)
	waitFor(t, 10*time.Second, "retries", func() bool {
		failing.mu.Lock()
		defer failing.mu.Unlock()
		return len(failing.calls) >= 6
	})
	for p := range 2 {
		info := consumerInfo(t, js, "CLICKS", s.ConsumerName(p))
		if info.AckFloor.Stream != 0 {
			t.Fatalf("partition %d acknowledged up to %d while every delivery fails", p, info.AckFloor.Stream)
		}
	}
	stop()

	// Restart with a function that works: everything comes again, in order.
	nc2, _ := connect(t, e.ClientURL())
	ok := &fakeDeliverer{}
	s2, err := NewStream("clicks", nc2, src, fastStream(ok, nil, src))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	runSource(t, s2.Run)
	waitFor(t, 10*time.Second, "30 records delivered after the restart", func() bool { return ok.count() == 30 })
	// The first process released its pins and NAKed what it held: no
	// waiting for PinnedTTL or AckWait.
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("took %s after a clean stop, want well under PinnedTTL", el)
	}
	checkOrder(t, ok.delivered())
	for p := range 2 {
		waitFor(t, 5*time.Second, "all acknowledged", func() bool {
			info := consumerInfo(t, js, "CLICKS", s2.ConsumerName(p))
			return info.NumAckPending == 0 && info.NumPending == 0
		})
	}
}

func TestStreamDeadLettersBeforeAck(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 1)
	d := &fakeDeliverer{answer: func(dl shard.Delivery) event.Result {
		for _, r := range dl.Records {
			if string(r.Value) == "v3" {
				return event.Result{Outcome: event.Permanent, Error: event.ErrorInfo{Kind: "status", Status: 400, Message: "bad"}}
			}
		}
		return event.Result{Outcome: event.Delivered}
	}}
	dlq := &fakeDLQ{fail: true}
	opts := fastStream(d, dlq, src)
	opts.Worker.BatchSize = 1
	s, err := NewStream("clicks", nc, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 8, 1)
	runSource(t, s.Run)
	waitFor(t, 10*time.Second, "the shard blocked on the dead-letter store", func() bool {
		sts := s.Statuses()
		return len(sts) == 1 && sts[0].State == shard.StateBlocked
	})
	info := consumerInfo(t, js, "CLICKS", s.ConsumerName(0))
	if info.AckFloor.Stream != 3 {
		t.Fatalf("ack floor %d while v3 cannot be dead-lettered, want 3 (v0..v2)", info.AckFloor.Stream)
	}
	dlq.mu.Lock()
	dlq.fail = false
	dlq.mu.Unlock()
	waitFor(t, 10*time.Second, "everything acknowledged", func() bool {
		info := consumerInfo(t, js, "CLICKS", s.ConsumerName(0))
		return info.NumAckPending == 0 && info.NumPending == 0
	})
	dl := dlq.get()
	if len(dl) != 1 || string(dl[0].Record.Value) != "v3" || dl[0].Condition != event.PermanentError ||
		dl[0].Record.Subject != "clicks.k0" || dl[0].Record.Offset != 4 {
		t.Fatalf("dead letters %+v, want v3 (sequence 4) PermanentError", dl)
	}
	if d.count() != 7 {
		t.Fatalf("%d delivered, want 7", d.count())
	}
}

// TestStreamSinglePuller runs the same source in two "processes" (two
// connections): each partition goes to one of them; when the first stops,
// the second takes its partitions over at once and in order.
func TestStreamSinglePuller(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 4)
	ncA, _ := connect(t, e.ClientURL())
	ncB, _ := connect(t, e.ClientURL())
	da, db := &fakeDeliverer{}, &fakeDeliverer{}
	a, err := NewStream("clicks", ncA, src, fastStream(da, nil, src))
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewStream("clicks", ncB, src, fastStream(db, nil, src))
	if err != nil {
		t.Fatal(err)
	}
	stopA := runSource(t, a.Run)
	runSource(t, b.Run)
	publishKeys(t, js, "clicks", 0, 200, 17)
	waitFor(t, 20*time.Second, "200 delivered", func() bool { return da.count()+db.count() == 200 })
	owner := map[int32]string{}
	for p := range da.delivered() {
		owner[p] = "a"
	}
	for p := range db.delivered() {
		if owner[p] != "" {
			t.Fatalf("partition %d delivered by both processes", p)
		}
		owner[p] = "b"
	}
	checkOrder(t, da.delivered())
	checkOrder(t, db.delivered())
	waitFor(t, 5*time.Second, "each process reporting only its own partitions", func() bool {
		return len(a.Statuses())+len(b.Statuses()) == 4
	})

	stopA()
	publishKeys(t, js, "clicks", 200, 200, 17)
	waitFor(t, 10*time.Second, "the rest delivered by b", func() bool { return da.count()+db.count() == 400 })
	checkOrder(t, db.delivered())
	waitFor(t, 5*time.Second, "b reporting all 4 partitions", func() bool { return len(b.Statuses()) == 4 })
}

// TestStreamKeepsPinWhileThrottled: a partition throttled for longer than
// PinnedTTL stays with its process (the paused fetch loop keeps the pin),
// so a standby process never delivers the messages behind the held batch.
func TestStreamKeepsPinWhileThrottled(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 1)
	ncA, _ := connect(t, e.ClientURL())
	ncB, _ := connect(t, e.ClientURL())
	var throttling atomic.Bool
	throttling.Store(true)
	da := &fakeDeliverer{answer: func(shard.Delivery) event.Result {
		if throttling.Load() {
			return event.Result{Outcome: event.Throttled, Reason: "ConcurrentInvocationLimitExceeded"}
		}
		return event.Result{Outcome: event.Delivered}
	}}
	db := &fakeDeliverer{}
	optsA := fastStream(da, nil, src)
	optsA.PinnedTTL, optsA.AckWait = 2*time.Second, time.Second
	a, err := NewStream("clicks", ncA, src, optsA)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 5, 2)
	runSource(t, a.Run)
	waitFor(t, 10*time.Second, "a throttled", func() bool {
		sts := a.Statuses()
		return len(sts) == 1 && sts[0].State == shard.StateThrottled
	})
	optsB := fastStream(db, nil, src)
	optsB.PinnedTTL, optsB.AckWait = 2*time.Second, time.Second
	b, err := NewStream("clicks", ncB, src, optsB)
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, b.Run)
	publishKeys(t, js, "clicks", 5, 20, 2)
	time.Sleep(3 * optsA.PinnedTTL)
	if n := db.count(); n != 0 {
		t.Fatalf("the standby delivered %d records of a partition pinned to a throttled process", n)
	}
	throttling.Store(false)
	waitFor(t, 10*time.Second, "a delivered everything", func() bool { return da.count() == 25 })
	checkOrder(t, da.delivered())
	if n := db.count(); n != 0 {
		t.Fatalf("the standby delivered %d records", n)
	}
}

// TestStreamFailoverAfterCrash: a process that dies holding messages (no
// NAK, no unpin) hands its partition over after PinnedTTL, and the next
// owner gets the held messages first, before anything newer.
func TestStreamFailoverAfterCrash(t *testing.T) {
	e := startServer(t)
	_, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 1)
	ncA, err := natsgoConnect(e.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	da := &fakeDeliverer{answer: func(shard.Delivery) event.Result {
		return event.Result{Outcome: event.Throttled, Reason: "FunctionThrottled"}
	}}
	optsA := fastStream(da, nil, src)
	optsA.PinnedTTL, optsA.AckWait = 2*time.Second, time.Second
	a, err := NewStream("clicks", ncA, src, optsA)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 10, 3)
	stopA := runSource(t, a.Run)
	waitFor(t, 10*time.Second, "a holding the batch", func() bool {
		sts := a.Statuses()
		return len(sts) == 1 && sts[0].State == shard.StateThrottled
	})
	ncA.Close() // the "crash": nothing more reaches the server from a
	stopA()

	ncB, _ := connect(t, e.ClientURL())
	db := &fakeDeliverer{}
	optsB := fastStream(db, nil, src)
	optsB.PinnedTTL, optsB.AckWait = 2*time.Second, time.Second
	b, err := NewStream("clicks", ncB, src, optsB)
	if err != nil {
		t.Fatal(err)
	}
	runSource(t, b.Run)
	publishKeys(t, js, "clicks", 10, 10, 3)
	waitFor(t, 20*time.Second, "all 20 delivered by b", func() bool { return db.count() == 20 })
	checkOrder(t, db.delivered())
	if got := db.delivered()[0][0]; string(got.Value) != "v0" {
		t.Fatalf("b started with %s, want v0", got.Value)
	}
}

// TestStreamAckPipelineAcksAllByStop: with AckPipelineDepth, lanes go on
// while the acknowledgements of earlier batches are on the wire, and the ack
// goroutine coalesces what is queued into one round; every delivered message
// is still acknowledged exactly once (none left pending, none redelivered)
// by the time Run returned.
func TestStreamAckPipelineAcksAllByStop(t *testing.T) {
	e := startServer(t)
	nc, js := connect(t, e.ClientURL())
	src := streamSource("CLICKS", "clicks", 2)
	d := &fakeDeliverer{}
	opts := fastStream(d, nil, src)
	opts.AckPipelineDepth = 2
	s, err := NewStream("clicks", nc, src, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Ensure(t.Context()); err != nil {
		t.Fatal(err)
	}
	publishKeys(t, js, "clicks", 0, 300, 7)
	stop := runSource(t, s.Run)
	waitFor(t, 20*time.Second, "300 records delivered", func() bool { return d.count() == 300 })
	checkOrder(t, d.delivered())
	stop()
	for p := range 2 {
		info := consumerInfo(t, js, "CLICKS", s.ConsumerName(p))
		if info.NumAckPending != 0 || info.NumPending != 0 || info.NumRedelivered != 0 {
			t.Errorf("partition %d after the stop: %d pending acknowledgement, %d pending, %d redelivered; want all acknowledged once",
				p, info.NumAckPending, info.NumPending, info.NumRedelivered)
		}
	}
}
