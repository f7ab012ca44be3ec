package integration

// Acceptance tests of Kafka stream sources (issue 3, SPEC §2.1, §3, §4, §6)
// that only Kafka runs: each runs `sluice run` as a separate process against
// the real Kafka broker and an HTTP function (fnServer), and checks what the
// function received, what was dead-lettered and what the consumer group
// committed. The scenarios every stream source must pass (a throttled shard
// blocks alone, poison record with bisect, max record age, partial batch,
// kill -9) are the contract suite, contract_test.go, run for Kafka by
// contract_kafka_test.go.

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/shard"
)

// newSource returns a unique source name; its consumer group is
// "sluice-" + the name.
func newSource(t *testing.T) (source, group string) {
	source = uniqueName(t, "src")
	return source, "sluice-" + source
}

// TestKafkaStreamGracefulHandover: two sluice processes share a source's
// consumer group on 4 partitions; one is stopped with SIGTERM mid-run. It
// exits 0, the other takes over its partitions, and nothing is lost.
func TestKafkaStreamGracefulHandover(t *testing.T) {
	t.Parallel()
	const (
		partitions = 4
		records    = 40000
		batchSize  = 100
	)
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	fn := newFnServer(t, func(*fnBatch) fnAnswer { return fnAnswer{Sleep: 10 * time.Millisecond} })
	source, group := newSource(t)
	rc := runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": batchSize}}
	// The same configuration in two directories: one process per state_dir.
	a := startSluice(t, "sluice A", writeConfig(t, rc))
	b := startSluice(t, "sluice B", writeConfig(t, rc))
	owned := func(p *sluiceProc) int {
		views, err := p.shards()
		if err != nil {
			return -1
		}
		return len(views)
	}
	eventually(t, 60*time.Second, "A and B share the partitions", func() error {
		if na, nb := owned(a), owned(b); na+nb != partitions || na == 0 || nb == 0 {
			return fmt.Errorf("A owns %d shards, B %d", na, nb)
		}
		return nil
	})

	want := produce(t, topic, partitions, records, produceOpts{})
	waitDelivered(t, fn, records/3, 120*time.Second)
	if code := a.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("A: exit code %d after SIGTERM, want 0", code)
	}
	stoppedAt := len(fn.snapshot())
	eventually(t, 60*time.Second, "B owns every partition", func() error {
		if n := owned(b); n != partitions {
			return fmt.Errorf("B owns %d shards", n)
		}
		return nil
	})
	waitDelivered(t, fn, records, 120*time.Second)
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := b.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("B: exit code %d after SIGTERM, want 0", code)
	}

	batches := fn.snapshot()
	rep := checkDeliveries(t, batches, want, nil)
	// A graceful stop abandons only the batches in flight (one per
	// partition it owned) and commits everything finished before it leaves.
	byPart := rep.duplicatesByPartition()
	t.Logf("A stopped after %d batches; duplicates by partition: %v (bound %d per partition)", stoppedAt, byPart, batchSize)
	for part, n := range byPart {
		if n > batchSize {
			t.Errorf("partition %d: %d records delivered twice, want at most %d (the batch in flight at the stop)", part, n, batchSize)
		}
	}
	if dl := readDeadLetters(t, dlq); len(dl) != 0 {
		t.Errorf("%d records dead-lettered, want none", len(dl))
	}
}

// TestKafkaStreamDeadLetterOutage: the dead-letter topic is deleted while
// sluice runs and a record fails permanently: its shard blocks (GET
// /v1/shards says blocked), the group commits nothing past the record and
// nothing after it is delivered, while the other partition keeps flowing.
// Once the topic is back, the dead letter is written and the shard moves on.
func TestKafkaStreamDeadLetterOutage(t *testing.T) {
	t.Parallel()
	const partitions, records = 2, 2000
	topic := createTopic(t, partitions)
	dlq := deadLetterTopic(t)
	fn := newFnServer(t, answer(http.StatusOK))
	source, group := newSource(t)
	cfg := writeConfig(t, runConfig{Source: source, Topic: topic, FunctionURL: fn.URL(), DeadLetters: dlq,
		Settings: map[string]any{"batch_size": 100, "bisect_batch_on_error": true}})
	p := startSluice(t, "sluice", cfg)

	// sluice created the dead-letter topic at start-up; take it away (the
	// broker does not auto-create topics).
	adm := kadm.NewClient(newKafkaClient(t))
	if _, ok := endOffsets(t, dlq)[0]; !ok {
		t.Fatalf("sluice did not create the dead-letter topic %s at start-up", dlq)
	}
	resp, err := adm.DeleteTopic(t.Context(), dlq)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("delete the dead-letter topic: %v", err)
	}
	eventually(t, 30*time.Second, "the dead-letter topic is gone", func() error {
		if offs := endOffsets(t, dlq); len(offs) > 0 {
			return fmt.Errorf("still listed: %v", offs)
		}
		return nil
	})

	// The poison record is offset 500 of partition 0 of the fresh topic;
	// the function refuses it from before it is produced.
	const badPartition, badOffset = 0, 500
	fn.setPolicy(func(b *fnBatch) fnAnswer {
		if b.contains(badPartition, badOffset) {
			return fnAnswer{Status: http.StatusBadRequest}
		}
		return fnAnswer{}
	})
	want := produce(t, topic, partitions, records, produceOpts{})
	producedAt := time.Now()
	bad := want[500] // sorted by partition, then offset
	if bad.Partition != badPartition || bad.Offset != badOffset {
		t.Fatalf("record 500 is %d@%d, want %d@%d", bad.Partition, bad.Offset, badPartition, badOffset)
	}

	// Partition 1 flows; partition 0 blocks on the dead letter it cannot
	// write (each write gives up after the writer's timeout, 10 s).
	eventually(t, 60*time.Second, "GET /v1/shards shows partition 0 blocked", func() error {
		views, err := p.shards()
		if err != nil {
			return err
		}
		for _, v := range views {
			if v.Shard == 0 && v.State == string(shard.StateBlocked) {
				return nil
			}
		}
		return fmt.Errorf("shards %+v", views)
	})
	checkBlocked := func() {
		t.Helper()
		if c, ok := committedOffsets(t, group, topic)[0]; ok && c > bad.Offset {
			t.Errorf("partition 0 committed up to %d while the dead letter of offset %d is not written", c, bad.Offset)
		}
		for _, b := range fn.snapshot() {
			for _, r := range b.accepted() {
				if r.Partition == 0 && r.Offset > bad.Offset {
					t.Errorf("partition 0 delivered offset %d past the blocked record %d", r.Offset, bad.Offset)
					return
				}
			}
		}
	}
	t.Logf("partition 0 blocked %s after the records were produced", time.Since(producedAt).Round(time.Millisecond))
	for _, l := range p.logLines() {
		if strings.Contains(l, "dead-letter write failed") {
			t.Logf("sluice logged: %s", l)
			break
		}
	}
	// It stays blocked: nothing past the failed record while partition 1
	// delivers its whole half (checked before and after that progress).
	checkBlocked()
	onlyP1 := func() error {
		n := 0
		for _, b := range fn.snapshot() {
			for _, r := range b.accepted() {
				if r.Partition == 1 {
					n++
				}
			}
		}
		if n < records/2 {
			return fmt.Errorf("partition 1: %d records delivered", n)
		}
		return nil
	}
	eventually(t, 30*time.Second, "partition 1 keeps flowing while partition 0 is blocked", onlyP1)
	checkBlocked()
	views, err := p.shards()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range views {
		if v.Shard == 0 && (v.State != string(shard.StateBlocked) || v.Reason == "") {
			t.Errorf("partition 0 is %q (reason %q), want blocked with a reason", v.State, v.Reason)
		}
	}
	if n, err := p.metric("sluice_shards", map[string]string{"source": source, "state": "blocked"}); err != nil || n != 1 {
		t.Errorf("sluice_shards{state=\"blocked\"} = %v (%v), want 1", n, err)
	}
	if n, err := p.metric("sluice_dead_letter_errors_total", map[string]string{"destination": "dead"}); err != nil || n < 1 {
		t.Errorf("sluice_dead_letter_errors_total{destination=\"dead\"} = %v (%v), want at least 1", n, err)
	}

	// The topic comes back: the shard resumes.
	eventually(t, 30*time.Second, "the dead-letter topic is created again", func() error {
		resp, err := adm.CreateTopic(t.Context(), 1, 1, nil, dlq)
		if err == nil {
			err = resp.Err
		}
		if errors.Is(err, kerr.TopicAlreadyExists) {
			return nil
		}
		return err
	})
	recreatedAt := time.Now()
	var letters []deadLetter
	eventually(t, 60*time.Second, "the dead letter is written", func() error {
		if letters = readDeadLetters(t, dlq); len(letters) == 0 {
			return errors.New("none yet")
		}
		return nil
	})
	t.Logf("the dead letter was written %s after the topic came back", time.Since(recreatedAt).Round(time.Millisecond))
	waitDelivered(t, fn, records-1, 60*time.Second)
	eventually(t, 30*time.Second, "every partition is committed to its end", func() error { return allCommitted(t, group, topic) })
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}

	checkDeliveries(t, fn.snapshot(), want, map[producedKey]bool{{bad.Partition, bad.Offset}: true})
	letters = readDeadLetters(t, dlq)
	// A write that timed out may still have landed, so the same letter may
	// be there more than once (same id); nothing else may.
	for _, dl := range letters {
		e := dl.Env
		if e.Record.Partition != bad.Partition || e.Record.Offset != bad.Offset || e.Condition != event.PermanentError {
			t.Errorf("dead letter of %d@%d with %s, want only %d@%d with PermanentError",
				e.Record.Partition, e.Record.Offset, e.Condition, bad.Partition, bad.Offset)
		}
		if e.ID != letters[0].Env.ID {
			t.Errorf("dead letters with ids %s and %s for the same record", e.ID, letters[0].Env.ID)
		}
	}
}
