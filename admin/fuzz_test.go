package admin

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzAdminRequest sends arbitrary methods, paths and bodies to the admin
// API with an admin token, each input to a server with a fresh rule book:
// every answer is below 500, and every error under /v1 is a JSON
// {"message": ...}. Its seed corpus runs with `go test` as a
// normal test; `go test -fuzz FuzzAdminRequest ./admin/` explores further.
func FuzzAdminRequest(f *testing.F) {
	for _, rt := range Routes() {
		p := concrete(rt.Pattern)
		f.Add(rt.Method, p, "")
		f.Add(rt.Method, p, "{}")
		f.Add(rt.Method, p, `{"concurrency": 3, "description": "d", "disabled": true}`)
		f.Add(rt.Method, p, `{"reservedConcurrentExecutions": 5}`)
	}
	for _, s := range []struct{ method, path, body string }{
		{"PUT", "/v1/rules/%2A", `{"concurrency": 1}`},
		{"PUT", "/v1/rules/a%2Fb", `{"concurrency": 1}`},
		{"PUT", "/v1/rules/x", `{"concurrency": 1e400}`},
		{"PUT", "/v1/rules/x", `{"concurrency": 9223372036854775808}`},
		{"PUT", "/v1/rules/x", `{"concurrency": null, "description": null}`},
		{"PUT", "/v1/rules/x", `{"concurrency": 1}garbage`},
		{"PUT", "/v1/rules/x", "\xff\xfe"},
		{"PUT", "/v1/rules/x", `[{"concurrency": 1}]`},
		{"PUT", "/v1/rules/x", `{"concurrency":` + strings.Repeat("[", 10000)},
		{"PUT", "/v1/functions/fn/concurrency", `{"reservedConcurrentExecutions": -5}`},
		{"PUT", "/v1/functions/fn/concurrency", `{"reservedConcurrentExecutions": 99999999999}`},
		{"PUT", "/v1/functions/%2e%2e/concurrency", `{"reservedConcurrentExecutions": 1}`},
		{"DELETE", "/v1/rules/", ""},
		{"GET", "/v1/rules/a/b/c", ""},
		{"GET", "/v1//rules", ""},
		{"GET", "/v1/../v1/account", ""},
		{"POST", "/v1/rules/x/enable?x=1", "body"},
		{"OPTIONS", "/v1/account", ""},
		{"CONNECT", "/v1/account", ""},
		{"GET", "/v1/functions/%ff", ""},
		{"PUT", "/v1/rules/%ff%fe", `{"concurrency": 1}`},
		{"GET", "/metricsx", ""},
	} {
		f.Add(s.method, s.path, s.body)
	}
	f.Fuzz(func(t *testing.T, method, path, body string) {
		if !validMethod(method) || !strings.HasPrefix(path, "/") || strings.ContainsAny(path, " \t\r\n#") {
			t.Skip() // not something an HTTP server would hand a handler
		}
		// A fresh book per input: what one input changes (a rule, a
		// reservation) never decides another's answer, so a failure
		// replays from its input alone.
		book := newTestBook(t, t.TempDir(), testConfig())
		srv, err := New(Options{Book: book, Tokens: []Token{{Secret: "adm", Role: RoleAdmin}}})
		if err != nil {
			t.Fatal(err)
		}
		req, err := http.NewRequest(method, "http://sluice"+path, strings.NewReader(body))
		if err != nil {
			t.Skip()
		}
		req.Header.Set("Authorization", "Bearer adm")
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code >= 500 {
			t.Fatalf("%s %q %q: status %d: %s", method, path, body, w.Code, w.Body)
		}
		if w.Code >= 400 && strings.HasPrefix(req.URL.Path, "/v1/") {
			var e ErrorBody
			if err := json.NewDecoder(bytes.NewReader(w.Body.Bytes())).Decode(&e); err != nil || e.Message == "" {
				t.Fatalf("%s %q: status %d with body %q, want {\"message\": ...}", method, path, w.Code, w.Body)
			}
		}
	})
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, c := range m {
		if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_!#$%&'*+.^`|~", c) {
			return false
		}
	}
	return true
}
