package admin

import (
	"mime"
	"net"
	"net/http"
	"strings"
)

// HardenOptions configures Harden.
type HardenOptions struct {
	// Hosts are the names (besides IP addresses and "localhost") that a
	// /v1 request's Host may carry: admin.hosts and the listen host.
	Hosts []string
}

// Harden wraps the admin API h with the checks that keep a web page from
// using a browser as a proxy to it (time limits and the connection cap, the
// defence against slow and idle clients, are the http.Server's, set by cmd):
//
//   - Host: a /v1 request must name an IP address, "localhost" or one of
//     o.Hosts (421 otherwise). A page can make a browser send a Host of a
//     DNS name only (DNS rebinding), so that name must be one the operator
//     configured.
//   - Origin: a /v1 request other than GET, HEAD or OPTIONS coming from a
//     browser of another origin (Sec-Fetch-Site, else Origin compared with
//     Host; net/http.CrossOriginProtection) is refused with 403. Clients
//     that are not browsers send neither header and pass.
//   - Content-Type: such a write, except an invocation of the ingress
//     (…/invocations, whose payload may be of any type), must send JSON
//     (application/json or application/*+json) or, when its body is empty,
//     no Content-Type at all (415 otherwise). A form or text/plain POST — what
//     a page can send without CORS preflight — is refused.
//
// /metrics, /healthz and /readyz are read-only and carry no secret; they
// are not checked, so that probes and scrapers that use a service name need
// no configuration.
func Harden(h http.Handler, o HardenOptions) http.Handler {
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusForbidden, "admin: cross-origin request refused: a write to the admin API must not come from a web page of another origin")
	}))
	checked := cop.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if msg := checkContentType(r); msg != "" {
			writeError(w, http.StatusUnsupportedMediaType, msg)
			return
		}
		h.ServeHTTP(w, r)
	}))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1" && !strings.HasPrefix(r.URL.Path, "/v1/") {
			h.ServeHTTP(w, r)
			return
		}
		if !hostAllowed(r.Host, o.Hosts) {
			writeError(w, http.StatusMisdirectedRequest, "admin: host "+quoteHost(r.Host)+" is not served here; use an IP address, localhost, or a name listed in admin.hosts")
			return
		}
		checked.ServeHTTP(w, r)
	})
}

// safeMethod reports whether m only reads.
func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// checkContentType returns why a /v1 write's Content-Type is refused, or "".
func checkContentType(r *http.Request) string {
	if safeMethod(r.Method) || (r.Method == http.MethodPost && strings.HasSuffix(r.URL.Path, "/invocations")) {
		return ""
	}
	ct := r.Header.Get("Content-Type")
	if ct == "" {
		if r.ContentLength != 0 { // -1: chunked, unknown length
			return "admin: a request with a body must send Content-Type: application/json"
		}
		return ""
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err == nil && (mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))) {
		return ""
	}
	return "admin: Content-Type " + quoteHost(ct) + " is not accepted: send application/json (or no Content-Type with an empty body)"
}

// hostAllowed reports whether host (a Host header, with or without port)
// is an IP address, localhost, or one of names.
func hostAllowed(host string, names []string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if host == "" {
		return false
	}
	if strings.EqualFold(host, "localhost") || net.ParseIP(host) != nil {
		return true
	}
	for _, n := range names {
		if strings.EqualFold(strings.TrimSuffix(n, "."), host) {
			return true
		}
	}
	return false
}

// quoteHost quotes s for a message, cut to a sane length.
func quoteHost(s string) string {
	if len(s) > 100 {
		s = s[:100] + "…"
	}
	return `"` + strings.ToValidUTF8(s, "\uFFFD") + `"`
}
