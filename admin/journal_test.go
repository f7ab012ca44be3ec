package admin

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

func quietBook(t testing.TB, dir string) *Book {
	t.Helper()
	lim, err := dispatch.NewLimiter(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lim.Close)
	b, err := NewBook(lim, testConfig(), dir, WithBookLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func setRule(t testing.TB, b *Book, pattern string, n int) {
	t.Helper()
	if _, err := b.SetRule(pattern, RulePatch{Concurrency: &n}); err != nil {
		t.Fatalf("SetRule(%q, %d): %v", pattern, n, err)
	}
}

// Changes appended to the journal read back after a restart exactly as a
// full write of the file would give them.
func TestJournalReadsBackAfterRestart(t *testing.T) {
	dir := t.TempDir()
	b := quietBook(t, dir)
	for i := range 50 {
		setRule(t, b, fmt.Sprintf("tenant-%02d", i), i+1)
	}
	if _, err := b.DisableRule("tenant-03"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteRule("tenant-04"); err != nil {
		t.Fatal(err)
	}
	if err := b.DeleteRule("acme"); err != nil { // a rule of the file
		t.Fatal(err)
	}
	if err := b.PutReservation("other", 7); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, journalFile)); err != nil {
		t.Fatalf("the changes were not journaled: %v", err)
	}
	want := b.Rules()

	b2 := quietBook(t, dir)
	if got := b2.Rules(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a restart:\n got %+v\nwant %+v", got, want)
	}
	if n, ok := b2.Limiter().Reservation("other"); !ok || n != 7 {
		t.Fatalf("reservation of other after a restart = %d, %v; want 7", n, ok)
	}
	// The restart compacted: the file holds everything, the journal is gone.
	if _, err := os.Stat(filepath.Join(dir, journalFile)); !os.IsNotExist(err) {
		t.Fatalf("journal after start-up: %v, want it compacted away", err)
	}
	b3 := quietBook(t, dir)
	if got := b3.Rules(); !reflect.DeepEqual(got, want) {
		t.Fatalf("after a second restart:\n got %+v\nwant %+v", got, want)
	}
}

// A torn last line (a crash during an append) is ignored; so is a journal
// whose snapshot was replaced (a crash between a compaction's write and the
// journal's removal).
func TestJournalCrashLeftovers(t *testing.T) {
	t.Run("torn last line", func(t *testing.T) {
		dir := t.TempDir()
		b := quietBook(t, dir)
		setRule(t, b, "kept", 3)
		f, err := os.OpenFile(filepath.Join(dir, journalFile), os.O_APPEND|os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = f.WriteString(`{"kind":"rule","key":"torn","value":{"concurr`)
		_ = f.Close()
		b2 := quietBook(t, dir)
		if _, err := b2.Rule("kept"); err != nil {
			t.Fatalf("the change before the torn line is lost: %v", err)
		}
		if _, err := b2.Rule("torn"); err == nil {
			t.Fatal("the torn line was applied")
		}
	})
	t.Run("journal of an older snapshot", func(t *testing.T) {
		dir := t.TempDir()
		b := quietBook(t, dir)
		setRule(t, b, "x", 1)
		old, err := os.ReadFile(filepath.Join(dir, journalFile))
		if err != nil {
			t.Fatal(err)
		}
		setRule(t, b, "x", 2)
		quietBook(t, dir) // compacts: the file says x=2, no journal
		// The old journal (x=1) reappears, as if its removal had not happened.
		if err := os.WriteFile(filepath.Join(dir, journalFile), old, 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := quietBook(t, dir).Rule("x")
		if err != nil || r.Concurrency != 2 {
			t.Fatalf("rule x = %+v, %v; want concurrency 2 (the stale journal must be ignored)", r, err)
		}
	})
	t.Run("a bad line in the middle is an error", func(t *testing.T) {
		dir := t.TempDir()
		b := quietBook(t, dir)
		setRule(t, b, "x", 1)
		f, _ := os.OpenFile(filepath.Join(dir, journalFile), os.O_APPEND|os.O_WRONLY, 0)
		_, _ = f.WriteString("garbage\n")
		_ = f.Close()
		lim, _ := dispatch.NewLimiter(testConfig())
		t.Cleanup(lim.Close)
		if _, err := NewBook(lim, testConfig(), dir); err == nil || !strings.Contains(err.Error(), "not a valid journal") {
			t.Fatalf("NewBook = %v, want a journal error", err)
		}
	})
}

// The journal is compacted into the file once it outgrows it, so it stays
// bounded whatever the number of changes.
func TestJournalStaysBounded(t *testing.T) {
	dir := t.TempDir()
	b := quietBook(t, dir)
	for i := range 2000 {
		setRule(t, b, "same", i%7+1)
	}
	fi, err := os.Stat(filepath.Join(dir, journalFile))
	if err == nil && fi.Size() > 2*minCompactBytes {
		t.Fatalf("journal is %d bytes after 2000 changes of one rule", fi.Size())
	}
	if r, err := quietBook(t, dir).Rule("same"); err != nil || r.Concurrency != 1999%7+1 {
		t.Fatalf("rule = %+v, %v", r, err)
	}
}

// Temporary files of a write that a crash interrupted are removed at
// start-up.
func TestStaleTempFilesRemoved(t *testing.T) {
	dir := t.TempDir()
	stale := filepath.Join(dir, stateFile+".tmp-12345")
	if err := os.WriteFile(stale, []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	quietBook(t, dir)
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("%s is still there: %v", stale, err)
	}
}

// The rule book refuses a new rule past its cap, with a message that says
// so; changing an existing rule still works.
func TestRuleCap(t *testing.T) {
	b := quietBook(t, t.TempDir())
	b.maxRules = 4 // the file's two rules and two more
	setRule(t, b, "a", 1)
	setRule(t, b, "b", 1)
	n := 1
	_, err := b.SetRule("c", RulePatch{Concurrency: &n})
	if err == nil || !strings.Contains(err.Error(), "rule book is full (4 rules at most)") {
		t.Fatalf("SetRule past the cap = %v", err)
	}
	setRule(t, b, "a", 2) // a change is not a new rule
	api := newTestAPI(t, Options{Book: b})
	code, body := api.do("PUT", "/v1/rules/d", "", `{"concurrency":1}`)
	if code != 400 || !strings.Contains(body, "rule book is full") {
		t.Fatalf("PUT past the cap = %d %s", code, body)
	}
}

// TestManyRulesTiming measures creating SLUICE_MANY_RULES rules (e.g.
// 10000) through the book; it is the measurement behind the journal and
// runs only when asked for.
func TestManyRulesTiming(t *testing.T) {
	s := os.Getenv("SLUICE_MANY_RULES")
	if s == "" {
		t.Skip("set SLUICE_MANY_RULES=10000 to measure")
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	b := quietBook(t, t.TempDir())
	b.maxRules = max(b.maxRules, n+len(b.Rules()))
	start := time.Now()
	for i := range n {
		setRule(t, b, fmt.Sprintf("tenant-%05d", i), 1)
		if (i+1)%1000 == 0 {
			t.Logf("%d rules: %s", i+1, time.Since(start).Round(time.Millisecond))
		}
	}
}
