#!/usr/bin/env bash
# down.sh RUN_DIR [kafka] [nats] [kafka-secure]
#
# Stops the brokers that up.sh started in RUN_DIR (all when none is named):
# SIGTERM, then SIGKILL if the process is still there after 15 s
# (SLUICE_BROKER_STOP_TIMEOUT seconds). Only the pid recorded in RUN_DIR is
# signalled, and only if its command line is still that broker's, so a
# recycled pid is never hit. Data and logs stay in RUN_DIR, so up.sh can start
# the broker again on the same ports and data. Succeeds when a broker is not
# running (already stopped, or killed by a test).
set -euo pipefail

log() { echo "brokers: $*" >&2; }

# proc_alive PID PATTERN: PID runs (not a zombie) and its command line
# contains PATTERN.
proc_alive() {
	kill -0 "$1" 2>/dev/null || return 1
	[[ $(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$1/stat" 2>/dev/null) != Z ]] || return 1
	tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# stop NAME PIDFILE PATTERN LOG
stop() {
	local name=$1 pidfile=$2 pattern=$3 logfile=$4 pid t
	[[ -f $pidfile ]] || return 0
	pid=$(cat "$pidfile")
	rm -f "$pidfile"
	if [[ -z $pid ]] || ! proc_alive "$pid" "$pattern"; then
		log "$name (pid ${pid:-?}) had already exited; its log: $logfile"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	local limit=$((${SLUICE_BROKER_STOP_TIMEOUT:-15} * 10))
	for ((t = 0; t < limit; t++)); do
		proc_alive "$pid" "$pattern" || {
			log "$name stopped (pid $pid)"
			return 0
		}
		sleep 0.1
	done
	log "$name (pid $pid) still running $((limit / 10)) s after SIGTERM; sending SIGKILL"
	kill -KILL "$pid" 2>/dev/null || true
	for ((t = 0; t < 50; t++)); do
		proc_alive "$pid" "$pattern" || return 0
		sleep 0.1
	done
	log "$name (pid $pid) survived SIGKILL"
	return 1
}

if [[ $# -lt 1 ]]; then
	echo "usage: $0 RUN_DIR [kafka] [nats]" >&2
	exit 2
fi
run_dir=$1
shift
[[ -d $run_dir ]] || exit 0
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(nats kafka kafka-secure)

status=0
for c in "${components[@]}"; do
	case $c in
	kafka) stop Kafka "$run_dir/kafka/pid" "$run_dir/kafka/server.properties" "$run_dir/kafka/server.log" || status=1 ;;
	kafka-secure) stop "Kafka (secured)" "$run_dir/kafka-secure/pid" "$run_dir/kafka-secure/server.properties" "$run_dir/kafka-secure/server.log" || status=1 ;;
	nats) stop nats-server "$run_dir/nats/pid" nats-server "$run_dir/nats/nats.log" || status=1 ;;
	*)
		log "unknown component '$c' (want kafka, nats and/or kafka-secure)"
		status=2
		;;
	esac
done
exit "$status"
