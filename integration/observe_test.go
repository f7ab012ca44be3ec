package integration

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"testing"
	"time"
)

// Against the real Kafka broker, with metrics.per_partition: each owned
// partition has its own lag and iterator age series, /v1/shards shows the
// same lag, and the dead-letter counters of the source exist at zero before
// any dead letter.
func TestKafkaPerPartitionMetrics(t *testing.T) {
	t.Parallel()
	topic := createTopic(t, 2)
	fn := newFnServer(t, func(*fnBatch) fnAnswer { return fnAnswer{Sleep: 300 * time.Millisecond} })
	source := uniqueName(t, "obs")
	cfg := writeConfig(t, runConfig{
		Source: source, Topic: topic, FunctionURL: fn.srv.URL, DeadLetters: createTopic(t, 1),
		Settings: map[string]any{"batch_size": 1},
	})
	f, err := os.OpenFile(cfg, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.WriteString("metrics: {per_partition: true}\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		t.Fatal(err)
	}
	p := startSluice(t, "sluice", cfg)

	if n, err := p.metric("sluice_dead_letters_total", map[string]string{"source": source, "condition": "RecordTooLarge"}); err != nil || n != 0 {
		t.Errorf("sluice_dead_letters_total{RecordTooLarge} before any dead letter = %v (%v), want a series at 0", n, err)
	}
	// 20 records on partition 0... and 1, at 300ms each: a backlog.
	produce(t, topic, 2, 40, produceOpts{})
	eventually(t, 60*time.Second, "per-partition lag of both partitions, and /v1/shards showing it", func() error {
		for _, part := range []string{"0", "1"} {
			lag, err := p.metric("sluice_partition_offset_lag", map[string]string{"source": source, "partition": part})
			if err != nil {
				return err
			}
			if lag < 1 {
				return fmt.Errorf("partition %s: lag %v", part, lag)
			}
			if _, err := p.metric("sluice_partition_iterator_age_seconds", map[string]string{"source": source, "partition": part}); err != nil {
				return err
			}
		}
		resp, err := http.Get("http://" + p.admin + "/v1/shards")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var v struct {
			Shards []struct {
				Source string `json:"source"`
				Lag    int64  `json:"lag"`
			} `json:"shards"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		if len(v.Shards) != 2 || v.Shards[0].Lag < 1 || v.Shards[1].Lag < 1 {
			return fmt.Errorf("/v1/shards %s", b)
		}
		return nil
	})
	waitDelivered(t, fn, 40, 90*time.Second)
}
