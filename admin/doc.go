// Package admin is sluice's admin HTTP API (SPEC §6): the account, function
// concurrency, rules, limits, shards, queues and dead-letter-count endpoints
// under /v1, bearer token auth with the roles read / invoke / admin, the
// open /metrics, /healthz and /readyz, the mount point of the HTTP ingress,
// and the status page under /ui/ (ui.go: static files embedded from ui/,
// holding no data; the page reads /v1 with the token typed into it). The
// API is described by an OpenAPI 3 document (openapi.json, the OpenAPI
// variable), served at GET /v1/openapi.json; its test calls every operation
// it lists against the real handlers and checks that every route is listed.
//
// It owns the Book: the live limits as the configuration file gives them
// with the changes made through the API on top, applied to the
// dispatch.Limits engine at once and kept by a Store so that they survive a
// restart. The local Store is FileStore, state_dir/limits.json (a change is
// appended to state_dir/limits.journal; the file is rewritten when the
// journal outgrows it: journal.go); a shared one (for limits shared by
// several processes) is given with WithStore, next to a shared
// dispatch.Limits engine, and the Book works the same over both;
// Book.Refresh reads a shared Store again when another process changed it.
// GET /v1/cluster shows what Options.Cluster returns (cluster mode). A
// reload of the configuration (SIGHUP) replaces the configuration layer and
// keeps the API layer on top.
//
// Harden (harden.go) wraps the API with its defences against web pages
// that use a browser as a proxy: the Host, Origin and Content-Type rules of
// /v1. The time limits and the connection cap are the http.Server's (cmd).
//
// It imports dispatch (the Limits it changes) and shard (the statuses it
// shows). It must not import cmd, config, consumer or a broker client: cmd
// hands it the shard statuses and lags, the dead-letter counts, the
// readiness check, the tokens and the ingress handler.
package admin
