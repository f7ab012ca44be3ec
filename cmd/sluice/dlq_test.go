package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/event"
	"github.com/sluicehq/sluice/retention"
)

// dlqConfig is a configuration with one Kafka dead-letter destination; the
// flag checks below fail before anything connects to it.
func dlqConfig(t *testing.T) string {
	t.Helper()
	return writeFile(t, filepath.Join(t.TempDir(), "sluice.yaml"), `
brokers:
  main: {kafka: {seeds: ["127.0.0.1:1"]}}
functions:
  fn: {url: "http://127.0.0.1:1/"}
sources:
  orders: {topic: orders, function: fn, on_failure: dead}
dead_letters:
  dead: {topic: sluice.dead}
`)
}

func TestDLQBadFlags(t *testing.T) {
	cfg := dlqConfig(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"dlq", "replay", "--to", "queue"}, `--to: "queue" is not one of function, source`},
		{[]string{"dlq", "replay", "--rate", "-1"}, "--rate: -1 is out of range (0 for no cap, or more)"},
		{[]string{"dlq", "replay", "--parallel", "0"}, "--parallel: 0 is out of range (1..1000)"},
		{[]string{"dlq", "list", "--condition", "Nope"}, `--condition: "Nope" is not one of RetryAttemptsExhausted, RecordAgeExceeded, EventAgeExceeded, PermanentError, RecordTooLarge`},
		{[]string{"dlq", "list", "--since", "yesterday"}, `--since: "yesterday" is not a time`},
		{[]string{"dlq", "replay", "--until", "-5m"}, `--until: "-5m" is not a time`},
		{[]string{"dlq", "list", "--since", "1h", "--until", "2h"}, "--since 1h is not before --until 2h"},
		{[]string{"dlq", "list", "--destination", "other"}, `--destination: "other" is not one of dead`},
		{[]string{"dlq", "show"}, "accepts 1 arg(s), received 0"},
		{[]string{"dlq", "replay", "--rate", "fast"}, `invalid argument "fast" for "--rate"`},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, stdout, stderr := sluice(t, append(tc.args, "-c", cfg)...)
			if code != exitConfig || !strings.Contains(stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want exit 2 naming %q", code, stderr, tc.want)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
		})
	}
}

func TestDLQNoDestinations(t *testing.T) {
	cfg := writeFile(t, filepath.Join(t.TempDir(), "sluice.yaml"), `
brokers:
  main: {kafka: {seeds: ["127.0.0.1:1"]}}
functions:
  fn: {url: "http://127.0.0.1:1/"}
sources:
  orders: {topic: orders, function: fn}
`)
	code, _, stderr := sluice(t, "dlq", "list", "-c", cfg)
	if code != exitConfig || !strings.Contains(stderr, "no dead_letters") {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"":                            {},
		"2026-10-31T08:30:00Z":        time.Date(2026, 10, 31, 8, 30, 0, 0, time.UTC),
		"2026-10-31T08:30:00.5+01:00": time.Date(2026, 10, 31, 7, 30, 0, 5e8, time.UTC),
		"2026-10-31":                  time.Date(2026, 10, 31, 0, 0, 0, 0, time.UTC),
		"90m":                         now.Add(-90 * time.Minute),
	} {
		got, err := parseWhen(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
}

func TestPrintLetters(t *testing.T) {
	at := time.Date(2026, 11, 1, 12, 0, 0, 0, time.UTC)
	ls := []*retention.Letter{{
		Destination: "dead", DeadLetteredAt: at, Resolved: true,
		Envelope: &retention.Envelope{Version: 1, ID: "abc", Source: "orders", Function: "fn", Condition: event.PermanentError,
			Attempts: 1, Replays: 2, LastError: event.ErrorInfo{Kind: "status", Status: 400, Message: "bad\nrequest " + strings.Repeat("x", 80)}},
	}}
	var table, js bytes.Buffer
	if err := printLetters(&table, ls, false); err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(table.String()), "\n")
	if len(lines) != 2 || !strings.HasPrefix(lines[0], "ID ") ||
		!strings.Contains(lines[1], "abc  2026-11-01T12:00:00Z  dead") || !strings.Contains(lines[1], "replayed  status 400: bad request xxx") ||
		!strings.HasSuffix(lines[1], "…") {
		t.Errorf("table:\n%s", table.String())
	}
	if err := printLetters(&js, ls, true); err != nil {
		t.Fatal(err)
	}
	var e retention.Envelope
	if err := json.Unmarshal(js.Bytes(), &e); err != nil || e.ID != "abc" || e.Replays != 2 || strings.Count(js.String(), "\n") != 1 {
		t.Errorf("--json: %q (%v)", js.String(), err)
	}
}
