package admin

import (
	"bytes"
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"

	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/ingress"
	"github.com/sluicehq/sluice/shard"
)

// enqueuerFunc is an ingress.Enqueuer that stores nothing.
type enqueuerFunc func() (string, error)

func (f enqueuerFunc) Enqueue(context.Context, string, string, []byte, http.Header) (string, error) {
	return f()
}

// The OpenAPI document against the real handlers: it is a valid OpenAPI 3
// document; its operations are exactly the server's routes, each with the
// role the server asks for; and every operation, called as a client would,
// answers with a status and a body the document describes (success, and
// the 401/403/404 answers it lists).

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromData(OpenAPI)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("admin/openapi.json is not valid OpenAPI 3: %v", err)
	}
	return doc
}

// openRoutes are the routes outside /v1 the server always has (/metrics
// when Options.Metrics is set).
var openRoutes = []string{"GET /healthz", "GET /readyz", "GET /metrics"}

func TestOpenAPIListsEveryRoute(t *testing.T) {
	doc := loadOpenAPI(t)
	inDoc := map[string]string{} // "METHOD /path" → x-sluice-role
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			role, _ := op.Extensions["x-sluice-role"].(string)
			inDoc[method+" "+path] = role
		}
	}
	want := map[string]string{}
	for _, r := range Routes() {
		want[r.Method+" "+r.Pattern] = r.Role.String()
	}
	for _, r := range openRoutes {
		want[r] = ""
	}
	for _, k := range slices.Sorted(maps.Keys(want)) {
		role, ok := inDoc[k]
		switch {
		case !ok:
			t.Errorf("the server has %s; the document does not", k)
		case role != want[k]:
			t.Errorf("%s: the document says role %q, the server asks for %q", k, role, want[k])
		}
	}
	for _, k := range slices.Sorted(maps.Keys(inDoc)) {
		if _, ok := want[k]; !ok {
			t.Errorf("the document has %s; the server does not", k)
		}
	}
}

// openAPICall is how the test calls one operation: its path values and
// body.
var openAPICall = map[string]struct{ body string }{
	"PUT /v1/functions/{fn}/concurrency": {`{"reservedConcurrentExecutions": 20}`},
	"PUT /v1/rules/{pattern}":            {`{"concurrency": 3, "description": "d"}`},
}

var openAPIPathValues = map[string]string{"fn": "fn", "pattern": "acme", "scope": "acme"}

func TestOpenAPIAnswersAsDocumented(t *testing.T) {
	doc := loadOpenAPI(t)
	const admin, read = "admin-secret", "read-secret"
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"ok": true}`)
	}))
	t.Cleanup(fn.Close)
	// notInCluster serves without Options.Cluster, for the 404 of GET
	// /v1/cluster outside cluster mode.
	notInCluster := false
	newServer := func(t *testing.T) *Server {
		now := time.Now()
		cfg := testConfig()
		cfg.Functions["fn"] = dispatch.FunctionConfig{URL: fn.URL, Timeout: 5 * time.Second, ReservedConcurrency: ptr(10)}
		d, err := dispatch.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(d.Close)
		book, err := NewBook(d.Limiter(), cfg, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return newTestAPI(t, Options{
			Book:    book,
			Tokens:  []Token{{Secret: admin, Role: RoleAdmin}, {Secret: read, Role: RoleRead}},
			Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "# metrics\n") }),
			Shards: func() []shard.Status {
				return []shard.Status{{Shard: shard.ID{Source: "orders", Partition: 3}, State: shard.State("throttled"), Since: now,
					Reason: "ScopeConcurrencyLimitExceeded", Position: 42, Oldest: now.Add(-4 * time.Second)}}
			},
			// The real ingress over the real dispatcher; only the broker
			// write of an event is a stand-in.
			Ingress: ingress.New(d, ingress.WithEnqueuer(enqueuerFunc(func() (string, error) { return "e1", nil }))),
			Cluster: clusterStatus(now, notInCluster),
		}).srv
	}
	opts := &openapi3filter.Options{IncludeResponseStatus: true, AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}
	for path, item := range doc.Paths.Map() {
		for method, op := range item.Operations() {
			name := method + " " + path
			role, _ := op.Extensions["x-sluice-role"].(string)
			call := func(token, pathValue, body string, header http.Header) (int, string) {
				t.Helper()
				values := map[string]string{}
				url := path
				for k, v := range openAPIPathValues {
					if strings.Contains(url, "{"+k+"}") {
						if pathValue != "" {
							v = pathValue
						}
						values[k] = v
						url = strings.ReplaceAll(url, "{"+k+"}", v)
					}
				}
				req := httptest.NewRequest(method, url, strings.NewReader(body))
				if body != "" {
					req.Header.Set("Content-Type", "application/json")
				}
				maps.Copy(req.Header, header)
				if token != "" {
					req.Header.Set("Authorization", "Bearer "+token)
				}
				rec := httptest.NewRecorder()
				newServer(t).ServeHTTP(rec, req)
				in := &openapi3filter.RequestValidationInput{
					Request: httptest.NewRequest(method, url, strings.NewReader(body)), PathParams: values, Options: opts,
					Route: &routers.Route{Spec: doc, Path: path, PathItem: item, Method: method, Operation: op},
				}
				in.Request.Header = req.Header.Clone()
				if err := openapi3filter.ValidateRequest(context.Background(), in); err != nil {
					t.Errorf("%s: the test's own request does not match the document: %v", name, err)
				}
				res := rec.Result()
				b, _ := io.ReadAll(res.Body)
				err := openapi3filter.ValidateResponse(context.Background(), &openapi3filter.ResponseValidationInput{
					RequestValidationInput: in, Status: res.StatusCode, Header: res.Header, Body: io.NopCloser(bytes.NewReader(b)), Options: opts,
				})
				if err != nil {
					t.Errorf("%s: answered %d %s, which the document does not describe: %v", name, res.StatusCode, b, err)
				}
				return res.StatusCode, string(b)
			}
			t.Run(name, func(t *testing.T) {
				if code, body := call(admin, "", openAPICall[name].body, nil); code >= 300 {
					t.Errorf("%s: answered %d %s, want success", name, code, body)
				}
				if strings.HasSuffix(path, "/invocations") {
					if code, body := call(admin, "", `{"x": 1}`, http.Header{"Sluice-Invocation-Type": {"Event"}}); code != http.StatusAccepted {
						t.Errorf("%s as an event: answered %d %s, want 202", name, code, body)
					}
				}
				if role == "" {
					return
				}
				if code, _ := call("", "", openAPICall[name].body, nil); code != http.StatusUnauthorized {
					t.Errorf("%s without a token: %d, want 401", name, code)
				}
				if role == "admin" || role == "invoke" {
					if code, _ := call(read, "", openAPICall[name].body, nil); code != http.StatusForbidden {
						t.Errorf("%s with a read token: %d, want 403", name, code)
					}
				}
				if _, documented := op.Responses.Map()["404"]; documented {
					if strings.Contains(path, "{") {
						if code, _ := call(admin, "nope", openAPICall[name].body, nil); code != http.StatusNotFound {
							t.Errorf("%s of nothing: %d, want 404", name, code)
						}
					} else { // nothing to name: GET /v1/cluster outside cluster mode
						notInCluster = true
						code, _ := call(admin, "", openAPICall[name].body, nil)
						notInCluster = false
						if code != http.StatusNotFound {
							t.Errorf("%s outside cluster mode: %d, want 404", name, code)
						}
					}
				}
			})
		}
	}
}

// clusterStatus is a GET /v1/cluster hook answering what cluster.Status
// looks like in JSON (package cluster checks its own Status against the
// document: admin cannot import it); nil when off.
func clusterStatus(now time.Time, off bool) func() any {
	if off {
		return nil
	}
	return func() any {
		return map[string]any{
			"name": "prod", "broker": "bus", "lease": "10s", "self": "m1",
			"members": []map[string]any{{
				"id": "m1", "host": "h", "pid": 7, "started": now, "renewed": now, "leaseAge": "0s",
				"shares": map[string]int{"pool": 3}, "demand": map[string]int{"pool": 1},
				"inFlight": map[string]int{"fn": 1}, "scopeInFlight": map[string]int{"acme": 1}, "self": true,
			}},
			"limits": []map[string]any{{
				"limit": "pool", "capacity": 890, "shares": map[string]int{"m1": 3}, "demand": map[string]int{"m1": 1},
			}},
		}
	}
}

// The server serves the document it embeds, to a read token.
func TestOpenAPIServed(t *testing.T) {
	a := newTestAPI(t, Options{Tokens: []Token{{Secret: "r", Role: RoleRead}}})
	code, body := a.do(http.MethodGet, "/v1/openapi.json", "r", "")
	if code != http.StatusOK || body != string(OpenAPI) {
		t.Errorf("GET /v1/openapi.json: %d, %.80q", code, body)
	}
	if code, _ := a.do(http.MethodGet, "/v1/openapi.json", "", ""); code != http.StatusUnauthorized {
		t.Errorf("without a token: %d, want 401", code)
	}
}
