package dispatch

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

// sluice_queue_waiting counts invocations waiting for a slot, by function,
// and falls back to 0 when they were served.
func TestMetricsQueueWaiting(t *testing.T) {
	one := 1
	d, reg := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 200, MinUnreserved: 100},
		Functions: map[string]FunctionConfig{"fn": {ReservedConcurrency: &one}},
	})
	release := make(chan struct{})
	running := make(chan struct{}, 3) // one per invocation of the test
	d.Register("fn", HandlerFunc(func(ctx context.Context, _ *Request) (*Response, error) {
		running <- struct{}{}
		<-release
		return &Response{Status: 200}, nil
	}), time.Minute)

	done := make(chan error, 3) // one per invocation
	for range 3 {
		go func() {
			_, err := d.Invoke(context.Background(), &Request{Function: "fn"}, nil)
			done <- err
		}()
	}
	<-running
	want := func(waiting, running int) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sluice_queue_waiting Invocations waiting for a slot, by function.
# TYPE sluice_queue_waiting gauge
sluice_queue_waiting{function="fn"} `+itoa(waiting)+`
# HELP sluice_function_concurrent_executions Invocations running now, by function.
# TYPE sluice_function_concurrent_executions gauge
sluice_function_concurrent_executions{function="fn"} `+itoa(running)+`
`), "sluice_queue_waiting", "sluice_function_concurrent_executions")
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	want(2, 1)
	close(release)
	for range 3 {
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	want(0, 0)
}

func itoa(n int) string { return strconv.Itoa(n) }

// Every HTTP function built by New reports how long each invocation waited
// for a connection, in sluice_http_connection_wait_seconds{function}.
func TestMetricsConnectionWait(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	t.Cleanup(srv.Close)
	d, reg := newTestDispatcher(t, Config{
		Account:   AccountConfig{Concurrency: 200, MinUnreserved: 100},
		Functions: map[string]FunctionConfig{"fn": {URL: srv.URL}, "idle": {URL: srv.URL}},
	})
	for range 3 {
		if _, err := d.TryInvoke(context.Background(), &Request{Function: "fn"}); err != nil {
			t.Fatal(err)
		}
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]uint64{}
	for _, mf := range mfs {
		if mf.GetName() == "sluice_http_connection_wait_seconds" {
			for _, m := range mf.GetMetric() {
				got[m.GetLabel()[0].GetValue()] = m.GetHistogram().GetSampleCount()
			}
		}
	}
	// Every function has its series from the start (0 for idle), so that
	// an alert on it sees functions that never waited.
	if len(got) != 2 || got["fn"] != 3 || got["idle"] != 0 {
		t.Fatalf("sluice_http_connection_wait_seconds sample counts = %v, want fn:3 idle:0", got)
	}
}

// A New that fails after registering its metrics leaves the registry as it
// found it, so that the caller may retry with a fixed config.
func TestNewFailureUnregistersMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	bad := Config{
		Account:   AccountConfig{Concurrency: 200, MinUnreserved: 100},
		Functions: map[string]FunctionConfig{"fn": {URL: "ftp://nowhere"}},
	}
	if _, err := New(bad, WithRegisterer(reg)); err == nil {
		t.Fatal("New accepted an ftp URL")
	}
	bad.Functions["fn"] = FunctionConfig{URL: "http://127.0.0.1:1/"}
	d, err := New(bad, WithRegisterer(reg))
	if err != nil {
		t.Fatalf("New after a failed New on the same registry: %v", err)
	}
	d.Close()
}
