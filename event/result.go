package event

import "time"

// Outcome is how a delivery of a batch or an event ended.
type Outcome int

// The delivery outcomes, as the shard engine and the async sources act on
// them.
const (
	Delivered Outcome = iota // every record was handled
	Throttled                // not run, or the function answered 429/503: retry the same batch, no attempt consumed
	Failed                   // function error: consumes an attempt; retry, bisect, or dead-letter when exhausted
	Permanent                // retrying cannot help: dead-letter with PermanentError
	Partial                  // records before FailedFrom were handled; the rest failed (consumes an attempt)
	// Invalid: no invocation can be built from the records (a header
	// value HTTP cannot carry even encoded, a body that cannot be
	// encoded): dead-letter with InvalidRecord; a batch is bisected first
	// so that only the unusable record goes.
	Invalid
)

// ErrorKind classifies a failure, as a dead letter's lastError.kind names
// it.
type ErrorKind string

// The error kinds.
const (
	KindStatus     ErrorKind = "status"     // the function answered an error status
	KindTimeout    ErrorKind = "timeout"    // no answer within the function's timeout
	KindConnection ErrorKind = "connection" // the function could not be reached
	KindResponse   ErrorKind = "response"   // the answer could not be read or made no sense
	KindHandler    ErrorKind = "handler"    // an in-process handler failed
	KindThrottled  ErrorKind = "throttled"  // not run: no slot, or the function answered 429/503
	KindPartial    ErrorKind = "partial"    // some items of the batch failed
	KindEncode     ErrorKind = "encode"     // the request body could not be built
	KindInvalid    ErrorKind = "invalid"    // the request could not be built from the record (headers, URL)
	// KindCancelled: the delivery was cut short by its caller (shutdown,
	// revoke) or the dispatcher closing; nothing ran, so it consumes no
	// attempt, and it never hides an earlier real error.
	KindCancelled ErrorKind = "cancelled"
)

// ErrorInfo describes the last failure of a record, as a dead letter's
// lastError carries it.
type ErrorInfo struct {
	Kind    ErrorKind `json:"kind"`
	Status  int       `json:"status,omitempty"` // HTTP status, when there was one
	Message string    `json:"message"`
}

// Result is what a Deliverer reports for one delivery.
type Result struct {
	Outcome    Outcome
	Reason     string        // Throttled: the throttle reason of SPEC §2
	RetryAfter time.Duration // Throttled: wait at least this long before retrying
	FailedFrom int           // Partial: index in the batch of the lowest failed record
	Error      ErrorInfo     // Failed, Permanent, Partial, Throttled: what went wrong
}
