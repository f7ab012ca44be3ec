package integration

// Secured Kafka: sluice against the second, secured broker that
// `scripts/brokers/up.sh RUN_DIR kafka-secure` starts (make test-all starts
// it): a SASL_SSL listener (SCRAM-SHA-512, SCRAM-SHA-256, PLAIN and
// OAUTHBEARER with Kafka's unsecured-JWS validator) and a mutual-TLS
// listener, with a CA generated for the run. Topics are created and read
// by the tests through the broker's plaintext INTERNAL listener; sluice
// itself only ever uses the secured ones.

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

// secureKafka is the secured broker's addresses and files.
type secureKafka struct {
	sasl, mtls, internal string // host:port of the SASL_SSL, SSL (client auth) and plaintext listeners
	pki                  string // directory of the PEM files (internal/testpki)
	passwordFile         string // the password of alice (SCRAM-SHA-512), bob (SCRAM-SHA-256), carol (PLAIN)
}

// secureKafkaEnv returns the secured broker, skipping the test when
// up.sh did not start one.
func secureKafkaEnv(t *testing.T) secureKafka {
	t.Helper()
	k := secureKafka{
		sasl: os.Getenv("SLUICE_TEST_KAFKA_SASL"), mtls: os.Getenv("SLUICE_TEST_KAFKA_MTLS"),
		internal: os.Getenv("SLUICE_TEST_KAFKA_SECURE_INTERNAL"), pki: os.Getenv("SLUICE_TEST_KAFKA_PKI"),
		passwordFile: os.Getenv("SLUICE_TEST_KAFKA_PASSWORD_FILE"),
	}
	if k.sasl == "" {
		skipNoBroker(t, "no secured Kafka broker: run `make test-all`, or scripts/brokers/up.sh RUN_DIR kafka-secure and source RUN_DIR/env")
	}
	return k
}

func (k secureKafka) file(name string) string { return filepath.Join(k.pki, name) }

// internalClient is a plaintext client of the secured broker, for the
// test's own setup and checks.
func (k secureKafka) internalClient(t *testing.T) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(k.internal))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

func (k secureKafka) createTopic(t *testing.T) string {
	t.Helper()
	topic := uniqueName(t, "sluice-sec")
	resp, err := kadm.NewClient(k.internalClient(t)).CreateTopic(t.Context(), 1, 1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		t.Fatalf("create topic %s: %v", topic, err)
	}
	return topic
}

func (k secureKafka) produce(t *testing.T, topic string, values ...string) {
	t.Helper()
	cl := k.internalClient(t)
	for _, v := range values {
		if err := cl.ProduceSync(t.Context(), &kgo.Record{Topic: topic, Key: []byte(v), Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatalf("produce to %s: %v", topic, err)
		}
	}
}

// count is how many records topic holds.
func (k secureKafka) count(t *testing.T, topic string) int64 {
	t.Helper()
	ends, err := kadm.NewClient(k.internalClient(t)).ListEndOffsets(t.Context(), topic)
	if err != nil {
		t.Fatalf("end offsets of %s: %v", topic, err)
	}
	var n int64
	ends.Each(func(o kadm.ListedOffset) { n += o.Offset })
	return n
}

// secureDoc is a sluice config with one stream source on broker kafka
// (plus an async source for the ingress when asyncTopic is set).
func secureDoc(kafka map[string]any, fnURL, topic, dlt, asyncTopic, ingressURL string) map[string]any {
	doc := map[string]any{
		"admin":     map[string]any{"listen": "127.0.0.1:0"},
		"state_dir": "./state",
		"brokers":   map[string]any{"main": map[string]any{"kafka": kafka}},
		"functions": map[string]any{"fn": map[string]any{"url": fnURL, "timeout": "30s"}},
		"sources": map[string]any{"orders": map[string]any{"topic": topic, "function": "fn", "on_failure": "dead",
			"max_retry_attempts": 0, "retry_backoff": map[string]any{"initial": "100ms", "max": "1s"}}},
		"dead_letters": map[string]any{"dead": map[string]any{"topic": dlt, "retention": "1h"}},
	}
	if asyncTopic != "" {
		doc["functions"].(map[string]any)["ev"] = map[string]any{"url": ingressURL, "async_queue": "events", "timeout": "30s"}
		doc["sources"].(map[string]any)["events"] = map[string]any{"topic": asyncTopic, "mode": "async", "function": "ev",
			"max_event_age": "1h", "retry_backoff": map[string]any{"initial": "100ms", "max": "1s"}}
	}
	return doc
}

// bodyFn records the bodies it is invoked with (async events).
type bodyFn struct {
	srv    *httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newBodyFn(t *testing.T) *bodyFn {
	f := &bodyFn{}
	f.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.bodies = append(f.bodies, string(b))
		f.mu.Unlock()
	}))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *bodyFn) has(s string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, b := range f.bodies {
		if strings.Contains(b, s) {
			return true
		}
	}
	return false
}

// TestSecureKafka: through the SASL_SSL (SCRAM-SHA-512) listener and the
// mutual-TLS listener, a stream source delivers, its dead letters are
// written, `sluice dlq list` and `dlq replay` read and replay them, and the
// ingress enqueues an event that its async source (with its retry topics)
// delivers.
func TestSecureKafka(t *testing.T) {
	k := secureKafkaEnv(t)
	for _, tc := range []struct {
		name  string
		kafka map[string]any
	}{
		{"sasl_ssl-scram-sha-512", map[string]any{"seeds": []string{k.sasl},
			"tls":  map[string]any{"ca_file": k.file("ca.pem")},
			"sasl": map[string]any{"mechanism": "SCRAM-SHA-512", "username": "alice", "password_file": k.passwordFile}}},
		{"mutual-tls", map[string]any{"seeds": []string{k.mtls},
			"tls": map[string]any{"ca_file": k.file("ca.pem"), "cert_file": k.file("client.pem"), "key_file": k.file("client-key.pem")}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, dlt, asyncTopic := k.createTopic(t), k.createTopic(t), k.createTopic(t)
			fn := newReplayFn(t, http.StatusInternalServerError)
			ev := newBodyFn(t)
			cfg := writeYAML(t, t.TempDir(), secureDoc(tc.kafka, fn.url(), topic, dlt, asyncTopic, ev.srv.URL))
			p := startSluice(t, "sluice run", cfg)

			const n = 10
			var values []string
			for i := range n {
				values = append(values, fmt.Sprintf("order-%02d", i))
			}
			k.produce(t, topic, values...)
			eventually(t, 60*time.Second, "10 dead letters", func() error {
				if c := k.count(t, dlt); c < n {
					return fmt.Errorf("%d letters", c)
				}
				return nil
			})

			// The ingress writes to the async queue through the same
			// secured broker; the async source delivers the event.
			req, _ := http.NewRequest(http.MethodPost, "http://"+p.admin+"/v1/functions/ev/invocations", strings.NewReader(`{"hello":"secure"}`))
			req.Header.Set("Sluice-Invocation-Type", "Event")
			req.Header.Set("Content-Type", "application/json")
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("ingress event: %d, want 202", resp.StatusCode)
			}
			eventually(t, 60*time.Second, "the ingress event delivered", func() error {
				if !ev.has(`"secure"`) {
					return fmt.Errorf("not yet")
				}
				return nil
			})
			if code := p.stop(syscall.SIGTERM); code != 0 {
				t.Fatalf("sluice run exited %d", code)
			}

			if got := listLetters(t, cfg); len(got) != n {
				t.Fatalf("dlq list: %d letters, want %d", len(got), n)
			}
			fn.fix(0)
			code, out, errs := dlqRun(t, "dlq", "replay", "-c", cfg, "--source", "orders")
			if code != 0 || strings.TrimSpace(out) != fmt.Sprintf("replayed %d: %d succeeded, 0 failed, 0 skipped", n, n) {
				t.Fatalf("replay: exit %d, %q\n%s", code, out, errs)
			}
			if distinct, _, _ := fn.stats(); distinct != n {
				t.Fatalf("replay delivered %d distinct orders, want %d", distinct, n)
			}
		})
	}
}

// TestSecureKafkaMechanisms: PLAIN, SCRAM-SHA-256 and OAUTHBEARER (a fixed
// token, and the client-credentials flow against a token endpoint of the
// test) each carry a stream source on the SASL_SSL listener. The broker
// validates OAUTHBEARER tokens with Kafka's unsecured-JWS validator: the
// tokens are unsigned JWTs, so this proves the SASL exchange and the token
// fetching and renewal, not a signature check.
func TestSecureKafkaMechanisms(t *testing.T) {
	k := secureKafkaEnv(t)
	var fetches sync.Map // grant type → count
	tokenSrv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := r.ParseForm(); err != nil || r.Form.Get("grant_type") != "client_credentials" {
			http.Error(w, "want client_credentials", http.StatusBadRequest)
			return
		}
		id, secret, _ := r.BasicAuth()
		if id != "sluice" || secret != "s3cret" {
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		}
		n, _ := fetches.LoadOrStore("n", new(int))
		*(n.(*int))++
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"access_token": unsecuredJWT("sluice", time.Hour), "token_type": "Bearer", "expires_in": 3600})
	}))
	t.Cleanup(tokenSrv.Close)
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "client-secret")
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(secretFile, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(unsecuredJWT("static", time.Hour)), 0o600); err != nil {
		t.Fatal(err)
	}
	tlsBlock := map[string]any{"ca_file": k.file("ca.pem")}
	for _, tc := range []struct {
		name string
		sasl map[string]any
	}{
		{"plain", map[string]any{"mechanism": "PLAIN", "username": "carol", "password_file": k.passwordFile}},
		{"scram-sha-256", map[string]any{"mechanism": "SCRAM-SHA-256", "username": "bob", "password_file": k.passwordFile}},
		{"oauthbearer-token", map[string]any{"mechanism": "OAUTHBEARER", "token_file": tokenFile}},
		{"oauthbearer-client-credentials", map[string]any{"mechanism": "OAUTHBEARER", "token_url": tokenSrv.URL,
			"client_id": "sluice", "client_secret_file": secretFile, "scope": "kafka"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			topic, dlt := k.createTopic(t), k.createTopic(t)
			fn := newReplayFn(t, 0)
			cfg := writeYAML(t, t.TempDir(), secureDoc(map[string]any{"seeds": []string{k.sasl}, "tls": tlsBlock, "sasl": tc.sasl},
				fn.url(), topic, dlt, "", ""))
			p := startSluice(t, "sluice run", cfg)
			k.produce(t, topic, "a", "b", "c")
			eventually(t, 60*time.Second, "3 records delivered", func() error {
				if d, _, _ := fn.stats(); d < 3 {
					return fmt.Errorf("%d delivered", d)
				}
				return nil
			})
			if code := p.stop(syscall.SIGTERM); code != 0 {
				t.Fatalf("sluice run exited %d", code)
			}
		})
	}
	if n, ok := fetches.Load("n"); !ok || *(n.(*int)) < 1 {
		t.Error("the token endpoint was never asked for a token")
	}
}

// unsecuredJWT is an unsigned JWT ("alg":"none") for subject sub, valid for
// ttl: what Kafka's unsecured validator accepts.
func unsecuredJWT(sub string, ttl time.Duration) string {
	enc := base64.RawURLEncoding.EncodeToString
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{"sub": sub, "iat": now.Unix(), "exp": now.Add(ttl).Unix(), "scope": "kafka"})
	return enc([]byte(`{"alg":"none"}`)) + "." + enc(claims) + "."
}

// TestSecureKafkaFailsFast: a wrong password, a CA that did not sign the
// broker's certificate, a plaintext client on the TLS listener and no
// client certificate on the mutual-TLS listener each stop `sluice run` at
// start-up, quickly, with a message naming the broker and the cause; a
// missing CA file is a configuration error (exit 2). The password never
// appears in the output.
func TestSecureKafkaFailsFast(t *testing.T) {
	k := secureKafkaEnv(t)
	dir := t.TempDir()
	wrongPw := filepath.Join(dir, "wrong-password")
	if err := os.WriteFile(wrongPw, []byte("not-the-password"), 0o600); err != nil {
		t.Fatal(err)
	}
	pw, err := os.ReadFile(k.passwordFile)
	if err != nil {
		t.Fatal(err)
	}
	topic, dlt := k.createTopic(t), k.createTopic(t)
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
	}))
	t.Cleanup(refusing.Close)
	scram := func(pwFile string) map[string]any {
		return map[string]any{"mechanism": "SCRAM-SHA-512", "username": "alice", "password_file": pwFile}
	}
	for _, tc := range []struct {
		name  string
		kafka map[string]any
		code  int
		want  []string
	}{
		{"wrong password", map[string]any{"seeds": []string{k.sasl}, "tls": map[string]any{"ca_file": k.file("ca.pem")}, "sasl": scram(wrongPw)},
			1, []string{"brokers.main", "SASL SCRAM-SHA-512", `"alice"`, "refused"}},
		{"wrong CA", map[string]any{"seeds": []string{k.sasl}, "tls": map[string]any{"ca_file": k.file("other-ca.pem")}, "sasl": scram(k.passwordFile)},
			1, []string{"brokers.main", "not trusted", "tls.ca_file"}},
		{"no TLS on the TLS listener", map[string]any{"seeds": []string{k.sasl}, "sasl": scram(k.passwordFile)},
			1, []string{"brokers.main", "wants TLS", "tls.enabled"}},
		{"no client certificate", map[string]any{"seeds": []string{k.mtls}, "tls": map[string]any{"ca_file": k.file("ca.pem")}},
			1, []string{"brokers.main", "client certificate"}},
		{"token endpoint refuses", map[string]any{"seeds": []string{k.sasl}, "tls": map[string]any{"ca_file": k.file("ca.pem")},
			"sasl": map[string]any{"mechanism": "OAUTHBEARER", "token_url": refusing.URL, "client_id": "sluice", "client_secret_file": k.passwordFile}},
			1, []string{"brokers.main", "SASL OAUTHBEARER: cannot get credentials", "401"}},
		{"missing CA file", map[string]any{"seeds": []string{k.sasl}, "tls": map[string]any{"ca_file": filepath.Join(dir, "nope.pem")}, "sasl": scram(k.passwordFile)},
			2, []string{"brokers.main.kafka.tls.ca_file", "no such file"}},
		{"unknown mechanism", map[string]any{"seeds": []string{k.sasl}, "sasl": map[string]any{"mechanism": "GSSAPI"}},
			2, []string{"brokers.main.kafka.sasl.mechanism", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, AWS_MSK_IAM"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := writeYAML(t, t.TempDir(), secureDoc(tc.kafka, "http://127.0.0.1:1/none", topic, dlt, "", ""))
			start := time.Now()
			cmd := exec.Command(sluiceBinary(t), "run", "-c", cfg)
			var out bytes.Buffer
			cmd.Stdout, cmd.Stderr = &out, &out
			done := make(chan error, 1) // Run's one result
			go func() { done <- cmd.Run() }()
			var err error
			select {
			case err = <-done:
			case <-time.After(45 * time.Second):
				_ = cmd.Process.Kill()
				<-done
				t.Fatalf("sluice run still running after 45s, want a fast failure\n%s", out.String())
			}
			took := time.Since(start)
			if code := exitCode(t, err); code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", code, tc.code, out.String())
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
			if strings.Contains(out.String(), strings.TrimSpace(string(pw))) {
				t.Errorf("the password appears in the output:\n%s", out.String())
			}
			t.Logf("failed after %s: %s", took.Round(time.Millisecond), strings.TrimSpace(lastLine(out.String())))
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}
