package admin

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Harden's rules, request by request: which /v1 requests reach the API.
func TestHardenRefusesBrowserAttacks(t *testing.T) {
	api := newTestAPI(t, Options{Ingress: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	})})
	h := Harden(api.srv, HardenOptions{Hosts: []string{"sluice.internal"}})
	cases := []struct {
		name, method, path, host, origin, fetchSite, ctype, body string
		want                                                     int
	}{
		{"the curl of the issue: cross-origin text/plain POST", "POST", "/v1/rules/%2A/disable", "127.0.0.1:9400", "http://evil.example", "", "text/plain", "", 403},
		{"cross-site by Sec-Fetch-Site", "POST", "/v1/rules/%2A/disable", "127.0.0.1:9400", "", "cross-site", "", "", 403},
		{"same origin but text/plain", "POST", "/v1/rules/%2A/disable", "127.0.0.1:9400", "http://127.0.0.1:9400", "", "text/plain", "", 415},
		{"form body", "PUT", "/v1/rules/x", "127.0.0.1:9400", "", "", "application/x-www-form-urlencoded", "concurrency=1", 415},
		{"body without Content-Type", "PUT", "/v1/rules/x", "127.0.0.1:9400", "", "", "", `{"concurrency":1}`, 415},
		{"foreign Host (DNS rebinding)", "GET", "/v1/rules", "evil.example:9400", "", "", "", "", 421},
		{"foreign Host, write", "POST", "/v1/rules/%2A/disable", "evil.example", "", "", "", "", 421},
		{"cross-origin invocation", "POST", "/v1/functions/fn/invocations", "127.0.0.1:9400", "http://evil.example", "", "text/plain", "x", 403},

		{"CLI: empty POST without Content-Type", "POST", "/v1/rules/%2A/disable", "127.0.0.1:9400", "", "", "", "", 200},
		{"CLI: empty POST with JSON", "POST", "/v1/rules/%2A/enable", "127.0.0.1:9400", "", "", "application/json", "", 200},
		{"CLI: JSON PUT", "PUT", "/v1/rules/x", "127.0.0.1:9400", "", "", "application/json; charset=utf-8", `{"concurrency":1}`, 200},
		{"same-origin page", "PUT", "/v1/rules/y", "127.0.0.1:9400", "http://127.0.0.1:9400", "same-origin", "application/json", `{"concurrency":1}`, 200},
		{"localhost", "GET", "/v1/rules", "localhost:9400", "", "", "", "", 200},
		{"IPv6 loopback", "GET", "/v1/rules", "[::1]:9400", "", "", "", "", 200},
		{"configured name", "GET", "/v1/rules", "Sluice.Internal:9400", "", "", "", "", 200},
		{"cross-origin GET (reading needs CORS, which is never granted)", "GET", "/v1/rules", "127.0.0.1", "http://evil.example", "cross-site", "", "", 200},
		{"invocation with any payload type", "POST", "/v1/functions/fn/invocations", "127.0.0.1:9400", "", "", "text/plain", "x", 418},
		{"metrics by service name", "GET", "/healthz", "sluice:9400", "", "", "", "", 200},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var body *strings.Reader
			if c.body != "" {
				body = strings.NewReader(c.body)
			}
			var req *http.Request
			if body != nil {
				req = httptest.NewRequest(c.method, c.path, body)
			} else {
				req = httptest.NewRequest(c.method, c.path, nil)
			}
			req.Host = c.host
			for k, v := range map[string]string{"Origin": c.origin, "Sec-Fetch-Site": c.fetchSite, "Content-Type": c.ctype} {
				if v != "" {
					req.Header.Set(k, v)
				}
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != c.want {
				t.Fatalf("%s %s (Host %s, Origin %q, Content-Type %q) = %d %s, want %d", c.method, c.path, c.host, c.origin, c.ctype, rec.Code, rec.Body, c.want)
			}
		})
	}
	// None of the refused writes changed the "*" rule.
	if r, err := api.book.Rule("*"); err != nil || r.Disabled {
		t.Fatalf(`rule "*" = %+v, %v; a refused request changed it`, r, err)
	}
}
