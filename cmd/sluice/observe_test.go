package main

import (
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/sluicehq/sluice/admin"
)

// otlpReceiver is an in-process OTLP/HTTP trace receiver: it decodes the
// protobuf export requests POSTed to /v1/traces and keeps their spans.
type otlpReceiver struct {
	srv *httptest.Server

	mu       sync.Mutex
	spans    []*tracepb.Span
	services []string
}

func newOTLPReceiver(t *testing.T) *otlpReceiver {
	t.Helper()
	r := &otlpReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != "/v1/traces" || req.Header.Get("Content-Type") != "application/x-protobuf" {
			http.Error(w, "want a protobuf POST to /v1/traces", http.StatusBadRequest)
			return
		}
		b, err := io.ReadAll(req.Body)
		var export coltracepb.ExportTraceServiceRequest
		if err == nil {
			err = proto.Unmarshal(b, &export)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		for _, rs := range export.GetResourceSpans() {
			for _, a := range rs.GetResource().GetAttributes() {
				if a.GetKey() == "service.name" {
					r.services = append(r.services, a.GetValue().GetStringValue())
				}
			}
			for _, ss := range rs.GetScopeSpans() {
				r.spans = append(r.spans, ss.GetSpans()...)
			}
		}
		r.mu.Unlock()
		out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
		w.Header().Set("Content-Type", "application/x-protobuf")
		_, _ = w.Write(out)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *otlpReceiver) received() ([]*tracepb.Span, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*tracepb.Span(nil), r.spans...), append([]string(nil), r.services...)
}

func spanAttr(s *tracepb.Span, key string) string {
	for _, a := range s.GetAttributes() {
		if a.GetKey() == key {
			v := a.GetValue()
			if v.GetStringValue() != "" {
				return v.GetStringValue()
			}
			return fmt.Sprint(v.GetIntValue())
		}
	}
	return ""
}

// Through a real `sluice run` with tracing.otlp_endpoint set: a record
// carrying a traceparent is invoked in a span that continues its trace,
// exported over OTLP/HTTP with the invocation's attributes, and the
// function hears that span as its parent. The same process shows the
// metrics that must exist before any traffic: sluice_build_info, the
// dead-letter and invocation counters at zero, and the per-partition lag.
func TestTracingAndMetricsOfRunningSluice(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	// Export every 100ms rather than the SDK's 5s, so the test is quick.
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
	rcv := newOTLPReceiver(t)
	heard := make(chan http.Header, 4)
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		select {
		case heard <- r.Header.Clone():
		default:
		}
	}))
	t.Cleanup(fn.Close)
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
metrics: {per_partition: true}
tracing: {otlp_endpoint: %q, service_name: sluice-test}
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 2, function: fn, batch_size: 1, on_failure: dead}
  jobs: {stream: JOBS, subject: "jobs.>", mode: async, function: fn, on_failure: dead}
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>"}
`, filepath.Join(dir, "state"), rcv.srv.URL, fn.URL))
	p := runSluice(t, cfg)

	// Before any traffic.
	m := pollScrape(t, p.admin, func(m string) bool { return strings.Contains(m, "sluice_partition_offset_lag{") })
	for _, want := range []struct {
		name   string
		labels map[string]string
	}{
		{"sluice_build_info", map[string]string{}},
		{"sluice_ready", map[string]string{}},
		{"sluice_invocations_total", map[string]string{"function": "fn", "outcome": "error"}},
		{"sluice_invocations_total", map[string]string{"function": "fn", "outcome": "success"}},
		{"sluice_dead_letters_total", map[string]string{"source": "clicks", "condition": "RecordAgeExceeded"}},
		{"sluice_dead_letters_total", map[string]string{"source": "clicks", "condition": "RetryAttemptsExhausted"}},
		{"sluice_dead_letters_total", map[string]string{"source": "jobs", "condition": "EventAgeExceeded"}},
		{"sluice_partition_offset_lag", map[string]string{"source": "clicks", "partition": "0"}},
		{"sluice_partition_offset_lag", map[string]string{"source": "clicks", "partition": "1"}},
		{"sluice_partition_iterator_age_seconds", map[string]string{"source": "clicks", "partition": "1"}},
	} {
		v, ok := sampleValue(m, want.name, want.labels)
		wantV := 0.0
		if want.name == "sluice_build_info" || want.name == "sluice_ready" {
			wantV = 1
		}
		if !ok || v != wantV {
			t.Errorf("%s%v = %v (present %v), want %v before any traffic\n%s", want.name, want.labels, v, ok, wantV, sluiceSeries(m))
		}
	}
	if !strings.Contains(m, `sluice_build_info{goversion="go`) {
		t.Errorf("sluice_build_info has no goversion label:\n%s", sluiceSeries(m))
	}
	var counts admin.DeadLetterCountsView
	p.must(http.MethodGet, "/v1/dead-letter-counts", "", "", http.StatusOK, &counts)
	if len(counts.DeadLetters) != 10 { // clicks: 5 conditions, jobs: 5
		t.Errorf("GET /v1/dead-letter-counts: %+v, want 10 zero counts", counts.DeadLetters)
	}

	// A record with a traceparent.
	const traceID, parentID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	nc, err := natsgo.Connect(p.nats)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	msg := natsgo.NewMsg("clicks.k1")
	msg.Header.Set("traceparent", "00-"+traceID+"-"+parentID+"-01")
	msg.Header.Set("tracestate", "vendor=abc")
	msg.Data = []byte("hello")
	if err := nc.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	var h http.Header
	select {
	case h = <-heard:
	case <-time.After(30 * time.Second):
		t.Fatal("the function was not invoked within 30s")
	}
	var span *tracepb.Span
	waitUntil(t, 30*time.Second, "the invocation's span exported", func() error {
		spans, _ := rcv.received()
		for _, s := range spans {
			if hex.EncodeToString(s.GetTraceId()) == traceID {
				span = s
				return nil
			}
		}
		return fmt.Errorf("%d spans, none in trace %s", len(spans), traceID)
	})
	if got := hex.EncodeToString(span.GetParentSpanId()); got != parentID {
		t.Errorf("span parent %s, want the record's span %s", got, parentID)
	}
	if span.GetName() != "invoke fn" || span.GetKind() != tracepb.Span_SPAN_KIND_CLIENT {
		t.Errorf("span %q kind %v, want \"invoke fn\", client", span.GetName(), span.GetKind())
	}
	for k, want := range map[string]string{"sluice.function": "fn", "sluice.source": "clicks", "sluice.batch_size": "1", "sluice.outcome": "success"} {
		if got := spanAttr(span, k); got != want {
			t.Errorf("span attribute %s = %q, want %q", k, got, want)
		}
	}
	if sh := spanAttr(span, "sluice.shard"); !strings.HasPrefix(sh, "clicks/") {
		t.Errorf("span attribute sluice.shard = %q, want clicks/<partition>", sh)
	}
	wantTP := "00-" + traceID + "-" + hex.EncodeToString(span.GetSpanId()) + "-01"
	if got := h.Get("Traceparent"); got != wantTP {
		t.Errorf("the function heard traceparent %q, want the span's %q", got, wantTP)
	}
	if got := h.Get("Tracestate"); got != "vendor=abc" {
		t.Errorf("the function heard tracestate %q, want the record's", got)
	}
	if _, services := rcv.received(); len(services) == 0 || services[0] != "sluice-test" {
		t.Errorf("service names %v, want sluice-test", services)
	}
	p.stop()
}

// `sluice healthcheck` exits 0 when /readyz answers 200 and 1 otherwise,
// with the answer on stderr.
func TestHealthcheck(t *testing.T) {
	ready := true
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/readyz" || !ready {
			http.Error(w, "not ready: brokers.main: connection refused", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ready\n"))
	}))
	t.Cleanup(srv.Close)
	if code, out, stderr := sluice(t, "healthcheck", "--url", srv.URL+"/readyz"); code != exitOK || out != "ready\n" {
		t.Errorf("ready: exit %d, stdout %q, stderr %q; want 0 and ready", code, out, stderr)
	}
	mu.Lock()
	ready = false
	mu.Unlock()
	if code, _, stderr := sluice(t, "healthcheck", "--url", srv.URL+"/readyz"); code != exitFailure || !strings.Contains(stderr, "503") || !strings.Contains(stderr, "connection refused") {
		t.Errorf("not ready: exit %d, stderr %q; want 1 naming the 503 and the reason", code, stderr)
	}
	srv.Close()
	if code, _, stderr := sluice(t, "healthcheck", "--url", srv.URL+"/readyz", "--timeout", "2s"); code != exitFailure {
		t.Errorf("nothing listening: exit %d, stderr %q; want 1", code, stderr)
	}
}
