package shard

import (
	"context"
	"time"
)

// This file is the contract between the shard engine (Worker), the sources
// that feed it (consumer/kafka, consumer/nats), the dispatcher that invokes
// functions for it (dispatch.StreamDeliverer) and the dead-letter store
// (retention). Everything here is broker-neutral.

// Outcome is how a delivery of a batch ended.
type Outcome int

// The delivery outcomes, as the engine acts on them.
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

// Delivery is one invocation of a function with a batch.
type Delivery struct {
	Shard   ID
	Records []Record
	Attempt int // 1 for the first function attempt; throttled tries do not count
	// WaitUntil, if not zero, bounds the wait for a concurrency slot (the
	// engine passes the expiry of the batch's oldest record): past it the
	// Result is Throttled and the engine dead-letters the expired records.
	// It never bounds the invocation itself: once started, an invocation
	// runs to its answer or the function's timeout, however old its records
	// grow meanwhile.
	WaitUntil time.Time
	// OnWait, if not nil, is called once when the invocation must wait for a
	// concurrency slot, with the throttle reason; the shard shows as
	// throttled meanwhile.
	OnWait func(reason string)
}

// Deliverer invokes the source's function with a batch and says how it went.
// It blocks while the invocation waits for a concurrency slot, at most until
// Delivery.WaitUntil. ctx is the shard's lifetime: when it ends (shutdown,
// revoke) the wait or the invocation is cut short, and the Result does not
// count (the engine abandons the batch). When the wait ends at WaitUntil,
// the Result is Throttled.
type Deliverer interface {
	Deliver(ctx context.Context, d Delivery) Result
}

// Condition is why a record was dead-lettered (SPEC §2, §4).
type Condition string

// The dead-letter conditions.
const (
	RetryAttemptsExhausted Condition = "RetryAttemptsExhausted"
	RecordAgeExceeded      Condition = "RecordAgeExceeded"
	EventAgeExceeded       Condition = "EventAgeExceeded"
	PermanentError         Condition = "PermanentError"
	RecordTooLarge         Condition = "RecordTooLarge"
)

// DeadLetter is one record that could not be delivered, with why.
type DeadLetter struct {
	Source         string
	Function       string
	Mode           string // stream or async
	Condition      Condition
	Attempts       int // function attempts made (throttles not counted)
	FirstAttemptAt time.Time
	LastAttemptAt  time.Time
	LastError      ErrorInfo
	Record         Record
}

// DeadLetterer durably stores dead letters. DeadLetter returns nil only when
// every letter is stored (e.g. acknowledged by the broker): the engine moves
// the shard's checkpoint past the records only then. On error the engine
// blocks the shard and retries the same letters.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, letters []DeadLetter) error
}
