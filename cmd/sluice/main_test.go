package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sluice runs the command tree in process and returns its exit code and
// output.
func sluice(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(t.Context(), args, &out, &errb)
	return code, out.String(), errb.String()
}

// specConfig writes the SPEC §5 sketch and the token file it references
// into a fresh directory, sets the token variable it references, and
// returns the config's path.
func specConfig(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "config", "testdata", "spec.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "admin.token"), "s3cret")
	t.Setenv("SLUICE_READ_TOKEN", "s3cret-read")
	return writeFile(t, filepath.Join(dir, "sluice.yaml"), string(b))
}

func writeFile(t *testing.T, path, content string) string {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigValidateGood(t *testing.T) {
	code, stdout, stderr := sluice(t, "config", "validate", "-c", specConfig(t))
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if want := "config OK: 1 function, 3 sources, 2 brokers, 2 dead-letter destinations, 2 rules, 2 admin tokens\n"; stdout != want {
		t.Errorf("stdout = %q, want %q", stdout, want)
	}
}

func TestConfigValidateEmbedded(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "sluice.toml"), `
[functions.fn]
url = "http://127.0.0.1:8080/"

[sources.clicks]
stream = "CLICKS"
subject = "clicks.*"
partitions = 2
function = "fn"
`)
	code, stdout, stderr := sluice(t, "config", "validate", "--config", path)
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	if want := "config OK: 1 function, 1 source, the embedded NATS broker, 0 dead-letter destinations, 0 rules, 0 admin tokens\n"; stdout != want {
		t.Errorf("stdout = %q, want %q", stdout, want)
	}
}

func TestConfigValidateBad(t *testing.T) {
	path := writeFile(t, filepath.Join(t.TempDir(), "sluice.yaml"), `
functions:
  thumbnail: {url: "http://127.0.0.1:8080/invoke"}
sources:
  orders: {topic: orders, function: thumbnail, max_record_age: 30s, batchsize: 5}
`)
	code, stdout, stderr := sluice(t, "config", "validate", "-c", path, "--set", "sources.orders.on_failure=dead")
	if code != exitConfig || stdout != "" {
		t.Fatalf("exit %d, stdout %q", code, stdout)
	}
	// Every line starts with "sluice: ", as every error of the command does.
	want := "sluice: " + strings.Join([]string{
		"sources.orders.batchsize: unknown key; did you mean batch_size? (allowed: batch_size, batching_window, bisect_batch_on_error, broker, commit_pipeline_depth, function, max_batch_bytes, max_event_age, max_record_age, max_retry_attempts, mode, on_failure, parallelization_factor, partitions, report_batch_item_failures, retry_backoff, scope, starting_position, starting_timestamp, stream, subject, topic)",
		`sources.orders.max_record_age: 30s is out of range (-1 or 60s..168h)`,
		`sources.orders.on_failure: undefined dead-letter destination "dead" (defined: none)`,
		"sources.orders.topic: no brokers are defined, so this uses the embedded NATS JetStream: use stream and subject, or define a Kafka broker under brokers",
	}, "\nsluice: ") + "\n"
	if stderr != want {
		t.Errorf("stderr:\n%s\nwant:\n%s", stderr, want)
	}
}

func TestExitCodes(t *testing.T) {
	good := specConfig(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stderr string // a line stderr must hold
	}{
		{"help", []string{"--help"}, exitOK, ""},
		{"no command prints help", nil, exitOK, ""},
		{"version", []string{"version"}, exitOK, ""},
		{"unknown command", []string{"bogus"}, exitConfig, `sluice: unknown command "bogus" for "sluice"`},
		{"unknown subcommand", []string{"config", "bogus"}, exitConfig, `sluice: unknown command "bogus" for "sluice config"`},
		{"unknown completion shell", []string{"completion", "bogus"}, exitConfig, `sluice: unknown command "bogus" for "sluice completion"`},
		{"version flag", []string{"--version"}, exitOK, ""},
		{"unknown flag", []string{"config", "validate", "--bogus"}, exitConfig, "sluice: unknown flag: --bogus"},
		{"validate without a file", []string{"config", "validate"}, exitConfig, "sluice: -c/--config FILE is required"},
		{"missing file", []string{"config", "validate", "-c", "/nonexistent/sluice.yaml"}, exitConfig, "open /nonexistent/sluice.yaml: no such file or directory"},
		{"bad log level", []string{"config", "validate", "-c", good, "--log-level", "loud"}, exitConfig, `sluice: --log-level: "loud" is not one of debug, info, warn, error`},
		{"run with a bad config", []string{"run", "-c", good, "--set", "account.concurrency=0"}, exitConfig, "account.concurrency: 0 is out of range (1 or more)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := sluice(t, tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d; stderr %q", code, tc.code, stderr)
			}
			if tc.stderr != "" && !strings.Contains(stderr, tc.stderr+"\n") {
				t.Errorf("stderr %q lacks %q", stderr, tc.stderr)
			}
			if tc.stderr == "" && stderr != "" {
				t.Errorf("stderr = %q, want nothing", stderr)
			}
		})
	}
}

func TestHelpListsCommands(t *testing.T) {
	_, stdout, _ := sluice(t, "--help")
	for _, cmd := range []string{"run", "config", "version"} {
		if !strings.Contains(stdout, "\n  "+cmd+" ") {
			t.Errorf("--help does not list %q:\n%s", cmd, stdout)
		}
	}
	for _, flag := range []string{"-c, --config FILE", "--log-level", "--set key=value"} {
		if !strings.Contains(stdout, flag) {
			t.Errorf("--help does not list %q", flag)
		}
	}
	_, stdout, _ = sluice(t, "config", "--help")
	if !strings.Contains(stdout, "\n  validate ") {
		t.Errorf("config --help does not list validate:\n%s", stdout)
	}
}

func TestVersion(t *testing.T) {
	version, commit = "v1.2.3", "abc1234"
	t.Cleanup(func() { version, commit = "", "" })
	_, stdout, _ := sluice(t, "version")
	if !strings.HasPrefix(stdout, "sluice v1.2.3\ncommit: abc1234\ngo: go") {
		t.Errorf("version output = %q", stdout)
	}
}

func TestConfigShow(t *testing.T) {
	code, stdout, stderr := sluice(t, "config", "show", "-c", specConfig(t), "--set", "sources.orders.batch_size=7")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, line := range []string{"        batch_size: 7\n", "        starting_position: trim_horizon\n", "    max_bytes: 1GiB\n"} {
		if !strings.Contains(stdout, line) {
			t.Errorf("show lacks %q:\n%s", line, stdout)
		}
	}
}
