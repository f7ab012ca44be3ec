package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/sluicehq/sluice/dispatch"
)

// keyPair is a certificate and its key, read from their files and
// replaced whole on Reload (SIGHUP), so that a renewed certificate is used
// without a restart.
type keyPair struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

func (k *keyPair) load() error {
	certPEM, err := ReadPEMFile(k.certFile)
	if err != nil {
		return fmt.Errorf("cert_file: %w", err)
	}
	keyPEM, err := ReadSecretFile(k.keyFile)
	if err != nil {
		return fmt.Errorf("key_file: %w", err)
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("cert_file and key_file: %w", err) // the message names no key material
	}
	k.cur.Store(&c)
	return nil
}

// certPool reads a CA file into a pool.
func certPool(name string) (*x509.CertPool, error) {
	b, err := ReadPEMFile(name)
	if err != nil {
		return nil, err
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("%s holds no PEM certificate", name)
	}
	return p, nil
}

// ServerTLS is the admin API's TLS configuration; Reload re-reads the
// certificate and key.
type ServerTLS struct {
	Config *tls.Config
	pair   *keyPair
}

// Reload re-reads the server's certificate and key; on error the old ones
// stay in use.
func (s *ServerTLS) Reload() error { return s.pair.load() }

// LoadServerTLS reads the files of t.
func LoadServerTLS(t AdminTLS) (*ServerTLS, error) {
	pair := &keyPair{certFile: t.CertFile, keyFile: t.KeyFile}
	if err := pair.load(); err != nil {
		return nil, err
	}
	c := &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return pair.cur.Load(), nil
		},
	}
	if t.ClientCAFile != "" {
		pool, err := certPool(t.ClientCAFile)
		if err != nil {
			return nil, fmt.Errorf("client_ca_file: %w", err)
		}
		c.ClientCAs = pool
		c.ClientAuth = tls.RequireAndVerifyClientCert
		if t.ClientAuth == ClientAuthOptional {
			c.ClientAuth = tls.VerifyClientCertIfGiven
		}
	}
	return &ServerTLS{Config: c, pair: pair}, nil
}

// ClientTLS is the TLS configuration of an https function; Reload re-reads
// the client certificate and key.
type ClientTLS struct {
	Config *tls.Config
	pair   *keyPair // nil without a client certificate
}

// Reload re-reads the client certificate and key, if any; on error the old
// ones stay in use.
func (c *ClientTLS) Reload() error {
	if c.pair == nil {
		return nil
	}
	return c.pair.load()
}

// LoadClientTLS reads the files of t: the CA (instead of the system roots)
// and the client certificate for mutual TLS.
func LoadClientTLS(t dispatch.FunctionTLS) (*ClientTLS, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	out := &ClientTLS{Config: c}
	if t.CAFile != "" {
		pool, err := certPool(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("ca_file: %w", err)
		}
		c.RootCAs = pool
	}
	if t.CertFile != "" || t.KeyFile != "" {
		if t.CertFile == "" || t.KeyFile == "" {
			return nil, errors.New("cert_file and key_file go together")
		}
		out.pair = &keyPair{certFile: t.CertFile, keyFile: t.KeyFile}
		if err := out.pair.load(); err != nil {
			return nil, err
		}
		pair := out.pair
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return pair.cur.Load(), nil
		}
	}
	return out, nil
}

// validateSecrets reads what the functions' headers and tls settings
// point to, so that a missing file or variable is a configuration error
// naming its key (exit 2) rather than a failure at the first invocation.
func (c *Config) validateSecrets() []error {
	var errs []error
	for _, fn := range sortedKeys(c.Functions) {
		f := c.Functions[fn]
		for _, name := range sortedKeys(f.Headers) {
			h := f.Headers[name]
			key := "functions." + fn + ".headers." + name
			switch {
			case h.File != "":
				key += ".value_file"
			case h.Env != "":
				key += ".value_env"
			default:
				continue
			}
			if _, err := HeaderValue(h); err != nil {
				errs = append(errs, problem(key, "%v", err))
			}
		}
		if f.TLS != nil && (f.TLS.CertFile == "") == (f.TLS.KeyFile == "") {
			if _, err := LoadClientTLS(*f.TLS); err != nil {
				errs = append(errs, problem("functions."+fn+".tls", "%v", err))
			}
		}
	}
	return errs
}
