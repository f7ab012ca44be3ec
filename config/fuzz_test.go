package config_test

// Fuzz target for the configuration loader (issue 7). Its seed corpus (the
// f.Add calls, testdata/spec.yaml and testdata/fuzz/FuzzLoad) runs as an
// ordinary test; `make fuzz` (or go test -run '^$' -fuzz FuzzLoad ./config/)
// explores more.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/config"
)

// FuzzLoad loads arbitrary bytes as a YAML configuration file. It must never
// panic. A file it refuses gives a nil Config and an error matching
// ErrInvalid with a message; a file it accepts encodes (Config.YAML, what
// `sluice config show` prints) to a file that loads to the same Config.
func FuzzLoad(f *testing.F) {
	// Only the variables the seeds name; every other SLUICE_ variable of the
	// environment (CI sets SLUICE_TEST_*) is hidden, so results do not depend
	// on where the fuzzer runs.
	for _, kv := range os.Environ() {
		if name, _, _ := strings.Cut(kv, "="); strings.HasPrefix(name, config.EnvPrefix) {
			f.Setenv(name, "") // restored after the test
			os.Unsetenv(name)
		}
	}
	f.Setenv("SLUICE_READ_TOKEN", "s3cret-read")

	spec, err := os.ReadFile(filepath.Join("testdata", "spec.yaml"))
	if err != nil {
		f.Fatal(err)
	}
	for _, s := range []string{
		string(spec),
		``,
		"\n",
		`{}`,
		`[]`,
		`null`,
		`~`,
		`42`,
		`"a string"`,
		`sources: {}`,
		`sourcess: {}`,
		`sources: {orders: {batchsize: 10}}`,
		`sources: {orders: {batch_size: lots}}`,
		`sources: [1, 2]`,
		`functions: {fn: {url: "http://127.0.0.1:1/x", timeout: 30s}}`,
		`functions: {fn: {url: "http://127.0.0.1:1/x", timeout: -1s, reserved_concurrency: -5}}`,
		`functions: {fn: {url: ":::"}}`,
		"account: {concurrency: 1e400, min_unreserved: -9223372036854775808}",
		"account: {concurrency: 9223372036854775807, min_unreserved: 0x7fffffffffffffff}",
		`admin: {listen: "0.0.0.0:9400"}`,
		`admin: {listen: "[::1]:0", tokens: [{role: admin, env: SLUICE_READ_TOKEN}, {role: read, env: SLUICE_READ_TOKEN}]}`,
		`admin: {tokens: [{role: root, file: "", env: ""}]}`,
		`state_dir: ""`,
		`state_dir: [a]`,
		`brokers: {main: {kafka: {seeds: []}}, bus: {nats: {url: "nats://x:4222", listen: "127.0.0.1:4222"}}}`,
		`brokers: {main: {kafka: {seeds: [a:1]}, nats: {}}}`,
		`brokers: {bus: {nats: {listen: "127.0.0.1:99999"}}}`,
		"functions: {fn: {url: \"http://127.0.0.1:1/x\"}}\nsources: {s: {topic: t, function: fn, max_record_age: 30s, max_batch_bytes: 1TiB, starting_position: at_timestamp, starting_timestamp: yesterday}}",
		"functions: {fn: {url: \"http://127.0.0.1:1/x\"}}\nsources: {s: {stream: S, subject: \"s.*\", partitions: 0, function: fn, scope: \"header:\"}}",
		"functions: {fn: {url: \"http://127.0.0.1:1/x\"}}\nsources: {s: {stream: S, subject: \"s.>\", mode: async, function: fn, max_event_age: 1ns, retry_backoff: {initial: 1h, max: 1s, multiplier: -1, jitter: 2}}}",
		"dead_letters: {d: {topic: t, stream: S, retention: 0, max_bytes: -1}}",
		"dead_letters: {d: {stream: D, subject: \"d.>\", retention: -1, max_bytes: 1GiB}}",
		"rules: [{pattern: \"*\", concurrency: -1}, {pattern: \"*\", concurrency: 1}, {pattern: \"\"}]",
		"rules: {pattern: x}",
		"a: &a [*a]",
		"a: &a {b: *a}",
		"x: &x [1, 2]\ny: [*x, *x, *x]",
		"key: value\nkey: again",
		"\t- tab indented",
		"sources: {orders: {batch_size: 10}}\n---\nsources: {other: {}}",
		"? [complex, key]\n: value",
		"!!binary aGVsbG8=",
		"sources: !!map {orders: !!str 12}",
		"account:\n  concurrency: 100\n  concurrency: 200",
		"\xef\xbb\xbfsources: {}",
		"\xff\xfe",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		// Token files are read at load time: keep the fuzzer away from
		// device and proc files (a read is bounded, but a FIFO or a
		// terminal could still block).
		for _, p := range []string{"/dev", "/proc", "/sys", "dev/", "proc/", "sys/"} {
			if bytes.Contains(b, []byte(p)) {
				return
			}
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "admin.token"), []byte("s3cret-admin\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "sluice.yaml")
		if err := os.WriteFile(path, b, 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.Load([]string{path}, nil)
		if err != nil {
			if c != nil {
				t.Fatalf("Load returned a Config and an error: %v", err)
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("Load error %q does not match config.ErrInvalid", err)
			}
			if strings.TrimSpace(err.Error()) == "" {
				t.Fatal("Load returned an empty error message")
			}
			return
		}
		if c == nil {
			t.Fatal("Load returned neither a Config nor an error")
		}
		out, err := c.YAML()
		if err != nil {
			t.Fatalf("a loaded Config does not encode: %v", err)
		}
		again := filepath.Join(dir, "shown.yaml") // same directory: relative paths mean the same
		if err := os.WriteFile(again, out, 0o600); err != nil {
			t.Fatal(err)
		}
		c2, err := config.Load([]string{again}, nil)
		if err != nil {
			t.Fatalf("the encoding of a loaded Config does not load: %v\ninput:\n%s\nencoded:\n%s", err, b, out)
		}
		// The default state_dir (./.sluice) is relative to the working
		// directory, the same text in a file to the file's directory:
		// that difference is by design (readFile), not a round-trip loss.
		if !filepath.IsAbs(c.StateDir) && c2.StateDir == filepath.Join(dir, c.StateDir) {
			c2.StateDir = c.StateDir
		}
		// The encoding is what `config show` prints: the redacted Config
		// (a URL's user info, query values and fragment hidden). What it
		// prints must load as exactly what it shows.
		if shown := c.Redacted(); !reflect.DeepEqual(shown, c2) {
			t.Fatalf("the encoding of a loaded Config loads differently:\ninput:\n%s\nencoded:\n%s\nshown  %+v\nloaded %+v", b, out, shown, c2)
		}
	})
}
