package kafka

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/sluicehq/sluice/consumer"
)

// TestMSKIAMPayload builds the AWS_MSK_IAM first message as sluice would
// send it to MSK: credentials from the AWS chain (here its environment
// step), signed with SigV4 for the broker's region. Without AWS this is as
// far as it can be tested: no broker checks the signature.
func TestMSKIAMPayload(t *testing.T) {
	isolateAWS(t)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
	t.Setenv("AWS_SESSION_TOKEN", "session-token")
	m, err := mechanism(consumer.SASLConfig{Mechanism: consumer.SASLAWSMSKIAM, Region: "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	if m.Name() != "AWS_MSK_IAM" {
		t.Fatalf("mechanism %q", m.Name())
	}
	_, first, err := m.Authenticate(context.Background(), "b-1.demo.abc123.c2.kafka.eu-west-1.amazonaws.com:9098")
	if err != nil {
		t.Fatal(err)
	}
	var p map[string]string
	if err := json.Unmarshal(first, &p); err != nil {
		t.Fatalf("payload is not JSON: %v: %s", err, first)
	}
	cred := regexp.MustCompile(`^AKIDEXAMPLE/\d{8}/eu-west-1/kafka-cluster/aws4_request$`)
	switch {
	case p["action"] != "kafka-cluster:Connect":
		t.Errorf("action %q", p["action"])
	case !cred.MatchString(p["x-amz-credential"]):
		t.Errorf("credential %q", p["x-amz-credential"])
	case p["x-amz-security-token"] != "session-token":
		t.Errorf("security token %q", p["x-amz-security-token"])
	case !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(p["x-amz-signature"]):
		t.Errorf("signature %q", p["x-amz-signature"])
	case p["host"] != "b-1.demo.abc123.c2.kafka.eu-west-1.amazonaws.com":
		t.Errorf("host %q", p["host"])
	}
	if strings.Contains(string(first), "wJalrXUtnFEMI") {
		t.Error("the secret key is in the payload")
	}
}

// TestMSKIAMNoCredentials: with nothing in the chain the authentication
// fails with a message that says so.
func TestMSKIAMNoCredentials(t *testing.T) {
	isolateAWS(t)
	m, err := mechanism(consumer.SASLConfig{Mechanism: consumer.SASLAWSMSKIAM, Region: "eu-west-1"})
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = m.Authenticate(context.Background(), "b-1.demo.kafka.eu-west-1.amazonaws.com:9098")
	if err == nil || !strings.Contains(err.Error(), "AWS_MSK_IAM") {
		t.Fatalf("Authenticate = %v, want an AWS_MSK_IAM credentials error", err)
	}
}

// isolateAWS keeps the AWS chain from the machine's files and instance
// metadata.
func isolateAWS(t *testing.T) {
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_CONFIG_FILE": filepath.Join(dir, "config"), "AWS_SHARED_CREDENTIALS_FILE": filepath.Join(dir, "credentials"),
		"AWS_EC2_METADATA_DISABLED": "true", "AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "", "AWS_SESSION_TOKEN": "",
		"AWS_PROFILE": "", "AWS_WEB_IDENTITY_TOKEN_FILE": "", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "",
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": "", "AWS_REGION": "eu-west-1",
	} {
		t.Setenv(k, v)
	}
}

// TestOAuthClientCredentials: tokens come from the endpoint with the
// client's id and secret, are shared by every client of the config, and
// are fetched again when less than tokenRefreshEarly of their life is left.
func TestOAuthClientCredentials(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(secret, []byte("s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		expiresIn int
		fetches   int64
	}{
		{"long-lived token reused", 3600, 1},
		{"token about to expire renewed", 30, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clientID := "c-" + strings.ReplaceAll(tc.name, " ", "-")
			var n atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				id, sec, _ := r.BasicAuth()
				if id != clientID || sec != "s3cret" || r.FormValue("grant_type") != "client_credentials" || r.FormValue("scope") != "a b" {
					http.Error(w, "bad client", http.StatusUnauthorized)
					return
				}
				w.Header().Set("Content-Type", "application/json")
				fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"Bearer","expires_in":%d}`, n.Add(1), tc.expiresIn)
			}))
			defer srv.Close()
			cfg := consumer.SASLConfig{Mechanism: consumer.SASLOAuthBearer, TokenURL: srv.URL, ClientID: clientID,
				ClientSecretFile: secret, Scope: "a b"}
			var last []byte
			for range 3 {
				m, err := mechanism(cfg) // a new client each time, as sluice's clients are
				if err != nil {
					t.Fatal(err)
				}
				_, first, err := m.Authenticate(context.Background(), "h:9092")
				if err != nil {
					t.Fatal(err)
				}
				last = first
			}
			if got := n.Load(); got != tc.fetches {
				t.Errorf("%d token fetches, want %d", got, tc.fetches)
			}
			if want := fmt.Sprintf("auth=Bearer tok-%d", tc.fetches); !strings.Contains(string(last), want) {
				t.Errorf("last message %q, want it to carry %q", last, want)
			}
		})
	}
}
