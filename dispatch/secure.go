package dispatch

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// HeaderValue is where the value of a configured function header comes
// from: exactly one of Value (the text itself, for values that are not
// secrets), File (the file's content without surrounding white space) or
// Env (an environment variable). The caller (cmd) reads File and Env at
// start-up and on SIGHUP and hands the values to Dispatcher.SetHeaders.
type HeaderValue struct {
	Value string `koanf:"value"`
	File  string `koanf:"value_file"`
	Env   string `koanf:"value_env"`
}

// FunctionTLS is how an https function is reached. CAFile replaces the
// system roots with a private CA; CertFile and KeyFile (both or neither)
// are a client certificate for mutual TLS; ServerName is the name the
// server's certificate must hold when it is not the URL's host.
type FunctionTLS struct {
	CAFile     string `koanf:"ca_file"`
	CertFile   string `koanf:"cert_file"`
	KeyFile    string `koanf:"key_file"`
	ServerName string `koanf:"server_name"`
}

// reservedHeaders are the request headers sluice sets itself (SPEC §3) or
// that belong to the transport; a configured header may not name one. Any
// name starting with "Sluice-" is reserved too.
var reservedHeaders = []string{
	"Idempotency-Key", "Traceparent", "Tracestate", "Content-Type", "Content-Length",
	"Host", "Transfer-Encoding", "Connection", "Te", "Trailer", "Upgrade", "Keep-Alive",
}

// secretWords mark a header name whose value is a credential: such a
// header must take its value from a file or the environment, never from
// the configuration text, which config show and the admin API print.
var secretWords = []string{"auth", "token", "key", "secret", "password", "cookie", "session", "signature", "credential"}

// IsReservedHeader reports whether name is a header sluice sets itself.
func IsReservedHeader(name string) bool {
	c := http.CanonicalHeaderKey(name)
	return strings.HasPrefix(c, "Sluice-") || slices.Contains(reservedHeaders, c)
}

// looksSecret reports whether a header of this name likely carries a
// credential.
func looksSecret(name string) bool {
	l := strings.ToLower(name)
	for _, w := range secretWords {
		if strings.Contains(l, w) {
			return true
		}
	}
	return false
}

// validateSecurity checks the headers and tls settings of a function whose
// key is key ("functions.f"); it does not read files or the environment.
func (f FunctionConfig) validateSecurity(key string) []error {
	var errs []error
	for _, name := range sortedKeys(f.Headers) {
		h, hk := f.Headers[name], key+".headers."+name
		switch {
		case !validHeaderName(name):
			errs = append(errs, fmt.Errorf("%w: %s: %q is not a valid header name (letters, digits and !#$%%&'*+-.^_`|~)", ErrInvalid, hk, name))
			continue
		case IsReservedHeader(name):
			errs = append(errs, fmt.Errorf("%w: %s: sluice sets this header itself (Sluice-*, %s); it cannot be configured", ErrInvalid, hk, strings.Join(reservedHeaders, ", ")))
			continue
		}
		n := 0
		for _, s := range []string{h.Value, h.File, h.Env} {
			if s != "" {
				n++
			}
		}
		switch {
		case n != 1:
			errs = append(errs, fmt.Errorf("%w: %s: exactly one of value, value_file, value_env is required", ErrInvalid, hk))
		case h.Value != "" && looksSecret(name):
			errs = append(errs, fmt.Errorf("%w: %s.value: %s carries a credential: use value_file or value_env, which config show and the admin API never print", ErrInvalid, hk, name))
		case strings.ContainsAny(h.Value, "\r\n\x00"):
			errs = append(errs, fmt.Errorf("%w: %s.value: must not hold a line break or NUL", ErrInvalid, hk))
		}
	}
	if t := f.TLS; t != nil {
		if (t.CertFile == "") != (t.KeyFile == "") {
			errs = append(errs, fmt.Errorf("%w: %s.tls: cert_file and key_file go together (a client certificate and its key)", ErrInvalid, key))
		}
		if u, err := url.Parse(f.URL); err == nil && u.Scheme != "https" {
			errs = append(errs, fmt.Errorf("%w: %s.tls: the url is not https://, so tls would not be used", ErrInvalid, key))
		}
	}
	return errs
}

// validHeaderName reports whether s is an HTTP token (RFC 9110 §5.1).
func validHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// WithTLSConfig makes the function's own pool use c (a private CA, a client
// certificate). It has no effect with WithHTTPClient.
func WithTLSConfig(c *tls.Config) HTTPOption {
	return func(o *httpOptions) { o.tls = c }
}

// WithFunctionTLS gives the HTTP function name the TLS settings c (see
// WithTLSConfig); cmd builds c from FunctionConfig.TLS.
func WithFunctionTLS(name string, c *tls.Config) Option {
	return func(o *options) {
		if o.fnTLS == nil {
			o.fnTLS = map[string]*tls.Config{}
		}
		o.fnTLS[name] = c
	}
}

// SetHeaders replaces the configured headers sent with every request (a
// reload of their files happens on SIGHUP). Names sluice sets itself are
// refused, so a configured header can never pass for sluice's own.
func (f *HTTPFunction) SetHeaders(h http.Header) error {
	c := make(http.Header, len(h))
	for k, vs := range h {
		if IsReservedHeader(k) {
			return fmt.Errorf("%w: functions.%s.headers.%s: sluice sets this header itself", ErrInvalid, f.name, k)
		}
		// Refused here, not per invocation: a value net/http cannot send
		// would otherwise make every record an InvalidRecord dead letter.
		for _, v := range vs {
			if !validFieldValue(v) {
				return fmt.Errorf("%w: functions.%s.headers.%s: the value has a control character (a line break from its file?)", ErrInvalid, f.name, k)
			}
		}
		c[http.CanonicalHeaderKey(k)] = slices.Clone(vs)
	}
	f.headers.Store(&c)
	return nil
}

// SetHeaders replaces the configured headers of HTTP function fn (see
// HTTPFunction.SetHeaders).
func (d *Dispatcher) SetHeaders(fn string, h http.Header) error {
	f, err := d.function(fn)
	if err != nil {
		return err
	}
	hf, ok := f.h.(*HTTPFunction)
	if !ok {
		return fmt.Errorf("dispatch: function %q is not an HTTP function", fn)
	}
	return hf.SetHeaders(h)
}

// RedactURL returns raw with its password and the values of its query
// replaced by "xxxxx", for logs, errors and views: a function URL may carry
// an API key (?apikey=...), a broker URL a password. A comma-separated list
// of URLs (NATS) is redacted element by element; what does not parse is
// replaced whole.
func RedactURL(raw string) string {
	// A list of URLs (NATS takes "nats://a:4222,nats://b:4222") is redacted
	// URL by URL; a single URL with a comma in it ("http://,") is one URL,
	// so that the redacted text still parses as the same URL.
	if strings.Count(raw, "://") > 1 && strings.Contains(raw, ",") {
		parts := strings.Split(raw, ",")
		for i, p := range parts {
			parts[i] = RedactURL(strings.TrimSpace(p))
		}
		return strings.Join(parts, ",")
	}
	u, err := url.Parse(raw)
	if err != nil {
		if strings.ContainsAny(raw, "@?") {
			return "(unparsable URL, redacted)"
		}
		return raw
	}
	if u.RawQuery != "" {
		q := u.Query()
		for k := range q {
			q[k] = []string{"xxxxx"}
		}
		u.RawQuery = q.Encode()
	}
	u.Fragment, u.RawFragment = "", ""
	return u.Redacted()
}

// errNoTLS is returned for a TLS setting on a function that has no pool of
// its own.
var errNoTLS = errors.New("dispatch: a TLS configuration needs the function's own pool (not WithHTTPClient)")
