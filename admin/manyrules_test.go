package admin

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

// TestManyRules creates SLUICE_MANY_RULES rules (default 2000) through the
// book and reports how long it took; it is the measurement behind the
// journal of rule changes.
func TestManyRulesTiming(t *testing.T) {
	n := 2000
	if s := os.Getenv("SLUICE_MANY_RULES"); s != "" {
		n, _ = strconv.Atoi(s)
	}
	lim, err := dispatch.NewLimiter(testConfig())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(lim.Close)
	b, err := NewBook(lim, testConfig(), t.TempDir(), WithBookLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for i := range n {
		c := 1
		if _, err := b.SetRule(fmt.Sprintf("tenant-%05d", i), RulePatch{Concurrency: &c}); err != nil {
			t.Fatal(err)
		}
		if (i+1)%1000 == 0 {
			t.Logf("%d rules: %s", i+1, time.Since(start).Round(time.Millisecond))
		}
	}
	t.Logf("%d rules in %s", n, time.Since(start).Round(time.Millisecond))
}
