package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/spf13/cobra/doc"

	"github.com/sluicehq/sluice/config"
)

// The references generated from the code: the CLI (from the cobra tree)
// and the metrics (from the registry of a wired sluice). `make docs`
// rewrites them (-update); otherwise a test fails when a file under
// docs/reference differs from what the code generates.

var update = flag.Bool("update", false, "rewrite the generated documents under docs/ (make docs)")

const referenceDir = "../../docs/reference"

// checkGenerated compares the generated files with those of want (a
// directory under docs/reference), or writes them there with -update. With
// whole, the directory holds these files only: others are stale.
func checkGenerated(t *testing.T, generated map[string][]byte, want string, whole bool) {
	t.Helper()
	if *update {
		if whole {
			if err := os.RemoveAll(want); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(want, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, b := range generated {
			if err := os.WriteFile(filepath.Join(want, name), b, 0o644); err != nil { //nolint:gosec // documents of the repository
				t.Fatal(err)
			}
		}
		return
	}
	entries, err := os.ReadDir(want)
	if err != nil {
		t.Fatalf("%v: run `make docs`", err)
	}
	for _, e := range entries {
		if _, ok := generated[e.Name()]; whole && !ok {
			t.Errorf("%s/%s is not generated any more: run `make docs`", want, e.Name())
		}
	}
	for _, name := range slices.Sorted(maps.Keys(generated)) {
		old, err := os.ReadFile(filepath.Join(want, name))
		if err != nil || !bytes.Equal(old, generated[name]) {
			t.Errorf("%s/%s is not what the code generates: run `make docs` and commit the result", want, name)
		}
	}
}

// TestGeneratedCLIReference: one page per command, from the cobra tree.
func TestGeneratedCLIReference(t *testing.T) {
	root := newRootCmd()
	root.InitDefaultHelpCmd()
	root.InitDefaultCompletionCmd()
	root.DisableAutoGenTag = true // no date: the pages must be reproducible
	dir := t.TempDir()
	if err := doc.GenMarkdownTree(root, dir); err != nil {
		t.Fatal(err)
	}
	generated := map[string][]byte{}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		generated[e.Name()] = b
	}
	if _, ok := generated["sluice_dlq_replay.md"]; !ok || len(generated) < 20 {
		t.Fatalf("generated %d pages: %v", len(generated), slices.Sorted(maps.Keys(generated)))
	}
	checkGenerated(t, generated, filepath.Join(referenceDir, "cli"), true)
}

// metricInfo is one metric of the reference.
type metricInfo struct {
	name, typ, help string
	labels          []string
}

// wiredMetrics wires a sluice with a stream source, an async source, a
// dead-letter destination, an HTTP function with a reservation and a
// cluster section (the cluster engine's metrics, its share per reserved
// function), invokes the function once through the ingress (so that the
// per-function series exist), and returns
// every sluice_ metric its registry describes, with the type the registry
// gathers (counters that have no series yet are recognised by _total).
func wiredMetrics(t *testing.T) []metricInfo {
	t.Helper()
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	defer fn.Close()
	dir := t.TempDir()
	cfgPath := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q, async_queue: jobs, reserved_concurrency: 5}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: fn, on_failure: dead}
  jobs: {stream: JOBS, subject: "jobs.>", mode: async, function: fn, on_failure: dead}
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>"}
cluster: {name: docs}
`, filepath.Join(dir, "state"), fn.URL))
	cfg, err := config.Load([]string{cfgPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := wire(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	api, err := a.adminAPI()
	if err != nil {
		t.Fatal(err)
	}
	// In cluster mode a synchronous invocation is refused (429) until the
	// engine's first round gave this process a share of the pool.
	deadline := time.Now().Add(30 * time.Second)
	for {
		rec := httptest.NewRecorder()
		api.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/v1/functions/fn/invocations", strings.NewReader("{}")))
		if rec.Code == http.StatusOK {
			break
		}
		if rec.Code != http.StatusTooManyRequests || time.Now().After(deadline) {
			t.Fatalf("invoking fn: %d %s", rec.Code, rec.Body)
		}
		time.Sleep(50 * time.Millisecond)
	}

	types := map[string]string{}
	mfs, err := a.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		types[mf.GetName()] = strings.ToLower(dto.MetricType_name[int32(mf.GetType())])
	}
	descs := make(chan *prometheus.Desc, 16) // drained below while Describe writes
	go func() { a.reg.Describe(descs); close(descs) }()
	// Desc has no accessors; its String is
	// Desc{fqName: "name", help: "...", constLabels: {k="v"}, variableLabels: {a,b}}.
	re := regexp.MustCompile(`fqName: "([^"]+)", help: "((?:[^"\\]|\\.)*)"(?:, unit: "[^"]*")?, constLabels: \{([^}]*)\}, variableLabels: \{([^}]*)\}`)
	var out []metricInfo
	for d := range descs {
		m := re.FindStringSubmatch(d.String())
		if m == nil || !strings.HasPrefix(m[1], "sluice_") {
			continue
		}
		mi := metricInfo{name: m[1], help: strings.ReplaceAll(m[2], `\"`, `"`), typ: types[m[1]]}
		for kv := range strings.SplitSeq(m[3], ",") {
			if k, _, _ := strings.Cut(kv, "="); strings.TrimSpace(k) != "" {
				mi.labels = append(mi.labels, strings.TrimSpace(k))
			}
		}
		for l := range strings.SplitSeq(m[4], ",") {
			if l = strings.TrimSpace(l); l != "" {
				mi.labels = append(mi.labels, l)
			}
		}
		switch {
		case mi.typ != "":
		case strings.HasSuffix(mi.name, "_total"):
			mi.typ = "counter"
		default:
			mi.typ = gaugesWhileNonZero[mi.name]
		}
		if mi.typ == "" {
			t.Errorf("%s has no series after the wiring above, so its type is unknown: make wiredMetrics exercise it", mi.name)
		}
		out = append(out, mi)
	}
	slices.SortFunc(out, func(x, y metricInfo) int { return strings.Compare(x.name, y.name) })
	// A collector per source describes its metrics once per source.
	return slices.CompactFunc(out, func(x, y metricInfo) bool { return x.name == y.name })
}

// gaugesWhileNonZero are gauges the dispatcher reports at scrape time only
// for functions with invocations running or waiting; a sluice at rest has no
// series of them to read the type from.
var gaugesWhileNonZero = map[string]string{
	"sluice_function_concurrent_executions": "gauge",
	"sluice_queue_waiting":                  "gauge",
}

// TestGeneratedMetricsReference: every sluice_ series with its type,
// labels and help, from the registry of a wired sluice.
func TestGeneratedMetricsReference(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded nats-server")
	}
	var b strings.Builder
	b.WriteString(`<!-- Generated by ` + "`make docs`" + ` from the metrics registry of a wired sluice
(cmd/sluice/docs_test.go). Do not edit: a test fails when this file and the code disagree. -->

# Metrics reference

` + "`GET /metrics`" + ` on the admin listener serves these series (no token needed), plus
the Go runtime's ` + "`go_*`" + ` and the process's ` + "`process_*`" + ` series. Labels are
bounded: a function, source, destination, state, reason, outcome or
condition name, never a scope or a record key. What to alert on is in the
[operations guide](../operations.md#alerts).

| metric | type | labels | meaning |
|---|---|---|---|
`)
	metrics := wiredMetrics(t)
	for _, m := range metrics {
		labels := "—"
		if len(m.labels) > 0 {
			labels = "`" + strings.Join(m.labels, "`, `") + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", m.name, m.typ, labels, strings.ReplaceAll(m.help, "|", `\|`))
	}
	if len(metrics) < 15 {
		t.Errorf("only %d sluice metrics found", len(metrics))
	}
	checkGenerated(t, map[string][]byte{"metrics.md": []byte(b.String())}, referenceDir, false)
}
