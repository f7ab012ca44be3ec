package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/sluicehq/sluice/internal/testpki"
)

// The embedded server with a token and TLS: sluice reaches it in process
// and runs its source; a network client needs both TLS (trusting the
// server's CA) and the token; without either it is refused.
func TestRunEmbeddedNATSSecured(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	var delivered atomic.Int64
	fn := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		var ev struct {
			Records map[string][]json.RawMessage `json:"records"`
		}
		if json.NewDecoder(r.Body).Decode(&ev) == nil {
			for _, recs := range ev.Records {
				delivered.Add(int64(len(recs)))
			}
		}
	}))
	defer fn.Close()
	dir := t.TempDir()
	pki, err := testpki.New(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(dir, "token"), "embedded-s3cret\n")
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0"}
state_dir: %s
brokers:
  local:
    nats:
      listen: "127.0.0.1:0"
      token_file: token
      tls: {cert_file: %q, key_file: %q}
functions:
  fn: {url: %q}
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: fn}
`, filepath.Join(dir, "state"), pki.ServerCert, pki.ServerKey, fn.URL+"/invoke"))

	cmd, url, logs := startEmbedded(t, cfg)
	if !strings.HasPrefix(url, "tls://") {
		t.Errorf("embedded server URL %q, want tls://", url)
	}
	plain := strings.Replace(url, "tls://", "nats://", 1)
	if nc, err := natsgo.Connect(plain, natsgo.Token("embedded-s3cret")); err == nil {
		nc.Close()
		t.Error("a client without TLS got in")
	}
	if nc, err := natsgo.Connect(url, natsgo.RootCAs(pki.CA)); err == nil {
		nc.Close()
		t.Error("a client without the token got in")
	}
	nc, err := natsgo.Connect(url, natsgo.RootCAs(pki.CA), natsgo.Token("embedded-s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	for i := range 10 {
		if err := nc.Publish(fmt.Sprintf("clicks.k%d", i%3), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for delivered.Load() < 10 {
		if time.Now().After(deadline) {
			t.Fatalf("function got %d of 10 events within 60s", delivered.Load())
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(logs(), "embedded-s3cret") {
		t.Error("the token appears in the logs")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := waitExit(t, cmd); code != 0 {
		t.Fatalf("exit %d after SIGTERM, want 0", code)
	}
}
