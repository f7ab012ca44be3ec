package config

import (
	"fmt"
	"net/http"
	"os"
	"slices"
	"strings"

	"github.com/sluicehq/sluice/dispatch"
)

// ReadSecretFile reads a file that holds one secret (a token, a password,
// a header value, a private key): at most 64 KiB, so that a path to a
// device or a huge file fails start-up instead of hanging it. Callers read
// secret files at start-up and on SIGHUP only, never per request.
func ReadSecretFile(name string) ([]byte, error) {
	return readSmallFile(name, maxTokenFileBytes)
}

// maxPEMFileBytes bounds a certificate or CA bundle file: a CA bundle may
// hold a few hundred certificates, more than a secret's 64 KiB.
const maxPEMFileBytes = 4 << 20

// ReadPEMFile reads a certificate or CA file, at most 4 MiB.
func ReadPEMFile(name string) ([]byte, error) {
	return readSmallFile(name, maxPEMFileBytes)
}

// WorldReadable reports whether others than the owner's group may read
// name, which a file holding a secret should not allow.
func WorldReadable(name string) bool {
	fi, err := os.Stat(name)
	return err == nil && fi.Mode().Perm()&0o004 != 0
}

// HeaderValue returns the value of a configured function header: its text,
// its file's content without surrounding white space, or its environment
// variable's value. An empty value is an error.
func HeaderValue(h dispatch.HeaderValue) (string, error) {
	var v string
	switch {
	case h.Value != "":
		return h.Value, nil
	case h.File != "":
		b, err := ReadSecretFile(h.File)
		if err != nil {
			return "", err
		}
		if v = strings.TrimSpace(string(b)); v == "" {
			return "", fmt.Errorf("%s is empty", h.File)
		}
	default:
		if v = strings.TrimSpace(os.Getenv(h.Env)); v == "" {
			return "", fmt.Errorf("%s is not set", h.Env)
		}
	}
	if strings.ContainsAny(v, "\r\n\x00") {
		return "", fmt.Errorf("the value holds a line break or NUL, which cannot go into a header")
	}
	return v, nil
}

// FunctionHeaders resolves the configured headers of function fn; the error
// names the key of the first header that cannot be read.
func (c *Config) FunctionHeaders(fn string) (http.Header, error) {
	f := c.Functions[fn]
	out := make(http.Header, len(f.Headers))
	for _, name := range sortedKeys(f.Headers) {
		v, err := HeaderValue(f.Headers[name])
		if err != nil {
			return nil, fmt.Errorf("%w: functions.%s.headers.%s: %w", ErrInvalid, fn, name, err)
		}
		out.Set(name, v)
	}
	return out, nil
}

// SecretFiles lists every file of the configuration that holds a secret
// (token files, header value files, private keys), with its key, so that
// the caller can warn about those others may read.
func (c *Config) SecretFiles() map[string]string {
	out := map[string]string{}
	for i, t := range c.Admin.Tokens {
		if t.File != "" {
			out[fmt.Sprintf("admin.tokens[%d].file", i)] = t.File
		}
	}
	if t := c.Admin.TLS; t != nil && t.KeyFile != "" {
		out["admin.tls.key_file"] = t.KeyFile
	}
	for _, fn := range sortedKeys(c.Functions) {
		f := c.Functions[fn]
		for _, name := range sortedKeys(f.Headers) {
			if p := f.Headers[name].File; p != "" {
				out["functions."+fn+".headers."+name+".value_file"] = p
			}
		}
		if f.TLS != nil && f.TLS.KeyFile != "" {
			out["functions."+fn+".tls.key_file"] = f.TLS.KeyFile
		}
	}
	return out
}

// WorldReadableSecrets returns the keys of SecretFiles whose file others
// may read, sorted.
func (c *Config) WorldReadableSecrets() []string {
	var out []string
	for key, path := range c.SecretFiles() {
		if WorldReadable(path) {
			out = append(out, key)
		}
	}
	slices.Sort(out)
	return out
}
