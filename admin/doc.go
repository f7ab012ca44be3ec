// Package admin is sluice's admin HTTP API (SPEC §6): the account, function
// concurrency, rules, limits, shards and queues endpoints under /v1, bearer
// token auth with the roles read / invoke / admin, the open /metrics,
// /healthz and /readyz, and the mount point of the HTTP ingress.
//
// It owns the Book: the live limits as the configuration file gives them
// with the changes made through the API on top, applied to the
// dispatch.Limiter at once and kept in state_dir/limits.json so that they
// survive a restart (a change is appended to state_dir/limits.journal; the
// file is rewritten when the journal outgrows it: journal.go). A reload of
// the configuration (SIGHUP) replaces the configuration layer and keeps the
// API layer on top.
//
// Harden (harden.go) wraps the API with its defences against web pages
// that use a browser as a proxy: the Host, Origin and Content-Type rules of
// /v1. The time limits and the connection cap are the http.Server's (cmd).
//
// It imports dispatch (the Limiter it changes) and shard (the statuses it
// shows). It must not import cmd, config, consumer or a broker client: cmd
// hands it the shard statuses, the readiness check, the tokens and the
// ingress handler.
package admin
