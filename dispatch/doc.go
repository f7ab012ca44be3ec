// Package dispatch is the heart of sluice: it decides which invocation may run
// now, under limits that behave like AWS Lambda's (account limit, reserved and
// unreserved concurrency) and like Restate's rule book (per-scope limits with a
// "*" default), and it invokes functions, over HTTP or in process.
//
// It owns the Limits interface (acquire, try-acquire, release through a
// Lease, live changes, snapshots) and its local implementation, the Limiter
// (slots, waiters, fairness, leases), the Dispatcher (a Limits engine +
// functions + metrics + one OpenTelemetry span per invocation when given a
// tracer, see WithTracer), the Handler interface with its typed outcomes,
// and the HTTP function client with its configured headers and TLS
// (secure.go: which headers are sluice's own and cannot be configured, and
// RedactURL, used wherever a URL is shown). It hands sources a way to invoke a function
// and learn the outcome; it must not import consumer, retention, config or
// cmd. Of sluice it imports shard only; of OpenTelemetry only the trace API
// (the SDK and exporter are package telemetry's, wired by cmd).
//
// The stream deliverer encodes a batch into a pooled buffer when the
// source's encoder can append (event.AppendEncoder; body.go): the buffer
// goes back to the pool once the invocation returned and net/http closed
// every request body reading it (each holds a reference). An in-process
// Handler that keeps Request.Body past its Invoke must copy it.
//
// It builds every request from records (headers.go): a scope HTTP cannot
// carry unchanged goes percent-encoded with Sluice-Scope-Encoding, a
// malformed traceparent is dropped, and what net/http would still refuse is
// an InvalidRequestError (the record's outcome Invalid, dead-lettered as
// InvalidRecord), never a connection error. CheckScope is the one validity
// rule of rule patterns and ingress scopes. Every failed invocation is
// logged at Warn, rate-limited per shard (internal/lograte).
//
// Limits is the seam for limits shared by several sluice processes: a
// cluster-wide engine implements Limits (its Leases are grants of a remote
// book, with the engine's own expiry) and is given to New with WithLimits;
// the admin API, the metrics and cmd only ever see Limits, so nothing else
// changes. Such an engine keeps the contract written on Limits, in
// particular all-or-nothing grants and waking waiters on release, live
// change and expiry. The cluster engine (package cluster) runs a local
// Limiter on its process's shares and sets them with Limiter.Replace.
//
// A slot is released when its invocation ends, except when the caller gave
// up while it was in flight (a revoked partition, a shutdown: its ctx was
// cancelled): the function may still be running the request, so the slot
// stays held until the invocation's deadline (its start plus the
// function's timeout).
package dispatch
