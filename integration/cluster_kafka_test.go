package integration

// Cluster-wide limits on the Kafka engine (issue "limits that hold across
// every sluice process"): three `sluice run` processes of one cluster whose
// cluster.broker is the real Kafka broker (compacted state topics, one
// leader elected by a consumer group; consumer/kafka's KV) share a Kafka
// source of 12 partitions calling one function with a reservation of 6 and
// a "*" rule of 2 per tenant over 5 tenants. The function counts the
// requests running at once (concFn of cluster_nats_test.go) and the test
// fails on any instant above 6 overall or 2 for a tenant (1 for tenant-0
// once its rule is lowered), through: a steady phase, uneven demand, a rule
// change through process 1's API, kill -9 of a process holding capacity, a
// 20 s stop of the Kafka broker, and a restart of all three.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"go.yaml.in/yaml/v3"
)

// publishKafka keeps about backlog records of topic waiting (at most 200
// a second), tenants 0..4 in turn in the header "tenant"; published is
// guarded by fn.mu. cl must use kgo.ManualPartitioner: each tenant has two
// partitions of its own. (With every tenant on every partition, each
// process has a demand on every tenant's scope and a rule of 2 splits over
// three processes as 1, 1 and 0: every shard then waits at its next record
// for a tenant its process holds no share of, and the function sees about
// 2 running, not 6: the first runs of this test measured 2.0 on average.
// That reads as the engine's fragmentation of small scope limits over
// processes, not as the Kafka engine's latency: hand-offs took ~0.1s.)
func publishKafka(ctx context.Context, cl *kgo.Client, topic string, fn *concFn, published *int, backlog int) {
	seq := 0
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		for range 10 {
			fn.mu.Lock()
			waiting := *published - fn.requests
			fn.mu.Unlock()
			if waiting >= backlog {
				break
			}
			// Tenant k's records go to partitions 2k and 2k+1 in turn,
			// so each tenant's demand comes from at most two processes.
			r := &kgo.Record{Topic: topic, Partition: int32(2*(seq%5) + (seq/5)%2), Key: fmt.Appendf(nil, "k%d", seq), Value: []byte("x"),
				Headers: []kgo.RecordHeader{{Key: "tenant", Value: fmt.Appendf(nil, "tenant-%d", seq%5)}}}
			seq++
			pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			if err := cl.ProduceSync(pctx, r).FirstErr(); err == nil { // the broker outage loses publishes: fine, nothing is checked on them
				fn.mu.Lock()
				*published++
				fn.mu.Unlock()
			}
			cancel()
		}
	}
}

func writeKafkaClusterConfig(t *testing.T, clusterName, source, topic, fnURL string) string {
	t.Helper()
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}, "session_timeout": "6s"}}},
		"cluster":   map[string]any{"name": clusterName, "broker": "main", "lease": "3s"},
		// A short timeout: an invocation a rebalance abandons keeps its
		// slot until its deadline (the function may still run it).
		"functions": map[string]any{"fn": map[string]any{"url": fnURL, "timeout": "2s", "reserved_concurrency": 6}},
		"rules":     []any{map[string]any{"pattern": "*", "concurrency": 2}},
		"sources": map[string]any{source: map[string]any{
			"topic": topic, "mode": "stream", "function": "fn",
			"scope": "header:tenant", "batch_size": 1,
			"retry_backoff": map[string]any{"initial": "50ms", "max": "200ms"},
		}},
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// kafkaKVSession is the Kafka engine's group session (consumer/kafka's
// kvSessionTimeout): a killed leader of the engine's buckets is replaced
// after it.
const kafkaKVSession = 6 * time.Second

func TestClusterKafka(t *testing.T) {
	kafkaAddr(t) // skipNoBroker without a Kafka broker
	brokersDir := os.Getenv("SLUICE_TEST_BROKERS_DIR")
	if brokersDir == "" && os.Getenv(envRequire) == "1" {
		t.Fatalf("SLUICE_TEST_BROKERS_DIR is unset, so the Kafka outage phase cannot run "+
			"(run under scripts/brokers/with-brokers.sh; %s=1: a missing broker is a failure)", envRequire)
	}
	topic := createTopic(t, 12)
	source := unsafeName.ReplaceAllString(uniqueName(t, "src"), "_")
	pub := newKafkaClient(t, kgo.DefaultProduceTopic(topic), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	fn := newConcFn(t, 100*time.Millisecond)
	clusterName := unsafeName.ReplaceAllString(uniqueName(t, "c"), "_")
	c := &clusterRun{t: t, fn: fn, procs: make([]*sluiceProc, 3)}
	for i := range c.procs {
		c.cfgs = append(c.cfgs, writeKafkaClusterConfig(t, clusterName, source, topic, fn.srv.URL+"/invoke"))
		c.procs[i] = startSluice(t, fmt.Sprintf("sluice %d", i+1), c.cfgs[i])
	}
	published := 0
	pubCtx, stopPub := context.WithCancel(t.Context())
	defer stopPub()
	go publishKafka(pubCtx, pub, topic, fn, &published, 150)

	// Phase 1: steady demand.
	fn.waitCalled(t, 90*time.Second)
	// The source's group settles (the processes joined one after the
	// other; what its rebalances abandoned holds its slots for the
	// function's timeout, 2s) before the steady window.
	time.Sleep(3 * time.Second)
	c.steady()

	// Uneven demand: each process loaded in turn; the fair part of the
	// newly loaded one is 2 of 6 (the three processes share the topic's
	// partitions and so its demand).
	c.unevenDemand(2, 0, 1, 2, 0)

	// From here on every process has ingress demand too.
	lctx, stopLoad := context.WithCancel(t.Context())
	lwg := ingressLoad(lctx, 6, c.proc)
	defer func() { stopLoad(); lwg.Wait() }()

	// Phase 2: a rule changed through process 1's API holds on 2 and 3.
	c.ruleChange()
	c.logHandoffs("before the kill")

	// Phase 3: kill -9 of a process holding capacity. When it leads the
	// engine's buckets, no write lands until the group replaces it (its
	// session, 6s): the others' leases end meanwhile and they grant
	// nothing, then win the capacity back.
	victim, shareBack, back := c.killHolder(40 * time.Second)
	t.Logf("kill -9 of process %d holding capacity: the others hold all 6 after %s, the function sees 6 running again after %s (lease 3s; the engine's group session 6s if it led)",
		victim+1, shareBack.Round(time.Millisecond), back.Round(time.Millisecond))
	if limit := 3*time.Second + kafkaKVSession + 3*time.Second; shareBack > limit {
		t.Errorf("the others took %s to hold the whole reservation again, want at most lease (3s) + the engine's session (6s) + a few rounds (%s)", shareBack, limit)
	}

	// Phase 4: the Kafka broker (source and engine) stops for 20 s.
	if brokersDir != "" {
		c.outage("kafka", 90*time.Second)
	} else {
		t.Log("SLUICE_TEST_BROKERS_DIR unset: the Kafka outage phase needs scripts/brokers/with-brokers.sh")
	}

	// Phase 5: all three restart; the rule changed through the API is kept.
	stopLoad()
	lwg.Wait()
	c.restartAll()
	time.Sleep(3 * time.Second)
	stopPub()
	c.check("restart")
	fn.mu.Lock()
	t.Logf("overall: %d requests, max running %d (limit 6), max per tenant %v", fn.requests, fn.maxAll, fn.maxScope)
	fn.mu.Unlock()
}
