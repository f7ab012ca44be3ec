#!/usr/bin/env bash
# with-brokers.sh CMD [ARGS...]
#
# Runs CMD against real brokers started just for it: a single-node Apache
# Kafka (KRaft) and a nats-server with JetStream, both on free loopback ports,
# with fresh data. Installs what is missing first (see up.sh: Kafka jars via
# Maven, nats-server via go install; needs java 17+, mvn, go). CMD sees
#
#   SLUICE_TEST_KAFKA=127.0.0.1:<port>
#   SLUICE_TEST_NATS=nats://127.0.0.1:<port>
#   SLUICE_TEST_NATS_MONITOR=http://127.0.0.1:<port>
#   SLUICE_TEST_NATS_SERVER_BIN=<abs path of the nats-server binary>
#   SLUICE_TEST_BROKERS_DIR=<run dir>   (up.sh/down.sh RUN_DIR kafka|nats restart one)
#
# With SLUICE_BROKERS_SECURE=1 it also starts the secured Kafka (up.sh's
# kafka-secure) and CMD sees SLUICE_TEST_KAFKA_SASL, _MTLS, _SECURE_INTERNAL,
# _PKI and _PASSWORD_FILE (integration/secure_kafka_test.go uses them).
#
# Both brokers are stopped afterwards (SIGTERM, SIGKILL after 15 s), also when
# CMD fails or the script is interrupted, and the script exits with CMD's
# status. The run dir is removed after a successful run and kept (its path is
# printed) after a failed one, for the broker logs; SLUICE_KEEP_BROKERS_DIR=1
# always keeps it. SLUICE_BROKERS_RUN_DIR picks the run dir (default: a new
# temporary directory); a run dir named that way is never removed.
#
#   scripts/brokers/with-brokers.sh go test -race -count=1 ./integration/...
#   scripts/brokers/with-brokers.sh make vet test-race integration   # = make test-all
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [[ $# -eq 0 ]]; then
	echo "usage: $0 CMD [ARGS...]   (runs CMD with SLUICE_TEST_KAFKA/SLUICE_TEST_NATS set to fresh brokers)" >&2
	exit 2
fi

keep=${SLUICE_KEEP_BROKERS_DIR:-}
if [[ -n ${SLUICE_BROKERS_RUN_DIR:-} ]]; then
	mkdir -p "$SLUICE_BROKERS_RUN_DIR"
	run_dir=$(cd "$SLUICE_BROKERS_RUN_DIR" && pwd)
	keep=1 # not ours to delete
else
	run_dir=$(mktemp -d "${TMPDIR:-/tmp}/sluice-brokers.XXXXXX")
fi

# shellcheck disable=SC2317 # runs from the EXIT trap
cleanup() {
	local status=$?
	trap - EXIT INT TERM HUP
	if ! "$here/down.sh" "$run_dir" && [[ $status == 0 ]]; then
		status=1 # a broker that would not stop is a failure too
	fi
	if [[ $status == 0 && -z $keep ]]; then
		rm -rf "$run_dir"
	else
		echo "brokers: logs kept in $run_dir (kafka/server.log, nats/nats.log)" >&2
	fi
	exit "$status"
}
trap cleanup EXIT
# Make the EXIT trap run (and report the signal's status) on interruption.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

"$here/up.sh" "$run_dir"
# shellcheck source=/dev/null
. "$run_dir/env"
echo "brokers: running: $*" >&2

set +e
"$@"
status=$?
set -e
exit "$status"
