// Package dispatch is the heart of sluice: it decides which invocation may run
// now, under limits that behave like AWS Lambda's (account limit, reserved and
// unreserved concurrency) and like Restate's rule book (per-scope limits with a
// "*" default), and it invokes functions, over HTTP or in process.
//
// It owns the Limiter (slots, waiters, fairness, leases), the Dispatcher
// (limiter + functions + metrics + one OpenTelemetry span per invocation
// when given a tracer, see WithTracer), the Handler interface with its typed
// outcomes, and the HTTP function client. It hands sources a way to invoke a
// function and learn the outcome; it must not import consumer, retention,
// config or cmd. Of sluice it imports shard only; of OpenTelemetry only the
// trace API (the SDK and exporter are package telemetry's, wired by cmd).
package dispatch
