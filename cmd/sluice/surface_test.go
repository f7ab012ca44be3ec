package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sluicehq/sluice/internal/testca"
)

// The secrets of the secured-function test: none may show anywhere.
const (
	bearerSecret = "BEARER-7f3a-never-shown"
	urlSecret    = "URLKEY-91c2-never-shown"
)

// A function behind HTTPS with a private CA that requires a client
// certificate and a bearer header read from a file, invoked through a real
// `sluice run`; the secrets show nowhere: config show, /v1/functions/f,
// the log, /metrics.
func TestSecuredFunctionThroughSluiceRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ca := testca.New(t, "fn")
	srvPair, client := ca.Server("fn-server"), ca.Client("sluice")
	var invoked atomic.Int64
	var bearer atomic.Value // the bearer the function accepts
	bearer.Store(bearerSecret)
	fn := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case len(r.TLS.PeerCertificates) == 0:
			http.Error(w, "no client certificate", http.StatusForbidden)
		case r.Header.Get("Authorization") != "Bearer "+bearer.Load().(string) || r.URL.Query().Get("apikey") != urlSecret:
			http.Error(w, "unauthorized", http.StatusUnauthorized)
		default:
			invoked.Add(1)
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"ok":true}`))
		}
	}))
	fn.TLS = &tls.Config{Certificates: []tls.Certificate{srvPair.TLS}, ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert}
	fn.StartTLS()
	t.Cleanup(fn.Close)

	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bearer"), "Bearer "+bearerSecret+"\n")
	writeFile(t, filepath.Join(dir, "admin.token"), "token-one\n")
	if err := os.Chmod(filepath.Join(dir, "admin.token"), 0o644); err != nil { // world-readable: warned about
		t.Fatal(err)
	}
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin: {listen: "127.0.0.1:0", tokens: [{role: admin, file: admin.token}]}
state_dir: ./state
functions:
  f:
    url: "%s/invoke?apikey=%s"
    headers:
      Authorization: {value_file: bearer}
    tls: {ca_file: %s, cert_file: %s, key_file: %s}
brokers:
  local: {nats: {listen: "127.0.0.1:0"}} # the embedded NATS, on a free port
sources:
  clicks: {stream: CLICKS, subject: "clicks.*", partitions: 1, function: f}
`, fn.URL, urlSecret, ca.CertFile, client.CertFile, client.KeyFile))

	p := runSluice(t, cfg)
	// A stream source on the embedded NATS delivers through the secured
	// function...
	publish(t, p.nats, "acme", 0, 3)
	deadline := time.Now().Add(60 * time.Second)
	for invoked.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the stream source's events did not reach the function within 60s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	before := invoked.Load()
	// ... and so does the synchronous ingress.
	code, body := p.call(http.MethodPost, "/v1/functions/f/invocations", "token-one", `{"hello":"tls"}`)
	if code != http.StatusOK || !strings.Contains(body, `"ok":true`) || invoked.Load() < before+1 {
		t.Fatalf("invocation = %d %s (function invoked %d times)", code, body, invoked.Load())
	}

	// Rotated secrets are read again on SIGHUP: the function's bearer and
	// the admin token.
	const rotated = "BEARER-rotated-never-shown"
	bearer.Store(rotated)
	writeFile(t, filepath.Join(dir, "bearer"), "Bearer "+rotated+"\n")
	writeFile(t, filepath.Join(dir, "admin.token"), "token-two\n")
	if err := p.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		code, body = p.call(http.MethodPost, "/v1/functions/f/invocations", "token-two", `{"hello":"rotated"}`)
		if code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after SIGHUP: invocation = %d %s", code, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if code, _ := p.call(http.MethodGet, "/v1/rules", "token-one", ""); code != http.StatusUnauthorized {
		t.Fatalf("the old token after its rotation: %d, want 401", code)
	}

	var shown []string
	_, view := p.call(http.MethodGet, "/v1/functions/f", "token-two", "")
	_, metrics := p.call(http.MethodGet, "/metrics", "", "")
	var out bytes.Buffer
	if c := run(t.Context(), []string{"config", "show", "-c", cfg}, &out, io.Discard); c != 0 {
		t.Fatalf("config show exited %d", c)
	}
	if !strings.Contains(view, "apikey=xxxxx") || !strings.Contains(out.String(), "apikey=xxxxx") {
		t.Errorf("the redacted URL is missing:\n%s\n%s", view, out.String())
	}
	p.stop()
	if logs := strings.Join(p.logLines(), "\n"); !strings.Contains(logs, "a secret file is readable by every user") ||
		!strings.Contains(logs, `"key":"admin.tokens[0].file"`) {
		t.Errorf("no warning about the world-readable token file in the log:\n%s", logs)
	}
	shown = append(shown, "GET /v1/functions/f:\n"+view, "/metrics:\n"+metrics, "config show:\n"+out.String(),
		"log:\n"+strings.Join(p.logLines(), "\n"))
	for _, s := range shown {
		for _, secret := range []string{bearerSecret, urlSecret, rotated} {
			if strings.Contains(s, secret) {
				t.Errorf("%s shows up in %s", secret, s)
			}
		}
	}
}

// A NATS URL with a password: a failed connection does not print it.
func TestNATSConnectErrorHidesPassword(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sluice")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there now
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
state_dir: ./state
admin: {listen: "127.0.0.1:0"}
brokers: {bus: {nats: {url: "nats://user:NATSPASSWORD@%s"}}}
functions: {f: {url: "http://127.0.0.1:1/"}}
sources: {s: {stream: S, subject: "s.*", partitions: 1, function: f}}
`, addr))
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	code := run(ctx, []string{"run", "-c", cfg}, io.Discard, &stderr)
	if code == 0 || strings.Contains(stderr.String(), "NATSPASSWORD") || !strings.Contains(stderr.String(), "user:xxxxx@") {
		t.Fatalf("exit %d, stderr:\n%s", code, stderr.String())
	}
}

// The attacks on the admin API of a real `sluice run`, with their new
// outcomes: idle connections are bounded and closed, a slow body is cut, a
// cross-origin or text/plain write and a foreign Host are refused.
func TestAdminAttacksOnSluiceRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	slow := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		time.Sleep(4 * time.Second) // longer than read_timeout
		_, _ = w.Write([]byte(`{"slow":true}`))
	}))
	t.Cleanup(slow.Close)
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), `
admin: {listen: "127.0.0.1:0", read_timeout: 2s, idle_timeout: 2s, max_connections: 50}
state_dir: ./state
functions: {f: {url: "`+slow.URL+`", timeout: 10s}}
rules: [{pattern: "*", concurrency: 5}]
`)
	p := runSluice(t, cfg)
	hostPort := strings.TrimPrefix(p.admin, "http://")

	raw := func(t *testing.T, req string) string {
		t.Helper()
		c, err := net.DialTimeout("tcp", hostPort, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, req); err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(c)
		return string(b)
	}
	t.Run("cross-origin text/plain POST", func(t *testing.T) {
		resp := raw(t, "POST /v1/rules/%2A/disable HTTP/1.1\r\nHost: "+hostPort+"\r\nOrigin: http://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(resp, "HTTP/1.1 403") {
			t.Fatalf("answer:\n%s", resp)
		}
		resp = raw(t, "POST /v1/rules/%2A/disable HTTP/1.1\r\nHost: "+hostPort+"\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(resp, "HTTP/1.1 415") {
			t.Fatalf("same-origin text/plain answer:\n%s", resp)
		}
		for _, r := range p.rules("") {
			if r.Pattern == "*" && r.Disabled {
				t.Fatal(`a refused request disabled rule "*"`)
			}
		}
	})
	t.Run("foreign Host", func(t *testing.T) {
		resp := raw(t, "GET /v1/rules HTTP/1.1\r\nHost: evil.example:9400\r\nConnection: close\r\n\r\n")
		if !strings.HasPrefix(resp, "HTTP/1.1 421") {
			t.Fatalf("answer:\n%s", resp)
		}
	})
	t.Run("slow body", func(t *testing.T) {
		c, err := net.Dial("tcp", hostPort)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		start := time.Now()
		_, _ = io.WriteString(c, "PUT /v1/rules/slow HTTP/1.1\r\nHost: "+hostPort+"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
		// One byte every 2s (a byte every 500ms here, the same attack,
		// quicker to see through): the server must cut it at read_timeout.
		var werr error
		for i := 0; i < 120 && werr == nil; i++ {
			_, werr = c.Write([]byte{'{'})
			if werr == nil {
				_ = c.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
				var b [512]byte
				if n, rerr := c.Read(b[:]); n > 0 || (rerr != nil && !isTimeout(rerr)) {
					break // answered or closed
				}
			}
		}
		if took := time.Since(start); took > 20*time.Second {
			t.Fatalf("the slow body was still being read after %s", took.Round(time.Second))
		}
		for _, r := range p.rules("") {
			if r.Pattern == "slow" {
				t.Fatal("the slow request was applied")
			}
		}
	})
	t.Run("a synchronous invocation may outlast read_timeout", func(t *testing.T) {
		// The body's time limit is lifted once the body is read: the
		// function's timeout (10s) bounds the wait, not read_timeout (2s).
		code, body := p.call(http.MethodPost, "/v1/functions/f/invocations", "", `{"x":1}`)
		if code != http.StatusOK || !strings.Contains(body, `"slow":true`) {
			t.Fatalf("invocation = %d %s", code, body)
		}
	})
	t.Run("idle connections", func(t *testing.T) {
		// 200 connections that never send a request, then 20 keep-alive
		// ones that send one and go idle: at most max_connections (50) are
		// served at once, every one is closed by the server within its time
		// limits, and the API answers afterwards.
		const n = 200
		var wg sync.WaitGroup
		var closedByServer atomic.Int64
		start := time.Now()
		for i := range n + 20 {
			c, err := net.Dial("tcp", hostPort)
			if err != nil {
				t.Fatalf("dial %d: %v", i, err)
			}
			t.Cleanup(func() { _ = c.Close() })
			if i >= n {
				_, _ = io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: "+hostPort+"\r\n\r\n")
			}
			wg.Go(func() {
				_ = c.SetReadDeadline(time.Now().Add(90 * time.Second))
				if _, err := io.Copy(io.Discard, c); err == nil {
					closedByServer.Add(1) // EOF: the server closed it
				}
			})
		}
		wg.Wait()
		if got := closedByServer.Load(); got != n+20 {
			t.Fatalf("%d of %d idle connections were closed by the server", got, n+20)
		}
		// 220 connections, 50 at a time, each closed after 2s: at least 4
		// rounds, so the cap is what made this take longer than one round.
		if took := time.Since(start); took < 8*time.Second {
			t.Errorf("all idle connections were closed after %s: more than max_connections were served at once", took.Round(time.Millisecond))
		}
		if code, _ := p.call(http.MethodGet, "/v1/rules", "", ""); code != http.StatusOK {
			t.Fatalf("GET /v1/rules after the flood = %d", code)
		}
	})
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Two processes on one state_dir: the second exits with the lock error
// naming the first's PID.
func TestSecondProcessOnStateDirFails(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), `
admin: {listen: "127.0.0.1:0"}
state_dir: ./state
brokers: {local: {nats: {listen: "127.0.0.1:0"}}}
functions: {f: {url: "http://127.0.0.1:1/"}}
dead_letters: {dead: {stream: DEAD, subject: "dead.>"}}
`)
	p := runSluice(t, cfg)
	bin, err := adminBin()
	if err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"run", "-c", cfg}, {"dlq", "list", "-c", cfg}} {
		ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
		out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
		cancel()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != exitFailure {
			t.Fatalf("sluice %s: %v, want exit %d\n%s", strings.Join(args, " "), err, exitFailure, out)
		}
		want := fmt.Sprintf("is locked by another sluice (pid %d)", p.cmd.Process.Pid)
		if !strings.Contains(string(out), want) {
			t.Fatalf("sluice %s:\n%s\nwant %q", strings.Join(args, " "), out, want)
		}
	}
	if code, _ := p.call(http.MethodGet, "/healthz", "", ""); code != http.StatusOK {
		t.Fatalf("the first sluice stopped serving: %d", code)
	}
	p.stop()
	// Once the first is gone, the state_dir is free again.
	if _, err := os.Stat(filepath.Join(dir, "state", lockFile)); err != nil {
		t.Fatal(err)
	}
	runSluice(t, cfg).stop()
}

// admin.tls with required client certificates: the API speaks HTTPS only,
// refuses a client without a certificate, and the CLI reaches it with
// --cacert, --cert and --key.
func TestAdminTLSWithClientCertificates(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	ca := testca.New(t, "admin")
	srv, cli := ca.Server("admin"), ca.Client("operator")
	dir := t.TempDir()
	cfg := writeFile(t, filepath.Join(dir, "sluice.yaml"), fmt.Sprintf(`
admin:
  listen: "127.0.0.1:0"
  tls: {cert_file: %s, key_file: %s, client_ca_file: %s}
state_dir: ./state
functions: {f: {url: "http://127.0.0.1:1/"}}
rules: [{pattern: "*", concurrency: 5}]
`, srv.CertFile, srv.KeyFile, ca.CertFile))
	p := runSluice(t, cfg)
	base := "https://" + strings.TrimPrefix(p.admin, "http://")

	get := func(c *tls.Config) error {
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: c}}
		resp, err := hc.Get(base + "/v1/rules")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	if err := get(&tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("a client without a certificate was served")
	}
	if err := get(&tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{cli.TLS}, MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatalf("a client with a certificate: %v", err)
	}
	if resp, err := http.Get(p.admin + "/healthz"); err == nil {
		_ = resp.Body.Close()
		if resp.StatusCode < 400 {
			t.Fatal("plain HTTP was served on the HTTPS listener")
		}
	}

	var out, errOut bytes.Buffer
	args := []string{"rules", "disable", "*", "--admin", base, "--cacert", ca.CertFile, "--cert", cli.CertFile, "--key", cli.KeyFile}
	if code := run(t.Context(), args, &out, &errOut); code != 0 || !strings.Contains(out.String(), "rule * disabled") {
		t.Fatalf("sluice %s: exit %d\n%s%s", strings.Join(args, " "), code, out.String(), errOut.String())
	}
	errOut.Reset()
	if code := run(t.Context(), []string{"rules", "list", "--admin", base, "--cacert", ca.CertFile}, io.Discard, &errOut); code == 0 {
		t.Fatal("the CLI without a client certificate was served")
	}
	p.stop()
}
