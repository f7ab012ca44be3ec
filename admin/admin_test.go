package admin

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sluicehq/sluice/dispatch"
	"github.com/sluicehq/sluice/shard"
)

func ptr[T any](v T) *T { return &v }

// testConfig is the file's limits in these tests: two functions, one with a
// reservation, a "*" rule and an exact one.
func testConfig() dispatch.Config {
	return dispatch.Config{
		Account: dispatch.AccountConfig{Concurrency: 200, MinUnreserved: 100},
		Functions: map[string]dispatch.FunctionConfig{
			"fn":    {URL: "http://127.0.0.1:1/fn", Timeout: 5 * time.Second, ReservedConcurrency: ptr(10)},
			"other": {URL: "http://user:secret@127.0.0.1:1/other"},
		},
		Rules: []dispatch.Rule{
			{Pattern: "*", Concurrency: 5, Description: "per tenant"},
			{Pattern: "acme", Concurrency: 2},
		},
	}
}

func newTestBook(t testing.TB, dir string, cfg dispatch.Config) *Book {
	t.Helper()
	lim, err := dispatch.NewLimiter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lim.Close)
	b, err := NewBook(lim, cfg, dir)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

type testAPI struct {
	t    *testing.T
	srv  *Server
	book *Book
}

func newTestAPI(t *testing.T, o Options) *testAPI {
	t.Helper()
	if o.Book == nil {
		o.Book = newTestBook(t, t.TempDir(), testConfig())
	}
	s, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return &testAPI{t: t, srv: s, book: o.Book}
}

// do sends one request and returns the status and the body.
func (a *testAPI) do(method, path, token, body string) (int, string) {
	a.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rd)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	w := httptest.NewRecorder()
	a.srv.ServeHTTP(w, req)
	return w.Code, w.Body.String()
}

// must sends a request, checks the status and decodes the body into out.
func (a *testAPI) must(method, path, body string, want int, out any) {
	a.t.Helper()
	code, b := a.do(method, path, "", body)
	if code != want {
		a.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, code, want, b)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(b), out); err != nil {
			a.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
}

func message(t *testing.T, body string) string {
	t.Helper()
	var e ErrorBody
	if err := json.Unmarshal([]byte(body), &e); err != nil || e.Message == "" {
		t.Fatalf("error body %q is not {\"message\": ...}", body)
	}
	return e.Message
}

// concrete turns a route pattern into a path.
func concrete(pattern string) string {
	r := strings.NewReplacer("{fn}", "fn", "{pattern}", "acme", "{scope}", "acme")
	return r.Replace(pattern)
}

func TestAuthEveryRoute(t *testing.T) {
	ingress := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusAccepted) })
	a := newTestAPI(t, Options{Ingress: ingress, Tokens: []Token{
		{Secret: "read-secret", Role: RoleRead},
		{Secret: "invoke-secret", Role: RoleInvoke},
		{Secret: "admin-secret", Role: RoleAdmin},
	}})
	routes := Routes()
	if len(routes) < 14 {
		t.Fatalf("only %d routes: %v", len(routes), routes)
	}
	for _, rt := range routes {
		path := concrete(rt.Pattern)
		t.Run(rt.Method+" "+path, func(t *testing.T) {
			for _, tok := range []string{"", "wrong", "read-secret-", "Bearer"} {
				code, body := a.do(rt.Method, path, tok, "")
				if code != http.StatusUnauthorized {
					t.Errorf("token %q: status %d, want 401: %s", tok, code, body)
				}
			}
			// A token under another scheme is no bearer token.
			req := httptest.NewRequest(rt.Method, path, nil)
			req.Header.Set("Authorization", "Basic admin-secret")
			w := httptest.NewRecorder()
			a.srv.ServeHTTP(w, req)
			if w.Code != http.StatusUnauthorized || w.Header().Get("WWW-Authenticate") == "" {
				t.Errorf("Basic auth: status %d (WWW-Authenticate %q), want 401 with a challenge", w.Code, w.Header().Get("WWW-Authenticate"))
			}
			for _, c := range []struct {
				token string
				role  Role
			}{{"read-secret", RoleRead}, {"invoke-secret", RoleInvoke}, {"admin-secret", RoleAdmin}} {
				code, body := a.do(rt.Method, path, c.token, "")
				switch {
				case !c.role.Allows(rt.Role) && code != http.StatusForbidden:
					t.Errorf("%s token: status %d, want 403: %s", c.role, code, body)
				case !c.role.Allows(rt.Role):
					if m := message(t, body); !strings.Contains(m, "role "+rt.Role.String()) {
						t.Errorf("403 message %q does not name the role needed", m)
					}
				case code == http.StatusUnauthorized || code == http.StatusForbidden || code >= 500:
					t.Errorf("%s token: status %d, want it let through: %s", c.role, code, body)
				}
			}
		})
	}
	// Writes are admin only, reads for everyone, the ingress for invoke.
	for _, rt := range routes {
		want := RoleAdmin
		switch {
		case rt.Method == http.MethodGet:
			want = RoleRead
		case strings.HasSuffix(rt.Pattern, "/invocations"):
			want = RoleInvoke
		}
		if rt.Role != want {
			t.Errorf("%s %s needs role %s, want %s", rt.Method, rt.Pattern, rt.Role, want)
		}
	}
	// Unknown paths under /v1 ask for a token first, then 404.
	if code, _ := a.do(http.MethodGet, "/v1/nope", "", ""); code != http.StatusUnauthorized {
		t.Errorf("GET /v1/nope without a token: %d, want 401", code)
	}
	if code, body := a.do(http.MethodGet, "/v1/nope", "read-secret", ""); code != http.StatusNotFound {
		t.Errorf("GET /v1/nope: %d, want 404: %s", code, body)
	}
	// The open endpoints need nothing.
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, body := a.do(http.MethodGet, p, "", ""); code != http.StatusOK {
			t.Errorf("GET %s: %d %s, want 200", p, code, body)
		}
	}
}

func TestNoTokensIsOpen(t *testing.T) {
	a := newTestAPI(t, Options{})
	a.must(http.MethodPut, "/v1/rules/beta", `{"concurrency":3}`, http.StatusOK, nil)
	a.must(http.MethodGet, "/v1/account", "", http.StatusOK, nil)
}

func TestAccountAndReservations(t *testing.T) {
	a := newTestAPI(t, Options{})
	var acct AccountView
	a.must(http.MethodGet, "/v1/account", "", http.StatusOK, &acct)
	if acct.AccountLimit.ConcurrentExecutions != 200 || acct.AccountLimit.UnreservedConcurrentExecutions != 190 ||
		acct.AccountLimit.MinUnreserved != 100 || acct.AccountUsage.FunctionCount != 2 {
		t.Fatalf("account %+v", acct)
	}

	var f FunctionView
	a.must(http.MethodGet, "/v1/functions/fn", "", http.StatusOK, &f)
	if r := f.Concurrency.ReservedConcurrentExecutions; r == nil || *r != 10 || f.Concurrency.Origin != OriginConfig || f.Configuration.Timeout != "5s" {
		t.Fatalf("function %+v", f)
	}
	a.must(http.MethodPut, "/v1/functions/other/concurrency", `{"reservedConcurrentExecutions": 40}`, http.StatusOK, nil)
	a.must(http.MethodGet, "/v1/functions/other", "", http.StatusOK, &f)
	if strings.Contains(f.Configuration.URL, "secret") {
		t.Errorf("GET /v1/functions/other shows the URL's password: %s", f.Configuration.URL)
	}
	if r := f.Concurrency.ReservedConcurrentExecutions; r == nil || *r != 40 || f.Concurrency.Origin != OriginAPI {
		t.Fatalf("after PUT: %+v", f.Concurrency)
	}
	a.must(http.MethodGet, "/v1/account", "", http.StatusOK, &acct)
	if acct.AccountLimit.UnreservedConcurrentExecutions != 150 {
		t.Fatalf("unreserved %d, want 200-10-40", acct.AccountLimit.UnreservedConcurrentExecutions)
	}

	// 10 + 91 would leave 99 < 100.
	code, body := a.do(http.MethodPut, "/v1/functions/other/concurrency", "", `{"reservedConcurrentExecutions": 91}`)
	if code != http.StatusBadRequest || !strings.Contains(message(t, body), "under min_unreserved (100)") {
		t.Fatalf("reservation below min_unreserved: %d %s, want 400 saying so", code, body)
	}
	if n, _ := a.book.Limiter().Reservation("other"); n != 40 {
		t.Fatalf("a refused reservation changed the limiter: %d", n)
	}

	a.must(http.MethodDelete, "/v1/functions/other/concurrency", "", http.StatusNoContent, nil)
	a.must(http.MethodGet, "/v1/functions/other", "", http.StatusOK, &f)
	if f.Concurrency.ReservedConcurrentExecutions != nil {
		t.Fatalf("after DELETE: %+v", f.Concurrency)
	}
	// A reservation of the file can be deleted too.
	a.must(http.MethodDelete, "/v1/functions/fn/concurrency", "", http.StatusNoContent, nil)
	if _, ok := a.book.Limiter().Reservation("fn"); ok {
		t.Fatal("fn keeps its reservation after DELETE")
	}

	for _, c := range []struct{ method, path, body string }{
		{http.MethodGet, "/v1/functions/nope", ""},
		{http.MethodPut, "/v1/functions/nope/concurrency", `{"reservedConcurrentExecutions": 1}`},
		{http.MethodDelete, "/v1/functions/nope/concurrency", ""},
	} {
		if code, body := a.do(c.method, c.path, "", c.body); code != http.StatusNotFound || !strings.Contains(message(t, body), `"nope"`) {
			t.Errorf("%s %s: %d %s, want 404 naming the function", c.method, c.path, code, body)
		}
	}
	for _, body := range []string{``, `{}`, `null`, `[]`, `{"reservedConcurrentExecutions": -1}`, `{"reservedConcurrentExecutions": 1.5}`,
		`{"reservedConcurrentExecutions": 1, "x": 2}`, `{"reservedConcurrentExecutions": 1}{}`, `{"reservedConcurrentExecutions": 201}`} {
		if code, b := a.do(http.MethodPut, "/v1/functions/fn/concurrency", "", body); code != http.StatusBadRequest {
			t.Errorf("PUT body %q: %d %s, want 400", body, code, b)
		} else {
			message(t, b)
		}
	}
}

func TestRulesMergeEnableDisableDelete(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cfg := testConfig()
	lim, err := dispatch.NewLimiter(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	book, err := NewBook(lim, cfg, t.TempDir(), WithBookClock(func() time.Time { return now }))
	if err != nil {
		t.Fatal(err)
	}
	a := newTestAPI(t, Options{Book: book})

	var list struct{ Rules []Rule }
	a.must(http.MethodGet, "/v1/rules", "", http.StatusOK, &list)
	if len(list.Rules) != 2 || list.Rules[0].Pattern != "*" || list.Rules[0].Origin != OriginConfig || list.Rules[0].Version != 1 {
		t.Fatalf("rules %+v", list.Rules)
	}

	// Creating needs concurrency.
	if code, body := a.do(http.MethodPut, "/v1/rules/beta", "", `{"description":"x"}`); code != http.StatusBadRequest {
		t.Fatalf("new rule without concurrency: %d %s", code, body)
	}
	var r Rule
	now = now.Add(time.Minute)
	a.must(http.MethodPut, "/v1/rules/beta", `{"concurrency": 1, "description": "beta tenant"}`, http.StatusOK, &r)
	if r != (Rule{Pattern: "beta", Concurrency: 1, Description: "beta tenant", Version: 1, LastModified: now, Origin: OriginAPI}) {
		t.Fatalf("created %+v", r)
	}
	// Merge: the description stays.
	now = now.Add(time.Minute)
	a.must(http.MethodPut, "/v1/rules/beta", `{"concurrency": 3}`, http.StatusOK, &r)
	if r.Concurrency != 3 || r.Description != "beta tenant" || r.Version != 2 || !r.LastModified.Equal(now) {
		t.Fatalf("merged %+v", r)
	}
	// Merge into a rule of the file: it becomes the API's.
	a.must(http.MethodPut, "/v1/rules/acme", `{"description": "big one"}`, http.StatusOK, &r)
	if r.Concurrency != 2 || r.Description != "big one" || r.Origin != OriginAPI || r.Version != 2 {
		t.Fatalf("merged into the file's rule: %+v", r)
	}
	scope := func(name string) dispatch.ScopeUsage {
		t.Helper()
		var v LimitsView
		a.must(http.MethodGet, "/v1/limits", "", http.StatusOK, &v)
		for _, s := range v.Scopes {
			if s.Scope == name {
				return s
			}
		}
		t.Fatalf("scope %s not in /v1/limits: %+v", name, v.Scopes)
		return dispatch.ScopeUsage{}
	}
	if s := scope("beta"); s.Limit != 3 || s.Rule != "beta" || s.Available != 3 {
		t.Fatalf("limits of beta: %+v", s)
	}

	// The limiter follows at once.
	l1, err := lim.TryAcquire("other", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	l2, err := lim.TryAcquire("other", []string{"acme"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lim.TryAcquire("other", []string{"acme"}); !dispatch.IsThrottled(err) {
		t.Fatalf("third acme slot under a rule of 2: %v", err)
	}
	a.must(http.MethodPost, "/v1/rules/acme/disable", "", http.StatusOK, &r)
	if !r.Disabled || r.Version != 3 {
		t.Fatalf("disabled %+v", r)
	}
	if s := scope("acme"); s.Rule != "*" || s.Limit != 5 || s.InFlight != 2 {
		t.Fatalf("acme with its rule disabled: %+v, want the \"*\" rule", s)
	}
	l3, err := lim.TryAcquire("other", []string{"acme"})
	if err != nil {
		t.Fatalf("acme under \"*\" (5): %v", err)
	}
	a.must(http.MethodPost, "/v1/rules/acme/enable", "", http.StatusOK, &r)
	if r.Disabled || r.Version != 4 {
		t.Fatalf("enabled %+v", r)
	}
	if s := scope("acme"); s.Rule != "acme" || s.Limit != 2 || s.Available != 0 {
		t.Fatalf("acme enabled again: %+v", s)
	}
	for _, l := range []dispatch.Lease{l1, l2, l3} {
		l.Release()
	}

	// Delete a rule of the file and one of the API.
	a.must(http.MethodDelete, "/v1/rules/*", "", http.StatusNoContent, nil)
	a.must(http.MethodDelete, "/v1/rules/beta", "", http.StatusNoContent, nil)
	a.must(http.MethodGet, "/v1/rules", "", http.StatusOK, &list)
	if len(list.Rules) != 1 || list.Rules[0].Pattern != "acme" {
		t.Fatalf("after deletes: %+v", list.Rules)
	}
	if got := lim.Rules(); len(got) != 1 || got[0].Pattern != "acme" {
		t.Fatalf("limiter rules after deletes: %+v", got)
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodDelete, "/v1/rules/beta"},
		{http.MethodPost, "/v1/rules/beta/enable"},
		{http.MethodPost, "/v1/rules/beta/disable"},
		{http.MethodGet, "/v1/rules/beta"},
	} {
		if code, body := a.do(c.method, c.path, "", ""); code != http.StatusNotFound {
			t.Errorf("%s %s of a deleted rule: %d %s, want 404", c.method, c.path, code, body)
		}
	}
	// "*" set again after its delete: a new rule of the API, the file's
	// description does not come back.
	a.must(http.MethodPut, "/v1/rules/%2A", `{"concurrency": 7}`, http.StatusOK, &r)
	if r.Pattern != "*" || r.Description != "" || r.Origin != OriginAPI || r.Version != 1 {
		t.Fatalf("* again: %+v", r)
	}
	for _, body := range []string{`{"concurrency": -1}`, `{"concurrency": "1"}`, `{"disabled": 1}`, `{"priority": 1}`, `not json`,
		`{"description": "` + strings.Repeat("x", maxDescription+1) + `"}`} {
		if code, b := a.do(http.MethodPut, "/v1/rules/acme", "", body); code != http.StatusBadRequest {
			t.Errorf("PUT rule %q: %d %s, want 400", body, code, b)
		}
	}
	if code, _ := a.do(http.MethodPut, "/v1/rules/"+strings.Repeat("p", maxPattern+1), "", `{"concurrency":1}`); code != http.StatusBadRequest {
		t.Errorf("long pattern: %d, want 400", code)
	}
	if code, _ := a.do(http.MethodPut, "/v1/rules/a%00b", "", `{"concurrency":1}`); code != http.StatusBadRequest {
		t.Errorf("pattern with NUL: %d, want 400", code)
	}
}

// Changes survive a restart: a new Book over the same state_dir and the same
// file puts them back on top of the file's limits.
func TestChangesSurviveRestart(t *testing.T) {
	dir := t.TempDir()
	a := newTestAPI(t, Options{Book: newTestBook(t, dir, testConfig())})
	a.must(http.MethodPut, "/v1/functions/other/concurrency", `{"reservedConcurrentExecutions": 20}`, http.StatusOK, nil)
	a.must(http.MethodDelete, "/v1/functions/fn/concurrency", "", http.StatusNoContent, nil)
	a.must(http.MethodPut, "/v1/rules/acme", `{"description": "merged"}`, http.StatusOK, nil)
	a.must(http.MethodPut, "/v1/rules/beta", `{"concurrency": 4}`, http.StatusOK, nil)
	a.must(http.MethodPost, "/v1/rules/beta/disable", "", http.StatusOK, nil)
	a.must(http.MethodDelete, "/v1/rules/*", "", http.StatusNoContent, nil)
	before := a.book.Rules()

	b := newTestBook(t, dir, testConfig())
	if n, ok := b.Limiter().Reservation("other"); !ok || n != 20 {
		t.Errorf("other reserved %d %v after restart, want 20", n, ok)
	}
	if _, ok := b.Limiter().Reservation("fn"); ok {
		t.Error("fn's reservation of the file came back after it was deleted through the API")
	}
	after := b.Rules()
	if len(after) != len(before) {
		t.Fatalf("rules after restart %+v, before %+v", after, before)
	}
	for i := range before {
		if after[i] != before[i] {
			t.Errorf("rule after restart %+v, before %+v", after[i], before[i])
		}
	}
	if got := b.Limiter().Rules(); len(got) != 2 || got[0].Pattern != "acme" || got[0].Description != "merged" || !got[1].Disabled {
		t.Errorf("limiter rules after restart: %+v", got)
	}
	// No temporary files are left behind.
	ents, _ := os.ReadDir(dir)
	if len(ents) != 1 || ents[0].Name() != stateFile {
		t.Errorf("state dir holds %v, want only %s", ents, stateFile)
	}
}

func TestReloadKeepsAPIChangesOnTop(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig()
	b := newTestBook(t, dir, cfg)
	if _, err := b.SetRule("acme", RulePatch{Concurrency: ptr(9)}); err != nil {
		t.Fatal(err)
	}
	if err := b.PutReservation("other", 30); err != nil {
		t.Fatal(err)
	}
	v1, _ := b.Rule("*")

	// The file changes: account shrinks, fn's reservation grows, "*"
	// changes, a rule is added, acme is changed underneath the API.
	cfg = testConfig()
	cfg.Account = dispatch.AccountConfig{Concurrency: 150, MinUnreserved: 50}
	cfg.Functions["fn"] = dispatch.FunctionConfig{URL: "http://127.0.0.1:1/fn", ReservedConcurrency: ptr(60)}
	cfg.Rules = []dispatch.Rule{{Pattern: "*", Concurrency: 6}, {Pattern: "acme", Concurrency: 1, Description: "from file"}, {Pattern: "gamma", Concurrency: 2}}
	if err := b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	lim := b.Limiter()
	if a := lim.Account(); a.Concurrency != 150 || a.MinUnreserved != 50 {
		t.Errorf("account %+v", a)
	}
	if n, _ := lim.Reservation("fn"); n != 60 {
		t.Errorf("fn reserved %d, want 60 from the file", n)
	}
	if n, _ := lim.Reservation("other"); n != 30 {
		t.Errorf("other reserved %d, want 30 from the API", n)
	}
	acme, _ := b.Rule("acme")
	if acme.Concurrency != 9 || acme.Description != "from file" || acme.Origin != OriginAPI {
		t.Errorf("acme %+v: want the API's concurrency over the file's description", acme)
	}
	star, _ := b.Rule("*")
	if star.Concurrency != 6 || star.Version != v1.Version+1 || star.Origin != OriginConfig {
		t.Errorf("* %+v, want 6 at version %d", star, v1.Version+1)
	}
	if g, err := b.Rule("gamma"); err != nil || g.Concurrency != 2 {
		t.Errorf("gamma %+v %v", g, err)
	}

	// A reload the limiter cannot take whole (reservations above the new
	// floor) keeps what it can and stays consistent.
	cfg.Account = dispatch.AccountConfig{Concurrency: 100, MinUnreserved: 50}
	if err := b.Reload(cfg); err != nil {
		t.Fatal(err)
	}
	u := lim.Usage()
	if u.UnreservedLimit < lim.Account().MinUnreserved {
		t.Errorf("unreserved pool %d under the floor %d", u.UnreservedLimit, lim.Account().MinUnreserved)
	}
}

func TestCorruptStateFileIsAnError(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	lim, err := dispatch.NewLimiter(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	defer lim.Close()
	if _, err := NewBook(lim, testConfig(), dir); err == nil || !strings.Contains(err.Error(), stateFile) {
		t.Fatalf("corrupt state file: %v, want an error naming it", err)
	}
}

func TestQueuesShardsReadyIngress(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC)
	var (
		mu    sync.Mutex
		ready error
		seen  []string
	)
	ingress := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, r.PathValue("scope")+"|"+r.PathValue("fn"))
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})
	a := newTestAPI(t, Options{
		Now:     func() time.Time { return now },
		Ingress: ingress,
		Ready: func() error {
			mu.Lock()
			defer mu.Unlock()
			return ready
		},
		Shards: func() []shard.Status {
			return []shard.Status{{Shard: shard.ID{Source: "orders", Partition: 3}, State: shard.State("throttled"),
				Reason: "ScopeConcurrencyLimitExceeded", Position: 42, Oldest: now.Add(-4 * time.Second)}}
		},
	})
	lim := a.book.Limiter()
	l1, _ := lim.TryAcquire("other", []string{"acme"})
	l2, _ := lim.TryAcquire("other", []string{"acme"})
	ctx, cancel := context.WithCancel(t.Context())
	waited := make(chan error, 1)
	go func() {
		_, err := lim.Acquire(ctx, "other", []string{"acme"}, nil)
		waited <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	var qs struct{ Queues []QueueView }
	for {
		a.must(http.MethodGet, "/v1/queues", "", http.StatusOK, &qs)
		if len(qs.Queues) == 1 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if len(qs.Queues) != 1 || qs.Queues[0].Function != "other" || qs.Queues[0].Waiting != 1 ||
		strings.Join(qs.Queues[0].Scopes, ",") != "acme" || qs.Queues[0].Reason != string(dispatch.ReasonScope) {
		t.Fatalf("queues %+v", qs.Queues)
	}
	cancel()
	if err := <-waited; !errors.Is(err, context.Canceled) {
		t.Fatalf("waiter: %v", err)
	}
	l1.Release()
	l2.Release()

	var sh struct{ Shards []ShardView }
	a.must(http.MethodGet, "/v1/shards", "", http.StatusOK, &sh)
	if len(sh.Shards) != 1 || sh.Shards[0].Source != "orders" || sh.Shards[0].Shard != 3 || sh.Shards[0].IteratorAge != 4 || sh.Shards[0].State != "throttled" {
		t.Fatalf("shards %+v", sh.Shards)
	}

	if code, _ := a.do(http.MethodGet, "/readyz", "", ""); code != http.StatusOK {
		t.Fatalf("readyz %d", code)
	}
	mu.Lock()
	ready = errors.New("brokers.main: kafka: no broker answers")
	mu.Unlock()
	if code, body := a.do(http.MethodGet, "/readyz", "", ""); code != http.StatusServiceUnavailable || !strings.Contains(body, "brokers.main") {
		t.Fatalf("readyz with a broker down: %d %q", code, body)
	}

	a.must(http.MethodPost, "/v1/functions/fn/invocations", `{}`, http.StatusAccepted, nil)
	a.must(http.MethodPost, "/v1/scope/acme/functions/other/invocations", `{}`, http.StatusAccepted, nil)
	mu.Lock()
	if strings.Join(seen, ",") != "|fn,acme|other" {
		t.Errorf("ingress saw %v, want the path values", seen)
	}
	mu.Unlock()
	if code, _ := a.do(http.MethodGet, "/v1/functions/fn/invocations", "", ""); code != http.StatusMethodNotAllowed {
		t.Errorf("GET on the ingress: %d, want 405", code)
	}

	b := newTestAPI(t, Options{})
	if code, body := b.do(http.MethodPost, "/v1/functions/fn/invocations", "", `{}`); code != http.StatusNotFound || !strings.Contains(message(t, body), "ingress") {
		t.Errorf("ingress not wired: %d %s, want 404 saying so", code, body)
	}
}

// When the state file cannot be written, the change is refused (500) and
// the limiter is left as it was: what runs is what survives a restart.
func TestUnsavableChangeIsRolledBack(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	a := newTestAPI(t, Options{Book: newTestBook(t, dir, testConfig())})
	// Replace the state directory by a file: nothing can be written in it.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dir, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	lim := a.book.Limiter()
	for _, c := range []struct{ method, path, body string }{
		{http.MethodPut, "/v1/functions/other/concurrency", `{"reservedConcurrentExecutions": 5}`},
		{http.MethodDelete, "/v1/functions/fn/concurrency", ""},
		{http.MethodPut, "/v1/rules/acme", `{"concurrency": 9}`},
		{http.MethodPut, "/v1/rules/new", `{"concurrency": 9}`},
		{http.MethodPost, "/v1/rules/acme/disable", ""},
		{http.MethodDelete, "/v1/rules/*", ""},
	} {
		if code, body := a.do(c.method, c.path, "", c.body); code != http.StatusInternalServerError {
			t.Errorf("%s %s with an unwritable state dir: %d %s, want 500", c.method, c.path, code, body)
		}
	}
	if _, ok := lim.Reservation("other"); ok {
		t.Error("other got a reservation that was not saved")
	}
	if n, ok := lim.Reservation("fn"); !ok || n != 10 {
		t.Errorf("fn reservation %d %v, want the file's 10 kept", n, ok)
	}
	got := lim.Rules()
	if len(got) != 2 || got[0] != (dispatch.Rule{Pattern: "*", Concurrency: 5, Description: "per tenant"}) || got[1] != (dispatch.Rule{Pattern: "acme", Concurrency: 2}) {
		t.Errorf("limiter rules %+v, want the file's unchanged", got)
	}
	if rs := a.book.Rules(); len(rs) != 2 || rs[1].Concurrency != 2 || rs[1].Origin != OriginConfig || rs[1].Version != 1 {
		t.Errorf("book rules %+v, want the file's unchanged", rs)
	}
}
