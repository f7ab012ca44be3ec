// Package admin is sluice's admin HTTP API (SPEC §6): the account, function
// concurrency, rules, limits, shards and queues endpoints under /v1, bearer
// token auth with the roles read / invoke / admin, the open /metrics,
// /healthz and /readyz, and the mount point of the HTTP ingress.
//
// It owns the Book: the live limits as the configuration file gives them
// with the changes made through the API on top, applied to the
// dispatch.Limits engine at once and kept by a Store so that they survive a
// restart. The local Store is FileStore, state_dir/limits.json; a shared one
// (for limits shared by several processes) is given with WithStore, next to
// a shared dispatch.Limits engine, and the Book works the same over both;
// Book.Refresh reads a shared Store again when another process changed it.
// GET /v1/cluster shows what Options.Cluster returns (cluster mode).
// A reload of the configuration (SIGHUP) replaces the configuration layer
// and keeps the API layer on top.
//
// It imports dispatch (the Limits it changes) and shard (the statuses it
// shows). It must not import cmd, config, consumer or a broker client: cmd
// hands it the shard statuses, the readiness check, the tokens and the
// ingress handler.
package admin
