// Package dispatch is the heart of sluice: it decides which invocation may run
// now, under limits that behave like AWS Lambda's (account limit, reserved and
// unreserved concurrency) and like Restate's rule book (per-scope limits with a
// "*" default), and it invokes functions, over HTTP or in process.
//
// It owns the Limiter (slots, waiters, fairness, leases), the Dispatcher
// (limiter + functions + metrics), the Handler interface with its typed
// outcomes, and the HTTP function client with its configured headers and TLS
// (secure.go: which headers are sluice's own and cannot be configured, and
// RedactURL, used wherever a URL is shown). It hands sources a way to invoke a
// function and learn the outcome; it must not import consumer, retention,
// config or cmd. It imports shard only.
package dispatch
