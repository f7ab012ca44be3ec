package nats

import (
	"path/filepath"
	"strings"
	"testing"

	natsgo "github.com/nats-io/nats.go"

	"github.com/sluicehq/sluice/consumer"
	"github.com/sluicehq/sluice/internal/testpki"
)

// TestEmbeddedSecured: an embedded server with a token and TLS requiring
// client certificates takes sluice's in-process connection with the token,
// refuses it without, and refuses a network client without TLS; Connect's
// errors say why and never show the token.
func TestEmbeddedSecured(t *testing.T) {
	dir := t.TempDir()
	pki, err := testpki.New(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	e, err := StartEmbedded(filepath.Join(dir, "store"), WithPort(-1), WithToken("t0ken-secret"),
		WithTLS(pki.ServerCert, pki.ServerKey, pki.CA))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	t.Setenv("SLUICE_TEST_NATS_TOKEN", "t0ken-secret")
	withToken := consumer.NATSConfig{TokenEnv: "SLUICE_TEST_NATS_TOKEN"}

	inproc := strings.Replace(e.ClientURL(), "tls://", "nats://", 1) // as cmd/sluice does
	nc, err := Connect(inproc, withToken, natsgo.InProcessServer(e))
	if err != nil {
		t.Fatalf("in-process with the token: %v", err)
	}
	if _, err := nc.JetStream(); err != nil {
		t.Fatal(err)
	}
	nc.Close()

	// A network client with TLS and a client certificate, but a wrong
	// token.
	t.Setenv("SLUICE_TEST_NATS_TOKEN", "wrong")
	_, err = Connect(e.ClientURL(), consumer.NATSConfig{URL: e.ClientURL(), TokenEnv: "SLUICE_TEST_NATS_TOKEN",
		TLS: consumer.TLSConfig{CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}})
	if err == nil || !strings.Contains(err.Error(), "credentials refused") {
		t.Errorf("TLS client with a wrong token = %v, want credentials refused", err)
	}
	url := strings.Replace(e.ClientURL(), "tls://", "nats://user:t0ken-secret@", 1)
	_, err = Connect(url, withToken)
	if err == nil {
		t.Fatal("a network client without TLS got in")
	}
	if strings.Contains(err.Error(), "t0ken-secret") {
		t.Errorf("the error shows the secret: %v", err)
	}
}

// TestConnectExplains: a client with tls against a server without TLS and
// a client without credentials against one that requires them get messages
// that say so; a URL's password never shows.
func TestConnectExplains(t *testing.T) {
	e, err := StartEmbedded(t.TempDir(), WithPort(-1), WithUser("sluice", "pw-secret"))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Shutdown()
	url := e.ClientURL()
	for _, tc := range []struct {
		name string
		cfg  consumer.NATSConfig
		want string
	}{
		{"tls against plaintext", consumer.NATSConfig{URL: url, TLS: consumer.TLSConfig{Enabled: true}}, "TLS is set but the server does not offer it"},
		{"no credentials", consumer.NATSConfig{URL: url}, "credentials refused (the server requires credentials"},
		{"unreachable, password redacted", consumer.NATSConfig{URL: "nats://u:pw-secret@127.0.0.1:1"}, "connect to nats://u:xxxxx@127.0.0.1:1: cannot reach the server"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Connect(tc.cfg.URL, tc.cfg)
			if err != nil && strings.Contains(err.Error(), "pw-secret") {
				t.Errorf("the error shows the password: %v", err)
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Connect = %v, want %q", err, tc.want)
			}
		})
	}
}
