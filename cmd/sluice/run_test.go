package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildSluice builds the sluice binary once per test binary run.
func buildSluice(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sluice")
	cmd := exec.Command("go", "build", "-o", bin, ".")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	return bin
}

// startSluice runs `sluice run -c cfg` as a separate process and returns it
// with the admin address it logged.
func startSluice(t *testing.T, bin, cfg string) (*exec.Cmd, string) {
	t.Helper()
	cmd := exec.Command(bin, "run", "-c", cfg)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct {
				Msg   string `json:"msg"`
				Admin string `json:"admin"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "sluice running" {
				addr <- line.Admin
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case a := <-addr:
		return cmd, a
	case <-time.After(30 * time.Second):
		t.Fatal("sluice did not log \"sluice running\" within 30s")
	}
	return nil, ""
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// waitExit waits for cmd to end and returns its exit code.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatalf("wait: %v", err)
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatal("sluice did not exit within 30s of the signal")
		return -1
	}
}

func TestRunServesAndStopsOnSignal(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := buildSluice(t)
	cfg := writeFile(t, filepath.Join(t.TempDir(), "sluice.yaml"), `
admin: {listen: "127.0.0.1:0"}
functions:
  thumbnail: {url: "http://127.0.0.1:1/invoke", reserved_concurrency: 5}
rules:
  - {pattern: "*", concurrency: 2}
`)
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			cmd, addr := startSluice(t, bin, cfg)
			if code, body := get(t, "http://"+addr+"/healthz"); code != 200 || body != "ok\n" {
				t.Fatalf("/healthz = %d %q", code, body)
			}
			if code, _ := get(t, "http://"+addr+"/readyz"); code != 200 {
				t.Fatalf("/readyz = %d", code)
			}
			code, body := get(t, "http://"+addr+"/metrics")
			if code != 200 || !strings.Contains(body, "sluice_account_concurrent_executions 0") {
				t.Fatalf("/metrics = %d, without sluice_account_concurrent_executions:\n%s", code, body)
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			if code := waitExit(t, cmd); code != 0 {
				t.Fatalf("exit code after %s = %d, want 0", sig, code)
			}
		})
	}
}

// A Kafka async source creates its retry topics at start-up: an unreachable
// broker fails the start with a message naming the source. (Before Kafka
// async sources existed, run refused them here.)
func TestRunRefusesSourcesItCannotRun(t *testing.T) {
	cfg := writeFile(t, filepath.Join(t.TempDir(), "sluice.yaml"), `
admin: {listen: "127.0.0.1:0"}
brokers:
  main: {kafka: {seeds: ["127.0.0.1:1"]}}
functions:
  fn: {url: "http://127.0.0.1:1/invoke"}
sources:
  signups: {topic: signups, mode: async, function: fn}
`)
	code, _, stderr := sluice(t, "run", "-c", cfg)
	want := "sluice: run: sources.signups: "
	if code != exitFailure || !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, "127.0.0.1:1") {
		t.Fatalf("exit %d, stderr %q; want exit 1 and %q naming the unreachable broker", code, stderr, want)
	}
}
