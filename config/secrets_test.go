package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/config"
	"github.com/sluicehq/sluice/internal/testca"
)

// Function headers and TLS: paths are relative to the file, values are
// read (and a missing one is a problem naming its key), secrets never show
// in config show, and world-readable secret files are listed.
func TestLoadFunctionSecrets(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t, "fn")
	client := ca.Client("sluice")
	write(t, dir, "bearer", "Bearer TOPSECRET\n")
	t.Setenv("FN_KEY", "KEYSECRET")
	cfgFile := write(t, dir, "sluice.yaml", `
functions:
  f:
    url: "https://fn.example/invoke?apikey=URLSECRET"
    headers:
      Authorization: {value_file: bearer}
      X-Api-Key: {value_env: FN_KEY}
      X-Group: {value: blue}
    tls: {ca_file: `+ca.CertFile+`, cert_file: `+client.CertFile+`, key_file: `+client.KeyFile+`}
`)
	c := load(t, []string{cfgFile})
	if got := c.Functions["f"].Headers["Authorization"].File; got != filepath.Join(dir, "bearer") {
		t.Errorf("value_file = %q, want it relative to the file", got)
	}
	h, err := c.FunctionHeaders("f")
	if err != nil {
		t.Fatal(err)
	}
	if h.Get("Authorization") != "Bearer TOPSECRET" || h.Get("X-Api-Key") != "KEYSECRET" || h.Get("X-Group") != "blue" {
		t.Errorf("headers = %v", h)
	}
	shown, err := c.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"TOPSECRET", "KEYSECRET", "URLSECRET"} {
		if strings.Contains(string(shown), s) {
			t.Errorf("config show prints %s:\n%s", s, shown)
		}
	}
	if !strings.Contains(string(shown), "apikey=xxxxx") {
		t.Errorf("config show does not show the redacted URL:\n%s", shown)
	}

	if err := os.Chmod(filepath.Join(dir, "bearer"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := c.WorldReadableSecrets(); len(got) != 1 || got[0] != "functions.f.headers.Authorization.value_file" {
		t.Errorf("WorldReadableSecrets = %v", got)
	}

	// A missing file or variable is a configuration error naming its key.
	t.Setenv("FN_KEY", "")
	if err := os.Remove(filepath.Join(dir, "bearer")); err != nil {
		t.Fatal(err)
	}
	_, err = config.Load([]string{cfgFile}, nil)
	if !errors.Is(err, config.ErrInvalid) {
		t.Fatalf("Load = %v, want ErrInvalid", err)
	}
	for _, want := range []string{"functions.f.headers.Authorization.value_file:", "functions.f.headers.X-Api-Key.value_env: FN_KEY is not set"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
}

func TestLoadAdminHardening(t *testing.T) {
	dir := t.TempDir()
	ca := testca.New(t, "admin")
	srv := ca.Server("admin")
	for _, c := range []struct{ yaml, want string }{
		{`admin: {read_timeout: 0s}`, "admin.read_timeout: 0s is out of range (1s..10m)"},
		{`admin: {idle_timeout: 2h}`, "admin.idle_timeout: 2h is out of range (1s..1h)"},
		{`admin: {max_connections: 0}`, "admin.max_connections: 0 is out of range (1..1000000)"},
		{`admin: {hosts: ["http://x"]}`, "admin.hosts[0]:"},
		{`admin: {tls: {cert_file: ` + srv.CertFile + `}}`, "admin.tls: cert_file and key_file are required"},
		{`admin: {tls: {cert_file: ` + srv.CertFile + `, key_file: ` + srv.KeyFile + `, client_auth: maybe, client_ca_file: ` + ca.CertFile + `}}`, `admin.tls.client_auth: "maybe" is not one of require, optional`},
		{`admin: {tls: {cert_file: ` + srv.CertFile + `, key_file: ` + srv.KeyFile + `, client_auth: optional}}`, "admin.tls.client_auth: needs client_ca_file"},
		{`admin: {tls: {cert_file: ` + srv.CertFile + `, key_file: ` + ca.CertFile + `}}`, "admin.tls: cert_file and key_file:"},
		{`admin: {listen: "0.0.0.0:9400", tls: {cert_file: ` + srv.CertFile + `, key_file: ` + srv.KeyFile + `, client_ca_file: ` + ca.CertFile + `, client_auth: optional}}`, "admin.listen: 0.0.0.0:9400 is not a loopback address"},
	} {
		_, err := config.Load([]string{write(t, dir, "c.yaml", c.yaml)}, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want %q", c.yaml, err, c.want)
		}
	}
	// Required client certificates are an authentication of their own: a
	// non-loopback listen needs no token then.
	ok := `admin: {listen: "0.0.0.0:9400", tls: {cert_file: ` + srv.CertFile + `, key_file: ` + srv.KeyFile + `, client_ca_file: ` + ca.CertFile + `}}`
	if _, err := config.Load([]string{write(t, dir, "c.yaml", ok)}, nil); err != nil {
		t.Errorf("%s: %v", ok, err)
	}
}
