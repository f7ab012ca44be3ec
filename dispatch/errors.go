package dispatch

import (
	"errors"
	"fmt"
	"time"
)

// ErrClosed is returned by a Dispatcher or Limiter that has been closed.
var ErrClosed = errors.New("dispatch: closed")

// Reason says why an invocation was throttled. The four values are those of
// SPEC §2 and appear in errors, metrics and logs.
type Reason string

// The throttle reasons.
const (
	// ReasonAccount: the unreserved pool (or the account limit) is full.
	ReasonAccount Reason = "ConcurrentInvocationLimitExceeded"
	// ReasonReserved: the function is at its reserved concurrency (including 0).
	ReasonReserved Reason = "ReservedFunctionConcurrentInvocationLimitExceeded"
	// ReasonScope: the rule matching the invocation's scope is full.
	ReasonScope Reason = "ScopeConcurrencyLimitExceeded"
	// ReasonFunction: the function itself answered 429 or 503.
	ReasonFunction Reason = "FunctionThrottled"
)

// ThrottledError says an invocation did not run, or ran and was refused by the
// function with 429/503. A throttle never consumes a retry attempt.
type ThrottledError struct {
	Reason Reason
	// RetryAfter is how long the caller should wait at least; zero when the
	// function gave no Retry-After or the throttle is sluice's own.
	RetryAfter time.Duration
	// Scope is the scope whose rule was full, for ReasonScope.
	Scope string
	// Status is the function's HTTP answer (429 or 503) for ReasonFunction
	// from an HTTP function; 0 otherwise. Dead letters record it.
	Status int
}

func (e *ThrottledError) Error() string {
	s := "dispatch: throttled: " + string(e.Reason)
	if e.Scope != "" {
		s += " (scope " + e.Scope + ")"
	}
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(", retry after %s", e.RetryAfter)
	}
	return s
}

// ErrorKind classifies a function error.
type ErrorKind string

// The function error kinds, as they appear in dead letters' lastError.kind.
const (
	KindStatus     ErrorKind = "status"     // an error status code (408, 409, 5xx)
	KindTimeout    ErrorKind = "timeout"    // no answer within the function's timeout
	KindConnection ErrorKind = "connection" // the request could not be sent or the answer read
	KindResponse   ErrorKind = "response"   // an answer sluice could not understand (e.g. a bad partial-batch body)
	KindHandler    ErrorKind = "handler"    // an in-process handler returned an error
)

// FunctionError is a failed invocation that may succeed if retried: it
// consumes an attempt.
type FunctionError struct {
	Kind    ErrorKind
	Status  int // HTTP status, when there was one
	Message string
	Err     error // the underlying error, if any
}

func (e *FunctionError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("dispatch: function error (%s %d): %s", e.Kind, e.Status, e.Message)
	}
	return fmt.Sprintf("dispatch: function error (%s): %s", e.Kind, e.Message)
}

func (e *FunctionError) Unwrap() error { return e.Err }

// PermanentError is a failure that retrying cannot fix (an HTTP 4xx other than
// 408, 409 and 429): the records are dead-lettered with PermanentError at once.
type PermanentError struct {
	Status  int
	Message string
}

func (e *PermanentError) Error() string {
	return fmt.Sprintf("dispatch: permanent error (status %d): %s", e.Status, e.Message)
}

// InvalidRequestError says no invocation could be built from the request's
// records: a header value HTTP cannot carry even after sluice's encodings
// (see headers.go), a body that could not be encoded. Retrying cannot help,
// and nothing was sent: the records are dead-lettered with InvalidRecord.
type InvalidRequestError struct {
	Message string
}

func (e *InvalidRequestError) Error() string {
	return "dispatch: invalid request: " + e.Message
}

// PartialBatchError reports that some items of a batch failed
// (report_batch_item_failures). Failed holds the failed item identifiers in
// batch order, so Failed[0] is the lowest: the checkpoint moves to just before
// it and everything from it on is retried.
type PartialBatchError struct {
	Failed []string
}

func (e *PartialBatchError) Error() string {
	if len(e.Failed) == 0 {
		return "dispatch: batch items failed"
	}
	return fmt.Sprintf("dispatch: %d batch items failed, first %s", len(e.Failed), e.Failed[0])
}

// AsThrottled returns the *ThrottledError in err's chain, if any.
func AsThrottled(err error) (*ThrottledError, bool) {
	var t *ThrottledError
	ok := errors.As(err, &t)
	return t, ok
}

// IsThrottled reports whether err is a throttle (sluice's own or the function's).
func IsThrottled(err error) bool {
	_, ok := AsThrottled(err)
	return ok
}

// IsPermanent reports whether err is a failure that must not be retried:
// a *PermanentError or an *InvalidRequestError.
func IsPermanent(err error) bool {
	var (
		p  *PermanentError
		iv *InvalidRequestError
	)
	return errors.As(err, &p) || errors.As(err, &iv)
}

// Outcome is the label value of sluice_invocations_total{outcome}.
type Outcome string

// The invocation outcomes.
const (
	OutcomeSuccess   Outcome = "success"
	OutcomePartial   Outcome = "partial"
	OutcomeThrottled Outcome = "throttled"
	OutcomeError     Outcome = "error"
	OutcomeTimeout   Outcome = "timeout"
	OutcomePermanent Outcome = "permanent"
)

// OutcomeOf maps an invocation's error to its outcome.
func OutcomeOf(err error) Outcome {
	if err == nil {
		return OutcomeSuccess
	}
	var (
		p  *PartialBatchError
		fe *FunctionError
	)
	switch {
	case errors.As(err, &p):
		return OutcomePartial
	case IsThrottled(err):
		return OutcomeThrottled
	case IsPermanent(err):
		return OutcomePermanent
	case errors.As(err, &fe) && fe.Kind == KindTimeout:
		return OutcomeTimeout
	default:
		return OutcomeError
	}
}
