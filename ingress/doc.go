// Package ingress is sluice's HTTP ingress (SPEC §2.3): direct invocations
// of a function over HTTP, beside the broker sources.
//
//	POST /v1/functions/{fn}/invocations
//	POST /v1/scope/{scope}/functions/{fn}/invocations
//
// The Handler reads {fn} and {scope} with Request.PathValue; whoever mounts
// it (the admin API, after checking the invoke role) routes those two
// patterns to it. The package owns the HTTP surface and Queues: invocations go
// through the dispatch.Dispatcher, under the same limits as stream and async
// traffic, and asynchronous events go to an Enqueuer: Queues, which appends
// them to the function's async source (async_queue) through its broker.
//
// # Synchronous invocations fail fast
//
// A synchronous call takes its slots with Dispatcher.TryInvoke: when the
// function's reservation, the unreserved pool or the scope's rule is full it
// is answered 429 at once, with Retry-After and
// {"message": "...", "throttleReason": "<reason>"}, as Lambda answers
// TooManyRequestsException. It never waits in the dispatcher's queues: an
// HTTP caller holds a connection (and often a caller of its own) while it
// waits, and a waiting line of HTTP requests would hide overload from the
// caller that can best react to it. Callers that want to wait send the event
// asynchronously (Sluice-Invocation-Type: Event): it waits in the broker,
// not in sluice's memory. A function that itself answers 429 or 503 is
// reported the same way, with throttleReason FunctionThrottled and its own
// Retry-After.
//
// The function's answer is returned as it is: status, body and
// Content-Type. A function error becomes 502 (or the function's own 4xx
// status for a permanent error, 504 for a time-out) with a JSON
// {"message", "errorType"} body and the header Sluice-Function-Error, so a
// caller can tell an error of the function from one of sluice.
//
// # Asynchronous invocations are durable before 202
//
// With Sluice-Invocation-Type: Event the body is handed to the Enqueuer,
// which returns only once the broker confirmed the write (a JetStream
// publish ack, a Kafka produce acknowledged by all in-sync replicas). Only
// then is 202 answered, with {"id": "..."} and the Sluice-Invocation-Id
// header. If the queue cannot be reached the answer is 503 and nothing is
// claimed: the caller retries. A write that timed out may still have been
// stored, so a retry can deliver the event twice (at-least-once, as
// everywhere in sluice); on JetStream the event's id is its Nats-Msg-Id,
// but a retry gets a new id.
//
// How the event carries a scoped call's scope depends on the async
// source's scope setting; the Enqueuer refuses (400) a scope the source
// cannot carry rather than run the event without its scope's limits.
//
// This package imports dispatch, consumer (the async sources' settings and
// the broker seam that Queues writes through) and shard; it must not import
// cmd, config, retention or the broker client libraries.
package ingress
