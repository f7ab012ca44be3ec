package consumer

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/testpki"
)

func TestBrokerSecurityValidate(t *testing.T) {
	dir := t.TempDir()
	pki, err := testpki.New(filepath.Join(dir, "pki"))
	if err != nil {
		t.Fatal(err)
	}
	pw := filepath.Join(dir, "pw")
	if err := os.WriteFile(pw, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	big := filepath.Join(dir, "big")
	if err := os.WriteFile(big, make([]byte, maxSecretFileBytes+1), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SLUICE_TEST_PW", "from-env")
	kafka := func(f func(*KafkaConfig)) BrokerConfig {
		k := DefaultKafkaConfig()
		k.Seeds = []string{"127.0.0.1:9092"}
		f(&k)
		return BrokerConfig{Kafka: &k}
	}
	natsB := func(f func(*NATSConfig)) BrokerConfig {
		n := DefaultNATSConfig()
		f(&n)
		return BrokerConfig{NATS: &n}
	}
	for _, tc := range []struct {
		name string
		b    BrokerConfig
		want []string // substrings of the error; none = valid
	}{
		{"tls enabled alone", kafka(func(k *KafkaConfig) { k.TLS.Enabled = true }), nil},
		{"mutual tls", kafka(func(k *KafkaConfig) {
			k.TLS = TLSConfig{CAFile: pki.CA, CertFile: pki.ClientCert, KeyFile: pki.ClientKey}
		}), nil},
		{"missing CA file", kafka(func(k *KafkaConfig) { k.TLS.CAFile = filepath.Join(dir, "nope") }),
			[]string{"b.kafka.tls.ca_file: open", "no such file"}},
		{"CA file without certificates", kafka(func(k *KafkaConfig) { k.TLS.CAFile = pw }), []string{"b.kafka.tls.ca_file:", "holds no PEM certificate"}},
		{"cert without key", kafka(func(k *KafkaConfig) { k.TLS.CertFile = pki.ClientCert }), []string{"b.kafka.tls.key_file: required with cert_file"}},
		{"scram from file", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLScramSHA512, Username: "u", PasswordFile: pw}
		}), nil},
		{"plain from env", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordEnv: "SLUICE_TEST_PW"}
		}), nil},
		{"unknown mechanism", kafka(func(k *KafkaConfig) { k.SASL.Mechanism = "GSSAPI" }),
			[]string{`b.kafka.sasl.mechanism: "GSSAPI" is not one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER, AWS_MSK_IAM`}},
		{"sasl fields without mechanism", kafka(func(k *KafkaConfig) { k.SASL.Username = "u" }), []string{`b.kafka.sasl.mechanism: "" is not one of`}},
		{"missing username", kafka(func(k *KafkaConfig) { k.SASL = SASLConfig{Mechanism: SASLScramSHA256, PasswordFile: pw} }),
			[]string{"b.kafka.sasl.username: required with mechanism SCRAM-SHA-256"}},
		{"both password_file and password_env", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordFile: pw, PasswordEnv: "SLUICE_TEST_PW"}
		}), []string{"b.kafka.sasl.password_file: set together with password_env; use one"}},
		{"no password", kafka(func(k *KafkaConfig) { k.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u"} }),
			[]string{"b.kafka.sasl.password_file: one of password_file or password_env is required"}},
		{"unset env", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordEnv: "SLUICE_TEST_UNSET"}
		}),
			[]string{"b.kafka.sasl.password_env: environment variable SLUICE_TEST_UNSET is not set"}},
		{"secret file too large", kafka(func(k *KafkaConfig) { k.SASL = SASLConfig{Mechanism: SASLPlain, Username: "u", PasswordFile: big} }),
			[]string{"b.kafka.sasl.password_file:", "is larger than 65536 bytes"}},
		{"oauth token", kafka(func(k *KafkaConfig) { k.SASL = SASLConfig{Mechanism: SASLOAuthBearer, TokenFile: pw} }), nil},
		{"oauth client credentials", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLOAuthBearer, TokenURL: "https://idp.example/token", ClientID: "c", ClientSecretEnv: "SLUICE_TEST_PW"}
		}), nil},
		{"oauth client credentials without id", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLOAuthBearer, TokenURL: "ftp://x", ClientSecretFile: pw}
		}), []string{"b.kafka.sasl.token_url: \"ftp://x\" is not an http(s) URL", "b.kafka.sasl.client_id: required with token_url"}},
		{"oauth with a password", kafka(func(k *KafkaConfig) {
			k.SASL = SASLConfig{Mechanism: SASLOAuthBearer, TokenFile: pw, Username: "u"}
		}), []string{"b.kafka.sasl.username: not used by mechanism OAUTHBEARER"}},
		{"msk iam", kafka(func(k *KafkaConfig) { k.SASL = SASLConfig{Mechanism: SASLAWSMSKIAM, Region: "eu-west-1"} }), nil},
		{"nats creds", natsB(func(n *NATSConfig) { n.URL = "tls://h:4222"; n.CredsFile = pw; n.TLS.CAFile = pki.CA }), nil},
		{"nats two ways", natsB(func(n *NATSConfig) { n.URL = "nats://h:4222"; n.CredsFile = pw; n.TokenFile = pw }),
			[]string{"b.nats.token_file: set together with creds_file; use one way"}},
		{"nats password without user", natsB(func(n *NATSConfig) { n.URL = "nats://h:4222"; n.PasswordFile = pw }),
			[]string{"b.nats.user: required with password_file or password_env"}},
		{"embedded on loopback, no auth", natsB(func(n *NATSConfig) { n.Listen = "127.0.0.1:4222" }), nil},
		{"embedded beyond loopback without auth or TLS", natsB(func(n *NATSConfig) { n.Listen = "0.0.0.0:4222" }),
			[]string{"b.nats.listen: 0.0.0.0:4222 is not a loopback address; the embedded server needs authentication",
				"b.nats.listen: 0.0.0.0:4222 is not a loopback address; the embedded server needs TLS"}},
		{"embedded beyond loopback with token but no TLS", natsB(func(n *NATSConfig) { n.Listen = "0.0.0.0:4222"; n.TokenFile = pw }),
			[]string{"the embedded server needs TLS there"}},
		{"embedded beyond loopback with token and TLS", natsB(func(n *NATSConfig) {
			n.Listen = "0.0.0.0:4222"
			n.TokenFile = pw
			n.TLS = TLSConfig{CertFile: pki.ServerCert, KeyFile: pki.ServerKey}
		}), nil},
		{"embedded TLS without a certificate", natsB(func(n *NATSConfig) { n.TLS.Enabled = true }),
			[]string{"b.nats.tls: the embedded server needs cert_file and key_file"}},
		{"embedded creds", natsB(func(n *NATSConfig) { n.CredsFile = pw }), []string{"b.nats.creds_file: not for the embedded server"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.b.Validate("b")
			if len(tc.want) == 0 {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("Validate = %v, want an ErrInvalid", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Validate = %v\nwant it to contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "secret") || strings.Contains(err.Error(), "from-env") {
				t.Errorf("the error shows a secret: %v", err)
			}
		})
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"nats://u:pw@h:4222":                 "nats://u:xxxxx@h:4222",
		"nats://token@h:4222,nats://h2:4222": "nats://xxxxx@h:4222,nats://h2:4222",
		"https://h/path?apikey=k":            "https://h/path",
		"tls://h:4222":                       "tls://h:4222",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}
