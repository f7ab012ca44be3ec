// Package config loads sluice's operator configuration (SPEC §5) and checks
// it. It is the only package that imports koanf: the sections are the
// structs of the packages that own them (dispatch.AccountConfig,
// dispatch.FunctionConfig, dispatch.Rule, consumer.BrokerConfig,
// consumer.SourceConfig, retention.Config), with `koanf` tags and their own
// defaults and Validate; this package decodes into them and checks what no
// single package can see: references between sections.
//
// # Sources, lowest precedence first
//
//  1. Defaults: Default, and each package's defaults for a new entry (a
//     source's defaults depend on its mode).
//  2. Files given with -c, in order: YAML (.yaml, .yml; .json too, as YAML)
//     or TOML (.toml); a directory or a name without extension is refused. Relative paths inside a file (state_dir, admin token
//     files, broker, admin and function tls files, header value files) are
//     relative to that file's directory.
//  3. Environment variables SLUICE_<KEY> (see below).
//  4. Flags added by RegisterFlags: --state-dir, --admin-listen, then
//     --set KEY=VALUE (repeatable) for any key, written as in messages
//     (--set sources.orders.batch_size=200).
//
// # Environment
//
// <KEY> is the key path with "__" (two underscores) between levels; a single
// underscore is part of a key, and case does not matter:
//
//	SLUICE_ACCOUNT__CONCURRENCY=500                  account.concurrency
//	SLUICE_ACCOUNT__MIN_UNRESERVED=50                account.min_unreserved
//	SLUICE_STATE_DIR=/var/lib/sluice                 state_dir
//	SLUICE_SOURCES__ORDERS__BATCH_SIZE=200           sources.orders.batch_size
//	SLUICE_SOURCES__ORDERS__RETRY_BACKOFF__MAX=1m    sources.orders.retry_backoff.max
//	SLUICE_BROKERS__MAIN__KAFKA__SEEDS=a:9092,b:9092 a list of strings, comma-separated
//	SLUICE_DEAD_LETTERS__DEAD_BUS__RETENTION=72h     dead_letters.dead-bus.retention
//
// A name matches an entry already defined case-insensitively and with "_"
// standing for "-" (DEAD_BUS reaches dead-bus). Items of a list of mappings
// (rules, admin.tokens) cannot be set one by one: write them in a file.
// Variables whose first level is not a top-level key are not overrides and
// are left alone (SLUICE_READ_TOKEN may hold an admin token), except those
// that look meant as a key: a name that only lacks a second underscore
// (SLUICE_ACCOUNT_CONCURRENCY), a first level one or two letters from a
// top-level key (SLUICE_SOURCE__ORDERS__BATCH_SIZE), or an entry one or two
// letters from an existing one (SLUICE_SOURCES__ORDRES__BATCH_SIZE). Those
// match no key: Load fails naming the variable and the closest key, or, with
// WarnUnknownEnv (sluice run), passes a warning and ignores the variable. A
// problem of an entry a variable brought into being names that variable.
//
// Values from the environment and flags are strings and are converted to
// the key's type. Durations use Go syntax ("90s", "1h30m"); settings that
// may be unlimited (max_record_age, retention) also take -1. Sizes take an
// integer with an optional unit: B, KB, MB, GB, TB (powers of 1000) or KiB,
// MiB, GiB, TiB (powers of 1024).
//
// # Errors
//
// Load and Validate collect every problem rather than stopping at the first,
// and return them as an *Error (matching ErrInvalid), sorted by key, each
// naming its key and what is allowed:
//
//	sources.orders.batchsize: unknown key; did you mean batch_size? (allowed: batch_size, ...)
//	sources.orders.max_record_age: 30s is out of range (-1 or 60s..168h)
//	sources.orders.function: undefined function "thumbnial" (defined: thumbnail)
//
// # Secrets
//
// Secrets are never in a Config, only where they are kept: a file or an
// environment variable (admin tokens, function header values, private
// keys). ReadSecretFile reads such a file, at most 64 KiB; Validate reads
// them all, so a missing one is a problem naming its key; SecretFiles and
// WorldReadableSecrets let the caller warn about files others may read;
// LoadServerTLS and LoadClientTLS build TLS settings whose certificate
// Reload re-reads (SIGHUP). YAML (config show) prints a Redacted copy: URL
// passwords and query values replaced.
package config
