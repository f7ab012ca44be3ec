package integration

import (
	"context"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// Environment variables set by scripts/brokers/with-brokers.sh (make test-all).
const (
	envKafka = "SLUICE_TEST_KAFKA"
	envNATS  = "SLUICE_TEST_NATS"
	// envRequire = 1 (CI sets it) turns every skip for a missing broker
	// into a failure: a suite that skipped everything is not green.
	envRequire = "SLUICE_REQUIRE_BROKERS"
)

// skipNoBroker skips the test for a missing broker, or fails it when
// SLUICE_REQUIRE_BROKERS=1.
func skipNoBroker(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv(envRequire) == "1" {
		t.Fatalf(format+" (%s=1: a missing broker is a failure)", append(args, envRequire)...)
	}
	t.Skipf(format, args...)
}

// reachTimeout is how long a broker named in the environment gets to answer
// before the test fails. The brokers are already up when tests start
// (with-brokers.sh waits for them), so this only covers a broker that is gone.
const reachTimeout = 10 * time.Second

// probes remembers one reachability check per address, so that when a broker
// is gone only the first test waits reachTimeout and the rest fail at once.
var probes sync.Map // address -> func() error (a sync.OnceValue)

func probeOnce(key string, probe func() error) error {
	f, _ := probes.LoadOrStore(key, sync.OnceValue(probe))
	return f.(func() error)()
}

// kafkaAddr returns the address of the test Kafka broker. It skips the test
// when SLUICE_TEST_KAFKA is unset, and fails it when the variable is set but
// the broker does not answer a metadata request within reachTimeout.
func kafkaAddr(t testing.TB) string {
	t.Helper()
	addr := os.Getenv(envKafka)
	if addr == "" {
		skipNoBroker(t, "no Kafka broker: set %s=host:port or run `make test-all` (it starts real brokers)", envKafka)
	}
	if err := probeOnce("kafka "+addr, func() error { return probeKafka(addr) }); err != nil {
		t.Fatalf("%s=%s is set but that Kafka broker is unreachable: %v "+
			"(unset %s to skip these tests, or run `make test-all`)", envKafka, addr, err, envKafka)
	}
	return addr
}

func probeKafka(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), reachTimeout)
	defer cancel()
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DialTimeout(2*time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)
	// The client gives up on a refused dial at once; keep asking until the
	// deadline, so a broker that is (re)starting gets its ~10 s.
	var last error
	for {
		m, err := adm.BrokerMetadata(ctx)
		switch {
		case err != nil:
			last = err
		case len(m.Brokers) == 0:
			last = errors.New("metadata lists no live broker")
		default:
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("no metadata within %s: %w", reachTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// natsURL returns the URL of the test nats-server. It skips the test when
// SLUICE_TEST_NATS is unset, and fails it when the variable is set but no
// nats-server with JetStream answers there within reachTimeout.
func natsURL(t testing.TB) string {
	t.Helper()
	url := os.Getenv(envNATS)
	if url == "" {
		skipNoBroker(t, "no nats-server: set %s=nats://host:port or run `make test-all` (it starts real brokers)", envNATS)
	}
	if err := probeOnce("nats "+url, func() error { return probeNATS(url) }); err != nil {
		t.Fatalf("%s=%s is set but no nats-server with JetStream is reachable there: %v "+
			"(unset %s to skip these tests, or run `make test-all`)", envNATS, url, err, envNATS)
	}
	return url
}

func probeNATS(url string) error {
	deadline := time.Now().Add(reachTimeout)
	var last error
	for time.Now().Before(deadline) {
		nc, err := nats.Connect(url, nats.Timeout(2*time.Second), nats.Name("sluice-integration-probe"))
		if err != nil {
			last = err
			time.Sleep(200 * time.Millisecond)
			continue
		}
		err = func() error {
			defer nc.Close()
			js, err := jetstream.New(nc)
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Until(deadline))
			defer cancel()
			_, err = js.AccountInfo(ctx)
			return err
		}()
		if err == nil {
			return nil
		}
		last = fmt.Errorf("connected, but JetStream does not answer: %w", err)
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("not ready within %s: %w", reachTimeout, last)
}

var nameSeq atomic.Int64

// unsafeName matches what Kafka topic names, NATS stream names and NATS
// subject tokens may not all contain.
var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// uniqueName returns a name for a topic, stream, subject token or group that
// no other test (in this run or an earlier one against the same broker) uses:
// prefix, the test's name and a run-unique suffix.
func uniqueName(t testing.TB, prefix string) string {
	t.Helper()
	base := unsafeName.ReplaceAllString(strings.TrimPrefix(t.Name(), "Test"), "_")
	if len(base) > 60 {
		base = base[:60]
	}
	return fmt.Sprintf("%s-%s-%d-%d", prefix, base, time.Now().UnixNano()%1e9, nameSeq.Add(1))
}

// cleanupCtx is the context for t.Cleanup work: the test's own context is
// already canceled when cleanups run.
func cleanupCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 15*time.Second)
}

// newKafkaClient returns a franz-go client for the test broker, closed when
// the test ends.
func newKafkaClient(t testing.TB, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	opts = append([]kgo.Opt{kgo.SeedBrokers(kafkaAddr(t)), kgo.ClientID("sluice-integration")}, opts...)
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatalf("kgo.NewClient: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// createTopic creates a uniquely named topic with the given partitions and
// deletes it when the test ends. It returns the topic's name.
func createTopic(t testing.TB, partitions int32) string {
	t.Helper()
	adm := kadm.NewClient(newKafkaClient(t))
	topic := uniqueName(t, "sluice-it")
	resp, err := adm.CreateTopic(t.Context(), partitions, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		resp, err := adm.DeleteTopic(ctx, topic)
		if err == nil {
			err = resp.Err
		}
		if err != nil {
			t.Errorf("delete topic %s: %v", topic, err)
		}
	})
	return topic
}

// newJetStream connects to the test nats-server and returns its JetStream
// context; the connection is closed when the test ends.
func newJetStream(t testing.TB) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := nats.Connect(natsURL(t), nats.Name("sluice-integration"))
	if err != nil {
		t.Fatalf("nats.Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return nc, js
}

// createStream creates a uniquely named file-backed stream over
// "<name>.>" and deletes it when the test ends. It returns the stream and
// its subject prefix (the name, lower-cased, without the trailing ".>").
func createStream(t testing.TB, js jetstream.JetStream) (jetstream.Stream, string) {
	t.Helper()
	name := strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "IT"), "_"))
	prefix := strings.ToLower(name)
	s, err := js.CreateStream(t.Context(), jetstream.StreamConfig{
		Name:     name,
		Subjects: []string{prefix + ".>"},
		Storage:  jetstream.FileStorage,
		Replicas: 1,
	})
	if err != nil {
		t.Fatalf("create stream %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		if err := js.DeleteStream(ctx, name); err != nil {
			t.Errorf("delete stream %s: %v", name, err)
		}
	})
	return s, prefix
}
