package event

import (
	"context"
	"time"
)

// Condition is why a record was dead-lettered (SPEC §2, §4).
type Condition string

// The dead-letter conditions.
const (
	RetryAttemptsExhausted Condition = "RetryAttemptsExhausted"
	RecordAgeExceeded      Condition = "RecordAgeExceeded"
	EventAgeExceeded       Condition = "EventAgeExceeded"
	PermanentError         Condition = "PermanentError"
	RecordTooLarge         Condition = "RecordTooLarge"
	// InvalidRecord: no invocation can be built from the record (see
	// Invalid); retrying cannot change it.
	InvalidRecord Condition = "InvalidRecord"
	// RetryTooLarge: an async event could not be kept for its next attempt
	// (a Kafka retry topic, a JetStream redelivery) because the event is
	// larger than that place accepts.
	RetryTooLarge Condition = "RetryTooLarge"
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
	// Keep, when not nil, makes Record retrievable by its coordinates
	// after the source settles it, for a source that would otherwise delete
	// it (a JetStream work queue). A store calls it, and fails the write if
	// it fails, before it writes a letter without the record's payload, so
	// that the payload is never lost.
	Keep func(ctx context.Context) error
}

// DeadLetterer durably stores dead letters. DeadLetter returns nil only when
// every letter is stored (e.g. acknowledged by the broker): the engine moves
// the shard's checkpoint past the records only then. On error the engine
// blocks the shard and retries the same letters.
type DeadLetterer interface {
	DeadLetter(ctx context.Context, letters []DeadLetter) error
}
