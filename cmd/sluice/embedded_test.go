package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"
)

// The embedded default end to end: a config whose only broker is the
// embedded nats-server; events published to it reach an HTTP function, in
// order per key, and SIGTERM stops everything with exit 0.
func TestRunEmbeddedNATSPipeline(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	var (
		mu  sync.Mutex
		got = map[string][]string{} // key → payloads in delivery order
	)
	fn := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var ev struct {
			EventSource string `json:"eventSource"`
			Records     map[string][]struct {
				Subject string `json:"subject"`
				Data    []byte `json:"data"`
			} `json:"records"`
		}
		if err := json.NewDecoder(r.Body).Decode(&ev); err != nil || ev.EventSource != "sluice:nats" {
			http.Error(w, "bad event", 400)
			return
		}
		mu.Lock()
		for _, recs := range ev.Records {
			for _, rec := range recs {
				key := rec.Subject[strings.LastIndexByte(rec.Subject, '.')+1:]
				got[key] = append(got[key], string(rec.Data))
			}
		}
		mu.Unlock()
	}))
	defer fn.Close()

	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  local: {nats: {listen: "127.0.0.1:0"}}
functions:
  fn: {url: %q}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 3, function: fn, batch_size: 10}
`, filepath.Join(dir, "state"), fn.URL+"/invoke"))

	cmd, url, _ := startEmbedded(t, cfg)

	nc, err := natsgo.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	keys := []string{"acme", "globex", "initech", "umbrella"}
	for i := range 40 {
		k := keys[i%len(keys)]
		if err := nc.Publish("clicks."+k, fmt.Appendf(nil, "%s-%02d", k, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		mu.Lock()
		n := 0
		for _, v := range got {
			n += len(v)
		}
		mu.Unlock()
		if n >= 40 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("function got %d of 40 events within 60s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	for _, k := range keys {
		var want []string
		for i := range 40 {
			if keys[i%len(keys)] == k {
				want = append(want, fmt.Sprintf("%s-%02d", k, i))
			}
		}
		if strings.Join(got[k], ",") != strings.Join(want, ",") {
			t.Errorf("key %s: got %v, want %v in order, once each", k, got[k], want)
		}
	}
	mu.Unlock()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, cmd); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}

// The quick start runs the whole pipeline on the embedded default and stops
// cleanly; its live view shows the shards and the invocations.
func TestQuickstart(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a pipeline for several seconds")
	}
	code, stdout, stderr := sluice(t, "quickstart", "--duration", "5s")
	if code != exitOK {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	for _, want := range []string{"sluice quick start", "embedded NATS at nats://127.0.0.1:", "SHARD", "clicks/0", "clicks/3", "stopped"} {
		if !strings.Contains(stdout, want) {
			t.Fatalf("output lacks %q:\n%s", want, stdout)
		}
	}
	// The summary counts records and invocations (batches) apart.
	var published, invoked, throttled, delivered int
	i := strings.LastIndex(stdout, "published ")
	if _, err := fmt.Sscanf(stdout[i:], "published %d records; function invoked %d times (batches of up to 5 records, %d throttled), %d records delivered",
		&published, &invoked, &throttled, &delivered); err != nil || published == 0 || invoked == 0 || delivered == 0 || delivered > published {
		t.Fatalf("summary %q: want records published and delivered, and the function invoked (%v)", stdout[i:], err)
	}
}

// startEmbedded starts `sluice run -c cfg` with the embedded nats-server and
// waits until the server has logged its URL and sluice logs "sluice
// running". It returns the process (killed at cleanup), the server's URL and
// everything sluice logged so far, on demand.
func startEmbedded(t *testing.T, cfg string) (cmd *exec.Cmd, url string, logs func() string) {
	t.Helper()
	cmd = exec.Command(buildSluice(t), "run", "-c", cfg)
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	urls := make(chan string, 1) // the one URL line
	running := make(chan struct{})
	var (
		mu  sync.Mutex // guards out: written by the reader, read by the test
		out strings.Builder
	)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			mu.Lock()
			out.WriteString(sc.Text() + "\n")
			mu.Unlock()
			var line struct{ Msg, URL string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				continue
			}
			switch line.Msg {
			case "embedded nats-server started":
				urls <- line.URL
			case "sluice running":
				close(running)
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
	}()
	select {
	case url = <-urls:
	case <-time.After(30 * time.Second):
		t.Fatal("no embedded nats-server within 30s")
	}
	select {
	case <-running:
	case <-time.After(60 * time.Second):
		t.Fatal("sluice did not log \"sluice running\" within 60s")
	}
	return cmd, url, func() string { mu.Lock(); defer mu.Unlock(); return out.String() }
}
