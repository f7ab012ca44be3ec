package ingress_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/ingress"
)

func ptr[T any](v T) *T { return &v }

// newServer serves an ingress over a dispatcher for cfg; handlers are
// registered in-process (functions without a URL).
func newServer(t *testing.T, cfg dispatch.Config, handlers map[string]dispatch.Handler, opts ...ingress.Option) (*httptest.Server, *prometheus.Registry) {
	t.Helper()
	if cfg.Account.Concurrency == 0 {
		cfg.Account = dispatch.AccountConfig{Concurrency: 200, MinUnreserved: 100}
	}
	reg := prometheus.NewRegistry()
	d, err := dispatch.New(cfg, dispatch.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(d.Close)
	for name, h := range handlers {
		d.Register(name, h, 5*time.Second)
	}
	mux := http.NewServeMux()
	ingress.New(d, opts...).Register(mux)
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv, reg
}

type answer struct {
	status int
	header http.Header
	body   []byte
}

func (a answer) json(t *testing.T) map[string]any {
	t.Helper()
	if ct := a.header.Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type = %q, want application/json (body %s)", ct, a.body)
	}
	var m map[string]any
	if err := json.Unmarshal(a.body, &m); err != nil {
		t.Fatalf("body %q is not JSON: %v", a.body, err)
	}
	return m
}

func post(t *testing.T, url string, body []byte, header map[string]string) answer {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return answer{resp.StatusCode, resp.Header, b}
}

// gate is an in-process function that blocks every call until released,
// and reports each call's request as it starts.
type gate struct {
	started chan *dispatch.Request // capacity: enough for every call of a test
	release chan struct{}
}

func newGate() *gate {
	return &gate{started: make(chan *dispatch.Request, 16), release: make(chan struct{})}
}

func (g *gate) Invoke(ctx context.Context, req *dispatch.Request) (*dispatch.Response, error) {
	g.started <- req
	select {
	case <-g.release:
		return &dispatch.Response{Status: 200, Header: http.Header{"Content-Type": {"text/plain"}}, Body: []byte("done " + req.Scope)}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (g *gate) waitStarted(t *testing.T) *dispatch.Request {
	t.Helper()
	select {
	case r := <-g.started:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("the function was not called within 10s")
		return nil
	}
}

// The function's answer comes back as it is: status, body, Content-Type; the
// request reaches it with the caller's body, content type and the scope.
func TestSyncReturnsTheFunctionsAnswer(t *testing.T) {
	t.Parallel()
	var got struct {
		sync.Mutex
		header http.Header
		body   []byte
	}
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got.Lock()
		got.header, got.body = r.Header.Clone(), b
		got.Unlock()
		w.Header().Set("Content-Type", "text/csv")
		w.WriteHeader(201)
		_, _ = w.Write([]byte("a,b\n1,2\n"))
	}))
	t.Cleanup(fn.Close)
	srv, _ := newServer(t, dispatch.Config{Functions: map[string]dispatch.FunctionConfig{"csv": {URL: fn.URL}}}, nil)

	a := post(t, srv.URL+"/v1/scope/acme/functions/csv/invocations", []byte(`{"x":1}`),
		map[string]string{"Content-Type": "application/vnd.x+json", "Idempotency-Key": "k-1", "Authorization": "Bearer secret"})
	if a.status != 201 || string(a.body) != "a,b\n1,2\n" || a.header.Get("Content-Type") != "text/csv" {
		t.Fatalf("answer = %d %q %q, want 201 text/csv a,b...", a.status, a.header.Get("Content-Type"), a.body)
	}
	if a.header.Get(ingress.HeaderInvocationID) == "" {
		t.Error("no Sluice-Invocation-Id in the answer")
	}
	got.Lock()
	defer got.Unlock()
	if string(got.body) != `{"x":1}` {
		t.Errorf("function got body %q", got.body)
	}
	for k, want := range map[string]string{
		"Content-Type": "application/vnd.x+json", "Sluice-Scope": "acme", "Idempotency-Key": "k-1",
		"Sluice-Function": "csv", "Sluice-Attempt": "1", "Sluice-Invocation-Id": a.header.Get(ingress.HeaderInvocationID),
		"Authorization": "", // the caller's credentials never reach the function
	} {
		if v := got.header.Get(k); v != want {
			t.Errorf("function got %s = %q, want %q", k, v, want)
		}
	}
}

// The acceptance case: reserved concurrency 1, a slow function, a second
// concurrent call is throttled at once with Lambda's reason and Retry-After.
func TestSyncFailsFastWhenReservedConcurrencyIsFull(t *testing.T) {
	t.Parallel()
	g := newGate()
	cfg := dispatch.Config{Functions: map[string]dispatch.FunctionConfig{"slow": {ReservedConcurrency: ptr(1)}}}
	srv, reg := newServer(t, cfg, map[string]dispatch.Handler{"slow": g})

	first := make(chan answer, 1)
	go func() { first <- post(t, srv.URL+"/v1/functions/slow/invocations", []byte("1"), nil) }()
	g.waitStarted(t)

	a := post(t, srv.URL+"/v1/functions/slow/invocations", []byte("2"), nil)
	if a.status != http.StatusTooManyRequests {
		t.Fatalf("second call = %d %s, want 429", a.status, a.body)
	}
	if ra := a.header.Get("Retry-After"); ra != "1" {
		t.Errorf("Retry-After = %q, want 1", ra)
	}
	m := a.json(t)
	if m["throttleReason"] != "ReservedFunctionConcurrentInvocationLimitExceeded" || !strings.Contains(m["message"].(string), "reserved concurrency") {
		t.Errorf("body = %s", a.body)
	}
	if n := throttles(t, reg, "slow", dispatch.ReasonReserved); n != 1 {
		t.Errorf("sluice_throttles_total = %v, want 1", n)
	}

	close(g.release)
	if a := <-first; a.status != 200 || string(a.body) != "done " {
		t.Fatalf("first call = %d %q", a.status, a.body)
	}
	// The slot is free again.
	if a := post(t, srv.URL+"/v1/functions/slow/invocations", nil, nil); a.status != 200 {
		t.Fatalf("third call = %d %s", a.status, a.body)
	}
}

// throttles reads sluice_throttles_total{function=fn,reason=r} from reg.
func throttles(t *testing.T, reg *prometheus.Registry, fn string, r dispatch.Reason) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sluice_throttles_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["function"] == fn && labels["reason"] == string(r) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// The scoped route takes a slot of the scope's rule: a full scope is
// throttled with ScopeConcurrencyLimitExceeded while another scope runs.
func TestScopedInvocationsUseTheScopesRule(t *testing.T) {
	t.Parallel()
	g := newGate()
	cfg := dispatch.Config{
		Functions: map[string]dispatch.FunctionConfig{"fn": {}},
		Rules:     []dispatch.Rule{{Pattern: "*", Concurrency: 1}},
	}
	srv, _ := newServer(t, cfg, map[string]dispatch.Handler{"fn": g})

	first := make(chan answer, 2)
	go func() { first <- post(t, srv.URL+"/v1/scope/acme/functions/fn/invocations", nil, nil) }()
	if r := g.waitStarted(t); r.Scope != "acme" {
		t.Fatalf("scope = %q, want acme", r.Scope)
	}
	a := post(t, srv.URL+"/v1/scope/acme/functions/fn/invocations", nil, nil)
	if a.status != 429 || a.json(t)["throttleReason"] != "ScopeConcurrencyLimitExceeded" || !strings.Contains(string(a.body), "scope acme") {
		t.Fatalf("second acme call = %d %s", a.status, a.body)
	}
	// "*" gives each scope its own budget: another scope is not throttled.
	go func() { first <- post(t, srv.URL+"/v1/scope/globex/functions/fn/invocations", nil, nil) }()
	if r := g.waitStarted(t); r.Scope != "globex" {
		t.Fatalf("scope = %q, want globex", r.Scope)
	}
	close(g.release)
	for range 2 {
		if a := <-first; a.status != 200 {
			t.Fatalf("call = %d %s", a.status, a.body)
		}
	}
}

func TestSyncErrors(t *testing.T) {
	t.Parallel()
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/busy":
			w.Header().Set("Retry-After", "7")
			w.WriteHeader(503)
		case "/crash":
			http.Error(w, "stack trace here", 500)
		case "/bad":
			http.Error(w, "field x is required", http.StatusUnprocessableEntity)
		case "/slow":
			time.Sleep(300 * time.Millisecond)
		}
	}))
	t.Cleanup(fn.Close)
	cfg := dispatch.Config{Functions: map[string]dispatch.FunctionConfig{
		"busy":  {URL: fn.URL + "/busy"},
		"crash": {URL: fn.URL + "/crash"},
		"bad":   {URL: fn.URL + "/bad"},
		"slow":  {URL: fn.URL + "/slow", Timeout: 50 * time.Millisecond},
		"off":   {URL: fn.URL, ReservedConcurrency: ptr(0)},
		"small": {URL: fn.URL},
	}}
	srv, _ := newServer(t, cfg, nil, ingress.WithMaxBodyBytes(1024))
	cases := []struct {
		name, path string
		body       []byte
		header     map[string]string
		status     int
		want       map[string]any // fields of the JSON body
		wantHeader map[string]string
	}{
		{"function throttled", "/v1/functions/busy/invocations", nil, nil, 429,
			map[string]any{"throttleReason": "FunctionThrottled"}, map[string]string{"Retry-After": "7"}},
		{"reservation 0", "/v1/functions/off/invocations", nil, nil, 429,
			map[string]any{"throttleReason": "ReservedFunctionConcurrentInvocationLimitExceeded"}, map[string]string{"Retry-After": "1"}},
		{"function error", "/v1/functions/crash/invocations", nil, nil, 502,
			map[string]any{"errorType": "FunctionError", "functionStatus": 500.0, "message": "stack trace here"},
			map[string]string{ingress.HeaderFunctionError: "Handled"}},
		{"permanent error keeps the status", "/v1/functions/bad/invocations", nil, nil, 422,
			map[string]any{"errorType": "FunctionError", "message": "field x is required"},
			map[string]string{ingress.HeaderFunctionError: "Handled"}},
		{"timeout", "/v1/functions/slow/invocations", nil, nil, 504,
			map[string]any{"errorType": "FunctionError"}, map[string]string{ingress.HeaderFunctionError: "Unhandled"}},
		{"unknown function", "/v1/functions/nope/invocations", nil, nil, 404,
			map[string]any{"errorType": "ResourceNotFoundException", "message": `function "nope" not found`}, nil},
		{"unknown scoped function", "/v1/scope/acme/functions/nope/invocations", nil, nil, 404,
			map[string]any{"errorType": "ResourceNotFoundException"}, nil},
		{"body too large", "/v1/functions/small/invocations", make([]byte, 1025), nil, 413,
			map[string]any{"errorType": "RequestTooLargeException", "message": "request body larger than 1024 bytes"}, nil},
		{"scope too long", "/v1/scope/" + strings.Repeat("s", ingress.MaxScopeBytes+1) + "/functions/small/invocations", nil, nil, 400,
			map[string]any{"errorType": "InvalidParameterValueException"}, nil},
		{"scope with a control character", "/v1/scope/a%0Ab/functions/small/invocations", nil, nil, 400,
			map[string]any{"errorType": "InvalidParameterValueException"}, nil},
		{"scope of invalid UTF-8", "/v1/scope/tenant%FF/functions/small/invocations", nil, nil, 400,
			map[string]any{"errorType": "InvalidParameterValueException"}, nil},
		{"bad invocation type", "/v1/functions/small/invocations", nil, map[string]string{ingress.HeaderInvocationType: "DryRun"}, 400,
			map[string]any{"errorType": "InvalidParameterValueException"}, nil},
		{"async not enabled", "/v1/functions/small/invocations", nil, map[string]string{ingress.HeaderInvocationType: "Event"}, 501,
			map[string]any{"errorType": "UnsupportedInvocationType"}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			a := post(t, srv.URL+c.path, c.body, c.header)
			if a.status != c.status {
				t.Fatalf("status = %d (%s), want %d", a.status, a.body, c.status)
			}
			m := a.json(t)
			for k, v := range c.want {
				if m[k] != v {
					t.Errorf("%s = %#v, want %#v (body %s)", k, m[k], v, a.body)
				}
			}
			if _, ok := m["message"].(string); !ok {
				t.Errorf("no message in %s", a.body)
			}
			for k, v := range c.wantHeader {
				if got := a.header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// fakeQueue is an Enqueuer in memory.
type fakeQueue struct {
	mu     sync.Mutex
	err    error
	events []queued
}

type queued struct {
	function, scope string
	body            []byte
	header          http.Header
}

func (q *fakeQueue) Enqueue(_ context.Context, fn, scope string, body []byte, h http.Header) (string, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return "", q.err
	}
	q.events = append(q.events, queued{fn, scope, body, h})
	return fmt.Sprintf("ev-%d", len(q.events)), nil
}

func TestAsyncAppendsAndAnswers202(t *testing.T) {
	t.Parallel()
	q := &fakeQueue{}
	srv, _ := newServer(t, dispatch.Config{Functions: map[string]dispatch.FunctionConfig{"fn": {}}}, nil,
		ingress.WithEnqueuer(q), ingress.WithMaxEventBytes(100))
	ev := map[string]string{ingress.HeaderInvocationType: "Event", "Content-Type": "text/plain",
		"Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Authorization": "Bearer x"}

	a := post(t, srv.URL+"/v1/scope/acme/functions/fn/invocations", []byte("hello"), ev)
	if a.status != 202 || a.json(t)["id"] != "ev-1" || a.header.Get(ingress.HeaderInvocationID) != "ev-1" {
		t.Fatalf("answer = %d %s %v", a.status, a.body, a.header)
	}
	q.mu.Lock()
	got := q.events[0]
	q.mu.Unlock()
	if got.function != "fn" || got.scope != "acme" || string(got.body) != "hello" ||
		got.header.Get("Content-Type") != "text/plain" || got.header.Get("Traceparent") == "" || got.header.Get("Authorization") != "" {
		t.Fatalf("enqueued %+v", got)
	}

	if a := post(t, srv.URL+"/v1/functions/fn/invocations", make([]byte, 101), ev); a.status != 413 {
		t.Errorf("large event = %d %s, want 413", a.status, a.body)
	}
	for _, c := range []struct {
		err    error
		status int
	}{
		{fmt.Errorf("cmd: %w %q", dispatch.ErrUnknownFunction, "fn"), 404},
		{fmt.Errorf("%w: functions.fn.async_queue is not set", ingress.ErrNoQueue), 400},
		{fmt.Errorf("%w: source signups has scope none", ingress.ErrScopeNotCarried), 400},
		{errors.New("nats: no responders available for request"), 503},
	} {
		q.mu.Lock()
		q.err = c.err
		q.mu.Unlock()
		a := post(t, srv.URL+"/v1/functions/fn/invocations", []byte("x"), ev)
		if a.status != c.status || !strings.Contains(a.json(t)["message"].(string), c.err.Error()) && c.status != 404 {
			t.Errorf("with %v: %d %s, want %d", c.err, a.status, a.body, c.status)
		}
	}
}
