package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/shard"
)

// stopsAtCancel is a source that runs until its ctx ends and then returns
// nil, as the real ones do on a stop.
type stopsAtCancel struct{}

func (stopsAtCancel) Run(ctx context.Context) error { <-ctx.Done(); return nil }
func (stopsAtCancel) Statuses() []shard.Status      { return nil }

// TestRunStopIsNotASourceFailure: when the stop (SIGTERM, ctx) reaches the
// sources before run sees it, a source returning is the stop, not a source
// that stopped on its own: run returns nil (exit 0). Run with the stop
// already there, run's select sees both at once and picks either; it used
// to report "source stopped: %!w(<nil>)" about half the time.
func TestRunStopIsNotASourceFailure(t *testing.T) {
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "sluice.yaml")
	if err := os.WriteFile(cfgPath, fmt.Appendf(nil, `
state_dir: %s
admin: {listen: "127.0.0.1:0"}
functions:
  fn: {url: "http://127.0.0.1:1/"}
`, filepath.Join(dir, "state")), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load([]string{cfgPath}, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	for i := range 20 {
		a, err := wire(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		a.sources = []source{stopsAtCancel{}, stopsAtCancel{}, stopsAtCancel{}}
		if err := a.run(ctx); err != nil {
			t.Fatalf("run %d: a stop reported as %v", i, err)
		}
	}
}
