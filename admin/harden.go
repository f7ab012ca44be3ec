package admin

import (
	"io"
	"mime"
	"net"
	"net/http"
	"strings"
	"time"
)

// HardenOptions configures Harden.
type HardenOptions struct {
	// Hosts are the names (besides IP addresses and "localhost") that a
	// /v1 request's Host may carry: admin.hosts and the listen host.
	Hosts []string
	// ReadTimeout bounds reading a request's body once its headers are
	// read (the server's ReadHeaderTimeout bounds the headers); 0 for no
	// limit.
	ReadTimeout time.Duration
}

// Harden wraps the admin API h with the checks that keep a web page from
// using a browser as a proxy to it, and a slow client from holding it:
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
//   - Body time: a request's body must arrive within o.ReadTimeout (the
//     connection is cut otherwise). The deadline is lifted once the body
//     is read, so that a synchronous invocation may wait for its function
//     as long as the function's timeout.
//
// /metrics, /healthz and /readyz are read-only and carry no secret; they
// get only the body time limit, so that probes and scrapers that use a
// service name need no configuration.
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
		limitBodyTime(w, r, o.ReadTimeout)
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

// limitBodyTime sets a read deadline of d from now for r's body and lifts
// it once the body has been read to its end. Without the lift,
// net/http's background read of a connection whose deadline passed while a
// long handler runs would cancel the request's context.
func limitBodyTime(w http.ResponseWriter, r *http.Request, d time.Duration) {
	if d <= 0 || r.Body == nil || r.Body == http.NoBody {
		return
	}
	rc := http.NewResponseController(w)
	if rc.SetReadDeadline(time.Now().Add(d)) != nil {
		return // a ResponseWriter without deadlines (tests): nothing to lift
	}
	r.Body = &deadlineBody{ReadCloser: r.Body, lift: func() { _ = rc.SetReadDeadline(time.Time{}) }}
}

// deadlineBody calls lift once, when the body has been read to its end. A
// handler that stops reading early leaves the deadline in place: the server
// then discards the rest of the body under it.
type deadlineBody struct {
	io.ReadCloser
	lift   func()
	lifted bool // read by the handler's goroutine only
}

func (b *deadlineBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err == io.EOF && !b.lifted { // io.Reader returns EOF itself, never wrapped
		b.lifted = true
		b.lift()
	}
	return n, err
}
