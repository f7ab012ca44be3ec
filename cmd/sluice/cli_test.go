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
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	natsgo "github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/admin"
)

// The CLI through the built binary: output formats, --version, completion,
// error prefixes and the environment checks (issue 16).

// runBin runs the sluice binary with args and env added to the
// environment, and returns its exit code and output.
func runBin(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	bin, err := adminBin()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errb.String()
	case err != nil:
		t.Fatal(err)
	}
	return 0, out.String(), errb.String()
}

func TestCLIVersionFlag(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	code, flag, _ := runBin(t, nil, "--version")
	_, cmd, _ := runBin(t, nil, "version")
	if code != 0 || flag != cmd || !strings.HasPrefix(flag, "sluice ") {
		t.Errorf("--version: exit %d, %q; version: %q", code, flag, cmd)
	}
}

// Every admin view prints a table by default, and the API's answer as JSON
// or YAML with -o.
func TestCLIOutputFormats(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
functions:
  fn: {url: "http://127.0.0.1:1/invoke", reserved_concurrency: 5}
rules:
  - {pattern: "*", concurrency: 10, description: per tenant}
`, filepath.Join(dir, "state")))
	p := runSluice(t, cfg)
	for _, tc := range []struct {
		args  []string
		table string // in the table
		key   string // a top-level key of the JSON answer
	}{
		{[]string{"account"}, "account ", "accountLimit"},
		{[]string{"limits"}, "SCOPE", "scopes"},
		{[]string{"shards"}, "SHARD", "shards"},
		{[]string{"queues"}, "FUNCTION", "queues"},
		{[]string{"rules", "list"}, "PATTERN", "rules"},
		{[]string{"functions", "get", "fn"}, "function ", "functionName"},
		{[]string{"functions", "list"}, "FUNCTION", "functions"},
	} {
		name := strings.Join(tc.args, " ")
		args := append(tc.args, "--admin", p.admin)
		code, out, errOut := runBin(t, nil, args...)
		if code != 0 || !strings.Contains(out, tc.table) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want a table starting %q", name, code, out, errOut, tc.table)
		}
		for _, format := range []string{"json", "yaml"} {
			code, out, errOut := runBin(t, nil, append(args, "-o", format)...)
			var v map[string]any
			var err error
			if format == "json" {
				err = json.Unmarshal([]byte(out), &v)
			} else {
				err = yaml.Unmarshal([]byte(out), &v)
			}
			if _, ok := v[tc.key]; code != 0 || err != nil || !ok {
				t.Errorf("%s -o %s: exit %d, %v, stdout %q, stderr %q; want an object with %q", name, format, code, err, out, errOut, tc.key)
			}
		}
	}
	// YAML and JSON say the same.
	_, js, _ := runBin(t, nil, "rules", "list", "--admin", p.admin, "-o", "json")
	_, ym, _ := runBin(t, nil, "rules", "list", "--admin", p.admin, "-o", "yaml")
	var a, b struct{ Rules []admin.Rule }
	if json.Unmarshal([]byte(js), &a) != nil || yaml.Unmarshal([]byte(ym), &b) != nil || len(a.Rules) != 1 ||
		len(b.Rules) != 1 || a.Rules[0].Pattern != "*" || b.Rules[0].Pattern != "*" {
		t.Errorf("rules list: json %q, yaml %q", js, ym)
	}
	code, _, errOut := runBin(t, nil, "shards", "--admin", p.admin, "-o", "xml")
	if code != exitConfig || !strings.HasPrefix(errOut, `sluice: --output: "xml" is not one of table, json, yaml`) {
		t.Errorf("-o xml: exit %d, stderr %q", code, errOut)
	}
	// Function names and rule patterns complete from the running sluice.
	_, out, _ := runBin(t, nil, "__complete", "functions", "get", "--admin", p.admin, "")
	if got := completions(out); !slices.Equal(got, []string{"fn"}) {
		t.Errorf("function completion from the API = %q, want [fn]", got)
	}
	_, out, _ = runBin(t, nil, "functions", "list", "--admin", p.admin)
	if !strings.HasPrefix(out, "FUNCTION") || !strings.Contains(out, "fn ") || !strings.Contains(out, " 5 ") {
		t.Errorf("functions list:\n%s", out)
	}
	_, out, _ = runBin(t, nil, "__complete", "rules", "disable", "--admin", p.admin, "")
	if !slices.Contains(strings.Split(out, "\n"), "*") {
		t.Errorf("rule completion = %q, want *", out)
	}
	// Every error starts with "sluice:".
	code, _, errOut = runBin(t, nil, "functions", "get", "nope", "--admin", p.admin)
	if code != exitFailure || !strings.HasPrefix(errOut, "sluice: ") {
		t.Errorf("functions get nope: exit %d, stderr %q", code, errOut)
	}
}

// dlqEmbeddedConfig is a configuration on the embedded NATS with a
// dead-letter stream; the dlq commands start the server on its state dir.
func dlqEmbeddedConfig(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	return writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  thumbnail: {url: "http://127.0.0.1:1/invoke"}
  resize: {url: "http://127.0.0.1:1/invoke"}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 2, function: thumbnail, on_failure: dead}
  views: {stream: VIEWS, subject: "views.*", partitions: 2, function: resize, on_failure: dead}
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>"}
`, filepath.Join(dir, "state")))
}

func TestCLIDLQ(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	cfg := dlqEmbeddedConfig(t)
	for _, tc := range []struct {
		args []string
		code int
		out  string // stdout, exactly
		err  string // stderr starts with it
	}{
		{[]string{"dlq", "list", "--source", "nope"}, exitConfig, "", `sluice: --source: "nope" is not a source of the configuration nor of any dead letter (sources: clicks, views)`},
		{[]string{"dlq", "list", "--function", "nope"}, exitConfig, "", `sluice: --function: "nope" is not a function of the configuration nor of any dead letter (functions: resize, thumbnail)`},
		{[]string{"dlq", "list", "--source", "clicks", "-o", "yaml"}, 0, "[]\n", ""},
		{[]string{"dlq", "list", "-o", "json"}, 0, "", ""},
		{[]string{"dlq", "list", "--json"}, 0, "", ""},
		{[]string{"dlq", "show", "nope", "-o", "yaml"}, exitFailure, "", `sluice: dlq: no dead letter with id "nope" in dead`},
	} {
		code, out, errOut := runBin(t, nil, append(tc.args, "-c", cfg, "--log-level", "warn")...)
		if code != tc.code || out != tc.out || !strings.HasPrefix(errOut, tc.err) {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want %d, %q, %q", strings.Join(tc.args, " "), code, out, errOut, tc.code, tc.out, tc.err)
		}
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"dlq", "list", "--source", ""}, []string{"clicks", "views"}},
		{[]string{"dlq", "replay", "--function", "th"}, []string{"thumbnail"}},
		{[]string{"dlq", "list", "--condition", "Rec"}, []string{"RecordAgeExceeded", "RecordTooLarge"}},
		{[]string{"dlq", "replay", "--to", ""}, []string{"function", "source"}},
		{[]string{"dlq", "list", "--destination", ""}, []string{"dead"}},
		{[]string{"dlq", "list", "-o", ""}, []string{"table", "json", "yaml"}},
		{[]string{"functions", "get", ""}, []string{"resize", "thumbnail"}},
		{[]string{"concurrency", "put", "--function", "r"}, []string{"resize"}},
		{[]string{"shards", "--log-level", ""}, []string{"debug", "info", "warn", "error"}},
		{[]string{"dlq", "show", ""}, nil}, // no letters: nothing, and no error
	} {
		args := append([]string{"__complete", "-c", cfg}, tc.args...)
		code, out, errOut := runBin(t, nil, args...)
		got := completions(out)
		if code != 0 || !slices.Equal(got, tc.want) {
			t.Errorf("complete %q: exit %d, got %q, want %q (stderr %q)", tc.args, code, got, tc.want, errOut)
		}
	}
}

// completions returns the values of a __complete answer, without the
// directive line and the descriptions.
func completions(out string) []string {
	var got []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		if line == "" || strings.HasPrefix(line, ":") {
			continue
		}
		v, _, _ := strings.Cut(line, "\t")
		got = append(got, v)
	}
	return got
}

// The -c, --set and environment messages, and the sluice: prefix on every
// line of a bad configuration.
func TestCLIConfigMessages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	t.Parallel()
	dir := t.TempDir()
	good := writeFile(t, filepath.Join(dir, "sluice.yaml"), `
functions:
  thumbnail: {url: "http://127.0.0.1:8080/invoke"}
sources:
  orders: {stream: ORDERS, subject: "orders.*", partitions: 2, function: thumbnail}
`)
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		env  []string
		args []string
		err  string // stderr, exactly
	}{
		{nil, []string{"-c", filepath.Join(dir, "adir")},
			"sluice: " + filepath.Join(dir, "adir") + ": is a directory; -c takes a configuration file (.yaml, .yml, .json or .toml)\n"},
		{nil, []string{"-c", filepath.Join(dir, "nope.yaml")},
			"sluice: open " + filepath.Join(dir, "nope.yaml") + ": no such file or directory\n"},
		{nil, []string{"-c", filepath.Join(dir, "x.ini")},
			"sluice: " + filepath.Join(dir, "x.ini") + `: unknown file type ".ini" (use .yaml, .yml, .json or .toml)` + "\n"},
		{nil, []string{"-c", good, "--set", "rules[0].concurrency=5"},
			"sluice: --set rules[0].concurrency: rules is a list; its items can only be set in a file (a running sluice changes a rule with `sluice rules set PATTERN --concurrency N`)\n"},
		{[]string{"SLUICE_SOURCE__ORDERS__BATCH_SIZE=7"}, []string{"-c", good},
			"sluice: SLUICE_SOURCE__ORDERS__BATCH_SIZE: matches no configuration key (did you mean SLUICE_SOURCES__ORDERS__BATCH_SIZE, which sets sources.orders.batch_size?)\n"},
		{[]string{"SLUICE_SOURCES__ORDRES__BATCH_SIZE=7"}, []string{"-c", good},
			"sluice: SLUICE_SOURCES__ORDRES__BATCH_SIZE: matches no configuration key (did you mean SLUICE_SOURCES__ORDERS__BATCH_SIZE, which sets sources.orders.batch_size?)\n"},
		{[]string{"SLUICE_SOURCES__ORDERS__BATCH_SIZE=lots"}, []string{"-c", good},
			"sluice: sources.orders.batch_size: expected an integer, got \"lots\" (set by SLUICE_SOURCES__ORDERS__BATCH_SIZE)\n"},
		{[]string{"SLUICE_SOURCES__PAYMENTS__BATCH_SIZE=7"}, []string{"-c", good},
			"sluice: sources.payments.function: required (the name of a function) (sources.payments was created by SLUICE_SOURCES__PAYMENTS__BATCH_SIZE)\n" +
				"sluice: sources.payments: one of topic (Kafka) or stream and subject (NATS JetStream) is required (sources.payments was created by SLUICE_SOURCES__PAYMENTS__BATCH_SIZE)\n"},
	} {
		code, _, errOut := runBin(t, tc.env, append([]string{"config", "validate"}, tc.args...)...)
		if code != exitConfig || errOut != tc.err {
			t.Errorf("config validate %q %q: exit %d, stderr:\n%s\nwant:\n%s", tc.env, tc.args, code, errOut, tc.err)
		}
	}
}

// run warns about a variable that matches no key, names the closest key,
// and runs without it.
func TestCLIRunWarnsAboutUnknownEnv(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin, err := adminBin()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf("admin: {listen: \"127.0.0.1:0\"}\nstate_dir: %s\n", filepath.Join(dir, "state")))
	cmd := exec.Command(bin, "run", "-c", cfg)
	cmd.Env = append(os.Environ(), "SLUICE_ACOUNT__CONCURRENCY=5")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string, 64) // the log lines until "sluice running"; the reader stops after it
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			lines <- sc.Text()
			if strings.Contains(sc.Text(), `"sluice running"`) {
				break
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	var warned, running bool
	deadline := time.After(60 * time.Second)
	for !running {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("sluice stopped before it ran")
			}
			var e struct{ Level, Msg string }
			_ = json.Unmarshal([]byte(l), &e)
			if e.Level == "WARN" && strings.Contains(e.Msg, "SLUICE_ACOUNT__CONCURRENCY") && strings.Contains(e.Msg, "SLUICE_ACCOUNT__CONCURRENCY") {
				warned = true
			}
			running = strings.Contains(l, `"sluice running"`)
			if running && !strings.Contains(l, `"account_concurrency":1000`) {
				t.Errorf("the variable was applied: %s", l)
			}
		case <-deadline:
			t.Fatal("sluice did not run within 60s")
		}
	}
	if !warned {
		t.Error("run did not warn about SLUICE_ACOUNT__CONCURRENCY")
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
}

// The quick start's tenants cover every partition of its source, as
// nats-server hashes them.
func TestQuickstartTenantsCoverEveryPartition(t *testing.T) {
	tr, err := natsserver.NewSubjectTransform("clicks.*", "clicks.{{partition(4,1)}}.{{wildcard(1)}}")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, tenant := range quickstartTenants {
		s, err := tr.Match("clicks." + tenant)
		if err != nil {
			t.Fatal(err)
		}
		seen[strings.Split(s, ".")[1]] = true
	}
	if len(seen) != 4 {
		t.Errorf("the tenants reach partitions %v, want all of 0..3", seen)
	}
}

// The quick start as a user runs it: it prints the admin URL, the status
// page and a `sluice shards --admin` line that works as printed, and every
// partition delivers.
func TestQuickstartBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	bin, err := adminBin()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "quickstart", "--duration", "60s")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var all strings.Builder
	lines := make(chan string, 256) // stdout lines; the reader never blocks on a slow test for long
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var adminURL, statusURL, shardsLine string
	deadline := time.After(60 * time.Second)
	for shardsLine == "" {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("quick start ended early:\n%s", all.String())
			}
			all.WriteString(l + "\n")
			if u, ok := strings.CutPrefix(l, "admin API at "); ok {
				adminURL, _, _ = strings.Cut(u, " ")
			}
			if u, ok := strings.CutPrefix(l, "status page at "); ok {
				statusURL = u
			}
			if _, c, ok := strings.Cut(l, "in another terminal: "); ok {
				shardsLine = c
			}
		case <-deadline:
			t.Fatalf("no `shards --admin` line within 60s:\n%s", all.String())
		}
	}
	if strings.HasSuffix(adminURL, ":0") || !strings.HasPrefix(adminURL, "http://127.0.0.1:") || statusURL != adminURL+"/ui/" {
		t.Fatalf("admin URL %q, status page %q", adminURL, statusURL)
	}
	args := strings.Fields(shardsLine)
	if len(args) != 4 || args[0] != "sluice" || args[1] != "shards" || args[2] != "--admin" || args[3] != adminURL {
		t.Fatalf("printed %q, want `sluice shards --admin %s`", shardsLine, adminURL)
	}
	// Run it as printed (with this binary for "sluice"), until every
	// partition has delivered.
	var last string
	for start := time.Now(); ; time.Sleep(500 * time.Millisecond) {
		code, out, errOut := runBin(t, nil, args[1:]...)
		if code != 0 {
			t.Fatalf("%s: exit %d, %s", shardsLine, code, errOut)
		}
		_, js, _ := runBin(t, nil, append(args[1:], "-o", "json")...)
		var v struct{ Shards []admin.ShardView }
		if err := json.Unmarshal([]byte(js), &v); err != nil {
			t.Fatal(err)
		}
		delivering := 0
		for _, s := range v.Shards {
			if s.Delivered > 0 {
				delivering++
			}
		}
		if len(v.Shards) == 4 && delivering == 4 && strings.Contains(out, "clicks/0") {
			break
		}
		last = js
		if time.Since(start) > 30*time.Second {
			t.Fatalf("not every partition delivered within 30s:\n%s", last)
		}
	}
	// drain the live view so the process never blocks on its stdout
	go func() {
		for l := range lines {
			all.WriteString(l + "\n")
		}
	}()
	_ = cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("quick start after Ctrl-C: %v", err)
	}
}

// dlq list, show and completion over real letters: a `sluice run` on the
// embedded NATS dead-letters what a function refuses (400), stops, then the
// dlq commands read the letters as YAML, JSON and a table, and complete
// their ids.
func TestCLIDLQWithLetters(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	t.Parallel()
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "no such tenant", http.StatusBadRequest) // a permanent error: dead-lettered at once
	}))
	defer fn.Close()
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: fn, batch_size: 1, on_failure: dead}
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>"}
`, filepath.Join(dir, "state"), fn.URL))
	p := runSluice(t, cfg)
	nc, err := natsgo.Connect(p.nats)
	if err != nil {
		t.Fatal(err)
	}
	for _, tenant := range []string{"acme", "globex"} {
		if err := nc.Publish("clicks."+tenant, []byte(`{"click": 1}`)); err != nil {
			t.Fatal(err)
		}
	}
	nc.Close()
	for start := time.Now(); ; time.Sleep(200 * time.Millisecond) {
		var v struct{ Shards []admin.ShardView }
		_, js, _ := runBin(t, nil, "shards", "--admin", p.admin, "-o", "json")
		if json.Unmarshal([]byte(js), &v) == nil && len(v.Shards) == 1 && v.Shards[0].DeadLetters == 2 {
			break
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("two letters not written within 30s: %s", js)
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM) // the dlq commands open the state dir's embedded server
	<-p.done

	code, out, errOut := runBin(t, nil, "dlq", "list", "-c", cfg, "--log-level", "warn", "-o", "yaml")
	var letters []map[string]any
	if err := yaml.Unmarshal([]byte(out), &letters); code != 0 || err != nil || len(letters) != 2 ||
		letters[0]["condition"] != "PermanentError" || letters[0]["source"] != "clicks" {
		t.Fatalf("dlq list -o yaml: exit %d, %v\n%s\n%s", code, err, out, errOut)
	}
	id, _ := letters[0]["id"].(string)
	_, js, _ := runBin(t, nil, "dlq", "list", "-c", cfg, "--log-level", "warn", "-o", "json")
	_, alias, _ := runBin(t, nil, "dlq", "list", "-c", cfg, "--log-level", "warn", "--json")
	if js != alias || strings.Count(js, "\n") != 2 || !strings.Contains(js, `"id":"`+id+`"`) {
		t.Errorf("dlq list -o json:\n%s\n--json:\n%s", js, alias)
	}
	_, out, _ = runBin(t, nil, "dlq", "show", id, "-c", cfg, "--log-level", "warn", "-o", "yaml")
	var e map[string]any
	if err := yaml.Unmarshal([]byte(out), &e); err != nil || e["id"] != id || e["function"] != "fn" {
		t.Errorf("dlq show -o yaml: %v\n%s", err, out)
	}
	_, out, _ = runBin(t, nil, "dlq", "show", id, "-c", cfg, "--log-level", "warn", "-o", "table")
	if !strings.Contains(out, "condition") || !strings.Contains(out, "PermanentError") || !strings.Contains(out, "status 400") {
		t.Errorf("dlq show -o table:\n%s", out)
	}
	_, out, _ = runBin(t, nil, "__complete", "-c", cfg, "--log-level", "warn", "dlq", "show", "")
	ids := completions(out)
	if len(ids) != 2 || !slices.Contains(ids, id) {
		t.Errorf("dlq show completion = %q, want the 2 letter ids", ids)
	}
	// A source of a letter is known even when the configuration lost it.
	noSource := writeFile(t, filepath.Join(dir, "renamed.yaml"), strings.Replace(mustRead(t, cfg), "  clicks:", "  taps:", 1))
	if code, _, errOut := runBin(t, nil, "dlq", "list", "-c", noSource, "--log-level", "warn", "--source", "clicks"); code != 0 {
		t.Errorf("dlq list --source of a letter, not of the configuration: exit %d, %s", code, errOut)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
