package integration

// The JetStream variant of the chaos suite (chaos_test.go): a JetStream
// stream-mode source (partitioned subjects, pinned-client consumers) whose
// dead letters go to a Kafka topic, under
//
//   - kill -9 of one of two sluice processes, restarted at once (a pinned
//     partition moves to the other process once its dead owner's pin
//     expires, PinnedTTL = 60 s by default);
//   - a restart of the nats-server that holds the source stream;
//   - the dead-letter store unreachable for a while: Kafka stopped, while
//     the function answers 400 to everything, so that shards must block;
//   - a graceful handover: one process stopped with SIGTERM releases its
//     partitions to the other, then comes back;
//   - the same flipping function as the Kafka variant.
//
// The same invariant checker runs at the end (checkChaos). Records are
// identified by their stream sequence (partition 0 in the checker's keys:
// the partition is the server's hash of the key, and a key has one).

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.yaml.in/yaml/v3"
)

// decodeJSBatch reads a JetStream stream batch (SPEC §3). Each record's
// partition is left 0 and its offset is its stream sequence (see the top of
// this file); the batch keeps the real partition.
func decodeJSBatch(r *http.Request, body []byte) (*fnBatch, error) {
	var ev struct {
		EventSource string `json:"eventSource"`
		Records     map[string][]struct {
			Subject  string `json:"subject"`
			Stream   string `json:"stream"`
			Sequence int64  `json:"sequence"`
			Data     []byte `json:"data"`
		} `json:"records"`
	}
	if err := json.Unmarshal(body, &ev); err != nil {
		return nil, fmt.Errorf("body is not a JetStream batch: %w", err)
	}
	if ev.EventSource != "sluice:nats" {
		return nil, fmt.Errorf("eventSource %q, want sluice:nats", ev.EventSource)
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
		i := strings.LastIndexByte(k, '-')
		p, err := strconv.Atoi(k[i+1:])
		if i < 0 || err != nil || len(recs) == 0 {
			return nil, fmt.Errorf("batch key %q with %d records", k, len(recs))
		}
		b.Partition = int32(p)
		for _, rec := range recs {
			key := rec.Subject[strings.LastIndexByte(rec.Subject, '.')+1:]
			b.Records = append(b.Records, fnRecord{Offset: rec.Sequence, Key: key, Value: string(rec.Data)})
		}
	}
	return b, nil
}

// jsProducer publishes keyed messages at a steady rate until stopped. Each
// carries a message id, and a publish that fails is retried with the same
// id until it is acknowledged, so each record is stored once (the stream's
// duplicate window) even across a nats-server restart. A publish still
// unacknowledged when producing stops is given up and counted as failed:
// it may be stored all the same, and the checker reads the stream.
type jsProducer struct {
	mu     sync.Mutex
	recs   []chaosRecord
	failed int
}

func (pr *jsProducer) snapshot() []chaosRecord {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return slices.Clone(pr.recs)
}

func (pr *jsProducer) failedCount() int {
	pr.mu.Lock()
	defer pr.mu.Unlock()
	return pr.failed
}

func (pr *jsProducer) run(ctx context.Context, js jetstream.JetStream, prefix string, rate int) {
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
		for range perTick {
			s := seq
			seq++
			key := fmt.Sprintf("key-%d", s%chaosKeys)
			value := fmt.Sprintf("seq-%07d", s)
			for {
				pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
				ack, err := js.Publish(pctx, prefix+"."+key, []byte(value), jetstream.WithMsgID(value))
				cancel()
				if err == nil {
					pr.mu.Lock()
					pr.recs = append(pr.recs, chaosRecord{Seq: s, produced: produced{Offset: int64(ack.Sequence), Key: key, Value: value}})
					pr.mu.Unlock()
					break
				}
				if ctx.Err() != nil {
					pr.mu.Lock()
					pr.failed++
					pr.mu.Unlock()
					return
				}
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}
}

// TestChaosJetStream: see the top of this file. SLUICE_CHAOS=short|long
// runs it (make chaos-short, make chaos).
func TestChaosJetStream(t *testing.T) {
	c := newChaos(t, "JetStream stream source", decodeJSBatch)
	plan, mode := c.plan, c.mode
	// A killed owner's partitions wait PinnedTTL (60 s) for a new owner:
	// fewer, sparser kills than the Kafka variant.
	kills, killEvery := 3, 15*time.Second
	if mode == "long" {
		kills, killEvery = 10, 20*time.Second
	}

	_, js := newJetStream(t)
	stream := strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "CJS"), "_"))
	prefix := strings.ToLower(stream)
	dlq := deadLetterTopic(t)

	fn, cf := c.fn, c.cf
	source := uniqueName(t, "src")
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers": map[string]any{
			"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}},
			"bus":  map[string]any{"nats": map[string]any{"url": natsURL(t)}},
		},
		"functions": map[string]any{"fn": map[string]any{"url": fn.URL(), "timeout": plan.FunctionTimout.String()}},
		"sources": map[string]any{source: map[string]any{
			"broker": "bus", "stream": stream, "subject": prefix + ".*", "partitions": int(plan.Partitions),
			"mode": "stream", "function": "fn",
			"batch_size": 100, "max_retry_attempts": chaosMaxRetries, "max_record_age": "1h",
			"bisect_batch_on_error": true, "on_failure": "dead",
			"retry_backoff": map[string]any{"initial": "100ms", "max": "1s"},
		}},
		"dead_letters": map[string]any{"dead": map[string]any{"broker": "main", "topic": dlq, "retention": "1h"}},
	}
	cfgBytes, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		_ = js.DeleteStream(ctx, stream)
	})
	c.useConfig(cfgBytes)
	run := c.run
	run.start("A") // creates the stream and its partition consumers
	run.start("B")
	run.waitOwned(int(plan.Partitions))

	pr := &jsProducer{}
	c.background(func(ctx context.Context) { pr.run(ctx, js, prefix, plan.Rate) })
	faults, note := c.faults, c.note
	blockedSeen := 0
	handover := func() {
		run.waitOwned(int(plan.Partitions))
		run.end("A", syscall.SIGTERM)
		run.start("A")
		note("handover", "sluice A stopped with SIGTERM (its partitions released to B) and started again")
	}
	natsRestart := func() {
		down := brokerCtl(t, "down.sh", "nats")
		time.Sleep(3 * time.Second)
		up := brokerCtl(t, "up.sh", "nats")
		note("nats-restart", "the source's nats-server stopped in %s, started again in %s", down.Round(time.Millisecond), up.Round(time.Millisecond))
	}
	kafkaOutage := func() {
		run.waitOwned(int(plan.Partitions))
		// Shards at work: the function is being called.
		n := len(fn.snapshot())
		eventually(t, 90*time.Second, "the function is called", func() error {
			if len(fn.snapshot()) < n+int(plan.Partitions) {
				return errors.New("not yet")
			}
			return nil
		})
		down := brokerCtl(t, "down.sh", "kafka")
		fn.mu.Lock()
		cf.outage = true
		fn.mu.Unlock()
		// A dead-letter write gives up after 10 s; the shard shows
		// blocked from then on.
		blocked := run.watchBlocked(plan.NATSOutage + 6*time.Second)
		fn.mu.Lock()
		cf.outage = false
		fn.mu.Unlock()
		up := brokerCtl(t, "up.sh", "kafka")
		blockedSeen += blocked
		note("dlq-outage", "the dead-letter store (Kafka) was down for %s (%s of it starting); the function answered 400 to everything for %s; %d shards seen blocked",
			(down + plan.NATSOutage + 6*time.Second + up).Round(time.Second), up.Round(time.Second), plan.NATSOutage+6*time.Second, blocked)
	}
	killCycle := func() {
		victim := "A"
		if faults["kill-9"]%2 == 1 {
			victim = "B"
		}
		time.Sleep(killEvery)
		run.end(victim, syscall.SIGKILL)
		run.start(victim)
		note("kill-9", "killed sluice %s and restarted it", victim)
	}

	time.Sleep(3 * time.Second) // the processes work under the flipping function before the first fault
	for _, step := range []func(){handover, kafkaOutage, natsRestart} {
		if !t.Failed() {
			step()
		}
	}
	for faults["kill-9"] < kills && !t.Failed() {
		killCycle()
	}
	time.Sleep(3 * time.Second) // the last restarted process works a while before the end
	c.endFaults(nil)

	letters := func() []chaosLetter {
		var out []chaosLetter
		for _, dl := range readDeadLetters(t, dlq) {
			dl.Env.Record.Partition = 0 // identified by sequence, as the function's records
			out = append(out, chaosLetter{Env: dl.Env, At: dl.Timestamp})
		}
		return out
	}
	c.plan.Drain += 60 * time.Second // a killed owner's partitions wait for its pin to expire
	c.drainAndCheck(jsChaosSource{js: js, stream: stream, source: source, partitions: int(plan.Partitions)}, pr.snapshot(), letters,
		chaosOutcome{variant: "JetStream source, Kafka dead letters", source: source, topic: stream, failed: pr.failedCount()})
	if blockedSeen == 0 && run.counter("sluice_dead_letter_errors_total", nil) == 0 {
		t.Errorf("no shard was seen blocked and no dead-letter write failed while the store was down: the outage was not exercised")
	}
	if faults["kill-9"] < kills {
		t.Errorf("only %d kill -9 cycles ran, the plan has %d", faults["kill-9"], kills)
	}
}
