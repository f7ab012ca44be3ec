package integration

// Acceptance test of the HTTP ingress's asynchronous invocations (issue 6,
// SPEC §2.3) against the real brokers: an event POSTed with
// Sluice-Invocation-Type: Event is in the Kafka topic or the JetStream
// stream of the function's async_queue when 202 is answered, and reaches the
// function through that async source, with the scope of a scoped call.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"go.yaml.in/yaml/v3"
)

// ingressCall is one invocation the function received.
type ingressCall struct {
	function, source, scope, contentType string
}

func TestIngressAsyncToKafkaAndJetStream(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		calls = map[string][]ingressCall{} // by body
	)
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls[string(b)] = append(calls[string(b)], ingressCall{
			r.Header.Get("Sluice-Function"), r.Header.Get("Sluice-Source"), r.Header.Get("Sluice-Scope"), r.Header.Get("Content-Type")})
		mu.Unlock()
	}))
	t.Cleanup(fn.Close)

	// The Kafka queue: a topic sluice consumes in async mode; sluice adds
	// retry topics, deleted at the end.
	topic := createTopic(t, 1)
	adm := kadm.NewClient(newKafkaClient(t))
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		tds, err := adm.ListTopics(ctx)
		if err != nil {
			t.Errorf("list topics: %v", err)
			return
		}
		var retry []string
		for _, name := range tds.Names() {
			if strings.HasPrefix(name, topic+".sluice-retry.") {
				retry = append(retry, name)
			}
		}
		if len(retry) > 0 {
			resps, err := adm.DeleteTopics(ctx, retry...)
			if err == nil {
				err = resps.Error()
			}
			if err != nil && !errors.Is(err, kerr.UnknownTopicOrPartition) {
				t.Errorf("delete retry topics %v: %v", retry, err)
			}
		}
	})
	// The JetStream queue: sluice creates its stream and retry-state bucket.
	_, js := newJetStream(t)
	natsSource := uniqueName(t, "ingress")
	stream := strings.ToUpper(unsafeName.ReplaceAllString(uniqueName(t, "IN"), "_"))
	prefix := strings.ToLower(stream)
	t.Cleanup(func() {
		ctx, cancel := cleanupCtx()
		defer cancel()
		for _, s := range []string{stream, "KV_sluice-async-" + natsSource} {
			if err := js.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", s, err)
			}
		}
	})
	kafkaSource := uniqueName(t, "ingress")
	async := func(m map[string]any) map[string]any {
		m["mode"] = "async"
		m["max_event_age"] = "1h"
		m["retry_backoff"] = map[string]any{"initial": "100ms", "max": "1s"}
		return m
	}
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers": map[string]any{
			"main": map[string]any{"kafka": map[string]any{"seeds": []string{kafkaAddr(t)}}},
			"bus":  map[string]any{"nats": map[string]any{"url": natsURL(t)}},
		},
		"functions": map[string]any{
			"fnk":   map[string]any{"url": fn.URL + "/invoke", "async_queue": kafkaSource},
			"fnn":   map[string]any{"url": fn.URL + "/invoke", "async_queue": natsSource},
			"plain": map[string]any{"url": fn.URL + "/invoke"},
		},
		"sources": map[string]any{
			// The scope of a scoped call travels as the record key on
			// Kafka and as the header the source reads on JetStream.
			kafkaSource: async(map[string]any{"broker": "main", "topic": topic, "function": "fnk", "scope": "key"}),
			natsSource: async(map[string]any{"broker": "bus", "stream": stream, "subject": prefix + ".>", "function": "fnn",
				"scope": "header:tenant"}),
		},
	}
	b, err := yaml.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(t.TempDir(), "sluice.yaml")
	if err := os.WriteFile(cfg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	p := startSluice(t, "sluice", cfg)

	post := func(path, body string) (int, map[string]string) {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, "http://"+p.admin+path, strings.NewReader(body))
		req.Header.Set("Sluice-Invocation-Type", "Event")
		req.Header.Set("Content-Type", "text/plain")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("POST %s: %v", path, err)
		}
		defer resp.Body.Close()
		var m map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&m)
		return resp.StatusCode, m
	}
	for _, c := range []struct{ path, body string }{
		{"/v1/scope/acme/functions/fnk/invocations", "kafka-scoped"},
		{"/v1/functions/fnk/invocations", "kafka-plain"},
		{"/v1/scope/acme/functions/fnn/invocations", "nats-scoped"},
	} {
		if code, m := post(c.path, c.body); code != http.StatusAccepted || m["id"] == "" {
			t.Fatalf("POST %s = %d %v, want 202 with an id", c.path, code, m)
		}
	}
	// Durable before 202: the events are in the broker at once.
	if end := endOffsets(t, topic); end[0] < 2 {
		t.Errorf("topic %s ends at %v right after two 202s, want 2 records", topic, end)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if st, err := js.Stream(ctx, stream); err != nil {
		t.Errorf("stream %s: %v", stream, err)
	} else if info, err := st.Info(ctx); err != nil || info.State.LastSeq < 1 {
		t.Errorf("stream %s: last sequence %v (%v) right after a 202, want 1", stream, info, err)
	}
	// A function without async_queue cannot take events.
	if code, m := post("/v1/functions/plain/invocations", "nope"); code != http.StatusBadRequest || !strings.Contains(m["message"], "async_queue") {
		t.Errorf("event for a function without async_queue = %d %v, want 400 naming async_queue", code, m)
	}

	want := map[string]ingressCall{
		"kafka-scoped": {"fnk", kafkaSource, "acme", "text/plain"},
		"kafka-plain":  {"fnk", kafkaSource, "", "text/plain"},
		"nats-scoped":  {"fnn", natsSource, "acme", "text/plain"},
	}
	eventually(t, 60*time.Second, "every event invoked", func() error {
		mu.Lock()
		defer mu.Unlock()
		for body := range want {
			if len(calls[body]) == 0 {
				return fmt.Errorf("%q not invoked yet", body)
			}
		}
		return nil
	})
	mu.Lock()
	for body, w := range want {
		if got := calls[body]; got[0] != w {
			t.Errorf("%q invoked as %+v, want %+v", body, got[0], w)
		}
	}
	if len(calls["nope"]) != 0 {
		t.Error("the refused event was invoked")
	}
	mu.Unlock()
	if code := p.stop(syscall.SIGTERM); code != 0 {
		t.Errorf("exit code %d after SIGTERM, want 0", code)
	}
}
