package nats

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"

	natsgo "github.com/nats-io/nats.go"

	"github.com/sluicehq/sluice/consumer"
)

// ConnectOptions returns the nats.go options that carry broker's security
// settings: TLS (for a server by URL) and its one way to authenticate
// (creds file, nkey seed file, token, or user and password). Every NATS
// connection sluice opens on a broker is made by Connect with them:
// sources, dead-letter writers and readers, the ingress, `sluice dlq` and
// readiness share one connection per broker or make their own through it.
// It reads the files and secrets; errors wrap consumer.ErrInvalid and name
// the key under "nats".
func ConnectOptions(broker consumer.NATSConfig) ([]natsgo.Option, error) {
	const key = "nats"
	var opts []natsgo.Option
	if !broker.Embedded() {
		tc, err := broker.TLS.Client(key + ".tls")
		if err != nil {
			return nil, err
		}
		if tc != nil {
			opts = append(opts, natsgo.Secure(tc))
		}
	}
	switch {
	case broker.CredsFile != "":
		if _, err := consumer.ReadFile(broker.CredsFile); err != nil {
			return nil, fmt.Errorf("%w: %s.creds_file: %w", consumer.ErrInvalid, key, err)
		}
		opts = append(opts, natsgo.UserCredentials(broker.CredsFile))
	case broker.NkeyFile != "":
		if _, err := consumer.ReadFile(broker.NkeyFile); err != nil {
			return nil, fmt.Errorf("%w: %s.nkey_file: %w", consumer.ErrInvalid, key, err)
		}
		o, err := natsgo.NkeyOptionFromSeed(broker.NkeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %s.nkey_file: %w", consumer.ErrInvalid, key, err)
		}
		opts = append(opts, o)
	case broker.TokenFile != "" || broker.TokenEnv != "":
		tok, err := broker.Token(key)
		if err != nil {
			return nil, err
		}
		opts = append(opts, natsgo.Token(tok))
	case broker.User != "":
		pw, err := broker.Password(key)
		if err != nil {
			return nil, err
		}
		opts = append(opts, natsgo.UserInfo(broker.User, pw))
	}
	return opts, nil
}

// Connect connects to url with broker's security settings (ConnectOptions)
// and then opts. An error names the URL with its user info redacted and,
// where it can tell, the cause: credentials refused, a certificate not
// trusted, TLS required or not offered.
func Connect(url string, broker consumer.NATSConfig, opts ...natsgo.Option) (*natsgo.Conn, error) {
	base, err := ConnectOptions(broker)
	if err != nil {
		return nil, err
	}
	nc, err := natsgo.Connect(url, append(base, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("nats: connect to %s: %s", consumer.RedactURL(url), explain(broker, err, url))
	}
	return nc, nil
}

// explain describes a failed connect; it never includes url's user info
// (nats.go does not put URLs in its errors, but the text is scrubbed of
// url anyway).
func explain(broker consumer.NATSConfig, err error, url string) string {
	var (
		unknown x509.UnknownAuthorityError
		host    x509.HostnameError
		verify  *tls.CertificateVerificationError
		header  tls.RecordHeaderError
	)
	msg := strings.ReplaceAll(err.Error(), url, consumer.RedactURL(url))
	switch {
	case errors.Is(err, natsgo.ErrAuthorization), errors.Is(err, natsgo.ErrAuthExpired), errors.Is(err, natsgo.ErrAuthRevoked),
		strings.Contains(strings.ToLower(msg), "authorization violation"), strings.Contains(strings.ToLower(msg), "authentication"):
		return fmt.Sprintf("credentials refused (%s): %s", authHint(broker), msg)
	case errors.As(err, &unknown), errors.As(err, &host), errors.As(err, &verify):
		return fmt.Sprintf("TLS: the server's certificate is not trusted (check tls.ca_file and tls.server_name): %s", msg)
	case errors.Is(err, natsgo.ErrSecureConnRequired):
		return fmt.Sprintf("the server requires TLS (set tls.enabled, and tls.ca_file for a private CA): %s", msg)
	case errors.Is(err, natsgo.ErrSecureConnWanted), errors.As(err, &header):
		return fmt.Sprintf("TLS is set but the server does not offer it (remove tls, or use the server's TLS port): %s", msg)
	case strings.Contains(msg, "remote error: tls:"):
		return fmt.Sprintf("TLS: the server refused the handshake (does it require a client certificate? tls.cert_file and tls.key_file): %s", msg)
	case errors.As(err, new(*net.OpError)), errors.Is(err, natsgo.ErrNoServers):
		return fmt.Sprintf("cannot reach the server: %s", msg)
	default:
		return msg
	}
}

func authHint(b consumer.NATSConfig) string {
	switch {
	case b.CredsFile != "":
		return "check creds_file: its user JWT and seed, and the account on the server"
	case b.NkeyFile != "":
		return "check nkey_file: the seed of a user the server knows"
	case b.TokenFile != "" || b.TokenEnv != "":
		return "check the token: token_file or token_env"
	case b.User != "":
		return "check user and password_file or password_env"
	default:
		return "the server requires credentials: set creds_file, nkey_file, token_file or user with password_file"
	}
}
