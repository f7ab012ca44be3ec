package config

import (
	"fmt"
	"strings"
	"time"

	"github.com/sluicehq/sluice/shard"
)

// Defaults of the admin listener's hardening.
const (
	// DefaultAdminReadTimeout bounds reading one request, headers and
	// body: a client that sends a byte every few seconds is cut off.
	DefaultAdminReadTimeout = 30 * time.Second
	// DefaultAdminIdleTimeout closes a keep-alive connection that sends no
	// new request.
	DefaultAdminIdleTimeout = 60 * time.Second
	// DefaultAdminMaxConnections caps the connections open at once; more
	// wait in the kernel's accept queue until one closes. Idle ones close
	// after the idle (or, before their first request, the header) timeout,
	// so a flood of idle connections delays others by that much at most.
	DefaultAdminMaxConnections = 1000
)

// Client certificate policies of admin.tls.client_auth.
const (
	ClientAuthRequire  = "require"  // a certificate signed by client_ca_file is required
	ClientAuthOptional = "optional" // asked for; verified when given
)

// AdminTLS makes the admin API speak HTTPS: the server's certificate and
// key, and optionally the CA that client certificates must be signed by.
// Client certificates are checked before any token: with ClientAuth
// "require" a client without one cannot connect at all.
type AdminTLS struct {
	CertFile     string `koanf:"cert_file"`
	KeyFile      string `koanf:"key_file"`
	ClientCAFile string `koanf:"client_ca_file"`
	// ClientAuth is "require" (the default with ClientCAFile) or
	// "optional".
	ClientAuth string `koanf:"client_auth"`
}

// requiresClientCert reports whether every client must show a certificate
// signed by the client CA: an authentication of its own, which allows a
// non-loopback listen without tokens.
func (t *AdminTLS) requiresClientCert() bool {
	return t != nil && t.ClientCAFile != "" && (t.ClientAuth == "" || t.ClientAuth == ClientAuthRequire)
}

func (c *Config) validateAdminHardening() []error {
	var errs []error
	a := c.Admin
	if a.ReadTimeout < time.Second || a.ReadTimeout > 10*time.Minute {
		errs = append(errs, problem("admin.read_timeout", "%s is out of range (1s..10m)", shard.FormatDuration(a.ReadTimeout)))
	}
	if a.IdleTimeout < time.Second || a.IdleTimeout > time.Hour {
		errs = append(errs, problem("admin.idle_timeout", "%s is out of range (1s..1h)", shard.FormatDuration(a.IdleTimeout)))
	}
	if a.MaxConnections < 1 || a.MaxConnections > 1000000 {
		errs = append(errs, problem("admin.max_connections", "%d is out of range (1..1000000)", a.MaxConnections))
	}
	for i, h := range a.Hosts {
		if h == "" || strings.ContainsAny(h, "/ :@") {
			errs = append(errs, problem(fmt.Sprintf("admin.hosts[%d]", i), "%q is not a host name (a name like sluice.internal, without port or scheme)", h))
		}
	}
	if t := a.TLS; t != nil {
		if t.CertFile == "" || t.KeyFile == "" {
			errs = append(errs, problem("admin.tls", "cert_file and key_file are required (the server's certificate and key)"))
		}
		switch t.ClientAuth {
		case "", ClientAuthRequire, ClientAuthOptional:
			if t.ClientAuth != "" && t.ClientCAFile == "" {
				errs = append(errs, problem("admin.tls.client_auth", "needs client_ca_file (the CA client certificates are signed by)"))
			}
		default:
			errs = append(errs, problem("admin.tls.client_auth", "%q is not one of require, optional", t.ClientAuth))
		}
		if t.CertFile != "" && t.KeyFile != "" {
			if _, err := LoadServerTLS(*t); err != nil {
				errs = append(errs, problem("admin.tls", "%v", err))
			}
		}
	}
	return errs
}
