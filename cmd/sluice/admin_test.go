package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/sluicehq/sluice/admin"
	natssrc "github.com/sluicehq/sluice/consumer/nats"
)

// Acceptance tests of the admin API (SPEC §6) through a real `sluice run`
// process on the embedded nats-server: reservations, rules taking effect on
// running traffic, restarts, auth on every route, SIGHUP and readiness.

// adminBin is the sluice binary of these tests, built once.
var adminBin = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "sluice-admin-test-")
	if err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "sluice")
	out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %w\n%s", err, out)
	}
	return bin, nil
})

// proc is one `sluice run` process with its log lines.
type proc struct {
	t     *testing.T
	cmd   *exec.Cmd
	admin string // http://host:port
	nats  string // the embedded nats-server's URL, if any
	done  chan struct{}

	mu   sync.Mutex
	logs []string
}

func runSluice(t *testing.T, cfg string) *proc {
	t.Helper()
	bin, err := adminBin()
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: exec.Command(bin, "run", "-c", cfg), done: make(chan struct{})}
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	running := make(chan struct{})
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			var line struct{ Msg, Admin, URL string }
			_ = json.Unmarshal(sc.Bytes(), &line)
			p.mu.Lock()
			p.logs = append(p.logs, sc.Text())
			switch line.Msg {
			case "embedded nats-server started":
				p.nats = line.URL
			case "sluice running":
				p.admin = "http://" + line.Admin
				close(running)
			}
			p.mu.Unlock()
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			p.mu.Lock()
			t.Logf("sluice log:\n%s", strings.Join(tailLines(p.logs, 60), "\n"))
			p.mu.Unlock()
		}
	})
	select {
	case <-running:
	case <-p.done:
		t.Fatalf("sluice exited before it was running:\n%s", strings.Join(p.logLines(), "\n"))
	case <-time.After(60 * time.Second):
		t.Fatal("sluice did not log \"sluice running\" within 60s")
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p
}

func (p *proc) logLines() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.logs)
}

// stop sends SIGTERM and checks the exit code is 0.
func (p *proc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(60 * time.Second):
		p.t.Fatal("sluice did not stop within 60s of SIGTERM")
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 {
		p.t.Fatalf("exit code %d after SIGTERM, want 0", code)
	}
}

func tailLines(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// call sends one admin API request and returns the status and the body.
func (p *proc) call(method, path, token, body string) (int, string) {
	p.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(p.t.Context(), method, p.admin+path, rd)
	if err != nil {
		p.t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json") // the admin API refuses a body of another type
	}
	cl := &http.Client{Timeout: 10 * time.Second}
	resp, err := cl.Do(req)
	if err != nil {
		p.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// must sends a request with token, checks the status and decodes into out.
func (p *proc) must(method, path, token, body string, want int, out any) {
	p.t.Helper()
	code, b := p.call(method, path, token, body)
	if code != want {
		p.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, code, want, b)
	}
	if out != nil {
		if err := json.Unmarshal([]byte(b), out); err != nil {
			p.t.Fatalf("%s %s: decode %q: %v", method, path, b, err)
		}
	}
}

// slowFn is a function that takes a while and records, per Sluice-Scope,
// how many invocations ran at once at most.
type slowFn struct {
	srv   *httptest.Server
	sleep time.Duration

	mu      sync.Mutex
	running map[string]int
	max     map[string]int
	calls   map[string]int
	gate    chan struct{} // when not nil, invocations wait for it to close
	entered chan struct{} // receives once per invocation that reached the gate
}

func newSlowFn(t *testing.T, sleep time.Duration) *slowFn {
	f := &slowFn{sleep: sleep, running: map[string]int{}, max: map[string]int{}, calls: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		scope := r.Header.Get("Sluice-Scope")
		f.mu.Lock()
		f.running[scope]++
		f.calls[scope]++
		f.max[scope] = max(f.max[scope], f.running[scope])
		gate, entered := f.gate, f.entered
		f.mu.Unlock()
		if gate != nil {
			entered <- struct{}{}
			<-gate
		}
		time.Sleep(f.sleep)
		f.mu.Lock()
		f.running[scope]--
		f.mu.Unlock()
	}))
	t.Cleanup(f.srv.Close)
	return f
}

// stats returns the calls and the highest concurrency seen for scope, and
// resets the highest to what runs now.
func (f *slowFn) stats(scope string) (calls, most int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	calls, most = f.calls[scope], f.max[scope]
	f.max[scope] = f.running[scope]
	return calls, most
}

// settle waits until nothing of scope runs, then forgets the highest
// concurrency seen, so the next phase of a test measures only itself.
func (f *slowFn) settle(t *testing.T, scope string) {
	t.Helper()
	waitUntil(t, 30*time.Second, "the invocations of "+scope+" end", func() error {
		f.mu.Lock()
		defer f.mu.Unlock()
		if n := f.running[scope]; n > 0 {
			return fmt.Errorf("%d still running", n)
		}
		f.max[scope] = 0
		return nil
	})
}

func (f *slowFn) callsOf(scope string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[scope]
}

// publish sends n events with header tenant=scope to subjects clicks.k<i>,
// spread over many keys so that every partition gets some.
func publish(t *testing.T, url, scope string, first, n int) {
	t.Helper()
	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := first; i < first+n; i++ {
		m := natsgo.NewMsg(fmt.Sprintf("clicks.k%d", i))
		m.Header.Set("tenant", scope)
		m.Data = fmt.Appendf(nil, "event %d", i)
		if err := nc.PublishMsg(m); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// tokens writes one token file per role into dir.
func tokens(t *testing.T, dir string) string {
	t.Helper()
	for _, role := range []string{"read", "invoke", "admin"} {
		writeFile(t, filepath.Join(dir, role+".token"), role+"-token-"+filepath.Base(dir)+"\n")
	}
	return fmt.Sprintf(`
  tokens:
    - {role: read, file: %q}
    - {role: invoke, file: %q}
    - {role: admin, file: %q}`, filepath.Join(dir, "read.token"), filepath.Join(dir, "invoke.token"), filepath.Join(dir, "admin.token"))
}

func tokenOf(dir, role string) string { return role + "-token-" + filepath.Base(dir) }

type scopeLine struct {
	Scope     string `json:"scope"`
	Usage     int    `json:"usage"`
	Limit     int    `json:"limit"`
	Available int    `json:"available"`
	Rule      string `json:"rule"`
}

func (p *proc) scope(token, name string) (scopeLine, bool) {
	p.t.Helper()
	var v struct{ Scopes []scopeLine }
	p.must(http.MethodGet, "/v1/limits", token, "", http.StatusOK, &v)
	for _, s := range v.Scopes {
		if s.Scope == name {
			return s, true
		}
	}
	return scopeLine{}, false
}

func (p *proc) rules(token string) []admin.Rule {
	p.t.Helper()
	var v struct{ Rules []admin.Rule }
	p.must(http.MethodGet, "/v1/rules", token, "", http.StatusOK, &v)
	return v.Rules
}

func TestAdminAPIOfRunningSluice(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	fn := newSlowFn(t, 150*time.Millisecond)
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
account: {concurrency: 200, min_unreserved: 100}
admin:
  listen: "127.0.0.1:0"%s
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q, timeout: 10s}
  other: {url: %q, reserved_concurrency: 10}
rules:
  - {pattern: "*", concurrency: 10, description: per tenant}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 4, function: fn, batch_size: 1, scope: "header:tenant"}
`, tokens(t, dir), filepath.Join(dir, "state"), fn.srv.URL, fn.srv.URL))
	adminTok, readTok := tokenOf(dir, "admin"), tokenOf(dir, "read")
	p := runSluice(t, cfg)

	t.Run("auth on every route", func(t *testing.T) {
		for _, rt := range admin.Routes() {
			path := strings.NewReplacer("{fn}", "fn", "{pattern}", "zeta", "{scope}", "zeta").Replace(rt.Pattern)
			for _, tok := range []string{"", "not-a-token"} {
				if code, body := p.call(rt.Method, path, tok, ""); code != http.StatusUnauthorized {
					t.Errorf("%s %s with token %q: %d %s, want 401", rt.Method, path, tok, code, body)
				}
			}
			code, body := p.call(rt.Method, path, readTok, "")
			if rt.Method != http.MethodGet && code != http.StatusForbidden {
				t.Errorf("%s %s with a read token: %d %s, want 403", rt.Method, path, code, body)
			}
			// Allowed: 200, or 404 for a rule or scope the test did not make.
			if rt.Method == http.MethodGet && code != http.StatusOK && code != http.StatusNotFound {
				t.Errorf("%s %s with a read token: %d %s, want it allowed (200, or 404 for a missing resource)", rt.Method, path, code, body)
			}
		}
		for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
			if code, body := p.call(http.MethodGet, path, "", ""); code != http.StatusOK {
				t.Errorf("GET %s without a token: %d %s, want 200", path, code, body)
			}
		}
	})

	t.Run("reservations", func(t *testing.T) {
		var f admin.FunctionView
		p.must(http.MethodPut, "/v1/functions/fn/concurrency", adminTok, `{"reservedConcurrentExecutions": 20}`, http.StatusOK, nil)
		p.must(http.MethodGet, "/v1/functions/fn", readTok, "", http.StatusOK, &f)
		if r := f.Concurrency.ReservedConcurrentExecutions; r == nil || *r != 20 {
			t.Fatalf("fn reservation %+v, want 20", f.Concurrency)
		}
		// 10 (other) + 91 would leave 99 of 200, under min_unreserved 100.
		code, body := p.call(http.MethodPut, "/v1/functions/fn/concurrency", adminTok, `{"reservedConcurrentExecutions": 91}`)
		var e admin.ErrorBody
		_ = json.Unmarshal([]byte(body), &e)
		if code != http.StatusBadRequest || !strings.Contains(e.Message, "would leave the unreserved pool at 99, under min_unreserved (100)") {
			t.Fatalf("reservation under min_unreserved: %d %s, want 400 saying so", code, body)
		}
		p.must(http.MethodGet, "/v1/functions/fn", readTok, "", http.StatusOK, &f)
		if r := f.Concurrency.ReservedConcurrentExecutions; r == nil || *r != 20 {
			t.Fatalf("a refused reservation changed it: %+v", f.Concurrency)
		}
		var acct admin.AccountView
		p.must(http.MethodGet, "/v1/account", readTok, "", http.StatusOK, &acct)
		if acct.AccountLimit.ConcurrentExecutions != 200 || acct.AccountLimit.UnreservedConcurrentExecutions != 170 {
			t.Fatalf("account %+v, want 200 and 200-10-20", acct.AccountLimit)
		}
		p.must(http.MethodDelete, "/v1/functions/fn/concurrency", adminTok, "", http.StatusNoContent, nil)
		p.must(http.MethodGet, "/v1/functions/fn", readTok, "", http.StatusOK, &f)
		if f.Concurrency.ReservedConcurrentExecutions != nil {
			t.Fatalf("fn reservation after DELETE: %+v", f.Concurrency)
		}
		// Kept for the restart below.
		p.must(http.MethodPut, "/v1/functions/other/concurrency", adminTok, `{"reservedConcurrentExecutions": 7}`, http.StatusOK, nil)
	})

	t.Run("rules on running traffic", func(t *testing.T) {
		var r admin.Rule
		p.must(http.MethodPut, "/v1/rules/acme", adminTok, `{"concurrency": 1, "description": "one at a time"}`, http.StatusOK, &r)
		if s, ok := p.scope(readTok, "acme"); !ok || s.Limit != 1 || s.Rule != "acme" {
			t.Fatalf("/v1/limits acme: %+v %v", s, ok)
		}
		publish(t, p.nats, "acme", 0, 16)
		waitUntil(t, 60*time.Second, "16 acme invocations", func() error {
			if n := fn.callsOf("acme"); n < 16 {
				return fmt.Errorf("%d so far", n)
			}
			return nil
		})
		if _, most := fn.stats("acme"); most != 1 {
			t.Fatalf("acme ran %d at once under a rule of concurrency 1", most)
		}

		// Raise it (merge: the description stays): more run at once.
		fn.settle(t, "acme")
		p.must(http.MethodPut, "/v1/rules/acme", adminTok, `{"concurrency": 4}`, http.StatusOK, &r)
		if r.Concurrency != 4 || r.Description != "one at a time" || r.Version != 2 || r.Origin != admin.OriginAPI {
			t.Fatalf("merged rule %+v", r)
		}
		if s, _ := p.scope(readTok, "acme"); s.Limit != 4 {
			t.Fatalf("/v1/limits acme after the raise: %+v", s)
		}
		publish(t, p.nats, "acme", 16, 40)
		waitUntil(t, 60*time.Second, "56 acme invocations", func() error {
			if n := fn.callsOf("acme"); n < 56 {
				return fmt.Errorf("%d so far", n)
			}
			return nil
		})
		if _, most := fn.stats("acme"); most < 2 || most > 4 {
			t.Fatalf("acme ran %d at once after raising its rule to 4, want 2..4 (4 partitions)", most)
		}

		// Disable: acme falls back to "*"; enable: its own rule again.
		p.must(http.MethodPost, "/v1/rules/acme/disable", adminTok, "", http.StatusOK, &r)
		if s, _ := p.scope(readTok, "acme"); !r.Disabled || s.Rule != "*" || s.Limit != 10 {
			t.Fatalf("acme disabled: rule %+v, limits %+v", r, s)
		}
		p.must(http.MethodPost, "/v1/rules/acme/enable", adminTok, "", http.StatusOK, &r)
		if s, _ := p.scope(readTok, "acme"); r.Disabled || s.Rule != "acme" || s.Limit != 4 {
			t.Fatalf("acme enabled: rule %+v, limits %+v", r, s)
		}
		// Back to 1 and traffic follows again.
		p.must(http.MethodPut, "/v1/rules/acme", adminTok, `{"concurrency": 1}`, http.StatusOK, nil)
		fn.settle(t, "acme")
		publish(t, p.nats, "acme", 56, 12)
		waitUntil(t, 60*time.Second, "68 acme invocations", func() error {
			if n := fn.callsOf("acme"); n < 68 {
				return fmt.Errorf("%d so far", n)
			}
			return nil
		})
		if _, most := fn.stats("acme"); most != 1 {
			t.Fatalf("acme ran %d at once after lowering its rule to 1 again", most)
		}

		// Create and delete; delete a rule of the file.
		p.must(http.MethodPut, "/v1/rules/beta", adminTok, `{"concurrency": 2}`, http.StatusOK, nil)
		if s, ok := p.scope(readTok, "beta"); !ok || s.Limit != 2 {
			t.Fatalf("/v1/limits beta: %+v %v", s, ok)
		}
		p.must(http.MethodDelete, "/v1/rules/beta", adminTok, "", http.StatusNoContent, nil)
		if s, ok := p.scope(readTok, "beta"); ok {
			t.Fatalf("/v1/limits still shows beta after its delete: %+v", s)
		}
		p.must(http.MethodPut, "/v1/rules/gamma", adminTok, `{"concurrency": 3, "disabled": true}`, http.StatusOK, nil)
		p.must(http.MethodDelete, "/v1/rules/%2A", adminTok, "", http.StatusNoContent, nil)
		if s, _ := p.scope(readTok, "gamma"); s.Limit != -1 {
			t.Fatalf("gamma (disabled, no \"*\"): %+v, want unlimited", s)
		}
	})

	// Everything changed through the API is there after a restart.
	before := p.rules(readTok)
	p.stop()
	p = runSluice(t, cfg)
	after := p.rules(readTok)
	if len(after) != 2 || len(before) != 2 {
		t.Fatalf("rules before the restart %+v, after %+v; want acme and gamma", before, after)
	}
	for i := range before {
		if !after[i].LastModified.Equal(before[i].LastModified) {
			t.Errorf("rule %s: lastModified %v after the restart, %v before", after[i].Pattern, after[i].LastModified, before[i].LastModified)
		}
		after[i].LastModified, before[i].LastModified = time.Time{}, time.Time{}
		if after[i] != before[i] {
			t.Errorf("rule after the restart %+v, before %+v", after[i], before[i])
		}
	}
	if after[0].Pattern != "acme" || after[0].Concurrency != 1 || after[0].Description != "one at a time" || after[0].Origin != admin.OriginAPI ||
		after[1].Pattern != "gamma" || !after[1].Disabled {
		t.Errorf("rules after the restart: %+v", after)
	}
	var f admin.FunctionView
	p.must(http.MethodGet, "/v1/functions/other", readTok, "", http.StatusOK, &f)
	if r := f.Concurrency.ReservedConcurrentExecutions; r == nil || *r != 7 || f.Concurrency.Origin != admin.OriginAPI {
		t.Errorf("other after the restart: %+v, want 7 from the API", f.Concurrency)
	}
	p.must(http.MethodGet, "/v1/functions/fn", readTok, "", http.StatusOK, &f)
	if f.Concurrency.ReservedConcurrentExecutions != nil {
		t.Errorf("fn after the restart: %+v, want no reservation", f.Concurrency)
	}
	// And the rule still holds traffic to 1.
	fn.settle(t, "acme")
	publish(t, p.nats, "acme", 1000, 12)
	waitUntil(t, 60*time.Second, "12 more acme invocations after the restart", func() error {
		if n := fn.callsOf("acme"); n < 80 {
			return fmt.Errorf("%d so far", n)
		}
		return nil
	})
	if _, most := fn.stats("acme"); most != 1 {
		t.Errorf("acme ran %d at once after the restart, want 1", most)
	}
}

func TestSIGHUPReloadsLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	fn := newSlowFn(t, 0)
	gate := make(chan struct{})
	fn.gate, fn.entered = gate, make(chan struct{}, 100)
	tmpl := `
account: {concurrency: %d}
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q, timeout: 30s, reserved_concurrency: %d}
rules:
%s
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 2, function: fn, batch_size: 1, scope: "header:tenant"}
`
	path := filepath.Join(dir, "sluice.yaml")
	state := filepath.Join(dir, "state")
	writeFile(t, path, fmt.Sprintf(tmpl, 1000, state, fn.srv.URL, 5, `  - {pattern: "*", concurrency: 10}`))
	p := runSluice(t, path)
	p.must(http.MethodPut, "/v1/rules/api-only", "", `{"concurrency": 2}`, http.StatusOK, nil)
	p.must(http.MethodPut, "/v1/rules/acme", "", `{"description": "from the API"}`, http.StatusBadRequest, nil) // no such rule yet

	// One invocation in flight across the reload.
	publish(t, p.nats, "acme", 0, 1)
	select {
	case <-fn.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("the function was not invoked within 30s")
	}

	writeFile(t, path, fmt.Sprintf(tmpl, 300, state, fn.srv.URL, 7,
		`  - {pattern: "*", concurrency: 3}
  - {pattern: acme, concurrency: 1, description: from the file}`))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the reloaded rules", func() error {
		for _, r := range p.rules("") {
			if r.Pattern == "acme" {
				return nil
			}
		}
		return fmt.Errorf("no rule acme yet")
	})
	rules := p.rules("")
	want := map[string]int{"*": 3, "acme": 1, "api-only": 2}
	if len(rules) != len(want) {
		t.Fatalf("rules after the reload: %+v", rules)
	}
	for _, r := range rules {
		if want[r.Pattern] != r.Concurrency {
			t.Errorf("rule %+v after the reload, want concurrency %d", r, want[r.Pattern])
		}
		if r.Pattern == "*" && (r.Version != 2 || r.Origin != admin.OriginConfig) {
			t.Errorf("rule * after the reload: %+v, want version 2 from the config", r)
		}
		if r.Pattern == "api-only" && r.Origin != admin.OriginAPI {
			t.Errorf("rule api-only after the reload: %+v, want it kept from the API", r)
		}
	}
	var f admin.FunctionView
	p.must(http.MethodGet, "/v1/functions/fn", "", "", http.StatusOK, &f)
	if r := f.Concurrency.ReservedConcurrentExecutions; r == nil || *r != 7 {
		t.Errorf("fn reservation after the reload: %+v, want 7", f.Concurrency)
	}
	if f.Usage.ConcurrentExecutions != 1 {
		t.Errorf("fn runs %d after the reload, want the 1 in flight kept", f.Usage.ConcurrentExecutions)
	}
	var acct admin.AccountView
	p.must(http.MethodGet, "/v1/account", "", "", http.StatusOK, &acct)
	if acct.AccountLimit.ConcurrentExecutions != 300 {
		t.Errorf("account after the reload: %+v, want 300", acct.AccountLimit)
	}
	// An API change on top of a rule of the file stays on top at the next reload.
	p.must(http.MethodPut, "/v1/rules/acme", "", `{"concurrency": 2}`, http.StatusOK, nil)

	// A file that does not load changes nothing.
	writeFile(t, path, "account: {concurrency: -1}\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the failed reload logged", func() error {
		for _, l := range p.logLines() {
			if strings.Contains(l, "reload: the configuration does not load") {
				return nil
			}
		}
		return fmt.Errorf("not logged")
	})
	writeFile(t, path, fmt.Sprintf(tmpl, 300, state, fn.srv.URL, 7,
		`  - {pattern: "*", concurrency: 3}
  - {pattern: acme, concurrency: 1, description: changed in the file}`))
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, 20*time.Second, "the second reload", func() error {
		for _, r := range p.rules("") {
			if r.Pattern == "acme" && r.Description == "changed in the file" {
				if r.Concurrency != 2 || r.Origin != admin.OriginAPI {
					return fmt.Errorf("acme %+v, want the API's concurrency 2 on top", r)
				}
				return nil
			}
		}
		return fmt.Errorf("acme not reloaded yet: %+v", p.rules(""))
	})

	// The invocation in flight during the reloads finishes normally, once.
	close(gate)
	waitUntil(t, 20*time.Second, "the in-flight invocation ends", func() error {
		if err := p.call2("/v1/functions/fn"); err != nil {
			return err
		}
		return nil
	})
	time.Sleep(500 * time.Millisecond)
	if n := fn.callsOf("acme"); n != 1 {
		t.Errorf("the function was invoked %d times for the one event, want 1 (not redelivered)", n)
	}
	p.stop()
}

// call2 returns nil once fn runs nothing.
func (p *proc) call2(path string) error {
	var f admin.FunctionView
	code, body := p.call(http.MethodGet, path, "", "")
	if code != http.StatusOK {
		return fmt.Errorf("GET %s: %d %s", path, code, body)
	}
	if err := json.Unmarshal([]byte(body), &f); err != nil {
		return err
	}
	if f.Usage.ConcurrentExecutions != 0 {
		return fmt.Errorf("%d running", f.Usage.ConcurrentExecutions)
	}
	return nil
}

// /readyz follows the brokers: not ready while the NATS server sluice uses
// is down, ready again once it is back.
func TestReadyzFollowsTheBroker(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	start := func(port int) *natssrc.Embedded {
		e, err := natssrc.StartEmbedded(filepath.Join(dir, "nats"), natssrc.WithHost("127.0.0.1"), natssrc.WithPort(port))
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := start(-1)
	url := e.ClientURL()
	defer func() { e.Shutdown() }()
	var port int
	if _, err := fmt.Sscanf(url[strings.LastIndexByte(url, ':')+1:], "%d", &port); err != nil {
		t.Fatal(err)
	}
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  bus: {nats: {url: %q}}
functions:
  fn: {url: "http://127.0.0.1:1/invoke"}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: fn}
`, filepath.Join(dir, "state"), url))
	p := runSluice(t, cfg)
	if code, body := p.call(http.MethodGet, "/readyz", "", ""); code != http.StatusOK {
		t.Fatalf("readyz with the broker up: %d %s", code, body)
	}
	e.Shutdown()
	waitUntil(t, 30*time.Second, "not ready with the broker down", func() error {
		code, body := p.call(http.MethodGet, "/readyz", "", "")
		if code != http.StatusServiceUnavailable || !strings.Contains(body, "brokers.bus") {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	e = start(port)
	waitUntil(t, 60*time.Second, "ready again with the broker back", func() error {
		if code, body := p.call(http.MethodGet, "/readyz", "", ""); code != http.StatusOK {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
}

// A Kafka broker that does not answer keeps sluice not ready, naming it.
func TestReadyzKafkaUnreachable(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  main: {kafka: {seeds: ["127.0.0.1:1"]}}
functions:
  fn: {url: "http://127.0.0.1:1/invoke"}
sources:
  orders: {topic: orders, function: fn}
`, filepath.Join(dir, "state")))
	p := runSluice(t, cfg)
	code, body := p.call(http.MethodGet, "/readyz", "", "")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "brokers.main") {
		t.Fatalf("readyz with Kafka unreachable: %d %q, want 503 naming brokers.main", code, body)
	}
	if code, _ := p.call(http.MethodGet, "/healthz", "", ""); code != http.StatusOK {
		t.Fatalf("healthz: %d, want 200 (alive, just not ready)", code)
	}
}

func TestAdminStartupRefusals(t *testing.T) {
	dir := t.TempDir()
	for _, c := range []struct {
		name, admin string
		want        []string
	}{
		{"non-loopback without tokens", `{listen: "0.0.0.0:0"}`, []string{"admin.listen", "admin.tokens"}},
		{"missing token file", fmt.Sprintf(`{tokens: [{role: admin, file: %q}]}`, filepath.Join(dir, "nope.token")), []string{"admin.tokens[0].file", "nope.token"}},
		{"missing token variable", `{tokens: [{role: read, env: SLUICE_TEST_NO_SUCH_TOKEN}]}`, []string{"admin.tokens[0].env", "SLUICE_TEST_NO_SUCH_TOKEN"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := writeFile(t, filepath.Join(t.TempDir(), "sluice.yaml"), "admin: "+c.admin+"\nfunctions:\n  fn: {url: \"http://127.0.0.1:1/\"}\n")
			code, _, stderr := sluice(t, "run", "-c", cfg)
			if code != exitConfig {
				t.Fatalf("exit %d, want 2; stderr %q", code, stderr)
			}
			for _, w := range c.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not name %s", stderr, w)
				}
			}
		})
	}
}

// The CLI talks to the API: tables on stdout, API errors with their message
// and exit 1.
func TestAdminCLI(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin:
  listen: "127.0.0.1:0"%s
state_dir: %s
functions:
  fn: {url: "http://127.0.0.1:1/invoke", reserved_concurrency: 5}
rules:
  - {pattern: "*", concurrency: 10, description: per tenant}
`, tokens(t, dir), filepath.Join(dir, "state")))
	p := runSluice(t, cfg)
	cli := func(args ...string) (int, string, string) {
		t.Helper()
		bin, err := adminBin()
		if err != nil {
			t.Fatal(err)
		}
		args = append(args, "--admin", p.admin)
		if !slices.Contains(args, "--token") {
			args = append(args, "--token", tokenOf(dir, "admin"))
		}
		cmd := exec.Command(bin, args...)
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		err = cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return code, out.String(), errb.String()
	}
	for _, c := range []struct {
		args []string
		code int
		out  []string // on stdout
		err  string   // on stderr
	}{
		{[]string{"account"}, 0, []string{"account", "1000", "unreserved pool", "995"}, ""},
		{[]string{"concurrency", "put", "--function", "fn", "--reserved", "901"}, 1, nil, "would leave the unreserved pool at 99, under min_unreserved (100)"},
		{[]string{"concurrency", "put", "--function", "fn", "--reserved", "8"}, 0, []string{"reserved concurrency 8"}, ""},
		{[]string{"functions", "get", "fn"}, 0, []string{"reserved concurrency", "8 (api)"}, ""},
		{[]string{"functions", "get", "nope"}, 1, nil, `function "nope" is not configured`},
		{[]string{"rules", "set", "acme", "--concurrency", "2", "--description", "big tenant"}, 0, []string{"acme", "2", "big tenant", "api"}, ""},
		{[]string{"rules", "set", "acme", "--concurrency", "3"}, 0, []string{"acme", "3", "big tenant"}, ""},
		{[]string{"rules", "disable", "acme"}, 0, []string{"rule acme disabled"}, ""},
		{[]string{"rules", "list", "--extra"}, 0, []string{"VERSION", "*", "config", "acme", "disabled", "api"}, ""},
		{[]string{"rules", "enable", "acme"}, 0, []string{"rule acme enabled"}, ""},
		{[]string{"limits"}, 0, []string{"SCOPE", "acme", "3"}, ""},
		{[]string{"rules", "delete", "acme"}, 0, []string{"rule acme deleted"}, ""},
		{[]string{"rules", "delete", "acme"}, 1, nil, `no rule "acme"`},
		{[]string{"concurrency", "delete", "--function", "fn"}, 0, []string{"shares the unreserved pool"}, ""},
		{[]string{"shards"}, 0, []string{"SHARD", "STATE"}, ""},
		{[]string{"queues"}, 0, []string{"FUNCTION", "WAITING"}, ""},
	} {
		code, out, errOut := cli(c.args...)
		if code != c.code {
			t.Errorf("sluice %s: exit %d, want %d; stdout %q stderr %q", strings.Join(c.args, " "), code, c.code, out, errOut)
			continue
		}
		for _, w := range c.out {
			if !strings.Contains(out, w) {
				t.Errorf("sluice %s: stdout lacks %q:\n%s", strings.Join(c.args, " "), w, out)
			}
		}
		if c.err != "" && !strings.Contains(errOut, c.err) {
			t.Errorf("sluice %s: stderr %q lacks %q", strings.Join(c.args, " "), errOut, c.err)
		}
	}
	// A read token may not write; the message says which role is needed.
	code, _, errOut := cli("rules", "set", "x", "--concurrency", "1", "--token", tokenOf(dir, "read"))
	if code != 1 || !strings.Contains(errOut, "403") || !strings.Contains(errOut, "role admin") {
		t.Errorf("write with a read token: exit %d, stderr %q", code, errOut)
	}
	// The token from $SLUICE_TOKEN, the address from the config's admin.listen.
	bin, _ := adminBin()
	host := strings.TrimPrefix(p.admin, "http://")
	cfg2 := writeFile(t, filepath.Join(dir, "client.yaml"), fmt.Sprintf("admin: {listen: %q}\n", host))
	cmd := exec.Command(bin, "rules", "list", "-c", cfg2)
	cmd.Env = append(os.Environ(), "SLUICE_TOKEN="+tokenOf(dir, "read"))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "per tenant") {
		t.Errorf("rules list with $SLUICE_TOKEN and -c: %v\n%s", err, out)
	}
	cmd = exec.Command(bin, "rules", "list", "-c", cfg2)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "401") {
		t.Errorf("rules list without a token: %v\n%s, want exit 1 with the 401", err, out)
	}
}
