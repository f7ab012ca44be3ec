package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// ingressCall is one request the test function received.
type ingressCall struct {
	header http.Header
	body   []byte
}

// The HTTP ingress and the metrics end to end, through a real `sluice run`
// on its embedded NATS, behind admin tokens (no token 401, read 403, invoke
// allowed): with reserved concurrency 1 and a slow function, a
// second concurrent synchronous call is answered 429 with
// ReservedFunctionConcurrentInvocationLimitExceeded and Retry-After; a
// stream shard waiting for the same slot shows as throttled; /metrics shows
// the throttles, the concurrency and the shard state the test caused; an
// asynchronous call is answered 202 and reaches the function once the slot
// frees.
func TestRunIngressAndMetricsUnderThrottle(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	var (
		mu      sync.Mutex
		calls   []ingressCall
		started = make(chan struct{}, 16) // one per call; more than the test makes
		release = make(chan struct{})
	)
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		calls = append(calls, ingressCall{r.Header.Clone(), b})
		mu.Unlock()
		started <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = fmt.Fprintf(w, "handled %s", b)
	}))
	defer fn.Close()
	defer func() {
		select {
		case <-release:
		default:
			close(release) // a failed test must not leave the function's requests hanging
		}
	}()

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "read.token"), "read-secret\n")
	writeFile(t, filepath.Join(dir, "invoke.token"), "invoke-secret\n")
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin:
  listen: "127.0.0.1:0"
  tokens:
    - {role: read, file: %q}
    - {role: invoke, file: %q}
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  slow: {url: %q, reserved_concurrency: 1, async_queue: jobs}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: slow, batch_size: 1}
  jobs: {stream: JOBS, subject: "jobs.>", mode: async, function: slow}
`, filepath.Join(dir, "read.token"), filepath.Join(dir, "invoke.token"), filepath.Join(dir, "state"), fn.URL+"/invoke"))
	natsURL, admin := startWithEmbedded(t, cfg)
	base := "http://" + admin
	// invoke POSTs body to the ingress path with the invoke token.
	invoke := func(path, body string, header map[string]string) (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "text/plain")
		req.Header.Set("Authorization", "Bearer invoke-secret")
		for k, v := range header {
			req.Header.Set(k, v)
		}
		return http.DefaultClient.Do(req)
	}

	// 0. The ingress is behind the admin API's tokens: none is 401, a read
	// token 403 (SPEC §6: invoke may call the ingress, read may only GET).
	for token, want := range map[string]int{"": http.StatusUnauthorized, "wrong": http.StatusUnauthorized, "read-secret": http.StatusForbidden} {
		req, _ := http.NewRequest(http.MethodPost, base+"/v1/functions/slow/invocations", strings.NewReader("x"))
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Fatalf("POST with token %q = %d, want %d", token, resp.StatusCode, want)
		}
	}

	// 1. A synchronous call takes the function's only slot and hangs.
	first := make(chan *http.Response, 1)
	go func() {
		resp, err := invoke("/v1/functions/slow/invocations", "sync-1", nil)
		if err != nil {
			t.Errorf("first call: %v", err)
			close(first)
			return
		}
		first <- resp
	}()
	waitSignal(t, started, "the first synchronous call to reach the function")

	// 2. A second one is throttled at once.
	resp, err := invoke("/v1/functions/slow/invocations", "sync-2", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	var throttled struct{ Message, ThrottleReason string }
	if err := json.Unmarshal(body, &throttled); err != nil || resp.StatusCode != http.StatusTooManyRequests ||
		throttled.ThrottleReason != "ReservedFunctionConcurrentInvocationLimitExceeded" || throttled.Message == "" {
		t.Fatalf("second call = %d %s, want 429 with throttleReason ReservedFunctionConcurrentInvocationLimitExceeded", resp.StatusCode, body)
	}
	if ra, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || ra < 1 {
		t.Fatalf("Retry-After = %q, want a number of seconds", resp.Header.Get("Retry-After"))
	}

	// 3. A stream record for the same function waits for the slot: its
	// shard is throttled.
	nc, err := natsgo.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish("clicks.k1", []byte("click-1")); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// 4. /metrics shows what the test caused.
	reserved := map[string]string{"function": "slow", "reason": "ReservedFunctionConcurrentInvocationLimitExceeded"}
	metrics := pollScrape(t, base, func(m string) bool {
		v, _ := sampleValue(m, "sluice_shards", map[string]string{"source": "clicks", "state": "throttled"})
		return v == 1
	})
	for _, c := range []struct {
		name   string
		labels map[string]string
		min    float64
		max    float64
	}{
		{"sluice_shards", map[string]string{"source": "clicks", "state": "throttled"}, 1, 1},
		{"sluice_shards", map[string]string{"source": "clicks", "state": "running"}, 0, 0},
		// One for the 429, at least one for the shard's wait.
		{"sluice_throttles_total", reserved, 2, 1e9},
		{"sluice_function_concurrent_executions", map[string]string{"function": "slow"}, 1, 1},
		{"sluice_account_concurrent_executions", nil, 1, 1},
		{"sluice_unreserved_concurrent_executions", nil, 0, 0},
		{"sluice_queue_waiting", map[string]string{"function": "slow"}, 1, 1},
	} {
		v, ok := sampleValue(metrics, c.name, c.labels)
		if !ok || v < c.min || v > c.max {
			t.Errorf("%s%v = %v (found %v), want %v..%v", c.name, c.labels, v, ok, c.min, c.max)
		}
	}

	// 5. An asynchronous call is durably queued and answered 202 at once,
	// although the function is still busy.
	resp, err = invoke("/v1/functions/slow/invocations", "async-1", map[string]string{"Sluice-Invocation-Type": "Event"})
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	var accepted struct{ ID string }
	if err := json.Unmarshal(body, &accepted); err != nil || resp.StatusCode != http.StatusAccepted || accepted.ID == "" ||
		resp.Header.Get("Sluice-Invocation-Id") != accepted.ID {
		t.Fatalf("async call = %d %s (id header %q), want 202 with an id", resp.StatusCode, body, resp.Header.Get("Sluice-Invocation-Id"))
	}

	// 6. The slot frees: the first call is answered with the function's
	// answer, and the stream record and the async event reach the function.
	close(release)
	r1, ok := <-first
	if !ok {
		t.FailNow()
	}
	b1, _ := io.ReadAll(r1.Body)
	r1.Body.Close()
	if r1.StatusCode != 200 || string(b1) != "handled sync-1" || r1.Header.Get("Content-Type") != "text/plain" {
		t.Fatalf("first call = %d %q %q, want 200 text/plain \"handled sync-1\"", r1.StatusCode, r1.Header.Get("Content-Type"), b1)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		mu.Lock()
		var gotClick, gotAsync bool
		for _, c := range calls {
			if bytes.Contains(c.body, []byte(`"sluice:nats"`)) && c.header.Get("Sluice-Source") == "clicks" {
				gotClick = true
			}
			if string(c.body) == "async-1" {
				gotAsync = true
				if c.header.Get("Sluice-Source") != "jobs" || c.header.Get("Content-Type") != "text/plain" {
					t.Errorf("async event reached the function with headers %v", c.header)
				}
			}
		}
		n := len(calls)
		mu.Unlock()
		if gotClick && gotAsync {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("within 30s of the release: stream record delivered %v, async event delivered %v (%d calls)", gotClick, gotAsync, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	metrics = pollScrape(t, base, func(m string) bool {
		v, _ := sampleValue(m, "sluice_shards", map[string]string{"source": "clicks", "state": "throttled"})
		w, _ := sampleValue(m, "sluice_queue_waiting", map[string]string{"function": "slow"})
		return v == 0 && w == 0
	})
	if v, _ := sampleValue(metrics, "sluice_invocations_total", map[string]string{"function": "slow", "outcome": "success"}); v < 3 {
		t.Errorf("sluice_invocations_total{slow,success} = %v, want at least 3", v)
	}
	if v, ok := sampleValue(metrics, "sluice_async_events_received_total", map[string]string{"source": "jobs"}); !ok || v < 1 {
		t.Errorf("sluice_async_events_received_total{jobs} = %v (%v), want at least 1", v, ok)
	}
}

// startWithEmbedded runs `sluice run -c cfg` and returns the embedded
// nats-server's URL and the admin address it logged.
func startWithEmbedded(t *testing.T, cfg string) (natsURL, admin string) {
	t.Helper()
	cmd := exec.Command(buildSluice(t), "run", "-c", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	urls := make(chan string, 1)    // the one embedded server's URL
	running := make(chan string, 1) // the admin address, once
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct{ Msg, URL, Admin string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "embedded nats-server started":
				urls <- line.URL
			case "sluice running":
				running <- line.Admin
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	timeout := time.After(30 * time.Second)
	select {
	case natsURL = <-urls:
	case <-timeout:
		t.Fatal("no embedded nats-server within 30s")
	}
	select {
	case admin = <-running:
	case <-timeout:
		t.Fatal("sluice did not log \"sluice running\" within 30s")
	}
	return natsURL, admin
}

func waitSignal(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(30 * time.Second):
		t.Fatalf("timed out after 30s waiting for %s", what)
	}
}

// pollScrape scrapes base/metrics until ok accepts the text (30s at most)
// and returns it.
func pollScrape(t *testing.T, base string, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, m := get(t, base+"/metrics")
		if code == 200 && ok(m) {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics did not reach the expected state within 30s:\n%s", sluiceSeries(m))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// sluiceSeries keeps sluice's own lines of a scrape, for failure messages.
func sluiceSeries(m string) string {
	var out []string
	for line := range strings.SplitSeq(m, "\n") {
		if strings.HasPrefix(line, "sluice_") && !strings.Contains(line, "_bucket{") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

var promLabelPair = regexp.MustCompile(`(\w+)="((?:[^"\\]|\\.)*)"`)

// sampleValue finds the sample of name whose labels include want in a text
// exposition and returns its value.
func sampleValue(text, name string, want map[string]string) (float64, bool) {
	for line := range strings.SplitSeq(text, "\n") {
		rest, ok := strings.CutPrefix(line, name)
		if !ok || (rest != "" && rest[0] != '{' && rest[0] != ' ') {
			continue
		}
		labels := map[string]string{}
		if strings.HasPrefix(rest, "{") {
			end := strings.LastIndexByte(rest, '}')
			if end < 0 {
				continue
			}
			for _, m := range promLabelPair.FindAllStringSubmatch(rest[1:end], -1) {
				labels[m[1]] = m[2]
			}
			rest = rest[end+1:]
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
				break
			}
		}
		if !match {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(rest), 64)
		if err != nil {
			continue
		}
		return v, true
	}
	return 0, false
}
