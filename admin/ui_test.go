package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// The status page's files are served without a token, with a policy that
// keeps the page to its own files, and carry none of the API's data; the
// data endpoints behind them keep the token check.
func TestStatusPageFiles(t *testing.T) {
	a := newTestAPI(t, Options{Tokens: []Token{{Secret: "read-secret", Role: RoleRead}}})
	for path, ctype := range map[string]string{"/ui/": "text/html", "/ui/app.js": "javascript", "/ui/style.css": "text/css"} {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		w := httptest.NewRecorder()
		a.srv.ServeHTTP(w, req)
		if w.Code != http.StatusOK || !strings.Contains(w.Header().Get("Content-Type"), ctype) {
			t.Errorf("GET %s: %d %q, want 200 %s without a token", path, w.Code, w.Header().Get("Content-Type"), ctype)
		}
		if csp := w.Header().Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
			t.Errorf("GET %s: Content-Security-Policy %q", path, csp)
		}
		if strings.Contains(w.Body.String(), "secret") || strings.Contains(w.Body.String(), "127.0.0.1:1") {
			t.Errorf("GET %s serves data of this sluice", path)
		}
	}
	if code, _ := a.do(http.MethodGet, "/ui", "", ""); code != http.StatusMovedPermanently {
		t.Errorf("GET /ui: %d, want a redirect to /ui/", code)
	}
	if code, _ := a.do(http.MethodGet, "/ui/nope.js", "", ""); code != http.StatusNotFound {
		t.Errorf("GET /ui/nope.js: %d, want 404", code)
	}
	for _, path := range []string{"/v1/functions", "/v1/dead-letter-counts"} {
		if code, _ := a.do(http.MethodGet, path, "", ""); code != http.StatusUnauthorized {
			t.Errorf("GET %s without a token: %d, want 401", path, code)
		}
		if code, _ := a.do(http.MethodGet, path, "read-secret", ""); code != http.StatusOK {
			t.Errorf("GET %s with a read token: %d, want 200", path, code)
		}
	}
}

func TestFunctionsDeadLetterCountsAndLag(t *testing.T) {
	id := shard.ID{Source: "orders", Partition: 2}
	a := newTestAPI(t, Options{
		Shards: func() []shard.Status {
			return []shard.Status{{Shard: id, State: shard.StateThrottled, Since: time.Now()}, {Shard: shard.ID{Source: "orders", Partition: 3}}}
		},
		Lags: func() map[shard.ID]int64 { return map[shard.ID]int64{id: 42} },
		DeadLetterCounts: func() []DeadLetterCount {
			return []DeadLetterCount{{"orders", "RetryAttemptsExhausted", 3}, {"clicks", "PermanentError", 0}, {"orders", "PermanentError", 1}}
		},
	})
	var fns FunctionsView
	a.must(http.MethodGet, "/v1/functions", "", http.StatusOK, &fns)
	if len(fns.Functions) != 2 || fns.Functions[0].FunctionName != "fn" || fns.Functions[1].FunctionName != "other" {
		t.Fatalf("GET /v1/functions = %+v, want fn and other", fns)
	}
	if r := fns.Functions[0].Concurrency.ReservedConcurrentExecutions; r == nil || *r != 10 {
		t.Errorf("fn's reservation %v, want 10", r)
	}
	if u := fns.Functions[1].Configuration.URL; strings.Contains(u, "secret") {
		t.Errorf("other's URL %q shows its password", u)
	}
	var dl DeadLetterCountsView
	a.must(http.MethodGet, "/v1/dead-letter-counts", "", http.StatusOK, &dl)
	want := []DeadLetterCount{{"clicks", "PermanentError", 0}, {"orders", "PermanentError", 1}, {"orders", "RetryAttemptsExhausted", 3}}
	if len(dl.DeadLetters) != len(want) {
		t.Fatalf("GET /v1/dead-letter-counts = %+v, want %+v", dl.DeadLetters, want)
	}
	for i := range want {
		if dl.DeadLetters[i] != want[i] {
			t.Errorf("dead-letter count %d = %+v, want %+v (sorted by source, condition)", i, dl.DeadLetters[i], want[i])
		}
	}
	var sh struct{ Shards []ShardView }
	a.must(http.MethodGet, "/v1/shards", "", http.StatusOK, &sh)
	if len(sh.Shards) != 2 || sh.Shards[0].Lag != 42 || sh.Shards[1].Lag != 0 {
		t.Errorf("GET /v1/shards = %+v, want lag 42 for orders/2 and 0 for the shard without one", sh.Shards)
	}
	// Without the hooks: empty lists, not null.
	b := newTestAPI(t, Options{})
	var raw map[string]any
	b.must(http.MethodGet, "/v1/dead-letter-counts", "", http.StatusOK, &raw)
	if l, ok := raw["deadLetters"].([]any); !ok || len(l) != 0 {
		t.Errorf("GET /v1/dead-letter-counts without a hook: %v, want an empty list", raw)
	}
}
