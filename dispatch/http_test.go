package dispatch

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"
)

// The function's URL carries a query token, as some function platforms'
// URLs do: no error may repeat it.
const testSecret = "s3cr3t"

// testRequest is the invocation every test starts from.
func testRequest() *Request {
	return &Request{
		Function:     "thumb",
		InvocationID: "inv-1",
		Attempt:      1,
		Body:         []byte(`{"hello":"world"}`),
		Items:        []string{"10", "11", "12"},
	}
}

// startServer starts h on a test server; ConnState, if given, sees every
// connection state change. The server and its connections are closed when
// the test ends.
func startServer(t *testing.T, h http.Handler, connState func(net.Conn, http.ConnState)) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = connState
	srv.Start()
	t.Cleanup(func() {
		srv.CloseClientConnections() // so that Close does not wait for a handler the client left
		srv.Close()
	})
	return srv
}

// newTestFunction returns the function "thumb" at url + /invoke, closed when
// the test ends.
func newTestFunction(t *testing.T, url string, cfg FunctionConfig, opts ...HTTPOption) *HTTPFunction {
	t.Helper()
	cfg.URL = url + "/invoke?code=" + testSecret
	f, err := NewHTTPFunction("thumb", cfg, opts...)
	if err != nil {
		t.Fatalf("NewHTTPFunction: %v", err)
	}
	t.Cleanup(func() { _ = f.Close() })
	return f
}

// guardCtx bounds a test's invocation, generously: a test that hangs fails
// instead.
func guardCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// reply answers status with the given headers (name, value pairs) and body.
func reply(status int, body string, header ...string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		for i := 0; i+1 < len(header); i += 2 {
			w.Header().Set(header[i], header[i+1])
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}
}

// hang never answers: it returns when the client goes away. Reading the body
// first lets the server notice that (it watches the connection once the body
// is consumed).
func hang(w http.ResponseWriter, r *http.Request) {
	_, _ = io.Copy(io.Discard, r.Body)
	<-r.Context().Done()
}

// hijack reads the request, takes over its connection and hands it to fn,
// then closes it.
func hijack(fn func(c net.Conn)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		c, _, err := w.(http.Hijacker).Hijack()
		if err != nil {
			panic(err) // the test server is HTTP/1.1: cannot happen
		}
		defer c.Close()
		fn(c)
	}
}

// Checks of an invocation's outcome.

type checkFunc func(t *testing.T, resp *Response, err error)

func wantSuccess(status int, body string) checkFunc {
	return func(t *testing.T, resp *Response, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("err = %v, want success", err)
		}
		if resp == nil || resp.Status != status || string(resp.Body) != body {
			t.Fatalf("resp = %+v, want status %d body %q", resp, status, body)
		}
	}
}

func wantPartial(body string, failed ...string) checkFunc {
	return func(t *testing.T, resp *Response, err error) {
		t.Helper()
		var pe *PartialBatchError
		if !errors.As(err, &pe) {
			t.Fatalf("err = %v, want *PartialBatchError", err)
		}
		if !slices.Equal(pe.Failed, failed) {
			t.Errorf("Failed = %q, want %q", pe.Failed, failed)
		}
		if resp == nil || string(resp.Body) != body {
			t.Errorf("resp = %+v, want the response with body %q alongside", resp, body)
		}
	}
}

// wantWholeBatch: a success status whose partial-batch body fails the whole batch.
func wantWholeBatch(t *testing.T, resp *Response, err error) {
	t.Helper()
	var fe *FunctionError
	if !errors.As(err, &fe) || fe.Kind != KindResponse {
		t.Fatalf("err = %v, want *FunctionError of kind %q (whole batch failed)", err, KindResponse)
	}
	if resp == nil || resp.Status != http.StatusOK {
		t.Errorf("resp = %+v, want the 200 response alongside", resp)
	}
}

func wantThrottled(lo, hi time.Duration) checkFunc {
	return func(t *testing.T, resp *Response, err error) {
		t.Helper()
		te, ok := AsThrottled(err)
		if !ok {
			t.Fatalf("err = %v, want *ThrottledError", err)
		}
		if te.Reason != ReasonFunction {
			t.Errorf("Reason = %q, want %q", te.Reason, ReasonFunction)
		}
		if te.RetryAfter < lo || te.RetryAfter > hi {
			t.Errorf("RetryAfter = %s, want %s..%s", te.RetryAfter, lo, hi)
		}
		if te.Status != 429 && te.Status != 503 {
			t.Errorf("Status = %d, want the function's 429 or 503", te.Status)
		}
		if r := resultOf(err, nil); r.Error.Status != te.Status {
			t.Errorf("dead-letter error status = %d, want %d", r.Error.Status, te.Status)
		}
		if resp != nil {
			t.Errorf("resp = %+v, want nil", resp)
		}
	}
}

// wantFunctionError checks the kind, the status and that the message
// contains msg.
func wantFunctionError(kind ErrorKind, status int, msg string) checkFunc {
	return func(t *testing.T, resp *Response, err error) {
		t.Helper()
		var fe *FunctionError
		if !errors.As(err, &fe) {
			t.Fatalf("err = %v, want *FunctionError", err)
		}
		if fe.Kind != kind || fe.Status != status {
			t.Errorf("FunctionError{Kind: %q, Status: %d}, want {%q, %d} (%v)", fe.Kind, fe.Status, kind, status, err)
		}
		if !strings.Contains(fe.Message, msg) {
			t.Errorf("Message = %q, want it to contain %q", fe.Message, msg)
		}
		if errors.Is(err, context.Canceled) {
			t.Errorf("err %v wraps context.Canceled: a failure would pass for a shutdown", err)
		}
		if resp != nil {
			t.Errorf("resp = %+v, want nil", resp)
		}
	}
}

func wantPermanent(status int, msg string) checkFunc {
	return func(t *testing.T, resp *Response, err error) {
		t.Helper()
		var pe *PermanentError
		if !errors.As(err, &pe) {
			t.Fatalf("err = %v, want *PermanentError", err)
		}
		if pe.Status != status || !strings.Contains(pe.Message, msg) {
			t.Errorf("PermanentError{%d, %q}, want status %d and a message containing %q", pe.Status, pe.Message, status, msg)
		}
		if resp != nil {
			t.Errorf("resp = %+v, want nil", resp)
		}
	}
}

// wantAbandoned: a cancelled ctx is a shutdown, none of the outcome errors.
func wantAbandoned(t *testing.T, resp *Response, err error) {
	t.Helper()
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want it to wrap context.Canceled", err)
	}
	var (
		fe *FunctionError
		pe *PermanentError
	)
	if errors.As(err, &fe) || errors.As(err, &pe) || IsThrottled(err) {
		t.Errorf("err = %#v is an outcome error; a shutdown must not count as an attempt", err)
	}
	if resp != nil {
		t.Errorf("resp = %+v, want nil", resp)
	}
}

// and runs several checks.
func and(checks ...checkFunc) checkFunc {
	return func(t *testing.T, resp *Response, err error) {
		t.Helper()
		for _, c := range checks {
			c(t, resp, err)
		}
	}
}

func wantIs(target error) checkFunc {
	return func(t *testing.T, _ *Response, err error) {
		t.Helper()
		if !errors.Is(err, target) {
			t.Errorf("err = %v, want it to wrap %v", err, target)
		}
	}
}

func wantOutcome(o Outcome) checkFunc {
	return func(t *testing.T, _ *Response, err error) {
		t.Helper()
		if got := OutcomeOf(err); got != o {
			t.Errorf("OutcomeOf(%v) = %q, want %q", err, got, o)
		}
	}
}

// cancelOnArrival returns a ctx that is cancelled (with cause, if not nil)
// as soon as the function has received the request.
func cancelOnArrival(cause error) func(*testing.T, <-chan struct{}) context.Context {
	return func(t *testing.T, arrived <-chan struct{}) context.Context {
		ctx, cancel := context.WithCancelCause(context.Background())
		t.Cleanup(func() { cancel(nil) })
		go func() {
			select {
			case <-arrived:
				cancel(cause)
			case <-ctx.Done():
			}
		}()
		return ctx
	}
}

func withTimeout(d time.Duration) func(*testing.T, <-chan struct{}) context.Context {
	return func(t *testing.T, _ <-chan struct{}) context.Context {
		ctx, cancel := context.WithTimeout(context.Background(), d)
		t.Cleanup(cancel)
		return ctx
	}
}

var errShutdown = errors.New("shutting down")

// TestHTTPFunctionOutcomes has one case per answer of SPEC §3's table.
func TestHTTPFunctionOutcomes(t *testing.T) {
	partialBody := `{"batchItemFailures":[{"itemIdentifier":"12"},{"itemIdentifier":"10"}]}`
	big := strings.Repeat("x", MaxResponseBytes)
	longMessage := "  " + strings.Repeat("e", 2000) + "  "

	tests := []struct {
		name    string
		handler http.HandlerFunc // nil: nothing listens at the function's URL
		timeout time.Duration    // FunctionConfig.Timeout
		report  bool             // Request.ReportItemFailures
		// ctx returns the invocation's ctx; arrived is signalled when the
		// function has the request. Nil: a generous guard.
		ctx    func(t *testing.T, arrived <-chan struct{}) context.Context
		noCall bool // the function must not see the request (else: exactly once)
		check  checkFunc
	}{
		// 2xx: success.
		{name: "200 returns the body", handler: reply(200, "thumbnail made", "X-Fn", "1"), check: and(wantSuccess(200, "thumbnail made"), wantOutcome(OutcomeSuccess),
			func(t *testing.T, resp *Response, _ error) {
				if resp.Header.Get("X-Fn") != "1" {
					t.Errorf("response headers %v lack X-Fn", resp.Header)
				}
			})},
		{name: "204 no content", handler: reply(204, ""), check: wantSuccess(204, "")},
		{name: "202 accepted", handler: reply(202, "queued"), check: wantSuccess(202, "queued")},
		{name: "103 early hints then 200", handler: func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Link", "</style.css>; rel=preload")
			w.WriteHeader(http.StatusEarlyHints)
			w.WriteHeader(200)
			_, _ = io.WriteString(w, "ok")
		}, check: wantSuccess(200, "ok")},
		{name: "200 body of MaxResponseBytes", handler: reply(200, big), check: func(t *testing.T, resp *Response, err error) {
			if err != nil || resp == nil || len(resp.Body) != MaxResponseBytes {
				t.Fatalf("err = %v, resp body %d bytes; want success with %d bytes", err, respLen(resp), MaxResponseBytes)
			}
		}},
		{name: "200 body over MaxResponseBytes", handler: reply(200, big+"x"), check: wantFunctionError(KindResponse, 200, "larger than")},
		{name: "200 body cut short", handler: hijack(func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly twenty bytes...")
		}), check: and(wantFunctionError(KindConnection, 0, ""), wantIs(io.ErrUnexpectedEOF))},

		// 2xx with report_batch_item_failures.
		{name: "200 partial batch, order normalised", report: true, handler: reply(200, partialBody), check: and(wantPartial(partialBody, "10", "12"), wantOutcome(OutcomePartial))},
		{name: "200 partial body without report_batch_item_failures", handler: reply(200, partialBody), check: wantSuccess(200, partialBody)},
		{name: "200 empty failure list", report: true, handler: reply(200, `{"batchItemFailures":[]}`), check: wantSuccess(200, `{"batchItemFailures":[]}`)},
		{name: "204 with report_batch_item_failures", report: true, handler: reply(204, ""), check: wantSuccess(204, "")},
		{name: "200 invalid JSON fails the whole batch", report: true, handler: reply(200, `{"batchItemFailures":[{"itemIdentifier":`), check: wantWholeBatch},
		{name: "200 unknown itemIdentifier fails the whole batch", report: true, handler: reply(200, `{"batchItemFailures":[{"itemIdentifier":"11"},{"itemIdentifier":"99"}]}`), check: wantWholeBatch},
		{name: "200 null itemIdentifier fails the whole batch", report: true, handler: reply(200, `{"batchItemFailures":[{"itemIdentifier":null}]}`), check: wantWholeBatch},
		{name: "200 empty itemIdentifier fails the whole batch", report: true, handler: reply(200, `{"batchItemFailures":[{"itemIdentifier":""}]}`), check: wantWholeBatch},

		// 429 / 503: throttled.
		{name: "429 without Retry-After", handler: reply(429, "slow down"), check: and(wantThrottled(0, 0), wantOutcome(OutcomeThrottled))},
		{name: "429 Retry-After seconds", handler: reply(429, "", "Retry-After", "7"), check: wantThrottled(7*time.Second, 7*time.Second)},
		{name: "429 Retry-After HTTP date", handler: func(w http.ResponseWriter, r *http.Request) {
			reply(429, "", "Retry-After", time.Now().Add(2*time.Minute).UTC().Format(http.TimeFormat))(w, r)
		}, check: wantThrottled(90*time.Second, 2*time.Minute)}, // the date has whole seconds; the rest is slack for a slow machine
		{name: "429 Retry-After garbage", handler: reply(429, "", "Retry-After", "soon"), check: wantThrottled(0, 0)},
		{name: "429 Retry-After negative", handler: reply(429, "", "Retry-After", "-5"), check: wantThrottled(0, 0)},
		{name: "429 Retry-After huge is capped", handler: reply(429, "", "Retry-After", "99999999999999999999999"), check: wantThrottled(MaxRetryAfter, MaxRetryAfter)},
		{name: "503 throttles", handler: reply(503, "overloaded", "Retry-After", "3"), check: wantThrottled(3*time.Second, 3*time.Second)},

		// 408, 409, other 5xx: function error.
		{name: "408", handler: reply(408, "request timeout\n"), check: and(wantFunctionError(KindStatus, 408, "request timeout"), wantOutcome(OutcomeError))},
		{name: "409", handler: reply(409, "version conflict"), check: wantFunctionError(KindStatus, 409, "version conflict")},
		{name: "500 with a message", handler: reply(500, "\n  boom: nil pointer  \n"), check: and(wantFunctionError(KindStatus, 500, "boom: nil pointer"),
			func(t *testing.T, _ *Response, err error) {
				var fe *FunctionError
				if errors.As(err, &fe) && fe.Message != "boom: nil pointer" {
					t.Errorf("Message = %q, want it trimmed", fe.Message)
				}
			})},
		{name: "500 without a body", handler: reply(500, ""), check: wantFunctionError(KindStatus, 500, "Internal Server Error")},
		{name: "502 long body is capped", handler: reply(502, longMessage), check: and(wantFunctionError(KindStatus, 502, "eee"),
			func(t *testing.T, _ *Response, err error) {
				var fe *FunctionError
				if errors.As(err, &fe) && len(fe.Message) > maxMessageBytes+len("…") {
					t.Errorf("Message is %d bytes, want at most %d", len(fe.Message), maxMessageBytes+len("…"))
				}
			})},
		{name: "504", handler: reply(504, ""), check: wantFunctionError(KindStatus, 504, "Gateway Timeout")},

		// Other 4xx: permanent.
		{name: "400", handler: reply(400, "bad event"), check: and(wantPermanent(400, "bad event"), wantOutcome(OutcomePermanent))},
		{name: "404", handler: reply(404, "no such route"), check: wantPermanent(404, "no such route")},
		{name: "413", handler: reply(413, ""), check: wantPermanent(413, "Request Entity Too Large")},

		// Answers outside the contract: permanent.
		{name: "301 is not followed", handler: redirectTo(301), check: and(wantPermanent(301, "does not follow redirects"), wantPermanent(301, "/moved"), noSecret)},
		{name: "307 is not followed", handler: redirectTo(307), check: wantPermanent(307, "does not follow redirects")},
		{name: "101 switching protocols", handler: hijack(func(c net.Conn) {
			_, _ = io.WriteString(c, "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
			// Keep the switched stream open until the client lets go. Its reads
			// are no longer bound by ctx: a client that read it would hang, and
			// the deadline turns that hang into a failure of the 20s bound below.
			_ = c.SetReadDeadline(time.Now().Add(22 * time.Second))
			_, _ = io.Copy(io.Discard, c)
		}), check: wantPermanent(101, "outside the contract")},

		// Timeouts: function error.
		{name: "timeout from ctx deadline", handler: hang, ctx: withTimeout(200 * time.Millisecond),
			check: and(wantFunctionError(KindTimeout, 0, "no answer within"), wantIs(context.DeadlineExceeded), wantOutcome(OutcomeTimeout))},
		{name: "timeout from config, earlier than ctx deadline", handler: hang, timeout: 200 * time.Millisecond, ctx: withTimeout(25 * time.Second), // a regression fails in 25s, not at the test binary's time-out
			check: wantFunctionError(KindTimeout, 0, "no answer within")},
		{name: "ctx deadline already passed", handler: hang, noCall: true, ctx: withTimeout(-time.Second),
			check: wantFunctionError(KindTimeout, 0, "deadline passed before the request was sent")},

		// Connection errors: function error.
		{name: "connection refused", handler: nil,
			check: and(wantFunctionError(KindConnection, 0, "refused"), wantIs(syscall.ECONNREFUSED), wantOutcome(OutcomeError), noSecret)},
		{name: "connection closed without an answer", handler: hijack(func(net.Conn) {}),
			check: and(wantFunctionError(KindConnection, 0, ""), wantIs(io.EOF), noSecret)},
		{name: "connection reset", handler: hijack(func(c net.Conn) {
			_ = c.(*net.TCPConn).SetLinger(0) // close with RST, not FIN
		}), check: and(wantFunctionError(KindConnection, 0, "reset"), wantIs(syscall.ECONNRESET))},
		{name: "malformed answer", handler: hijack(func(c net.Conn) {
			_, _ = io.WriteString(c, "this is not HTTP\r\n\r\n")
		}), check: wantFunctionError(KindConnection, 0, "malformed")},

		// Cancellation: abandoned, not failed.
		{name: "cancelled ctx", handler: hang, ctx: cancelOnArrival(nil), check: wantAbandoned},
		{name: "cancelled ctx with a cause", handler: hang, ctx: cancelOnArrival(errShutdown), check: and(wantAbandoned, wantIs(errShutdown))},
		{name: "cancelled before the call", handler: hang, noCall: true, ctx: func(*testing.T, <-chan struct{}) context.Context {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			return ctx
		}, check: wantAbandoned},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var (
				calls   atomic.Int32
				arrived = make(chan struct{}, 1) // the first arrival is enough; buffered so that no handler waits on it
				url     string
			)
			if tt.handler != nil {
				srv := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if r.URL.Path == "/invoke" {
						calls.Add(1)
					}
					select {
					case arrived <- struct{}{}:
					default:
					}
					tt.handler(w, r)
				}), nil)
				url = srv.URL
			} else {
				url = "http://" + closedAddr(t)
			}
			f := newTestFunction(t, url, FunctionConfig{Timeout: tt.timeout})
			ctx := guardCtx(t)
			if tt.ctx != nil {
				ctx = tt.ctx(t, arrived)
			}
			req := testRequest()
			req.ReportItemFailures = tt.report

			start := time.Now()
			resp, err := f.Invoke(ctx, req)
			if d := time.Since(start); d > 20*time.Second {
				t.Errorf("Invoke took %s: a deadline or cancellation was not honoured", d)
			}
			tt.check(t, resp, err)

			if tt.handler != nil {
				want := int32(1)
				if tt.noCall {
					want = 0
				}
				if n := calls.Load(); n != want {
					t.Errorf("the function saw %d requests, want %d", n, want)
				}
			}
		})
	}
}

func respLen(r *Response) int {
	if r == nil {
		return -1
	}
	return len(r.Body)
}

// redirectTo answers a redirect to /moved, which would answer 200 if the
// client followed it.
func redirectTo(status int) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if r.URL.Path == "/moved" {
			_, _ = io.WriteString(w, "followed")
			return
		}
		w.Header().Set("Location", "/moved?token="+testSecret)
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "moved")
	}
}

func noSecret(t *testing.T, _ *Response, err error) {
	t.Helper()
	if err != nil && strings.Contains(err.Error(), testSecret) {
		t.Errorf("error %q repeats the URL's secret query", err)
	}
}

// closedAddr returns a loopback address where nothing listens.
func closedAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	return addr
}

func TestHTTPFunctionRequestHeaders(t *testing.T) {
	got := make(chan *http.Request, 1) // one request per invocation, read before the next
	srv := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		got <- r.Clone(context.Background())
	}), nil)
	f := newTestFunction(t, srv.URL, FunctionConfig{Timeout: 7 * time.Second})

	t.Run("every header", func(t *testing.T) {
		req := testRequest()
		req.Attempt = 3
		req.Deadline = time.Date(2030, 1, 2, 3, 4, 5, 678_900_000, time.FixedZone("CET", 3600))
		req.Scope = "tenant-a"
		req.IdempotencyKey = "orders-0-10"
		req.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		req.ContentType = "application/cloudevents+json"
		req.Header = http.Header{
			"Sluice-Source":        {"orders"},
			"Sluice-Event-Time":    {"2030-01-02T01:00:00Z"},
			"X-Multi":              {"a", "b"},
			"sluice-invocation-id": {"spoofed"}, // not canonical, and not sluice's to override
			"Content-Type":         {"text/plain"},
		}
		if _, err := f.Invoke(guardCtx(t), req); err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		r := <-got
		if r.Method != http.MethodPost || r.URL.RequestURI() != "/invoke?code="+testSecret {
			t.Errorf("request %s %s, want POST /invoke?code=...", r.Method, r.URL.RequestURI())
		}
		want := map[string][]string{
			"Sluice-Function":      {"thumb"},
			"Sluice-Invocation-Id": {"inv-1"},
			"Sluice-Attempt":       {"3"},
			"Sluice-Deadline":      {"2030-01-02T02:04:05.678Z"},
			"Sluice-Scope":         {"tenant-a"},
			"Idempotency-Key":      {"orders-0-10"},
			"Traceparent":          {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Content-Type":         {"application/cloudevents+json"},
			"Sluice-Source":        {"orders"},
			"Sluice-Event-Time":    {"2030-01-02T01:00:00Z"},
			"X-Multi":              {"a", "b"},
			"User-Agent":           {"sluice"},
		}
		for k, v := range want {
			if !slices.Equal(r.Header.Values(k), v) {
				t.Errorf("header %s = %q, want %q", k, r.Header.Values(k), v)
			}
		}
		if _, err := time.Parse(time.RFC3339, r.Header.Get("Sluice-Deadline")); err != nil {
			t.Errorf("Sluice-Deadline is not RFC 3339: %v", err)
		}
		for k, v := range req.Header { // indexed by hand: the spoofed key is not canonical
			if k == strings.ToLower("Sluice-Invocation-Id") && (len(v) != 1 || v[0] != "spoofed") || len(req.Header) != 5 {
				t.Errorf("Invoke changed req.Header: %v", req.Header)
			}
		}
	})

	t.Run("optional headers absent, deadline from ctx", func(t *testing.T) {
		deadline := time.Now().Add(5 * time.Second)
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		defer cancel()
		if _, err := f.Invoke(ctx, testRequest()); err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		r := <-got
		for _, k := range []string{"Sluice-Scope", "Idempotency-Key", "Traceparent"} {
			if v, ok := r.Header[k]; ok {
				t.Errorf("header %s = %q, want it absent", k, v)
			}
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type = %q, want application/json", ct)
		}
		if d := r.Header.Get("Sluice-Deadline"); d != formatDeadline(deadline) {
			t.Errorf("Sluice-Deadline = %q, want the ctx deadline %q", d, formatDeadline(deadline))
		}
	})

	t.Run("deadline from the function timeout", func(t *testing.T) {
		before := time.Now()
		if _, err := f.Invoke(context.Background(), testRequest()); err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		after := time.Now()
		r := <-got
		d, err := time.Parse(time.RFC3339, r.Header.Get("Sluice-Deadline"))
		if err != nil {
			t.Fatalf("Sluice-Deadline: %v", err)
		}
		// The header has milliseconds: allow for the one cut off.
		if lo, hi := before.Add(7*time.Second-time.Millisecond), after.Add(7*time.Second); d.Before(lo) || d.After(hi) {
			t.Errorf("Sluice-Deadline = %s, want now + the 7s timeout (%s..%s)", d, lo, hi)
		}
	})
}

func TestHTTPFunctionBodyArrivesUnchanged(t *testing.T) {
	type received struct {
		body          []byte
		contentLength int64
	}
	got := make(chan received, 1) // one request per invocation, read before the next
	srv := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, err := io.ReadAll(r.Body)
		if err != nil {
			w.WriteHeader(500)
			return
		}
		got <- received{b, r.ContentLength}
		w.WriteHeader(204)
	}), nil)
	f := newTestFunction(t, srv.URL, FunctionConfig{})

	random := make([]byte, 1<<20)
	_, _ = rand.Read(random)
	for _, body := range [][]byte{
		nil,
		[]byte(`{"eventSource":"SelfManagedKafka","records":{}}`),
		append([]byte{0, 0xff, 0xfe, '\r', '\n'}, random...), // binary, invalid UTF-8
	} {
		req := testRequest()
		req.Body = body
		if _, err := f.Invoke(guardCtx(t), req); err != nil {
			t.Fatalf("Invoke with a %d-byte body: %v", len(body), err)
		}
		r := <-got
		if !bytes.Equal(r.body, body) || r.contentLength != int64(len(body)) {
			t.Errorf("the function got %d bytes (Content-Length %d), want the %d bytes sent, unchanged", len(r.body), r.contentLength, len(body))
		}
	}
}

// TestHTTPFunctionConcurrentInvocationsNeverWaitForAConnection runs n slow
// invocations at once: the function must see all n in flight together, each
// on its own connection. Then n more reuse those n connections: the pool
// keeps them all (more than http.DefaultTransport's 100 idle connections).
func TestHTTPFunctionConcurrentInvocationsNeverWaitForAConnection(t *testing.T) {
	const n = 128
	var (
		newConns    atomic.Int32
		arrived     = make(chan struct{}, 2*n) // one per request of both rounds: no handler ever blocks on it
		release     = make(chan struct{})
		releaseOnce sync.Once
	)
	srv := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		arrived <- struct{}{}
		select {
		case <-release:
			_, _ = io.WriteString(w, "done")
		case <-r.Context().Done():
		}
	}), func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			newConns.Add(1)
		}
	})
	t.Cleanup(func() { releaseOnce.Do(func() { close(release) }) }) // runs before the server's Close
	var reused atomic.Int32
	f := newTestFunction(t, srv.URL, FunctionConfig{}, WithMaxConns(n), WithConnObserver(func(_ time.Duration, r bool) {
		if r {
			reused.Add(1)
		}
	}))

	// A connection goes back to the idle pool in net/http's read loop,
	// which may run after Invoke returned; round 2 starts only once every
	// connection of round 1 is back (PutIdleConn), so that a starved CPU
	// cannot make the pool look smaller than it is.
	putIdle := make(chan struct{}, 2*n) // one per returned connection of both rounds: the trace never blocks
	traced := httptrace.WithClientTrace(guardCtx(t), &httptrace.ClientTrace{PutIdleConn: func(err error) {
		if err == nil {
			putIdle <- struct{}{}
		}
	}})
	invokeAll := func() <-chan error {
		errs := make(chan error, n) // one per invocation, read after all are done
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := f.Invoke(traced, testRequest())
				errs <- err
			})
		}
		go func() { wg.Wait(); close(errs) }()
		return errs
	}
	checkErrs := func(errs <-chan error) {
		t.Helper()
		for err := range errs {
			if err != nil {
				t.Errorf("Invoke: %v", err)
			}
		}
	}

	// Round 1: the barrier. No handler answers until all n are in.
	errs := invokeAll()
	timeout := time.After(30 * time.Second)
	for i := range n {
		select {
		case <-arrived:
		case <-timeout:
			t.Fatalf("only %d of %d invocations reached the function at once: the others wait for a connection", i, n)
		}
	}
	if got := newConns.Load(); got != n {
		t.Errorf("%d connections for %d concurrent invocations, want %d", got, n, n)
	}
	releaseOnce.Do(func() { close(release) })
	checkErrs(errs)
	for i := range n {
		select {
		case <-putIdle:
		case <-timeout:
			t.Fatalf("only %d of %d connections went back to the idle pool", i, n)
		}
	}

	// Round 2: every connection was kept, so none is dialled.
	checkErrs(invokeAll())
	if got := newConns.Load(); got != n {
		t.Errorf("round 2 opened %d new connections, want 0: the pool dropped idle connections", got-n)
	}
	if got := reused.Load(); got != n {
		t.Errorf("%d invocations reused a pooled connection, want %d (round 2)", got, n)
	}
}

// TestHTTPFunctionReusesOneConnection invokes sequentially, with every kind of
// answer, and checks they all went over one connection: bodies are drained
// and closed whatever the outcome.
func TestHTTPFunctionReusesOneConnection(t *testing.T) {
	answers := []http.HandlerFunc{
		reply(200, "ok"),
		reply(500, strings.Repeat("stack trace line\n", 6000)), // ~100 KiB: past the message cap, within the drain
		reply(429, "throttled", "Retry-After", "1"),
		reply(503, "unavailable"),
		reply(404, "not found"),
		reply(409, "conflict"),
		reply(200, strings.Repeat("r", 1<<20)),
		redirectTo(301),
		reply(200, `{"batchItemFailures":[{"itemIdentifier":"11"}]}`),
		reply(200, "not json"), // whole batch failed, under report_batch_item_failures
		reply(204, ""),
	}
	var (
		newConns atomic.Int32
		remotes  sync.Map // r.RemoteAddr → true
		next     atomic.Int32
	)
	srv := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		remotes.Store(r.RemoteAddr, true)
		answers[int(next.Add(1))-1](w, r)
	}), func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			newConns.Add(1)
		}
	})
	var reusedFlags []bool // appended on the invoking goroutine only
	f := newTestFunction(t, srv.URL, FunctionConfig{}, WithConnObserver(func(_ time.Duration, r bool) {
		reusedFlags = append(reusedFlags, r)
	}))

	for i := range answers {
		req := testRequest()
		req.ReportItemFailures = true
		_, err := f.Invoke(guardCtx(t), req)
		var fe *FunctionError
		if errors.As(err, &fe) && fe.Kind != KindStatus && fe.Kind != KindResponse {
			t.Fatalf("answer %d: %v", i, err)
		}
	}
	n := 0
	remotes.Range(func(any, any) bool { n++; return true })
	if got := newConns.Load(); got != 1 || n != 1 {
		t.Errorf("%d connections (%d client addresses) for %d sequential invocations, want 1", got, n, len(answers))
	}
	want := make([]bool, len(answers))
	for i := 1; i < len(want); i++ {
		want[i] = true
	}
	if !slices.Equal(reusedFlags, want) {
		t.Errorf("connection reused per invocation = %v, want %v", reusedFlags, want)
	}
}

// The Dispatcher closes its functions through either interface.
var (
	_ io.Closer                           = (*HTTPFunction)(nil)
	_ interface{ CloseIdleConnections() } = (*HTTPFunction)(nil)
	_ Handler                             = (*HTTPFunction)(nil)
)

func TestHTTPFunctionCloseClosesIdleConnections(t *testing.T) {
	for name, closeFn := range map[string]func(*HTTPFunction){
		"Close":                func(f *HTTPFunction) { _ = f.Close() },
		"CloseIdleConnections": (*HTTPFunction).CloseIdleConnections,
	} {
		t.Run(name, func(t *testing.T) { testCloseIdle(t, closeFn) })
	}
}

func testCloseIdle(t *testing.T, closeFn func(*HTTPFunction)) {
	var newConns atomic.Int32
	closed := make(chan struct{}, 1) // the test waits for one close; extra ones are dropped
	srv := startServer(t, reply(200, "ok"), func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			newConns.Add(1)
		case http.StateClosed:
			select {
			case closed <- struct{}{}:
			default:
			}
		}
	})
	f := newTestFunction(t, srv.URL, FunctionConfig{})
	if _, err := f.Invoke(guardCtx(t), testRequest()); err != nil {
		t.Fatalf("Invoke: %v", err)
	}
	closeFn(f)
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("the idle connection was not closed")
	}
	if _, err := f.Invoke(guardCtx(t), testRequest()); err != nil {
		t.Fatalf("Invoke after Close: %v", err)
	}
	if got := newConns.Load(); got != 2 {
		t.Errorf("%d connections, want 2 (one before Close, one after)", got)
	}
}

func TestHTTPFunctionWithHTTPClient(t *testing.T) {
	srv := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hang") != "" {
			hang(w, r)
			return
		}
		redirectTo(http.StatusFound)(w, r)
	}), nil)
	client := &http.Client{Timeout: 200 * time.Millisecond}

	f, err := NewHTTPFunction("thumb", FunctionConfig{URL: srv.URL + "/invoke"}, WithHTTPClient(client))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	resp, err := f.Invoke(guardCtx(t), testRequest())
	wantPermanent(http.StatusFound, "does not follow redirects")(t, resp, err)
	if client.CheckRedirect != nil {
		t.Error("NewHTTPFunction changed the caller's client")
	}

	f, err = NewHTTPFunction("thumb", FunctionConfig{URL: srv.URL + "/invoke?hang=1"}, WithHTTPClient(client))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	resp, err = f.Invoke(guardCtx(t), testRequest())
	wantFunctionError(KindTimeout, 0, "Client.Timeout")(t, resp, err) // the client's own timeout, while ctx had a minute left
}

func TestNewHTTPFunctionValidates(t *testing.T) {
	tests := []struct {
		name    string
		cfg     FunctionConfig
		opts    []HTTPOption
		wantKey string // the error must wrap ErrInvalid and name this key; "" for a non-config error
		bad     bool
	}{
		{name: "http", cfg: FunctionConfig{URL: "http://127.0.0.1:8080/invoke"}},
		{name: "https with upper-case scheme", cfg: FunctionConfig{URL: "HTTPS://fn.example.com/x?code=1"}},
		{name: "IPv6 host", cfg: FunctionConfig{URL: "http://[::1]:8080/"}},
		{name: "timeout at the maximum", cfg: FunctionConfig{URL: "http://h/", Timeout: MaxTimeout}},
		{name: "empty URL", cfg: FunctionConfig{}, wantKey: "functions.thumb.url", bad: true},
		{name: "other scheme", cfg: FunctionConfig{URL: "ftp://h/x"}, wantKey: "functions.thumb.url", bad: true},
		{name: "host:port without scheme", cfg: FunctionConfig{URL: "localhost:8080"}, wantKey: "functions.thumb.url", bad: true},
		{name: "path only", cfg: FunctionConfig{URL: "/invoke"}, wantKey: "functions.thumb.url", bad: true},
		{name: "no host", cfg: FunctionConfig{URL: "http:///invoke"}, wantKey: "functions.thumb.url", bad: true},
		{name: "port without host", cfg: FunctionConfig{URL: "http://:8080/invoke"}, wantKey: "functions.thumb.url", bad: true},
		{name: "unparsable", cfg: FunctionConfig{URL: "http://[::1/x"}, wantKey: "functions.thumb.url", bad: true},
		{name: "control character", cfg: FunctionConfig{URL: "http://h/\x7f"}, wantKey: "functions.thumb.url", bad: true},
		{name: "negative timeout", cfg: FunctionConfig{URL: "http://h/", Timeout: -time.Second}, wantKey: "functions.thumb.timeout", bad: true},
		{name: "timeout over 15m", cfg: FunctionConfig{URL: "http://h/", Timeout: MaxTimeout + time.Second}, wantKey: "functions.thumb.timeout", bad: true},
		{name: "WithMaxConns(0)", cfg: FunctionConfig{URL: "http://h/"}, opts: []HTTPOption{WithMaxConns(0)}, bad: true},
		{name: "WithHTTPClient(nil)", cfg: FunctionConfig{URL: "http://h/"}, opts: []HTTPOption{WithHTTPClient(nil)}, bad: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := NewHTTPFunction("thumb", tt.cfg, tt.opts...)
			if !tt.bad {
				if err != nil {
					t.Fatalf("NewHTTPFunction: %v", err)
				}
				_ = f.Close()
				return
			}
			if err == nil {
				t.Fatal("NewHTTPFunction accepted it")
			}
			if tt.wantKey != "" && (!errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tt.wantKey)) {
				t.Errorf("err = %q, want it to wrap ErrInvalid and name %s", err, tt.wantKey)
			}
			if tt.wantKey == "" && !strings.HasPrefix(err.Error(), "dispatch: ") {
				t.Errorf("err = %q, want it to start with \"dispatch: \"", err)
			}
		})
	}

	t.Run("no name", func(t *testing.T) {
		if _, err := NewHTTPFunction("", FunctionConfig{URL: "http://h/"}); !errors.Is(err, ErrInvalid) {
			t.Errorf("err = %v, want ErrInvalid", err)
		}
	})
	t.Run("password not repeated", func(t *testing.T) {
		_, err := NewHTTPFunction("thumb", FunctionConfig{URL: "ftp://user:" + testSecret + "@h/x"})
		if err == nil || strings.Contains(err.Error(), testSecret) {
			t.Errorf("err = %v, want an error without the password", err)
		}
	})
}

func TestHTTPFunctionPoolSize(t *testing.T) {
	reserved := func(n int) *int { return &n }
	tests := []struct {
		name string
		cfg  FunctionConfig
		opts []HTTPOption
		want int
	}{
		{name: "unreserved", want: DefaultAccountConcurrency},
		{name: "reserved", cfg: FunctionConfig{ReservedConcurrency: reserved(50)}, want: 50},
		{name: "reserved 0", cfg: FunctionConfig{ReservedConcurrency: reserved(0)}, want: DefaultAccountConcurrency},
		{name: "WithMaxConns wins", cfg: FunctionConfig{ReservedConcurrency: reserved(50)}, opts: []HTTPOption{WithMaxConns(7)}, want: 7},
		{name: "WithMaxConns over the default", opts: []HTTPOption{WithMaxConns(5000)}, want: 5000},
	}
	dt := http.DefaultTransport.(*http.Transport)
	var seen []*http.Transport
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.URL = "http://h/"
			f, err := NewHTTPFunction("thumb", tt.cfg, tt.opts...)
			if err != nil {
				t.Fatal(err)
			}
			tr := f.transport
			if tr == nil || tr == dt || slices.Contains(seen, tr) {
				t.Fatal("the function has no transport of its own")
			}
			seen = append(seen, tr)
			if tr.MaxIdleConnsPerHost != tt.want || tr.MaxIdleConns != tt.want {
				t.Errorf("MaxIdleConnsPerHost = %d, MaxIdleConns = %d, want %d", tr.MaxIdleConnsPerHost, tr.MaxIdleConns, tt.want)
			}
			if tr.MaxConnsPerHost != 0 && tr.MaxConnsPerHost < tt.want {
				t.Errorf("MaxConnsPerHost = %d: invocations past it would wait for a connection", tr.MaxConnsPerHost)
			}
			if tr.IdleConnTimeout != dt.IdleConnTimeout || tr.TLSHandshakeTimeout != dt.TLSHandshakeTimeout ||
				tr.ForceAttemptHTTP2 != dt.ForceAttemptHTTP2 || tr.Proxy == nil || tr.DialContext == nil {
				t.Error("the transport does not keep http.DefaultTransport's settings")
			}
		})
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"0", 0},
		{"7", 7 * time.Second},
		{" 7 ", 7 * time.Second},
		{"007", 7 * time.Second},
		{"900", MaxRetryAfter},
		{"901", MaxRetryAfter},
		{"99999999999999999999999", MaxRetryAfter}, // overflows int64
		{"-5", 0},
		{"+5", 0},
		{"1.5", 0},
		{"7s", 0},
		{"soon", 0},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(90 * time.Second).Format(time.RFC850), 90 * time.Second},
		{now.Add(90 * time.Second).Format(time.ANSIC), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{now.Format(http.TimeFormat), 0},
		{now.Add(24 * time.Hour).Format(http.TimeFormat), MaxRetryAfter},
		{"Mon, 32 Foo 2030 99:00:00 GMT", 0},
	}
	for _, tt := range tests {
		if got := parseRetryAfter(tt.in, now); got != tt.want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

func TestReadMessage(t *testing.T) {
	msg := func(status int, body string) string {
		return readMessage(&http.Response{StatusCode: status, Body: io.NopCloser(strings.NewReader(body))})
	}
	tests := []struct {
		name, body, want string
	}{
		{"trimmed", "\n\t oops \r\n", "oops"},
		{"empty falls back to the status text", "", "Bad Gateway"},
		{"blank falls back to the status text", " \n ", "Bad Gateway"},
		{"invalid UTF-8 replaced", "a\xffb", "a\uFFFDb"},
		{"capped", strings.Repeat("a", 600), strings.Repeat("a", maxMessageBytes) + "…"},
		// The cap falls inside "é" (2 bytes): the half rune is dropped, not mangled.
		{"rune cut by the cap", strings.Repeat("a", maxMessageBytes-1) + "é tail", strings.Repeat("a", maxMessageBytes-1) + "…"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := msg(http.StatusBadGateway, tt.body)
			if got != tt.want {
				t.Errorf("readMessage(%q) = %q, want %q", tt.body, got, tt.want)
			}
			if !utf8.ValidString(got) {
				t.Errorf("readMessage(%q) = %q is not valid UTF-8", tt.body, got)
			}
		})
	}
}

// ExampleHTTPFunction shows the outcome a 429 answer turns into.
func ExampleHTTPFunction() {
	srv := httptest.NewServer(reply(http.StatusTooManyRequests, "", "Retry-After", "2"))
	defer srv.Close()
	f, err := NewHTTPFunction("thumb", FunctionConfig{URL: srv.URL})
	if err != nil {
		panic(err)
	}
	defer f.Close()
	_, err = f.Invoke(context.Background(), &Request{InvocationID: "inv-1", Attempt: 1, Body: []byte(`{}`)})
	if t, ok := AsThrottled(err); ok {
		fmt.Println(t.Reason, t.RetryAfter)
	}
	// Output: FunctionThrottled 2s
}
