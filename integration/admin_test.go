package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The admin API against the real Kafka broker: /readyz pings it (ready),
// and a scope rule set through the API holds a Kafka stream source's
// batches of that scope to one at a time; raised, it lets several run at
// once — without a restart.
func TestAdminKafkaReadyAndLiveRule(t *testing.T) {
	t.Parallel()
	topic := createTopic(t, 4)
	fn := newFnServer(t, func(*fnBatch) fnAnswer { return fnAnswer{Sleep: 100 * time.Millisecond} })
	cfg := writeConfig(t, runConfig{
		Source: uniqueName(t, "adm"), Topic: topic, FunctionURL: fn.srv.URL,
		Settings: map[string]any{"batch_size": 1, "scope": "literal:acme"},
	})
	p := startSluice(t, "sluice", cfg)

	call := func(method, path, body string) (int, string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, method, "http://"+p.admin+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json") // the admin API refuses a body of another type
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually(t, 30*time.Second, "/readyz with the real Kafka broker", func() error {
		if code, body := call(http.MethodGet, "/readyz", ""); code != http.StatusOK {
			return fmt.Errorf("%d %s", code, body)
		}
		return nil
	})

	if code, body := call(http.MethodPut, "/v1/rules/acme", `{"concurrency": 1}`); code != http.StatusOK {
		t.Fatalf("PUT rule: %d %s", code, body)
	}
	produce(t, topic, 4, 24, produceOpts{})
	// The function sees at most one batch at a time: the 4 partitions'
	// batches all carry scope acme.
	waitDelivered(t, fn, 24, 60*time.Second)
	if most := overlap(fn.snapshot(), 100*time.Millisecond); most > 1 {
		t.Errorf("%d batches of scope acme overlapped under a rule of concurrency 1", most)
	}
	// Raised through the API, the rule lets the partitions run side by side.
	if code, body := call(http.MethodPut, "/v1/rules/acme", `{"concurrency": 4}`); code != http.StatusOK {
		t.Fatalf("PUT rule: %d %s", code, body)
	}
	seen := len(fn.snapshot())
	produce(t, topic, 4, 40, produceOpts{First: 24})
	waitDelivered(t, fn, 64, 60*time.Second)
	if most := overlap(fn.snapshot()[seen:], 100*time.Millisecond); most < 2 {
		t.Errorf("at most %d batch at once after raising the rule to 4 (4 partitions)", most)
	}
	var limits struct {
		Scopes []struct {
			Scope string `json:"scope"`
			Limit int    `json:"limit"`
			Rule  string `json:"rule"`
		} `json:"scopes"`
	}
	_, body := call(http.MethodGet, "/v1/limits", "")
	if err := json.Unmarshal([]byte(body), &limits); err != nil || len(limits.Scopes) != 1 || limits.Scopes[0].Limit != 4 || limits.Scopes[0].Rule != "acme" {
		t.Fatalf("/v1/limits %s (%v)", body, err)
	}
}

// overlap returns how many batches were in the function at once at most,
// from their arrival times and the time each took (sleep).
func overlap(batches []*fnBatch, sleep time.Duration) int {
	most := 0
	for _, b := range batches {
		n := 0
		for _, o := range batches {
			// o runs during [o.At, o.At+sleep); count those running when b arrives.
			if !o.At.After(b.At) && o.At.Add(sleep).After(b.At) {
				n++
			}
		}
		most = max(most, n)
	}
	return most
}
