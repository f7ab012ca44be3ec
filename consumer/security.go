package consumer

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
)

// TLSConfig is the `tls` block of a broker (Kafka and NATS alike). TLS is on
// when Enabled is true or any other field is set; `enabled: true` alone
// means TLS with the system's root certificates.
//
// For the embedded nats-server the same block configures the server:
// CertFile and KeyFile are its certificate and key (required), CAFile, if
// set, makes it require client certificates signed by that CA.
type TLSConfig struct {
	Enabled bool `koanf:"enabled"`
	// CAFile is a PEM file of the certificate authorities to trust instead
	// of the system's.
	CAFile string `koanf:"ca_file"`
	// CertFile and KeyFile are a PEM client certificate (with its chain)
	// and its key, for brokers that require client certificates (mutual
	// TLS); both or neither.
	CertFile string `koanf:"cert_file"`
	KeyFile  string `koanf:"key_file"`
	// ServerName is the name the brokers' certificates must carry, when it
	// differs from the host in the seeds or URL.
	ServerName string `koanf:"server_name"`
	// InsecureSkipVerify accepts any certificate: for tests only.
	InsecureSkipVerify bool `koanf:"insecure_skip_verify"`
}

// On reports whether TLS is to be used.
func (t TLSConfig) On() bool {
	return t.Enabled || t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != "" || t.InsecureSkipVerify
}

// Client returns the client TLS configuration t describes, or nil when TLS
// is off. It reads the files; key names the block in errors (e.g.
// "brokers.main.kafka.tls"), which wrap ErrInvalid.
func (t TLSConfig) Client(key string) (*tls.Config, error) {
	if !t.On() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // insecure_skip_verify is the operator's explicit choice, documented as test-only
	var errs []error
	if t.CAFile != "" {
		pool, err := certPool(t.CAFile)
		if err != nil {
			errs = append(errs, invalid(key+".ca_file", "%v", err))
		}
		c.RootCAs = pool
	}
	switch {
	case t.CertFile != "" && t.KeyFile != "":
		pair, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			errs = append(errs, invalid(key+".cert_file", "with key_file: %v", err))
		}
		c.Certificates = []tls.Certificate{pair}
	case t.CertFile != "":
		errs = append(errs, invalid(key+".key_file", "required with cert_file (the client certificate's key)"))
	case t.KeyFile != "":
		errs = append(errs, invalid(key+".cert_file", "required with key_file (the client certificate)"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return c, nil
}

// certPool reads a PEM file of certificates.
func certPool(name string) (*x509.CertPool, error) {
	b, err := readSmallFile(name, maxPEMFileBytes)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", name)
	}
	return pool, nil
}

// The SASL mechanisms of brokers.<name>.kafka.sasl.mechanism.
const (
	SASLPlain       = "PLAIN"
	SASLScramSHA256 = "SCRAM-SHA-256"
	SASLScramSHA512 = "SCRAM-SHA-512"
	SASLOAuthBearer = "OAUTHBEARER"
	SASLAWSMSKIAM   = "AWS_MSK_IAM"
)

// SASLMechanisms lists the mechanisms sluice speaks, in the order messages
// list them.
var SASLMechanisms = []string{SASLPlain, SASLScramSHA256, SASLScramSHA512, SASLOAuthBearer, SASLAWSMSKIAM}

// SASLConfig is brokers.<name>.kafka.sasl. Secrets are never written in the
// config itself: each comes from a file (its content without surrounding
// white space) or an environment variable, read at start-up.
type SASLConfig struct {
	// Mechanism is one of SASLMechanisms; empty means no SASL.
	Mechanism string `koanf:"mechanism"`

	// PLAIN, SCRAM-SHA-256, SCRAM-SHA-512: a user and its password.
	Username     string `koanf:"username"`
	PasswordFile string `koanf:"password_file"`
	PasswordEnv  string `koanf:"password_env"`

	// OAUTHBEARER, either a token fixed for the process's life...
	TokenFile string `koanf:"token_file"`
	TokenEnv  string `koanf:"token_env"`
	// ... or the OAuth 2 client-credentials flow: tokens are fetched from
	// TokenURL and renewed before they expire.
	TokenURL         string `koanf:"token_url"`
	ClientID         string `koanf:"client_id"`
	ClientSecretFile string `koanf:"client_secret_file"`
	ClientSecretEnv  string `koanf:"client_secret_env"`
	// Scope is the scopes to ask for, separated by spaces (optional).
	Scope string `koanf:"scope"`

	// AWS_MSK_IAM: credentials come from the standard AWS chain
	// (environment, shared config and credentials files, web identity,
	// container and instance roles). Region is the region of the chain's
	// STS calls and of the signature when the broker's host name does not
	// tell it (optional; default from AWS_REGION or the shared config).
	Region string `koanf:"region"`
}

// On reports whether SASL is configured.
func (s SASLConfig) On() bool { return s.Mechanism != "" }

// ClientCredentials reports whether an OAUTHBEARER config uses the
// client-credentials flow (rather than a fixed token).
func (s SASLConfig) ClientCredentials() bool { return s.TokenURL != "" }

// Password reads the user's password.
func (s SASLConfig) Password(key string) (string, error) {
	return readSecret(key, "password", s.PasswordFile, s.PasswordEnv)
}

// Token reads the fixed OAUTHBEARER token.
func (s SASLConfig) Token(key string) (string, error) {
	return readSecret(key, "token", s.TokenFile, s.TokenEnv)
}

// ClientSecret reads the OAuth 2 client secret.
func (s SASLConfig) ClientSecret(key string) (string, error) {
	return readSecret(key, "client_secret", s.ClientSecretFile, s.ClientSecretEnv)
}

func (s SASLConfig) validate(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, invalid(key+"."+field, format, args...))
	}
	// notFor reports fields that the mechanism does not read.
	notFor := func(fields map[string]string) {
		for _, f := range slices.Sorted(maps.Keys(fields)) {
			if fields[f] != "" {
				add(f, "not used by mechanism %s", s.Mechanism)
			}
		}
	}
	userFields := map[string]string{"username": s.Username, "password_file": s.PasswordFile, "password_env": s.PasswordEnv}
	oauthFields := map[string]string{"token_file": s.TokenFile, "token_env": s.TokenEnv, "token_url": s.TokenURL,
		"client_id": s.ClientID, "client_secret_file": s.ClientSecretFile, "client_secret_env": s.ClientSecretEnv, "scope": s.Scope}
	awsFields := map[string]string{"region": s.Region}
	switch s.Mechanism {
	case SASLPlain, SASLScramSHA256, SASLScramSHA512:
		if s.Username == "" {
			add("username", "required with mechanism %s", s.Mechanism)
		}
		if _, err := s.Password(key); err != nil {
			errs = append(errs, err)
		}
		notFor(oauthFields)
		notFor(awsFields)
	case SASLOAuthBearer:
		if s.ClientCredentials() {
			if u, err := url.Parse(s.TokenURL); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
				add("token_url", "%q is not an http(s) URL (the OAuth 2 token endpoint)", s.TokenURL)
			}
			if s.ClientID == "" {
				add("client_id", "required with token_url")
			}
			if _, err := s.ClientSecret(key); err != nil {
				errs = append(errs, err)
			}
			if s.TokenFile != "" || s.TokenEnv != "" {
				add("token_url", "set together with a fixed token (token_file or token_env); use one")
			}
		} else {
			if _, err := readSecret(key, "token", s.TokenFile, s.TokenEnv); err != nil {
				errs = append(errs, fmt.Errorf("%w (or set token_url, client_id and client_secret_file for the client-credentials flow)", err))
			}
			notFor(map[string]string{"client_id": s.ClientID, "client_secret_file": s.ClientSecretFile,
				"client_secret_env": s.ClientSecretEnv, "scope": s.Scope})
		}
		notFor(userFields)
		notFor(awsFields)
	case SASLAWSMSKIAM:
		notFor(userFields)
		notFor(oauthFields)
	default:
		add("mechanism", "%q is not one of %s", s.Mechanism, strings.Join(SASLMechanisms, ", "))
	}
	return errors.Join(errs...)
}

// maxSecretFileBytes bounds a password or token file: a secret is a line,
// and a path to a device or a huge file must fail start-up, not hang it.
// maxPEMFileBytes bounds a certificate or creds file (a chain of a few
// certificates, or a JWT with its seed).
const (
	maxSecretFileBytes = 64 << 10
	maxPEMFileBytes    = 1 << 20
)

// readSecret reads the secret named field (e.g. "password") from
// field_file or field_env: exactly one must be set. key names the block.
func readSecret(key, field, file, env string) (string, error) {
	switch {
	case file != "" && env != "":
		return "", invalid(key+"."+field+"_file", "set together with %s_env; use one", field)
	case file != "":
		b, err := readSmallFile(file, maxSecretFileBytes)
		if err != nil {
			return "", invalid(key+"."+field+"_file", "%v", err)
		}
		s := strings.TrimSpace(string(b))
		if s == "" {
			return "", invalid(key+"."+field+"_file", "%s is empty", file)
		}
		return s, nil
	case env != "":
		s := strings.TrimSpace(os.Getenv(env))
		if s == "" {
			return "", invalid(key+"."+field+"_env", "environment variable %s is not set", env)
		}
		return s, nil
	default:
		return "", invalid(key+"."+field+"_file", "one of %s_file or %s_env is required", field, field)
	}
}

// readSmallFile is ReadSmallFile.
func readSmallFile(name string, limit int64) ([]byte, error) { return ReadSmallFile(name, limit) }

// ReadSmallFile reads name, refusing regular or special files (a device, a
// huge file) longer than limit bytes without reading more than limit+1 of
// them: the one bounded reader of secret and certificate files, also
// config's.
func ReadSmallFile(name string, limit int64) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, &tooLargeError{name: name, limit: limit}
	}
	return b, nil
}

// ErrFileTooLarge matches (errors.Is) ReadSmallFile's error for a file over
// its limit.
var ErrFileTooLarge = errors.New("consumer: file too large")

// tooLargeError is ReadSmallFile's error for a file over its limit.
type tooLargeError struct {
	name  string
	limit int64
}

func (e *tooLargeError) Error() string {
	return fmt.Sprintf("%s is larger than %d bytes", e.name, e.limit)
}

func (e *tooLargeError) Is(target error) bool { return target == ErrFileTooLarge }

// ReadFile reads a small credentials file (a NATS creds or nkey seed file,
// a certificate) with the bound sluice applies to secrets.
func ReadFile(name string) ([]byte, error) { return readSmallFile(name, maxPEMFileBytes) }

// NATS authentication. At most one way per broker.
func (n NATSConfig) validateAuth(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, invalid(key+"."+field, format, args...))
	}
	var ways []string
	for _, w := range []struct{ name, v string }{
		{"creds_file", n.CredsFile}, {"nkey_file", n.NkeyFile},
		{"token_file", n.TokenFile}, {"token_env", n.TokenEnv}, {"user", n.User},
	} {
		if w.v != "" {
			ways = append(ways, w.name)
		}
	}
	if n.TokenFile != "" && n.TokenEnv != "" {
		ways = slices.DeleteFunc(ways, func(s string) bool { return s == "token_env" })
	}
	if len(ways) > 1 {
		add(ways[1], "set together with %s; use one way to authenticate (creds_file, nkey_file, token_file|token_env, or user with password_file|password_env)", ways[0])
	}
	if n.User == "" && (n.PasswordFile != "" || n.PasswordEnv != "") {
		add("user", "required with password_file or password_env")
	}
	for _, f := range []struct{ name, path string }{{"creds_file", n.CredsFile}, {"nkey_file", n.NkeyFile}} {
		if f.path == "" {
			continue
		}
		if n.Embedded() {
			add(f.name, "not for the embedded server (it takes token_file|token_env or user with password_file|password_env)")
		} else if _, err := ReadFile(f.path); err != nil {
			add(f.name, "%v", err)
		}
	}
	if n.TokenFile != "" || n.TokenEnv != "" {
		if _, err := n.Token(key); err != nil {
			errs = append(errs, err)
		}
	}
	if n.User != "" {
		if _, err := n.Password(key); err != nil {
			errs = append(errs, err)
		}
	}
	if n.Embedded() {
		errs = append(errs, n.validateEmbeddedSecurity(key))
	} else if _, err := n.TLS.Client(key + ".tls"); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// validateEmbeddedSecurity applies the embedded server's rules: its tls
// block is the server's (cert_file and key_file required, ca_file for
// client certificates), and a listen address beyond loopback needs both
// authentication and TLS, so that the broker is never open to the network.
func (n NATSConfig) validateEmbeddedSecurity(key string) error {
	var errs []error
	add := func(field, format string, args ...any) {
		errs = append(errs, invalid(key+"."+field, format, args...))
	}
	t := n.TLS
	if t.On() {
		if t.CertFile == "" || t.KeyFile == "" {
			add("tls", "the embedded server needs cert_file and key_file (its certificate and key)")
		} else if _, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile); err != nil {
			add("tls.cert_file", "with key_file: %v", err)
		}
		if t.CAFile != "" {
			if _, err := certPool(t.CAFile); err != nil {
				add("tls.ca_file", "%v", err)
			}
		}
		if t.ServerName != "" {
			add("tls.server_name", "not for the embedded server (it is the server)")
		}
		if t.InsecureSkipVerify {
			add("tls.insecure_skip_verify", "not for the embedded server (it is the server)")
		}
	}
	listen := n.Listen
	if listen == "" {
		listen = DefaultEmbeddedListen
	}
	host, _, err := net.SplitHostPort(listen)
	if err == nil && !Loopback(host) {
		if !n.Authenticates() {
			add("listen", "%s is not a loopback address; the embedded server needs authentication there (token_file|token_env, or user with password_file|password_env)", n.Listen)
		}
		if !t.On() {
			add("listen", "%s is not a loopback address; the embedded server needs TLS there (tls.cert_file and tls.key_file)", n.Listen)
		}
	}
	return errors.Join(errs...)
}

// Loopback reports whether host (an IP address or "localhost") is a
// loopback address; an empty host (every interface) is not.
func Loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Authenticates reports whether n names credentials of some kind.
func (n NATSConfig) Authenticates() bool {
	return n.CredsFile != "" || n.NkeyFile != "" || n.TokenFile != "" || n.TokenEnv != "" || n.User != ""
}

// Token reads the NATS token; key names the broker's nats block.
func (n NATSConfig) Token(key string) (string, error) {
	return readSecret(key, "token", n.TokenFile, n.TokenEnv)
}

// Password reads the NATS user's password; key names the broker's nats
// block.
func (n NATSConfig) Password(key string) (string, error) {
	return readSecret(key, "password", n.PasswordFile, n.PasswordEnv)
}

// RedactURL returns u (one URL or several separated by commas) with the
// passwords and tokens of its user info replaced by "xxxxx" and its query
// dropped, for messages and logs.
func RedactURL(u string) string {
	parts := strings.Split(u, ",")
	for i, p := range parts {
		pu, err := url.Parse(strings.TrimSpace(p))
		if err != nil {
			if strings.Contains(p, "@") {
				parts[i] = "(a URL that does not parse)"
			}
			continue
		}
		if pu.User != nil {
			if _, has := pu.User.Password(); has {
				pu.User = url.UserPassword(pu.User.Username(), "xxxxx")
			} else {
				pu.User = url.User("xxxxx") // a lone user info is a token
			}
		}
		if pu.RawQuery != "" {
			pu.RawQuery = ""
			pu.ForceQuery = false
		}
		parts[i] = pu.String()
	}
	return strings.Join(parts, ",")
}
