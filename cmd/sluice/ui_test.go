package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/sluicehq/sluice/admin"
)

// chromium returns the Chromium binary of the status page tests. Without
// one the test skips, unless SLUICE_REQUIRE_CHROMIUM or
// SLUICE_REQUIRE_BROKERS is set (CI sets both): then it fails, so CI never
// passes without having run the browser.
func chromium(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SLUICE_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	msg := "no Chromium on PATH: apt-get install chromium, or set SLUICE_CHROMIUM to its path"
	if os.Getenv("SLUICE_REQUIRE_CHROMIUM") != "" || os.Getenv("SLUICE_REQUIRE_BROKERS") != "" {
		t.Fatal(msg + " (SLUICE_REQUIRE_CHROMIUM or SLUICE_REQUIRE_BROKERS is set, so this is a failure)")
	}
	t.Skip(msg)
	return ""
}

// browser starts a headless Chromium with a fresh profile and returns a
// chromedp context of one tab; it is stopped when the test ends.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(chromium(t)),
		chromedp.Flag("headless", true),
		chromedp.Flag("no-sandbox", true),
		chromedp.Flag("disable-gpu", true),
		chromedp.Flag("disable-quic", true),
		chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1400, 1000),
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() { cancel(); cancelAlloc() })
	// The first Run starts the browser; it must have no deadline (that
	// would stop the browser with it), so it is bounded from outside: a
	// broken install must not hang the test.
	started := make(chan error, 1)
	go func() { started <- chromedp.Do(ctx) }()
	select {
	case err := <-started:
		if err != nil {
			t.Fatalf("start Chromium: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("Chromium did not start within 60s")
	}
	return ctx
}

// inTab runs steps in the tab, failing the test after timeout.
func inTab(ctx context.Context, t *testing.T, timeout time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := chromedp.Do(c, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// value runs one action that returns a value in the tab.
func value[T any](ctx context.Context, t *testing.T, what string, a chromedp.Action[T]) T {
	t.Helper()
	c, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	v, err := chromedp.Run(c, a)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return v
}

// The status page in a real headless Chromium against a real `sluice run`:
// it needs the token, keeps it for the tab, shows shards, functions,
// limits and dead-letter counts, and shows a shard as throttled within 2 s
// of it becoming throttled. It leaves a screenshot in the test's artifact
// directory (kept with go test -artifacts).
func TestStatusPageShowsThrottledShard(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary and a browser")
	}
	ctx := browser(t)
	dir := t.TempDir()
	fn := newSlowFn(t, 0)
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin:
  listen: "127.0.0.1:0"%s
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q, timeout: 10s}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: fn, batch_size: 1, scope: "header:tenant", on_failure: dead}
dead_letters:
  dead: {stream: DEAD, subject: "sluice.dead.>"}
`, tokens(t, dir), filepath.Join(dir, "state"), fn.srv.URL))
	adminTok, readTok := tokenOf(dir, "admin"), tokenOf(dir, "read")
	p := runSluice(t, cfg)

	// The page's files are open and hold no data.
	for _, path := range []string{"/ui/", "/ui/app.js", "/ui/style.css"} {
		code, body := p.call(http.MethodGet, path, "", "")
		if code != http.StatusOK || strings.Contains(body, "clicks") || strings.Contains(body, fn.srv.URL) {
			t.Fatalf("GET %s without a token: %d, want 200 and no data of this sluice", path, code)
		}
	}

	// One record delivered, so the shard is there and idle.
	publish(t, p.nats, "t1", 0, 1)
	waitUntil(t, 30*time.Second, "the first record delivered", func() error {
		if n := fn.callsOf("t1"); n < 1 {
			return fmt.Errorf("%d calls", n)
		}
		return nil
	})

	// No token yet: the page tries, learns the API needs one and asks.
	inTab(ctx, t, 30*time.Second, "open the page",
		chromedp.Navigate(p.admin+"/ui/"),
		chromedp.WaitVisible(chromedp.CSS("#token")),
	)
	waitUntil(t, 10*time.Second, "the page asks for a token", func() error {
		if s := value(ctx, t, "status text", chromedp.Text(chromedp.CSS("#status"))); !strings.Contains(s, "needs a token") {
			return fmt.Errorf("status %q", s)
		}
		return nil
	})
	// A wrong token: the page says so and shows nothing.
	inTab(ctx, t, 30*time.Second, "wrong token",
		chromedp.SendKeys(chromedp.CSS("#token"), "not-a-token"),
		chromedp.Click(chromedp.CSS("#connect")),
		chromedp.WaitVisible(chromedp.CSS("#status.error")),
	)
	status := value(ctx, t, "status text", chromedp.Text(chromedp.CSS("#status")))
	if !strings.Contains(status, "refused") {
		t.Errorf("status with a wrong token: %q, want it to say the token was refused", status)
	}
	rows := value(ctx, t, "count rows", chromedp.Evaluate[int](`document.querySelectorAll("#shards tr[data-shard]").length`))
	if rows != 0 {
		t.Errorf("%d shard rows shown with a wrong token, want 0", rows)
	}

	// The read token: data, and the token survives a reload of the tab.
	inTab(ctx, t, 30*time.Second, "read token",
		chromedp.SendKeys(chromedp.CSS("#token"), readTok),
		chromedp.Click(chromedp.CSS("#connect")),
		chromedp.WaitVisible(chromedp.CSS(`#shards tr[data-shard="clicks/0"]`)),
		chromedp.Reload(),
		chromedp.WaitVisible(chromedp.CSS(`#shards tr[data-shard="clicks/0"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#functions tr[data-function="fn"]`)),
		chromedp.WaitVisible(chromedp.CSS(`#deadletters tr[data-source="clicks"][data-condition="RetryAttemptsExhausted"]`)),
	)
	stored := value(ctx, t, "session storage", chromedp.Evaluate[string](`sessionStorage.getItem("sluice.token")`))
	if stored != readTok {
		t.Errorf("sessionStorage holds %q, want the read token", stored)
	}

	// Throttle the function (reservation 0) and send a record: the shard
	// turns throttled. The clock starts when the API first reports it.
	p.must(http.MethodPut, "/v1/functions/fn/concurrency", adminTok, `{"reservedConcurrentExecutions": 0}`, http.StatusOK, nil)
	publish(t, p.nats, "t1", 1, 1)
	var happened time.Time
	waitUntil(t, 30*time.Second, "the API reports clicks/0 throttled", func() error {
		var v struct{ Shards []admin.ShardView }
		p.must(http.MethodGet, "/v1/shards", readTok, "", http.StatusOK, &v)
		for _, s := range v.Shards {
			if s.Source == "clicks" && s.State == "throttled" {
				happened = time.Now()
				return nil
			}
		}
		return fmt.Errorf("shards %+v", v.Shards)
	})
	inTab(ctx, t, 30*time.Second, "the page shows clicks/0 throttled",
		chromedp.WaitVisible(chromedp.CSS(`#shards tr[data-shard="clicks/0"][data-state="throttled"]`)),
	)
	took := time.Since(happened)
	reason := value(ctx, t, "read the reason", chromedp.Text(chromedp.CSS(`#shards tr[data-shard="clicks/0"] td:nth-child(4)`)))
	t.Logf("the page showed the throttled shard %s after the API did (reason %q)", took.Round(time.Millisecond), reason)
	if took > 2*time.Second {
		t.Errorf("the page showed the throttled shard %s after it happened, want within 2s", took)
	}
	if reason != "ReservedFunctionConcurrentInvocationLimitExceeded" {
		t.Errorf("reason shown %q, want ReservedFunctionConcurrentInvocationLimitExceeded", reason)
	}

	png := value(ctx, t, "screenshot", chromedp.FullScreenshot(100))
	shot := filepath.Join(t.ArtifactDir(), "status-page-throttled.png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)

	// Let the record through, so the shard recovers.
	p.must(http.MethodDelete, "/v1/functions/fn/concurrency", adminTok, "", http.StatusNoContent, nil)
	inTab(ctx, t, 30*time.Second, "the page shows clicks/0 no longer throttled",
		chromedp.WaitVisible(chromedp.CSS(`#shards tr[data-shard="clicks/0"]:not([data-state="throttled"])`)))
	p.stop()
}
