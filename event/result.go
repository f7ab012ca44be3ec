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
)

// ErrorInfo describes the last failure of a record, as a dead letter's
// lastError carries it.
type ErrorInfo struct {
	Kind    string `json:"kind"`             // status, timeout, connection, response, handler, throttled, ...
	Status  int    `json:"status,omitempty"` // HTTP status, when there was one
	Message string `json:"message"`
}

// Result is what a Deliverer reports for one delivery.
type Result struct {
	Outcome    Outcome
	Reason     string        // Throttled: the throttle reason of SPEC §2
	RetryAfter time.Duration // Throttled: wait at least this long before retrying
	FailedFrom int           // Partial: index in the batch of the lowest failed record
	Error      ErrorInfo     // Failed, Permanent, Partial, Throttled: what went wrong
}
