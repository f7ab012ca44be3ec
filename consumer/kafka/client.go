package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	awssdk "github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/aws"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"
	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"

	"github.com/sluicehq/sluice/consumer"
)

// ClientOpts returns the options every client sluice opens on broker starts
// from: seeds, client id, TLS and SASL. Every Kafka client of this package
// (sources, retry topics, dead-letter writers and readers, EnsureTopic,
// pings) is built on it, so a broker's security settings apply to all of
// them. It reads the TLS files and the SASL secrets; errors wrap
// consumer.ErrInvalid and name the key under "kafka".
func ClientOpts(broker consumer.KafkaConfig) ([]kgo.Opt, error) {
	if len(broker.Seeds) == 0 {
		return nil, errors.New("kafka: no seed brokers")
	}
	opts := []kgo.Opt{kgo.SeedBrokers(broker.Seeds...), kgo.ClientID(clientID(broker))}
	tc, err := broker.TLS.Client("kafka.tls")
	if err != nil {
		return nil, err
	}
	if tc != nil {
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	if broker.SASL.On() {
		m, err := mechanism(broker.SASL)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	return opts, nil
}

// newClient is kgo.NewClient over ClientOpts(broker) and then opts.
func newClient(broker consumer.KafkaConfig, opts ...kgo.Opt) (*kgo.Client, error) {
	base, err := ClientOpts(broker)
	if err != nil {
		return nil, err
	}
	return kgo.NewClient(append(base, opts...)...)
}

// mechanism builds the SASL mechanism of s with franz-go's pkg/sasl.
// Secrets are read once here; an OAuth token source is shared by all the
// clients of one configuration and renews tokens before they expire.
func mechanism(s consumer.SASLConfig) (sasl.Mechanism, error) {
	const key = "kafka.sasl"
	switch s.Mechanism {
	case consumer.SASLPlain, consumer.SASLScramSHA256, consumer.SASLScramSHA512:
		pw, err := s.Password(key)
		if err != nil {
			return nil, err
		}
		switch s.Mechanism {
		case consumer.SASLPlain:
			return plain.Auth{User: s.Username, Pass: pw}.AsMechanism(), nil
		case consumer.SASLScramSHA256:
			return scram.Auth{User: s.Username, Pass: pw}.AsSha256Mechanism(), nil
		default:
			return scram.Auth{User: s.Username, Pass: pw}.AsSha512Mechanism(), nil
		}
	case consumer.SASLOAuthBearer:
		if !s.ClientCredentials() {
			tok, err := s.Token(key)
			if err != nil {
				return nil, err
			}
			return oauth.Auth{Token: tok}.AsMechanism(), nil
		}
		ts, err := tokenSource(s)
		if err != nil {
			return nil, err
		}
		return oauth.Oauth(func(context.Context) (oauth.Auth, error) {
			t, err := ts.Token()
			if err != nil {
				return oauth.Auth{}, credentialsError{fmt.Errorf("OAUTHBEARER token from %s: %w", s.TokenURL, err)}
			}
			return oauth.Auth{Token: t.AccessToken}, nil
		}), nil
	case consumer.SASLAWSMSKIAM:
		return mskIAM(s.Region), nil
	default:
		return nil, fmt.Errorf("%w: %s.mechanism: %q is not one of %s", consumer.ErrInvalid, key, s.Mechanism,
			strings.Join(consumer.SASLMechanisms, ", "))
	}
}

// tokenRefreshEarly is how long before a token's expiry a new one is
// fetched, so that a connection is never authenticated with a token about
// to lapse.
const tokenRefreshEarly = time.Minute

// tokenFetchTimeout bounds one request to the token endpoint.
const tokenFetchTimeout = 30 * time.Second

var (
	tokenSourcesMu sync.Mutex                        // guards tokenSources
	tokenSources   = map[string]oauth2.TokenSource{} // token_url, client_id, scope, secret → the shared source
)

// tokenSource returns the client-credentials token source of s, shared by
// every client with the same settings (one token for the process, not one
// per client).
func tokenSource(s consumer.SASLConfig) (oauth2.TokenSource, error) {
	secret, err := s.ClientSecret("kafka.sasl")
	if err != nil {
		return nil, err
	}
	id := strings.Join([]string{s.TokenURL, s.ClientID, s.Scope, secret}, "\x00")
	tokenSourcesMu.Lock()
	defer tokenSourcesMu.Unlock()
	if ts, ok := tokenSources[id]; ok {
		return ts, nil
	}
	cc := clientcredentials.Config{ClientID: s.ClientID, ClientSecret: secret, TokenURL: s.TokenURL, Scopes: strings.Fields(s.Scope)}
	ctx := context.WithValue(context.Background(), oauth2.HTTPClient, &http.Client{Timeout: tokenFetchTimeout})
	ts := oauth2.ReuseTokenSourceWithExpiry(nil, cc.TokenSource(ctx), tokenRefreshEarly)
	tokenSources[id] = ts
	return ts, nil
}

// mskIAM is AWS_MSK_IAM with credentials from the AWS SDK's default chain
// (environment, shared files, web identity, container and instance roles),
// asked on every authentication so that rotated credentials are used.
func mskIAM(region string) sasl.Mechanism {
	if region != "" && os.Getenv("AWS_REGION") == "" && os.Getenv("AWS_DEFAULT_REGION") == "" {
		// franz-go signs for the region in the broker's host name
		// (b-1.x.kafka.<region>.amazonaws.com) and falls back to
		// AWS_REGION: give it the configured one for hosts without it
		// (PrivateLink, custom DNS).
		_ = os.Setenv("AWS_REGION", region)
	}
	var (
		once sync.Once
		cfgE error
		prov awssdk.CredentialsProvider
	)
	return aws.ManagedStreamingIAM(func(ctx context.Context) (aws.Auth, error) {
		once.Do(func() {
			var opts []func(*awsconfig.LoadOptions) error
			if region != "" {
				opts = append(opts, awsconfig.WithRegion(region))
			}
			c, err := awsconfig.LoadDefaultConfig(ctx, opts...)
			if err != nil {
				cfgE = err
				return
			}
			if c.Credentials == nil {
				cfgE = errors.New("no credentials in the AWS chain (environment, shared files, roles)")
				return
			}
			prov = c.Credentials
		})
		if cfgE != nil {
			return aws.Auth{}, credentialsError{fmt.Errorf("AWS_MSK_IAM: load AWS config: %w", cfgE)}
		}
		c, err := prov.Retrieve(ctx)
		if err != nil {
			return aws.Auth{}, credentialsError{fmt.Errorf("AWS_MSK_IAM: AWS credentials: %w", err)}
		}
		return aws.Auth{AccessKey: c.AccessKeyID, SecretKey: c.SecretAccessKey, SessionToken: c.SessionToken}, nil
	})
}

// credentialsError is a failure to obtain SASL credentials (a token
// endpoint that refused, nothing in the AWS chain), for Check to report.
type credentialsError struct{ err error }

func (e credentialsError) Error() string { return e.err.Error() }
func (e credentialsError) Unwrap() error { return e.err }

// Check connects to broker once and reports, for start-up, whether its
// security settings work: a TLS handshake that fails (wrong CA, TLS
// against a plaintext listener), a refused SASL authentication, or a broker
// that hangs up (plaintext against a TLS or SASL listener) are errors that
// say so. A broker that cannot be reached at all (refused, no route, no
// answer within ctx) is not an error of the settings: Check returns nil
// then, and the clients keep trying as they always do.
func Check(ctx context.Context, broker consumer.KafkaConfig) error {
	cl, err := newClient(broker, kgo.DialTimeout(10*time.Second))
	if err != nil {
		return err
	}
	defer cl.Close()
	err = cl.Ping(ctx)
	if err == nil {
		return nil
	}
	return explain(broker, err)
}

// explain turns a failed first contact into a message naming the cause;
// nil for a broker that is merely unreachable.
func explain(broker consumer.KafkaConfig, err error) error {
	var (
		verify  *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		header  tls.RecordHeaderError
		kerror  *kerr.Error
	)
	seeds := bootstrapServers(broker)
	msg := err.Error()
	switch {
	case errors.As(err, new(credentialsError)):
		return fmt.Errorf("kafka: SASL %s: cannot get credentials: %w", broker.SASL.Mechanism, err)
	case errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &verify):
		return fmt.Errorf("kafka: TLS: the certificate of %s is not trusted (check tls.ca_file and tls.server_name): %w", seeds, err)
	case errors.As(err, &header):
		return fmt.Errorf("kafka: TLS: %s does not speak TLS on that port (a plaintext listener? then remove tls): %w", seeds, err)
	case strings.Contains(msg, "remote error: tls:"):
		// The server's alert (crypto/tls does not export its type).
		return fmt.Errorf("kafka: TLS: %s refused the handshake (does it require a client certificate? tls.cert_file and tls.key_file): %w", seeds, err)
	case strings.Contains(msg, "invalid large response size"):
		// franz-go read a TLS record as the size of a Kafka response.
		return fmt.Errorf("kafka: %s answered in TLS: its listener wants TLS (set tls.enabled, and tls.ca_file for a private CA): %w", seeds, err)
	case errors.As(err, &kerror) && (kerror.Code == kerr.SaslAuthenticationFailed.Code || kerror.Code == kerr.UnsupportedSaslMechanism.Code || kerror.Code == kerr.IllegalSaslState.Code):
		return fmt.Errorf("kafka: SASL %s as %q refused by %s (check sasl.username and its password or token): %w",
			broker.SASL.Mechanism, broker.SASL.Username, seeds, err)
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET):
		return fmt.Errorf("kafka: %s closed the connection during the first request: its listener wants something this broker's config does not do (%s)", seeds, hangupHint(broker))
	case errors.As(err, new(*net.OpError)), errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		return nil // unreachable: not a settings problem
	case strings.Contains(err.Error(), "sasl"), strings.Contains(err.Error(), "SASL"):
		return fmt.Errorf("kafka: SASL with %s failed: %w", seeds, err)
	default:
		return nil
	}
}

func hangupHint(broker consumer.KafkaConfig) string {
	switch {
	case !broker.TLS.On() && !broker.SASL.On():
		return "TLS or SASL? set tls and sasl"
	case broker.TLS.On() && !broker.SASL.On():
		return "a plaintext listener? then remove tls; or SASL? then set sasl"
	case !broker.TLS.On():
		return "TLS? set tls.enabled"
	default:
		return "another SASL mechanism, or a client certificate?"
	}
}
