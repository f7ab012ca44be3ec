package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"

	"github.com/sluicehq/sluice/config"
)

// No Docker engine runs in CI, so the docker/ files are checked for what
// can be checked without one: the example config validates, every file
// parses, the compose file wires what it mounts and builds, and every
// metric the alerts and the dashboard query is one sluice registers.

const dockerDir = "../../docker"

func readYAML(t *testing.T, name string, v any) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dockerDir, name))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, v); err != nil {
		t.Fatalf("docker/%s: %v", name, err)
	}
}

func TestDockerExampleConfigValidates(t *testing.T) {
	t.Setenv("SLUICE_ADMIN_TOKEN", "admin-secret")
	t.Setenv("SLUICE_INVOKE_TOKEN", "invoke-secret")
	cfg, err := config.Load([]string{filepath.Join(dockerDir, "sluice.yaml")}, nil)
	if err != nil {
		t.Fatalf("docker/sluice.yaml: %v", err)
	}
	if q := cfg.Functions["echo"].AsyncQueue; q == "" || cfg.Sources[q].Mode != "async" {
		t.Errorf("the example function's async_queue %q is not an async source", q)
	}
	var kafkaStream, natsAsync bool
	for _, s := range cfg.Sources {
		b := cfg.Brokers[s.Broker]
		kafkaStream = kafkaStream || (b.Kafka != nil && s.Mode == "stream")
		natsAsync = natsAsync || (b.NATS != nil && s.Mode == "async")
	}
	if !kafkaStream || !natsAsync {
		t.Errorf("the example pipeline lacks a Kafka stream source (%v) or a NATS async source (%v)", kafkaStream, natsAsync)
	}
}

// composeFile is the part of a compose file the test reads.
type composeFile struct {
	Services map[string]struct {
		Image string `yaml:"image"`
		Build *struct {
			Context    string `yaml:"context"`
			Dockerfile string `yaml:"dockerfile"`
		} `yaml:"build"`
		Volumes   []string          `yaml:"volumes"`
		Ports     []string          `yaml:"ports"`
		Command   any               `yaml:"command"`
		DependsOn any               `yaml:"depends_on"`
		Env       map[string]string `yaml:"environment"`
	} `yaml:"services"`
	Volumes map[string]any `yaml:"volumes"`
}

func TestDockerComposeFile(t *testing.T) {
	var c composeFile
	readYAML(t, "compose.yaml", &c)
	for _, want := range []string{"kafka", "nats", "sluice", "echo", "prometheus", "grafana"} {
		if _, ok := c.Services[want]; !ok {
			t.Errorf("compose.yaml: no service %q", want)
		}
	}
	for name, s := range c.Services {
		if (s.Image == "") == (s.Build == nil) {
			t.Errorf("services.%s: needs exactly one of image, build", name)
		}
		if s.Build != nil {
			df := filepath.Join(dockerDir, s.Build.Context, s.Build.Dockerfile)
			if _, err := os.Stat(df); err != nil {
				t.Errorf("services.%s.build: %v", name, err)
			}
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if strings.HasPrefix(src, ".") {
				if _, err := os.Stat(filepath.Join(dockerDir, src)); err != nil {
					t.Errorf("services.%s.volumes: %v", name, err)
				}
			} else if _, ok := c.Volumes[src]; !ok {
				t.Errorf("services.%s.volumes: named volume %q is not declared", name, src)
			}
		}
	}
	// The sluice service runs the example config, whose token variables it sets.
	s := c.Services["sluice"]
	if !slices.Contains(s.Volumes, "./sluice.yaml:/etc/sluice/sluice.yaml:ro") {
		t.Errorf("services.sluice.volumes = %v, want ./sluice.yaml mounted at /etc/sluice/sluice.yaml", s.Volumes)
	}
	for _, v := range []string{"SLUICE_ADMIN_TOKEN", "SLUICE_INVOKE_TOKEN"} {
		if s.Env[v] == "" {
			t.Errorf("services.sluice.environment.%s is not set; sluice.yaml reads its token from it", v)
		}
	}
	// NATS runs with JetStream.
	if cmd := fmt.Sprint(c.Services["nats"].Command); !strings.Contains(cmd, "-js") {
		t.Errorf("services.nats.command = %s, want JetStream (-js)", cmd)
	}
}

func TestDockerPrometheusConfig(t *testing.T) {
	var p struct {
		RuleFiles     []string `yaml:"rule_files"`
		ScrapeConfigs []struct {
			JobName       string `yaml:"job_name"`
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	readYAML(t, "prometheus.yml", &p)
	if !slices.Contains(p.RuleFiles, "/etc/prometheus/alerts.yml") {
		t.Errorf("rule_files = %v, want /etc/prometheus/alerts.yml (where compose.yaml mounts alerts.yml)", p.RuleFiles)
	}
	if len(p.ScrapeConfigs) == 0 || len(p.ScrapeConfigs[0].StaticConfigs) == 0 ||
		!slices.Contains(p.ScrapeConfigs[0].StaticConfigs[0].Targets, "sluice:9400") {
		t.Errorf("scrape_configs do not scrape sluice:9400 (the admin listen of sluice.yaml): %+v", p.ScrapeConfigs)
	}
	var ds struct {
		Datasources []struct{ UID, URL string } `yaml:"datasources"`
	}
	readYAML(t, "grafana/provisioning/datasources/prometheus.yaml", &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].UID != "prometheus" || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("grafana datasource = %+v, want uid prometheus at http://prometheus:9090", ds.Datasources)
	}
	var dp struct {
		Providers []struct {
			Options struct{ Path string } `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/sluice.yaml", &dp)
	if len(dp.Providers) != 1 || dp.Providers[0].Options.Path != "/var/lib/grafana/dashboards" {
		t.Errorf("grafana dashboard provider = %+v, want the path compose.yaml mounts the dashboards at", dp.Providers)
	}
}

// alertExprs returns each alert's expression by name.
func alertExprs(t *testing.T) map[string]string {
	t.Helper()
	var a struct {
		Groups []struct {
			Name  string `yaml:"name"`
			Rules []struct {
				Alert       string            `yaml:"alert"`
				Expr        string            `yaml:"expr"`
				For         string            `yaml:"for"`
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"rules"`
		} `yaml:"groups"`
	}
	readYAML(t, "alerts.yml", &a)
	out := map[string]string{}
	for _, g := range a.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" || r.Expr == "" || r.Annotations["summary"] == "" {
				t.Errorf("alerts.yml group %s: a rule without alert, expr or summary: %+v", g.Name, r)
			}
			out[r.Alert] = r.Expr
		}
	}
	return out
}

// The alerts SPEC §6 asks for, each on the metric that expresses it.
func TestDockerAlertsCoverTheSpec(t *testing.T) {
	exprs := alertExprs(t)
	for alert, metric := range map[string]string{
		"SluiceShardBlocked":            `sluice_shards{state="blocked"}`,
		"SluiceIteratorAgeHigh":         "sluice_iterator_age_seconds",
		"SluiceDeadLettersAccumulating": "sluice_dead_letters_total",
		"SluiceSustainedThrottling":     "sluice_throttles_total",
		"SluiceHTTPConnectionPoolWait":  "sluice_http_connection_wait_seconds_bucket",
		"SluiceDown":                    `up{job="sluice"}`,
		"SluiceNotReady":                "sluice_ready",
		"SluiceFunctionErrorRatio":      "sluice_invocations_total",
	} {
		if !strings.Contains(exprs[alert], metric) {
			t.Errorf("alert %s: expr %q does not use %s", alert, exprs[alert], metric)
		}
	}
}

// The liveness, readiness and error-ratio alerts each have promtool unit
// tests in alerts_test.yml (run by `make test-alerts`), which load
// alerts.yml itself.
func TestDockerAlertsHaveUnitTests(t *testing.T) {
	var u struct {
		RuleFiles []string `yaml:"rule_files"`
		Tests     []struct {
			AlertRuleTest []struct {
				Alertname string           `yaml:"alertname"`
				ExpAlerts []map[string]any `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	readYAML(t, "alerts_test.yml", &u)
	if !slices.Equal(u.RuleFiles, []string{"alerts.yml"}) {
		t.Errorf("alerts_test.yml rule_files = %v, want [alerts.yml]", u.RuleFiles)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tc := range u.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			} else {
				quiet[a.Alertname] = true
			}
		}
	}
	exprs := alertExprs(t)
	for _, alert := range []string{"SluiceDown", "SluiceNotReady", "SluiceFunctionErrorRatio"} {
		if exprs[alert] == "" {
			t.Errorf("alerts.yml has no alert %s", alert)
		}
		if !fires[alert] || !quiet[alert] {
			t.Errorf("alerts_test.yml: %s is not tested both firing (%v) and quiet (%v)", alert, fires[alert], quiet[alert])
		}
	}
}

// dashboardExprs returns every PromQL expression of the dashboard: panel
// targets and template variable queries.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dockerDir, "grafana/dashboards/sluice.json"))
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID    string `json:"uid"`
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Definition string `json:"definition"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("docker/grafana/dashboards/sluice.json: %v", err)
	}
	if d.UID == "" {
		t.Error("dashboard has no uid")
	}
	var out []string
	for _, p := range d.Panels {
		if p.Type != "row" && len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			out = append(out, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		out = append(out, v.Definition)
	}
	return out
}

var promMetricName = regexp.MustCompile(`\bsluice_[a-z0-9_]+\b`)

// registeredMetrics wires a sluice with a stream source, an async source
// and a dead-letter destination on the embedded NATS, and returns the name
// and labels of every sluice_ metric its registry describes.
func registeredMetrics(t *testing.T) map[string][]string {
	t.Helper()
	dir := t.TempDir()
	cfgPath := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
metrics: {per_partition: true}
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: "http://127.0.0.1:1/invoke", async_queue: jobs}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: fn, on_failure: dead}
  jobs: {stream: JOBS, subject: "jobs.>", mode: async, function: fn, on_failure: dead}
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>"}
`, filepath.Join(dir, "state")))
	cfg, err := config.Load([]string{cfgPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	a, err := wire(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer a.close()
	descs := make(chan *prometheus.Desc, 16) // drained below while Describe writes
	go func() { a.reg.Describe(descs); close(descs) }()
	// Desc has no accessors; its String is
	// Desc{fqName: "name", help: "...", constLabels: {k="v"}, variableLabels: {a,b}}.
	fq := regexp.MustCompile(`fqName: "([^"]+)"`)
	constLabels := regexp.MustCompile(`constLabels: \{([^}]*)\}`)
	varLabels := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	out := map[string][]string{}
	for d := range descs {
		s := d.String()
		m := fq.FindStringSubmatch(s)
		if m == nil || !strings.HasPrefix(m[1], "sluice_") {
			continue
		}
		var labels []string
		if c := constLabels.FindStringSubmatch(s); c != nil && c[1] != "" {
			for kv := range strings.SplitSeq(c[1], ",") {
				k, _, _ := strings.Cut(kv, "=")
				labels = append(labels, strings.TrimSpace(k))
			}
		}
		if v := varLabels.FindStringSubmatch(s); v != nil && v[1] != "" {
			for l := range strings.SplitSeq(v[1], ",") {
				labels = append(labels, strings.TrimSpace(l))
			}
		}
		out[m[1]] = append(out[m[1]], labels...)
	}
	return out
}

// Every metric of SPEC §6 is registered, with bounded labels only (never a
// scope or a key), and every metric the alerts and the dashboard query is
// one sluice registers.
func TestDockerQueriesUseRegisteredMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("starts an embedded nats-server")
	}
	reg := registeredMetrics(t)
	for _, name := range []string{
		"sluice_account_concurrent_executions", "sluice_unreserved_concurrent_executions",
		"sluice_function_concurrent_executions", "sluice_throttles_total", "sluice_invocations_total",
		"sluice_invocation_duration_seconds", "sluice_iterator_age_seconds", "sluice_offset_lag", "sluice_shards",
		"sluice_async_events_received_total", "sluice_async_event_age_seconds", "sluice_async_events_dropped_total",
		"sluice_dead_letters_total", "sluice_dead_letter_errors_total", "sluice_queue_waiting",
		"sluice_http_connection_wait_seconds", "sluice_build_info", "sluice_ready",
		"sluice_partition_offset_lag", "sluice_partition_iterator_age_seconds",
	} {
		if _, ok := reg[name]; !ok {
			t.Errorf("%s is not registered", name)
		}
	}
	// version and goversion are sluice_build_info's, one series per
	// process; partition is the per-partition option's, bounded by the
	// sources' partition counts (metrics.per_partition is on here).
	bounded := []string{"function", "reason", "outcome", "source", "state", "condition", "destination", "version", "goversion", "partition"}
	for name, labels := range reg {
		for _, l := range labels {
			if !slices.Contains(bounded, l) {
				t.Errorf("%s has label %q, not one of the bounded %v", name, l, bounded)
			}
		}
	}

	exprs := dashboardExprs(t)
	for _, e := range alertExprs(t) {
		exprs = append(exprs, e)
	}
	for _, e := range exprs {
		if strings.Count(e, "(") != strings.Count(e, ")") || strings.Count(e, "{") != strings.Count(e, "}") ||
			strings.Count(e, "[") != strings.Count(e, "]") {
			t.Errorf("unbalanced brackets in %q", e)
		}
		for _, name := range promMetricName.FindAllString(e, -1) {
			base := name
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(name, suffix); ok {
					if _, hist := reg[b]; hist {
						base = b
					}
				}
			}
			if _, ok := reg[base]; !ok {
				t.Errorf("%q queries %s, which sluice does not register", e, name)
			}
		}
	}
}
