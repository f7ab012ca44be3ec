package dispatch

import (
	"crypto/tls"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/sluicehq/sluice/internal/testca"
)

func TestFunctionHeadersAndTLSValidate(t *testing.T) {
	base := func(h map[string]HeaderValue, tl *FunctionTLS) Config {
		return Config{Account: AccountConfig{}.WithDefaults(), Functions: map[string]FunctionConfig{
			"f": {URL: "https://fn.example/x", Headers: h, TLS: tl},
		}}
	}
	cases := []struct {
		name    string
		h       map[string]HeaderValue
		tls     *FunctionTLS
		wantErr string
	}{
		{"file", map[string]HeaderValue{"Authorization": {File: "/run/secrets/fn"}}, nil, ""},
		{"env", map[string]HeaderValue{"X-Api-Key": {Env: "FN_KEY"}}, nil, ""},
		{"literal non-secret", map[string]HeaderValue{"X-Tenant-Group": {Value: "blue"}}, nil, ""},
		{"literal secret", map[string]HeaderValue{"Authorization": {Value: "Bearer x"}}, nil, "functions.f.headers.Authorization.value: Authorization carries a credential"},
		{"literal api key", map[string]HeaderValue{"X-Api-Key": {Value: "k"}}, nil, "use value_file or value_env"},
		{"two sources", map[string]HeaderValue{"X-A": {Value: "a", Env: "B"}}, nil, "exactly one of value, value_file, value_env"},
		{"no source", map[string]HeaderValue{"X-A": {}}, nil, "exactly one of"},
		{"sluice's own", map[string]HeaderValue{"Sluice-Attempt": {Value: "9"}}, nil, "functions.f.headers.Sluice-Attempt: sluice sets this header itself"},
		{"sluice's own, any case", map[string]HeaderValue{"sluice-function": {Value: "x"}}, nil, "sluice sets this header itself"},
		{"idempotency key", map[string]HeaderValue{"Idempotency-Key": {Env: "X"}}, nil, "sluice sets this header itself"},
		{"traceparent", map[string]HeaderValue{"traceparent": {Value: "00-x"}}, nil, "sluice sets this header itself"},
		{"content type", map[string]HeaderValue{"Content-Type": {Value: "text/plain"}}, nil, "sluice sets this header itself"},
		{"bad name", map[string]HeaderValue{"X A": {Value: "a"}}, nil, "is not a valid header name"},
		{"line break", map[string]HeaderValue{"X-A": {Value: "a\r\nX-B: b"}}, nil, "line break"},
		{"tls", nil, &FunctionTLS{CAFile: "ca.pem", CertFile: "c.pem", KeyFile: "c.key"}, ""},
		{"tls cert without key", nil, &FunctionTLS{CertFile: "c.pem"}, "cert_file and key_file go together"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := base(c.h, c.tls).Validate()
			if c.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate = %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.wantErr) {
				t.Fatalf("Validate = %v, want %q", err, c.wantErr)
			}
		})
	}
	cfg := base(nil, &FunctionTLS{CAFile: "ca.pem"})
	f := cfg.Functions["f"]
	f.URL = "http://fn.example/x"
	cfg.Functions["f"] = f
	if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "not https://") {
		t.Fatalf("tls on an http URL: %v", err)
	}
}

func TestRuleCapValidates(t *testing.T) {
	rules := make([]Rule, MaxRules+1)
	for i := range rules {
		rules[i] = Rule{Pattern: "p" + string(rune('a'+i%26)) + strings.Repeat("x", i/26), Concurrency: 1}
	}
	err := Config{Account: AccountConfig{}.WithDefaults(), Rules: rules}.Validate()
	if err == nil || !strings.Contains(err.Error(), "rules: 10001 rules, at most 10000") {
		t.Fatalf("Validate = %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://fn.example/invoke?apikey=SECRET&x=1":      "https://fn.example/invoke?apikey=xxxxx&x=xxxxx",
		"http://user:SECRET@fn.example/p":                  "http://user:xxxxx@fn.example/p",
		"nats://a:SECRET@n1:4222,nats://b:SECRET2@n2:4222": "nats://a:xxxxx@n1:4222,nats://b:xxxxx@n2:4222",
		"https://fn.example/p#SECRET":                      "https://fn.example/p",
		"http://127.0.0.1:8080/invoke":                     "http://127.0.0.1:8080/invoke",
		"%zz?token=SECRET":                                 "(unparsable URL, redacted)",
	} {
		got := RedactURL(in)
		if got != want || strings.Contains(got, "SECRET") {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// A function behind HTTPS with a private CA that requires a client
// certificate, and a bearer header: the request arrives with both, and a
// configured header cannot replace sluice's own.
func TestHTTPFunctionMutualTLSAndHeaders(t *testing.T) {
	ca := testca.New(t, "fn")
	srvPair, client := ca.Server("fn-server"), ca.Client("sluice")
	var got http.Header
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.PeerCertificates) == 0 || r.TLS.PeerCertificates[0].Subject.CommonName != "sluice" {
			http.Error(w, "no client certificate", http.StatusForbidden)
			return
		}
		got = r.Header.Clone()
		_, _ = w.Write([]byte(`{}`))
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{srvPair.TLS}, ClientCAs: ca.Pool, ClientAuth: tls.RequireAndVerifyClientCert}
	srv.StartTLS()
	defer srv.Close()

	cfg := FunctionConfig{URL: srv.URL + "/invoke"}
	// Without the client certificate the handshake fails: a connection error.
	plain, err := NewHTTPFunction("f", cfg, WithTLSConfig(&tls.Config{RootCAs: ca.Pool, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Invoke(t.Context(), testRequest()); err == nil {
		t.Fatal("a server requiring a client certificate answered a client without one")
	}

	f, err := NewHTTPFunction("f", cfg, WithTLSConfig(&tls.Config{RootCAs: ca.Pool, Certificates: []tls.Certificate{client.TLS}, MinVersion: tls.VersionTLS12}))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.SetHeaders(http.Header{"Authorization": {"Bearer " + testSecret}, "X-Extra": {"1"}}); err != nil {
		t.Fatal(err)
	}
	if err := f.SetHeaders(http.Header{"Sluice-Attempt": {"99"}}); err == nil {
		t.Fatal("SetHeaders accepted Sluice-Attempt")
	}
	req := testRequest()
	req.Header = http.Header{"Authorization": {"Bearer from-the-caller"}}
	if _, err := f.Invoke(t.Context(), req); err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	if a := got.Values("Authorization"); len(a) != 1 || a[0] != "Bearer "+testSecret {
		t.Fatalf("Authorization = %q, want the configured one only", a)
	}
	if got.Get("X-Extra") != "1" || got.Get("Sluice-Function") != "f" || got.Get("Sluice-Invocation-Id") != req.InvocationID {
		t.Fatalf("headers = %v", got)
	}
}
