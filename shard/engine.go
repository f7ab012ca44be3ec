package shard

import (
	"context"
	"time"

	"github.com/sluicehq/sluice/event"
)

// This file is the contract between the shard engine (Worker) and the
// dispatcher that invokes functions for it (dispatch.StreamDeliverer); the
// records, results and dead letters they exchange are package event's.
// Everything here is broker-neutral.

// Delivery is one invocation of a function with a batch.
type Delivery struct {
	Shard   ID
	Records []event.Record
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
	Deliver(ctx context.Context, d Delivery) event.Result
}
