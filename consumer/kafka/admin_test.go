package kafka

import (
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/sluicehq/sluice/consumer"
)

func TestEnsureTopic(t *testing.T) {
	seeds := newCluster(t, 1, "existing")
	broker := consumer.KafkaConfig{Seeds: seeds}
	ctx := t.Context()
	const day = 24 * time.Hour

	steps := []struct {
		name        string
		topic       string
		retention   time.Duration
		maxBytes    int64
		wantCreated bool
		wantChanged []string
		wantMs      string
		wantBytes   string
	}{
		{"create", "dead", 14 * day, 0, true, nil, "1209600000", "-1"},
		{"same again: nothing to do", "dead", 14 * day, 0, false, nil, "1209600000", "-1"},
		{"reconcile both", "dead", 7 * day, 1 << 30, false,
			[]string{"retention.ms: 1209600000 -> 604800000", "retention.bytes: -1 -> 1073741824"}, "604800000", "1073741824"},
		{"forever, no size limit", "dead", -1, 0, false,
			[]string{"retention.ms: 604800000 -> -1", "retention.bytes: 1073741824 -> -1"}, "-1", "-1"},
		{"existing topic with broker defaults", "existing", 14 * day, 0, false,
			nil, "1209600000", "-1"}, // changed is checked loosely below: the defaults are the broker's
	}
	for _, st := range steps {
		created, changed, err := EnsureTopic(ctx, broker, st.topic, 3, st.retention, st.maxBytes)
		if err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if created != st.wantCreated {
			t.Errorf("%s: created = %v, want %v", st.name, created, st.wantCreated)
		}
		if st.topic == "dead" && !slices.Equal(changed, st.wantChanged) {
			t.Errorf("%s: changed = %q, want %q", st.name, changed, st.wantChanged)
		}
		t.Logf("%s: created=%v changed=%q", st.name, created, changed)
		ms, bytes := topicRetention(t, seeds, st.topic)
		if ms != st.wantMs || bytes != st.wantBytes {
			t.Errorf("%s: retention.ms=%s retention.bytes=%s, want %s and %s", st.name, ms, bytes, st.wantMs, st.wantBytes)
		}
	}

	// Partitions as asked on creation.
	adm := newAdmin(t, seeds)
	td, err := adm.ListTopics(ctx, "dead")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(td["dead"].Partitions); n != 3 {
		t.Errorf("dead has %d partitions, want 3", n)
	}

	if _, _, err := EnsureTopic(ctx, broker, "dead", 1, 0, 0); err == nil {
		t.Error("retention 0: no error")
	}
}

func topicRetention(t *testing.T, seeds []string, topic string) (ms, bytes string) {
	t.Helper()
	rcs, err := newAdmin(t, seeds).DescribeTopicConfigs(t.Context(), topic)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := rcs.On(topic, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range rc.Configs {
		if c.Value == nil {
			continue
		}
		switch c.Key {
		case configRetentionMs:
			ms = *c.Value
		case configRetentionBytes:
			bytes = *c.Value
		}
	}
	return ms, bytes
}

func newAdmin(t testing.TB, seeds []string) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}
