package dispatch

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// MaxRetryAfter caps the Retry-After a function may ask for with 429/503. A
// stream shard holds its batch for at least that long, so an absurd value
// (or a date far in the future) must not park a shard for days.
const MaxRetryAfter = 15 * time.Minute

// MaxResponseBytes is the largest success body sluice reads from a function,
// Lambda's 6 MiB synchronous payload limit. A larger answer is a function
// error (KindResponse): reading it would put unbounded memory behind every
// invocation slot.
const MaxResponseBytes = 6 << 20

const (
	// maxMessageBytes caps the part of an error body kept as the error's
	// message: enough for a stack trace's first lines, small enough for logs
	// and dead-letter envelopes.
	maxMessageBytes = 512
	// maxDrainBytes is how much of an unwanted body is read and discarded so
	// that its connection goes back to the pool. Past it, closing the
	// connection is cheaper than reading on.
	maxDrainBytes = 256 << 10
)

// HTTPFunction is a Handler that invokes a function over HTTP, following the
// contract of SPEC §3: it POSTs the request body with the Sluice-* headers and
// maps the answer to this package's outcome errors.
//
// Each HTTPFunction owns its connection pool, sized for the function's
// concurrency, so that a busy function never makes another wait for a
// connection and an invocation never waits behind its own function's pool.
// It is safe for concurrent use.
type HTTPFunction struct {
	name    string
	url     string
	timeout time.Duration
	client  *http.Client
	// transport is the pool this HTTPFunction built, nil with WithHTTPClient.
	transport *http.Transport
	onConn    func(wait time.Duration, reused bool)
	// headers are the configured headers (SetHeaders), replaced whole on
	// a reload; nil until set.
	headers atomic.Pointer[http.Header]
}

// HTTPOption configures an HTTPFunction. Options are code wiring; operator
// settings live in FunctionConfig.
type HTTPOption func(*httpOptions)

type httpOptions struct {
	client   *http.Client
	clientOK bool // WithHTTPClient was given, possibly with nil
	maxConns int
	onConn   func(wait time.Duration, reused bool)
	tls      *tls.Config
}

// WithHTTPClient makes the function use c instead of a pool of its own, e.g.
// a test server's client. WithMaxConns has no effect then: c's transport is
// the caller's. c is copied, not changed: redirects are still never
// followed, whatever c.CheckRedirect says.
func WithHTTPClient(c *http.Client) HTTPOption {
	return func(o *httpOptions) { o.client, o.clientOK = c, true }
}

// WithMaxConns sizes the connection pool for n concurrent invocations: up to
// n keep-alive connections are kept for reuse. The default is the function's
// reserved concurrency, or DefaultAccountConcurrency without one (or with a
// reservation of 0, which may be raised at run time). Since a reservation can
// change at run time but never exceeds the account limit, a dispatcher that
// wants no connection churn after such a change passes the account limit.
func WithMaxConns(n int) HTTPOption {
	return func(o *httpOptions) { o.maxConns = n }
}

// WithConnObserver has fn called once per request as soon as it holds a
// connection: wait is how long getting it took (from the pool, or by dialling
// a new one), reused whether it came from the pool. It is what the metric
// behind SPEC §6's "invocations waiting on the HTTP connection pool" alert is
// made of. fn runs on the invocation's goroutine and must not block.
func WithConnObserver(fn func(wait time.Duration, reused bool)) HTTPOption {
	return func(o *httpOptions) { o.onConn = fn }
}

// NewHTTPFunction returns the HTTP client of the function name. It checks
// cfg.URL (an http or https URL with a host) and cfg.Timeout (0 for
// DefaultTimeout, at most MaxTimeout); configuration errors wrap ErrInvalid
// and name the key, as Config.Validate's do.
func NewHTTPFunction(name string, cfg FunctionConfig, opts ...HTTPOption) (*HTTPFunction, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: functions: a function needs a name", ErrInvalid)
	}
	key := "functions." + name
	if err := checkFunctionURL(cfg.URL); err != nil {
		return nil, fmt.Errorf("%w: %s.url %w", ErrInvalid, key, err)
	}
	if cfg.Timeout < 0 || cfg.Timeout > MaxTimeout {
		return nil, fmt.Errorf("%w: %s.timeout must be 1ms..15m, got %s", ErrInvalid, key, cfg.Timeout)
	}
	timeout := cfg.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}

	o := httpOptions{maxConns: DefaultAccountConcurrency}
	if r := cfg.ReservedConcurrency; r != nil && *r > 0 {
		o.maxConns = *r
	}
	for _, opt := range opts {
		opt(&o)
	}
	if o.maxConns < 1 {
		return nil, fmt.Errorf("dispatch: function %q: WithMaxConns must be at least 1, got %d", name, o.maxConns)
	}
	if o.clientOK && o.client == nil {
		return nil, fmt.Errorf("dispatch: function %q: WithHTTPClient(nil)", name)
	}
	if o.tls != nil && o.client != nil {
		return nil, fmt.Errorf("function %q: %w", name, errNoTLS)
	}

	f := &HTTPFunction{name: name, url: cfg.URL, timeout: timeout, onConn: o.onConn}
	if o.client != nil {
		c := *o.client // a copy, so that the caller's client keeps its redirect policy
		f.client = &c
	} else {
		f.transport = newTransport(o.maxConns)
		if o.tls != nil {
			f.transport.TLSClientConfig = o.tls
		}
		f.client = &http.Client{Transport: f.transport}
	}
	// A function that redirects is misconfigured (a wrong path, http for
	// https): following would re-send a POST somewhere the operator did not
	// name, or silently turn it into a GET. The 3xx becomes a PermanentError.
	f.client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return f, nil
}

// checkFunctionURL says what is wrong with a function URL, in words that
// follow the key in a configuration error. It never repeats a password.
func checkFunctionURL(raw string) error {
	if raw == "" {
		return errors.New("is required (an http or https URL)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // without the raw URL, which may hold a password
		}
		return fmt.Errorf("is not a valid URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("must be an http or https URL, got %q", RedactURL(raw))
	}
	if u.Hostname() == "" {
		return fmt.Errorf("must name a host, got %q", RedactURL(raw))
	}
	return nil
}

// newTransport returns a pool with http.DefaultTransport's settings that keeps
// maxConns keep-alive connections to the function.
//
// MaxIdleConns and MaxIdleConnsPerHost (default 100 and 2) are raised to
// maxConns so that after a burst every connection stays pooled instead of
// being closed and dialled again. MaxConnsPerHost is left at 0, no limit:
// the dispatcher's limiter already bounds how many invocations run at once,
// and a second bound here could only make an invocation that holds a slot
// wait for a connection — the pool time-out SPEC §3 rules out — for example
// after the function's reservation is raised at run time above maxConns.
// Connections of abandoned requests are closed by the transport, so open
// connections never outnumber running invocations for long.
func newTransport(maxConns int) *http.Transport {
	var t *http.Transport
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		t = dt.Clone()
	} else { // DefaultTransport was replaced (instrumentation, tests): rebuild its settings
		t = &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   10 * time.Second,
			ExpectContinueTimeout: time.Second,
		}
	}
	t.MaxIdleConns = maxConns
	t.MaxIdleConnsPerHost = maxConns
	t.MaxConnsPerHost = 0
	return t
}

// CloseIdleConnections closes the pool's idle connections, as
// http.Client.CloseIdleConnections does (the Dispatcher's Close looks for
// this method). It waits for nothing: an invocation in flight keeps its
// connection until it ends (its ctx bounds it). The function can still be
// invoked afterwards; it dials anew. With WithHTTPClient it closes the idle
// connections of that client's transport.
func (f *HTTPFunction) CloseIdleConnections() { f.client.CloseIdleConnections() }

// Close is CloseIdleConnections, for callers that hold an io.Closer. It
// always returns nil.
func (f *HTTPFunction) Close() error {
	f.CloseIdleConnections()
	return nil
}

// Invoke POSTs req to the function and maps the answer (SPEC §3):
//
//   - 2xx: success, the *Response; with req.ReportItemFailures, also the
//     result of ParseBatchItemFailures (nil, *PartialBatchError, or a
//     whole-batch *FunctionError).
//   - 429, 503: *ThrottledError{Reason: ReasonFunction} with the Retry-After
//     (seconds or an HTTP date), capped at MaxRetryAfter.
//   - 408, 409, other 5xx: *FunctionError{Kind: KindStatus}.
//   - other 4xx: *PermanentError.
//   - 1xx (only 101 reaches here), 3xx (redirects are not followed) and codes
//     above 599: *PermanentError. The function answered outside the contract;
//     retrying the same request cannot change that.
//   - no answer before the deadline: *FunctionError{Kind: KindTimeout}.
//   - a header value net/http refuses to send: *InvalidRequestError (the
//     scope is percent-encoded and a malformed traceparent dropped before,
//     so only a value from req.Header can be refused).
//   - the request could not be sent or the answer read (refused, reset,
//     closed early, malformed): *FunctionError{Kind: KindConnection}.
//
// The deadline is ctx's, or now+cfg.Timeout if that is earlier (or ctx has
// none). When ctx itself is cancelled — shutdown, not a deadline — Invoke
// returns an error that wraps context.Canceled (and the ctx's cause) and is
// none of the outcome errors: the invocation was abandoned, not failed, and
// must not consume an attempt. The two are told apart by ctx.Err(): a
// deadline, ctx's own or the function's timeout, gives
// context.DeadlineExceeded and so a timeout; only cancellation gives
// context.Canceled. An answer that arrived in full before the cancellation
// is still returned.
func (f *HTTPFunction) Invoke(ctx context.Context, req *Request) (*Response, error) {
	if req == nil {
		return nil, fmt.Errorf("dispatch: function %q: nil request", f.name)
	}
	parent := ctx
	if dl, ok := ctx.Deadline(); !ok || time.Until(dl) > f.timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	deadline, _ := ctx.Deadline()
	start := time.Now()

	if err := ctx.Err(); err != nil { // don't dial for an invocation already over
		return nil, f.transportError(parent, ctx, start, err)
	}
	if f.onConn != nil {
		ctx = f.traceConn(ctx)
	}
	hreq, err := newHTTPRequest(ctx, f.url, req)
	if err != nil { // the URL was checked by NewHTTPFunction
		return nil, fmt.Errorf("dispatch: function %q: %w", f.name, err)
	}
	f.setHeaders(hreq.Header, req, deadline)
	// net/http would refuse the request with an error indistinguishable
	// from a lost connection; a value it cannot carry is the record's
	// fault, and retrying cannot change it.
	if err := checkHeaders(hreq.Header); err != nil {
		return nil, err
	}

	resp, err := f.client.Do(hreq)
	if err != nil {
		return nil, f.transportError(parent, ctx, start, err)
	}
	if s := resp.StatusCode; s < 200 {
		// 101 Switching Protocols: the body is now a raw stream that may
		// never end, and the connection is lost to the pool anyway.
		_ = resp.Body.Close()
		return nil, &PermanentError{Status: s, Message: fmt.Sprintf("function answered %d %s, outside the contract", s, http.StatusText(s))}
	}
	defer func() {
		// Drain what is left, bounded, so that the connection is reused.
		_, _ = io.CopyN(io.Discard, resp.Body, maxDrainBytes)
		_ = resp.Body.Close()
	}()

	switch s := resp.StatusCode; {
	case s >= 200 && s <= 299:
		body, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes+1))
		if err != nil {
			return nil, f.transportError(parent, ctx, start, err)
		}
		if len(body) > MaxResponseBytes {
			return nil, &FunctionError{Kind: KindResponse, Status: s,
				Message: fmt.Sprintf("response body larger than %d bytes", MaxResponseBytes)}
		}
		out := &Response{Status: s, Header: resp.Header, Body: body}
		if req.ReportItemFailures {
			return out, ParseBatchItemFailures(body, req.Items)
		}
		return out, nil
	case s == http.StatusTooManyRequests || s == http.StatusServiceUnavailable:
		return nil, &ThrottledError{Reason: ReasonFunction, Status: resp.StatusCode, RetryAfter: parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())}
	case s == http.StatusRequestTimeout || s == http.StatusConflict || (s >= 500 && s <= 599):
		return nil, &FunctionError{Kind: KindStatus, Status: s, Message: readMessage(resp)}
	case s >= 400 && s <= 499:
		return nil, &PermanentError{Status: s, Message: readMessage(resp)}
	case s >= 300 && s <= 399:
		msg := fmt.Sprintf("function answered %d %s, and sluice does not follow redirects: fix functions.%s.url",
			s, http.StatusText(s), f.name)
		if loc := redactLocation(resp.Header.Get("Location")); loc != "" {
			msg += " (it points to " + loc + ")"
		}
		return nil, &PermanentError{Status: s, Message: msg}
	default:
		return nil, &PermanentError{Status: s, Message: fmt.Sprintf("function answered %d, outside the contract: %s", s, readMessage(resp))}
	}
}

// setHeaders fills h with req.Header, then the configured headers
// (SetHeaders, which replace a header of the same name), then the contract
// headers of SPEC §3. The contract headers and Content-Type are set last, so
// that neither a header carried in req.Header nor a configured one can pass
// for sluice's own.
func (f *HTTPFunction) setHeaders(h http.Header, req *Request, deadline time.Time) {
	for k, vs := range req.Header {
		k = http.CanonicalHeaderKey(k) // so that Set below replaces it, whatever its case
		h[k] = append(h[k], vs...)
	}
	if conf := f.headers.Load(); conf != nil {
		for k, vs := range *conf {
			h[k] = vs // canonical (SetHeaders); never changed once stored
		}
	}
	if h.Get("User-Agent") == "" {
		h.Set("User-Agent", "sluice")
	}
	h.Set("Sluice-Function", f.name)
	h.Set("Sluice-Invocation-Id", req.InvocationID)
	h.Set("Sluice-Attempt", strconv.Itoa(req.Attempt))
	if !req.Deadline.IsZero() {
		deadline = req.Deadline
	}
	h.Set("Sluice-Deadline", formatDeadline(deadline))
	sc, encoded := headerScope(req.Scope)
	setIf(h, "Sluice-Scope", sc)
	if encoded {
		h.Set(HeaderScopeEncoding, ScopeEncodingPercent)
	} else {
		h.Del(HeaderScopeEncoding)
	}
	// With an Idempotency-Key, net/http may also replay the POST on a fresh
	// connection when a pooled one turns out to be closed by the server.
	setIf(h, "Idempotency-Key", req.IdempotencyKey)
	setIf(h, "Traceparent", req.TraceParent)
	setIf(h, "Tracestate", req.TraceState)
	ct := req.ContentType
	if ct == "" {
		ct = "application/json"
	}
	h.Set("Content-Type", ct)
}

func setIf(h http.Header, key, v string) {
	if v != "" {
		h.Set(key, v)
	} else {
		h.Del(key)
	}
}

// formatDeadline writes t in RFC 3339, in UTC with milliseconds: whole
// seconds would shift a short deadline by up to a second, and every RFC 3339
// parser accepts the fraction.
func formatDeadline(t time.Time) string {
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

// traceConn reports through f.onConn how long each request waited for its
// connection.
func (f *HTTPFunction) traceConn(ctx context.Context) context.Context {
	var asked time.Time // GetConn happens before GotConn, on the request's way through the transport
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		GetConn: func(string) { asked = time.Now() },
		GotConn: func(info httptrace.GotConnInfo) { f.onConn(time.Since(asked), info.Reused) },
	})
}

// transportError maps a failure to send the request or read the answer.
// parent is the caller's ctx, ctx the one the request ran under (parent, or
// parent with the function's timeout).
func (f *HTTPFunction) transportError(parent, ctx context.Context, start time.Time, err error) error {
	// The caller gave up (shutdown): abandoned, not failed. This is checked
	// first because a cancelled request also fails with a connection error.
	if perr := parent.Err(); errors.Is(perr, context.Canceled) {
		// Cause is perr itself unless the canceller gave one (WithCancelCause).
		if cause := context.Cause(parent); !errors.Is(perr, cause) {
			return fmt.Errorf("dispatch: function %q: invocation abandoned: %w: %w", f.name, perr, cause)
		}
		return fmt.Errorf("dispatch: function %q: invocation abandoned: %w", f.name, perr)
	}
	inner := err
	var uerr *url.Error
	if errors.As(err, &uerr) {
		inner = uerr.Err // the URL may carry a secret (a query token); don't copy it into logs and dead letters
	}
	if errors.Is(ctx.Err(), context.DeadlineExceeded) { // the invocation's deadline: ctx's or the function's timeout
		msg := "the invocation's deadline passed before the request was sent"
		if dl, _ := ctx.Deadline(); dl.After(start) {
			msg = fmt.Sprintf("no answer within %s", dl.Sub(start).Round(time.Millisecond))
		}
		return &FunctionError{Kind: KindTimeout, Message: msg, Err: inner}
	}
	// A dial that failed, even by its own time-out, means the function could
	// not be reached: a connection error, not a slow answer.
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return &FunctionError{Kind: KindConnection, Message: inner.Error(), Err: inner}
	}
	// Another time limit, e.g. http.Client.Timeout of WithHTTPClient.
	var nerr net.Error
	if errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &nerr) && nerr.Timeout()) {
		return &FunctionError{Kind: KindTimeout, Message: inner.Error(), Err: inner}
	}
	return &FunctionError{Kind: KindConnection, Message: inner.Error(), Err: inner}
}

// readMessage returns the start of an error answer's body as a message: at
// most maxMessageBytes, trimmed, valid UTF-8; the status text if it is empty.
func readMessage(resp *http.Response) string {
	b, _ := io.ReadAll(io.LimitReader(resp.Body, maxMessageBytes+1)) // an unreadable body leaves the status text
	// Invalid UTF-8 becomes U+FFFD (3 bytes per bad byte) before the cap,
	// so the cap bounds what is kept, not what was read.
	msg := strings.TrimSpace(strings.ToValidUTF8(string(b), "\uFFFD"))
	truncated := len(b) > maxMessageBytes
	if len(msg) > maxMessageBytes {
		truncated = true
		msg = cutMessage(msg)
	}
	if msg == "" {
		if msg = http.StatusText(resp.StatusCode); msg == "" {
			msg = "HTTP " + strconv.Itoa(resp.StatusCode) // a status without a standard text (e.g. 514)
		}
		return msg
	}
	if truncated {
		msg += "…"
	}
	return msg
}

// cutMessage cuts valid UTF-8 msg to at most maxMessageBytes, dropping a
// rune the cut split (at most UTFMax-1 bytes).
func cutMessage(msg string) string {
	if len(msg) <= maxMessageBytes {
		return msg
	}
	msg = msg[:maxMessageBytes]
	for i := 0; i < utf8.UTFMax-1 && len(msg) > 0; i++ {
		if r, size := utf8.DecodeLastRuneInString(msg); r != utf8.RuneError || size != 1 {
			break
		}
		msg = msg[:len(msg)-1]
	}
	return msg
}

// redactLocation returns a redirect's target without user info or query,
// which may hold secrets (signed URLs); the rest is what the operator needs
// to fix the configured URL, at most maxMessageBytes of it as readMessage
// keeps of a body (a header may be as long as the server allows, and
// escaping triples its odd bytes).
func redactLocation(loc string) string {
	u, err := url.Parse(loc)
	if err != nil {
		return ""
	}
	u.User, u.RawQuery, u.ForceQuery, u.Fragment, u.RawFragment = nil, "", false, "", ""
	s := strings.ToValidUTF8(u.String(), "\uFFFD") // a header may hold any bytes; messages go into JSON
	if len(s) > maxMessageBytes {
		s = cutMessage(s) + "…"
	}
	return s
}

// parseRetryAfter reads a Retry-After value (RFC 9110 §10.2.3): a number of
// seconds or an HTTP date, relative to now. A missing, negative, past or
// unreadable value gives 0 (no hint: the caller's own backoff applies); a
// value beyond MaxRetryAfter, or too large to represent, gives MaxRetryAfter.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if isDigits(v) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n > int64(MaxRetryAfter/time.Second) { // err: only ErrRange, all digits
			return MaxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	switch {
	case d <= 0:
		return 0
	case d > MaxRetryAfter:
		return MaxRetryAfter
	}
	return d
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return s != ""
}
