package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/sluicehq/sluice/config"
)

// A variable meant as a key that matches none is a problem naming the
// closest key; with WarnUnknownEnv it is a warning and is not applied.
func TestLoadUnknownEnv(t *testing.T) {
	path := write(t, t.TempDir(), "sluice.yaml", base)
	for _, tc := range []struct {
		name, value, want string
	}{
		{"SLUICE_SOURCE__ORDERS__BATCH_SIZE", "7",
			"SLUICE_SOURCE__ORDERS__BATCH_SIZE: matches no configuration key (did you mean SLUICE_SOURCES__ORDERS__BATCH_SIZE, which sets sources.orders.batch_size?)"},
		{"SLUICE_SOURCES__ORDRES__BATCH_SIZE", "7",
			"SLUICE_SOURCES__ORDRES__BATCH_SIZE: matches no configuration key (did you mean SLUICE_SOURCES__ORDERS__BATCH_SIZE, which sets sources.orders.batch_size?)"},
		{"SLUICE_ACOUNT__CONCURRENCY", "7",
			"SLUICE_ACOUNT__CONCURRENCY: matches no configuration key (did you mean SLUICE_ACCOUNT__CONCURRENCY, which sets account.concurrency?)"},
		{"SLUICE_SOURCES__ORDERS__BATCHSIZE", "7",
			"sources.orders.batchsize: unknown key (set by SLUICE_SOURCES__ORDERS__BATCHSIZE); did you mean batch_size? (allowed: " + sourceKeys + ")"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(tc.name, tc.value)
			_, err := config.Load([]string{path}, nil)
			if err == nil || err.Error() != tc.want {
				t.Errorf("strict:\n got: %v\nwant: %s", err, tc.want)
			}
			var warnings []string
			c, err := config.Load([]string{path}, nil, config.WarnUnknownEnv(func(msg string) { warnings = append(warnings, msg) }))
			if err != nil {
				t.Fatalf("lenient: %v", err)
			}
			if len(warnings) != 1 || !strings.HasPrefix(warnings[0], tc.name+": ") || !strings.HasSuffix(warnings[0], "; ignored") {
				t.Errorf("warnings = %q, want one naming %s", warnings, tc.name)
			}
			if got := c.Sources["orders"].BatchSize; got != 100 {
				t.Errorf("sources.orders.batch_size = %d: the variable was applied", got)
			}
			if _, ok := c.Sources["ordres"]; ok {
				t.Errorf("a source ordres was created")
			}
		})
	}
}

// Variables unrelated to keys are left alone, also when Load warns.
func TestLoadUnrelatedEnv(t *testing.T) {
	path := write(t, t.TempDir(), "sluice.yaml", base)
	for _, name := range []string{"SLUICE_TOKEN", "SLUICE_READ_TOKEN", "SLUICE_TEST_KAFKA", "SLUICE_CHAOS"} {
		t.Setenv(name, "x")
	}
	var warnings []string
	if _, err := config.Load([]string{path}, nil, config.WarnUnknownEnv(func(msg string) { warnings = append(warnings, msg) })); err != nil {
		t.Fatal(err)
	}
	if _, err := config.Load([]string{path}, nil); err != nil {
		t.Fatal(err)
	}
	if len(warnings) != 0 {
		t.Errorf("warnings = %q", warnings)
	}
}

// A variable that brings a new entry into being is named by the problems
// of that entry.
func TestLoadEnvCreatedEntry(t *testing.T) {
	path := write(t, t.TempDir(), "sluice.yaml", base)
	t.Setenv("SLUICE_SOURCES__PAYMENTS__BATCH_SIZE", "7")
	_, err := config.Load([]string{path}, nil)
	if err == nil || !strings.Contains(err.Error(), "sources.payments.function: required") ||
		!strings.Contains(err.Error(), "(sources.payments was created by SLUICE_SOURCES__PAYMENTS__BATCH_SIZE)") {
		t.Errorf("error = %v, want the problems of sources.payments naming the variable", err)
	}
}

func TestLoadFileMessages(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "adir"), 0o700); err != nil {
		t.Fatal(err)
	}
	noext := write(t, dir, "sluice", base)
	for _, tc := range []struct{ path, want string }{
		{filepath.Join(dir, "adir"), filepath.Join(dir, "adir") + ": is a directory; -c takes a configuration file (.yaml, .yml, .json or .toml)"},
		{noext, noext + ": has no extension; name the file .yaml, .yml, .json or .toml so sluice knows how to read it"},
	} {
		if _, err := config.Load([]string{tc.path}, nil); err == nil || err.Error() != tc.want {
			t.Errorf("Load(%s):\n got: %v\nwant: %s", tc.path, err, tc.want)
		}
	}
}

func TestLoadSetListItem(t *testing.T) {
	path := write(t, t.TempDir(), "sluice.yaml", base+"rules: [{pattern: '*', concurrency: 10}]\n")
	fs := pflag.NewFlagSet("test", pflag.ContinueOnError)
	config.RegisterFlags(fs)
	if err := fs.Parse([]string{"--set", "rules[0].concurrency=5", "--set", "sources[0].batch_size=5"}); err != nil {
		t.Fatal(err)
	}
	_, err := config.Load([]string{path}, fs)
	want := "--set rules[0].concurrency: rules is a list; its items can only be set in a file (a running sluice changes a rule with `sluice rules set PATTERN --concurrency N`)\n" +
		"--set sources[0].batch_size: sources: [index] is not part of a key; write keys as in messages, e.g. sources.orders.batch_size"
	if err == nil || err.Error() != want {
		t.Errorf("error:\n got: %v\nwant: %s", err, want)
	}
}
