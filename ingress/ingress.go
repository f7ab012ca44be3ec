package ingress

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/sluicehq/sluice/dispatch"
)

// The routes the Handler serves; {fn} and {scope} are read with PathValue.
const (
	Pattern       = "POST /v1/functions/{fn}/invocations"
	ScopedPattern = "POST /v1/scope/{scope}/functions/{fn}/invocations"
)

// Headers of the ingress protocol.
const (
	// HeaderInvocationType selects the mode: RequestResponse (the default)
	// or Event, as Lambda's X-Amz-Invocation-Type.
	HeaderInvocationType = "Sluice-Invocation-Type"
	// HeaderInvocationID carries the invocation's id in every answer that
	// has one (the function's, or a queued event's).
	HeaderInvocationID = "Sluice-Invocation-Id"
	// HeaderFunctionError marks an answer that is the function's error, not
	// sluice's, as Lambda's X-Amz-Function-Error: "Handled" for an error
	// status of the function, "Unhandled" for a time-out or an unreachable
	// function.
	HeaderFunctionError = "Sluice-Function-Error"
)

// The invocation types of HeaderInvocationType.
const (
	TypeRequestResponse = "RequestResponse"
	TypeEvent           = "Event"
)

// Limits of the request body.
const (
	// DefaultMaxBodyBytes is the largest synchronous request body, Lambda's
	// 6 MiB synchronous payload limit (the same as the function's answer,
	// dispatch.MaxResponseBytes).
	DefaultMaxBodyBytes = 6 << 20
	// DefaultMaxEventBytes is the largest asynchronous event, Lambda's
	// long-standing 256 KiB async limit: well under the 1 MiB that Kafka
	// (message.max.bytes) and nats-server (max_payload) accept by default,
	// so an accepted size never fails at the broker.
	DefaultMaxEventBytes = 256 << 10
	// DefaultRetryAfter is the Retry-After of a throttle by sluice's own
	// limits, which have no better estimate: a slot frees when some
	// invocation ends.
	DefaultRetryAfter = time.Second
)

// Errors an Enqueuer returns (wrapped) for a request that cannot be queued
// whatever the state of the broker; the Handler answers them 4xx. Any other
// error means the queue could not be reached: 503, nothing accepted.
var (
	// ErrNoQueue: the function has no async_queue.
	ErrNoQueue = errors.New("ingress: function has no async_queue")
	// ErrScopeNotCarried: a scoped event for an async source whose scope
	// setting cannot carry the scope (see the Enqueuer's documentation).
	ErrScopeNotCarried = errors.New("ingress: the async source cannot carry the scope")
)

// Enqueuer durably appends an asynchronous invocation to function's async
// queue and returns the event's id. It returns only once the broker
// confirmed the write; an error means the event may not be stored.
// dispatch.ErrUnknownFunction (wrapped) reports a function that does not
// exist, ErrNoQueue one without async_queue, ErrScopeNotCarried a scope the
// queue cannot carry. header holds the request headers the event keeps:
// Content-Type and Traceparent, when the caller sent them.
type Enqueuer interface {
	Enqueue(ctx context.Context, function, scope string, body []byte, header http.Header) (id string, err error)
}

// Handler serves the ingress routes. It is safe for concurrent use.
type Handler struct {
	d             *dispatch.Dispatcher
	q             Enqueuer
	log           *slog.Logger
	maxBody       int64
	maxEvent      int64
	retryAfter    time.Duration
	enqueueBudget time.Duration
}

// Option configures a Handler.
type Option func(*Handler)

// WithEnqueuer enables asynchronous invocations (default: none, and an
// Event invocation is answered 501).
func WithEnqueuer(q Enqueuer) Option { return func(h *Handler) { h.q = q } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(h *Handler) { h.log = l } }

// WithMaxBodyBytes sets the largest synchronous body (default
// DefaultMaxBodyBytes).
func WithMaxBodyBytes(n int64) Option { return func(h *Handler) { h.maxBody = n } }

// WithMaxEventBytes sets the largest asynchronous event (default
// DefaultMaxEventBytes).
func WithMaxEventBytes(n int64) Option { return func(h *Handler) { h.maxEvent = n } }

// defaultEnqueueBudget bounds one Enqueue, so that a broker that hangs is
// answered 503 rather than holding the caller forever; the writers have
// timeouts of their own, this is the outer bound.
const defaultEnqueueBudget = 30 * time.Second

// New returns a Handler invoking through d.
func New(d *dispatch.Dispatcher, opts ...Option) *Handler {
	h := &Handler{d: d, log: slog.Default(), maxBody: DefaultMaxBodyBytes, maxEvent: DefaultMaxEventBytes,
		retryAfter: DefaultRetryAfter, enqueueBudget: defaultEnqueueBudget}
	for _, o := range opts {
		o(h)
	}
	if h.maxBody <= 0 {
		h.maxBody = DefaultMaxBodyBytes
	}
	if h.maxEvent <= 0 {
		h.maxEvent = DefaultMaxEventBytes
	}
	if h.retryAfter <= 0 {
		h.retryAfter = DefaultRetryAfter
	}
	return h
}

// Register mounts h on mux under Pattern and ScopedPattern, for a server
// without the admin API's router (tests, embedding).
func (h *Handler) Register(mux *http.ServeMux) {
	mux.Handle(Pattern, h)
	mux.Handle(ScopedPattern, h)
}

// errorBody is the JSON of every answer that is not the function's own.
type errorBody struct {
	Message        string `json:"message"`
	ErrorType      string `json:"errorType,omitempty"`
	ThrottleReason string `json:"throttleReason,omitempty"`
	FunctionStatus int    `json:"functionStatus,omitempty"`
}

// ServeHTTP invokes r.PathValue("fn"), scoped to r.PathValue("scope") when
// that is set.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	fn, scope := r.PathValue("fn"), r.PathValue("scope")
	if fn == "" {
		writeJSON(w, http.StatusNotFound, errorBody{Message: "no function in the path (POST /v1/functions/{fn}/invocations)", ErrorType: "ResourceNotFoundException"})
		return
	}
	if scope != "" {
		if err := checkScope(scope); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody{Message: err.Error(), ErrorType: "InvalidParameterValueException"})
			return
		}
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeJSON(w, http.StatusMethodNotAllowed, errorBody{Message: "invocations are POSTed", ErrorType: "MethodNotAllowed"})
		return
	}
	switch typ := r.Header.Get(HeaderInvocationType); typ {
	case "", TypeRequestResponse:
		h.invoke(w, r, fn, scope)
	case TypeEvent:
		h.enqueue(w, r, fn, scope)
	default:
		writeJSON(w, http.StatusBadRequest, errorBody{
			Message:   fmt.Sprintf("%s: %q is not one of %s, %s", HeaderInvocationType, typ, TypeRequestResponse, TypeEvent),
			ErrorType: "InvalidParameterValueException",
		})
	}
}

// MaxScopeBytes bounds a scope in the path: a scope is a name (a tenant, a
// dependency), and it travels as the Sluice-Scope header.
const MaxScopeBytes = dispatch.MaxScopeBytes

// checkScope refuses a scope no rule could name (dispatch.CheckScope, the
// rule patterns' own rule): too long, invalid UTF-8, control characters.
func checkScope(scope string) error {
	if err := dispatch.CheckScope(scope); err != nil {
		return fmt.Errorf("ingress: scope %w", err)
	}
	return nil
}

// readBody reads at most limit bytes of r's body; it answers 413 (or 400)
// itself and returns ok false when the body cannot be used.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err == nil {
		return body, true
	}
	var tooLarge *http.MaxBytesError
	if errors.As(err, &tooLarge) {
		writeJSON(w, http.StatusRequestEntityTooLarge, errorBody{
			Message:   fmt.Sprintf("request body larger than %d bytes", limit),
			ErrorType: "RequestTooLargeException",
		})
		return nil, false
	}
	writeJSON(w, http.StatusBadRequest, errorBody{Message: "reading the request body: " + err.Error(), ErrorType: "InvalidRequestContentException"})
	return nil, false
}

// invoke runs a synchronous invocation: fail fast when throttled (see doc.go).
func (h *Handler) invoke(w http.ResponseWriter, r *http.Request, fn, scope string) {
	body, ok := readBody(w, r, h.maxBody)
	if !ok {
		return
	}
	id := NewID()
	req := &dispatch.Request{
		Function:     fn,
		InvocationID: id,
		Attempt:      1,
		Scope:        scope,
		// A caller's key is kept, so that the function can drop a retried
		// call it already handled; otherwise each call is its own.
		IdempotencyKey: r.Header.Get("Idempotency-Key"),
		TraceParent:    r.Header.Get("Traceparent"),
		ContentType:    r.Header.Get("Content-Type"),
		Body:           body,
	}
	if req.IdempotencyKey == "" {
		req.IdempotencyKey = id
	}
	w.Header().Set(HeaderInvocationID, id)
	resp, err := h.d.TryInvoke(r.Context(), req)
	if err != nil {
		h.invokeError(w, r, fn, err)
		return
	}
	if resp == nil { // an in-process handler may succeed with no answer
		resp = &dispatch.Response{}
	}
	status := resp.Status
	if status == 0 {
		status = http.StatusOK
	}
	ct := resp.Header.Get("Content-Type")
	if ct == "" && len(resp.Body) > 0 {
		ct = "application/octet-stream" // don't let net/http sniff the function's bytes into something else
	}
	if ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.Header().Set("Content-Length", strconv.Itoa(len(resp.Body)))
	w.WriteHeader(status)
	_, _ = w.Write(resp.Body)
}

// invokeError answers a synchronous invocation that did not succeed.
func (h *Handler) invokeError(w http.ResponseWriter, r *http.Request, fn string, err error) {
	var (
		fe *dispatch.FunctionError
		pe *dispatch.PermanentError
		iv *dispatch.InvalidRequestError
	)
	if t, ok := dispatch.AsThrottled(err); ok {
		after := t.RetryAfter
		if after <= 0 {
			after = h.retryAfter
		}
		w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(after.Seconds()))))
		msg := "rate exceeded: " + throttleMessage(fn, t)
		writeJSON(w, http.StatusTooManyRequests, errorBody{Message: msg, ErrorType: "TooManyRequestsException", ThrottleReason: string(t.Reason)})
		return
	}
	switch {
	case errors.Is(err, dispatch.ErrUnknownFunction):
		writeJSON(w, http.StatusNotFound, errorBody{Message: fmt.Sprintf("function %q not found", fn), ErrorType: "ResourceNotFoundException"})
	case errors.Is(err, dispatch.ErrClosed):
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Message: "sluice is shutting down", ErrorType: "ServiceUnavailable"})
	case errors.As(err, &iv):
		// Nothing was sent: the caller's request cannot become one.
		writeJSON(w, http.StatusBadRequest, errorBody{Message: iv.Message, ErrorType: "InvalidRequestContentException"})
	case errors.As(err, &pe):
		// The function refused the request for good (a 4xx): the caller's
		// request is what is wrong, so the caller gets that status.
		status := pe.Status
		if status < 400 || status > 499 {
			status = http.StatusBadGateway // a 1xx or 3xx, outside the contract
		}
		w.Header().Set(HeaderFunctionError, "Handled")
		writeJSON(w, status, errorBody{Message: pe.Message, ErrorType: "FunctionError", FunctionStatus: pe.Status})
	case errors.As(err, &fe):
		status, kind := http.StatusBadGateway, "Handled"
		switch fe.Kind {
		case dispatch.KindTimeout:
			status, kind = http.StatusGatewayTimeout, "Unhandled"
		case dispatch.KindConnection:
			kind = "Unhandled"
		}
		w.Header().Set(HeaderFunctionError, kind)
		writeJSON(w, status, errorBody{Message: fe.Message, ErrorType: "FunctionError", FunctionStatus: fe.Status})
	case r.Context().Err() != nil:
		// The caller went away; nobody reads this answer.
		writeJSON(w, http.StatusServiceUnavailable, errorBody{Message: "request cancelled", ErrorType: "ServiceUnavailable"})
	default:
		h.log.Error("ingress: invocation failed", "function", fn, "error", err)
		writeJSON(w, http.StatusInternalServerError, errorBody{Message: err.Error(), ErrorType: "ServiceException"})
	}
}

// throttleMessage says in words which limit was hit.
func throttleMessage(fn string, t *dispatch.ThrottledError) string {
	switch t.Reason {
	case dispatch.ReasonReserved:
		return fmt.Sprintf("function %s is at its reserved concurrency", fn)
	case dispatch.ReasonAccount:
		return "the account's unreserved concurrency is exhausted"
	case dispatch.ReasonScope:
		return fmt.Sprintf("scope %s is at its rule's concurrency", t.Scope)
	case dispatch.ReasonFunction:
		return fmt.Sprintf("function %s answered that it is throttled", fn)
	default:
		return string(t.Reason)
	}
}

// enqueue appends an asynchronous invocation and answers 202 once it is
// durably stored.
func (h *Handler) enqueue(w http.ResponseWriter, r *http.Request, fn, scope string) {
	if h.q == nil {
		writeJSON(w, http.StatusNotImplemented, errorBody{Message: "asynchronous invocations are not enabled on this sluice", ErrorType: "UnsupportedInvocationType"})
		return
	}
	body, ok := readBody(w, r, h.maxEvent)
	if !ok {
		return
	}
	header := http.Header{}
	for _, k := range []string{"Content-Type", "Traceparent"} {
		if v := r.Header.Get(k); v != "" {
			header.Set(k, v)
		}
	}
	// The write must finish even if the caller goes away mid-way: a half
	// answered request must not leave the caller unsure for longer than
	// the budget, and the broker decides, not the connection.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), h.enqueueBudget)
	defer cancel()
	id, err := h.q.Enqueue(ctx, fn, scope, body, header)
	switch {
	case err == nil:
		w.Header().Set(HeaderInvocationID, id)
		writeJSON(w, http.StatusAccepted, map[string]string{"id": id})
	case errors.Is(err, dispatch.ErrUnknownFunction):
		writeJSON(w, http.StatusNotFound, errorBody{Message: fmt.Sprintf("function %q not found", fn), ErrorType: "ResourceNotFoundException"})
	case errors.Is(err, ErrNoQueue), errors.Is(err, ErrScopeNotCarried):
		writeJSON(w, http.StatusBadRequest, errorBody{Message: err.Error(), ErrorType: "InvalidParameterValueException"})
	default:
		h.log.Warn("ingress: async queue unreachable", "function", fn, "error", err)
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, errorBody{
			Message:   "the event was not accepted (the async queue could not confirm the write; retry): " + err.Error(),
			ErrorType: "ServiceUnavailable",
		})
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil { // only our own plain structs are encoded
		b = []byte(`{"message":"internal error"}`)
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// NewID returns a random invocation id: 128 bits, hex.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}
