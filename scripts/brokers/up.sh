#!/usr/bin/env bash
# up.sh RUN_DIR [kafka] [nats] [kafka-secure]
#
# Starts a real single-node Apache Kafka (KRaft) and/or an out-of-process
# nats-server with JetStream, on loopback only, for sluice's integration
# tests. With no component named, starts kafka and nats (and kafka-secure too
# when SLUICE_BROKERS_SECURE=1). kafka-secure is a second Kafka with TLS and
# SASL listeners for the secured-connection tests
# (kafka/server-secure.properties.tmpl says which). Installs what is missing first:
#
#   .brokers/kafka/libs/     Kafka jars, copied by Maven from scripts/brokers/kafka/pom.xml
#                            (~/.m2 caches them; re-copied when the POM changes)
#   .brokers/bin/nats-server built with `go install` at the version go.mod pins
#   .brokers/bin/waitkafka   the readiness check (scripts/brokers/waitkafka)
#
# RUN_DIR holds everything of one run (created if missing):
#
#   env                      `export SLUICE_TEST_...=...` lines; source it
#   kafka/server.properties  kafka/data/  kafka/server.log  kafka/stdout.log  kafka/pid
#   nats/nats.conf           nats/store/  nats/nats.log     nats/pid
#   kafka-secure/            as kafka/, plus pki/ (CA, certificates: scripts/brokers/gencerts)
#                            and password (the test users' password)
#
# The first call picks free loopback ports and formats a fresh Kafka data dir.
# Calling it again on the same RUN_DIR (after down.sh, or after a test killed
# a broker with kill -9) restarts the broker on the same ports and the same
# data, so tests can exercise broker restarts via $SLUICE_TEST_BROKERS_DIR:
#
#   scripts/brokers/down.sh "$SLUICE_TEST_BROKERS_DIR" kafka
#   scripts/brokers/up.sh   "$SLUICE_TEST_BROKERS_DIR" kafka
#
# Tunables (environment): SLUICE_KAFKA_START_TIMEOUT (seconds, default 60),
# SLUICE_NATS_START_TIMEOUT (seconds, default 30).
# Stop with down.sh; with-brokers.sh does both around a command.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)

log() { echo "brokers: $*" >&2; }
die() {
	log "$*"
	exit 1
}
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH. $2"; }
now_ms() { date +%s%3N; }
secs_since() {
	local ms=$(($(now_ms) - $1))
	printf '%d.%01ds' $((ms / 1000)) $((ms % 1000 / 100))
}

# proc_alive PIDFILE PATTERN: the process in PIDFILE runs (not a zombie) and
# its command line contains PATTERN (so a recycled pid is never taken for it).
proc_alive() {
	local pid
	[[ -f $1 ]] || return 1
	pid=$(cat "$1")
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 1
	[[ $(sed -E 's/^[0-9]+ \(.*\) ([A-Za-z]).*/\1/' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# free_port [TAKEN...]: a loopback TCP port nobody listens on, below Linux's
# ephemeral range (32768+) so outgoing connections do not grab it meanwhile.
free_port() {
	local p i
	for ((i = 0; i < 200; i++)); do
		p=$((20000 + RANDOM % 12000))
		[[ " $* " == *" $p "* ]] && continue
		# A refused connect means the port is free.
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
	die "found no free loopback port"
}

# kafka_version LIBS: the release of the kafka_2.13 jar that will run.
kafka_version() {
	local j
	j=$(compgen -G "$1/kafka_2.13-*.jar" | sed -n 1p) # sed, not head: no SIGPIPE under pipefail
	j=${j##*/kafka_2.13-}
	echo "${j%.jar}"
}

# nats_info PORT: the INFO line a client gets on connect ("" if none).
nats_info() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 0
		IFS= read -r -t 2 line <&3 || true
		printf '%s' "${line:-}"
	) 2>/dev/null || true
}

if [[ $# -lt 1 ]]; then
	echo "usage: $0 RUN_DIR [kafka] [nats]" >&2
	exit 2
fi
mkdir -p "$1"
run_dir=$(cd "$1" && pwd)
shift
want_kafka=0 want_nats=0 want_secure=0
if [[ $# -eq 0 ]]; then
	want_kafka=1 want_nats=1
	[[ ${SLUICE_BROKERS_SECURE:-} == 1 ]] && want_secure=1
fi
for c in "$@"; do
	case $c in
	kafka) want_kafka=1 ;;
	nats) want_nats=1 ;;
	kafka-secure) want_secure=1 ;;
	*) die "unknown component '$c' (want kafka, nats and/or kafka-secure)" ;;
	esac
done

brokers_home=$repo/.brokers
bin_dir=$brokers_home/bin
kafka_home=$brokers_home/kafka
mkdir -p "$bin_dir" "$kafka_home"

# ---------------------------------------------------------------- checks

need go "Go is needed to build nats-server and the readiness check: https://go.dev/doc/install"
if [[ $want_kafka == 1 || $want_secure == 1 ]]; then
	need java "Kafka needs Java 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)"
	need mvn "Maven fetches the Kafka jars (Debian/Ubuntu: apt-get install maven)"
	java_major=$(java -version 2>&1 | sed -nE '1s/.*version "([0-9]+).*/\1/p')
	if [[ -z $java_major || $java_major -lt 17 ]]; then
		die "Kafka 4.x needs Java 17 or newer; 'java -version' says: $(java -version 2>&1 | head -n1)"
	fi
fi

# ---------------------------------------------------------------- install

# Two runs at once in one checkout must not copy jars over each other.
install_lock() {
	if command -v flock >/dev/null 2>&1; then
		exec 9>"$brokers_home/.install.lock"
		flock 9
	fi
}

install_kafka() {
	local pom=$here/kafka/pom.xml libs=$kafka_home/libs stamp=$kafka_home/pom.sha256 sum
	sum=$(sha256sum "$pom" | cut -d' ' -f1)
	if [[ -d $libs && -f $stamp && $(cat "$stamp") == "$sum" ]] && compgen -G "$libs/kafka_2.13-*.jar" >/dev/null; then
		return
	fi
	log "fetching the Kafka jars with Maven (scripts/brokers/kafka/pom.xml; ~/.m2 caches them)..."
	local t0 tmp
	t0=$(now_ms)
	tmp=$kafka_home/libs.tmp
	rm -rf "$tmp"
	if ! mvn -B -q -ntp -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
		-DincludeScope=runtime -DoutputDirectory="$tmp" >"$kafka_home/mvn.log" 2>&1; then
		cat "$kafka_home/mvn.log" >&2
		die "Maven could not fetch the Kafka jars (log above, also in $kafka_home/mvn.log)"
	fi
	rm -rf "$libs"
	mv "$tmp" "$libs"
	echo "$sum" >"$stamp"
	log "Kafka jars ready in $(secs_since "$t0") ($(find "$libs" -name '*.jar' | wc -l) jars in .brokers/kafka/libs)"
}

# The nats-server version pinned in go.mod (require block or single line).
nats_version() {
	awk '$1 == "github.com/nats-io/nats-server/v2" { print $2; exit }
	     $1 == "require" && $2 == "github.com/nats-io/nats-server/v2" { print $3; exit }' "$repo/go.mod"
}

install_nats() {
	local v have=""
	v=$(nats_version)
	[[ -n $v ]] || die "go.mod does not require github.com/nats-io/nats-server/v2; cannot tell which nats-server to build"
	if [[ -x $bin_dir/nats-server ]]; then
		have=$("$bin_dir/nats-server" --version 2>/dev/null | awk '{print $NF}') || true
	fi
	[[ $have == "$v" ]] && return
	log "building nats-server $v with go install (once; kept in .brokers/bin)..."
	local t0
	t0=$(now_ms)
	# Outside the module, so `pkg@version` builds exactly the release and
	# leaves go.mod/go.sum alone.
	(cd "$brokers_home" && GOBIN=$bin_dir GOFLAGS=-buildvcs=false go install "github.com/nats-io/nats-server/v2@$v") ||
		die "could not build nats-server $v (needs the Go module proxy or a warm module cache)"
	log "nats-server $v built in $(secs_since "$t0")"
}

install_waitkafka() {
	(cd "$repo" && go build -o "$bin_dir/waitkafka" ./scripts/brokers/waitkafka) ||
		die "could not build scripts/brokers/waitkafka"
}

install_lock
if [[ $want_kafka == 1 || $want_secure == 1 ]]; then
	install_kafka
	install_waitkafka
fi
[[ $want_nats == 1 ]] && install_nats
# Release the lock and close its fd, so the brokers started below do not
# inherit it.
if command -v flock >/dev/null 2>&1; then
	flock -u 9
	exec 9>&-
fi

# ---------------------------------------------------------------- ports, env

# Ports are chosen once per run dir and kept, so a restarted broker comes back
# where the tests (and their clients) expect it.
ports_file=$run_dir/ports
if [[ ! -f $ports_file ]]; then
	kp=$(free_port)
	cp=$(free_port "$kp")
	np=$(free_port "$kp" "$cp")
	mp=$(free_port "$kp" "$cp" "$np")
	printf 'KAFKA_PORT=%s\nCONTROLLER_PORT=%s\nNATS_PORT=%s\nNATS_MONITOR_PORT=%s\n' "$kp" "$cp" "$np" "$mp" >"$ports_file"
fi
# shellcheck source=/dev/null
. "$ports_file"

cat >"$run_dir/env" <<EOF
export SLUICE_TEST_KAFKA=127.0.0.1:$KAFKA_PORT
export SLUICE_TEST_NATS=nats://127.0.0.1:$NATS_PORT
export SLUICE_TEST_NATS_MONITOR=http://127.0.0.1:$NATS_MONITOR_PORT
export SLUICE_TEST_NATS_SERVER_BIN=$bin_dir/nats-server
export SLUICE_TEST_BROKERS_DIR=$run_dir
EOF

secure_ports=$run_dir/secure-ports
if [[ $want_secure == 1 && ! -f $secure_ports ]]; then
	taken=("$KAFKA_PORT" "$CONTROLLER_PORT" "$NATS_PORT" "$NATS_MONITOR_PORT")
	sp=$(free_port "${taken[@]}")
	mp=$(free_port "${taken[@]}" "$sp")
	ip=$(free_port "${taken[@]}" "$sp" "$mp")
	sc=$(free_port "${taken[@]}" "$sp" "$mp" "$ip")
	printf 'SECURE_SASL_PORT=%s\nSECURE_MTLS_PORT=%s\nSECURE_INTERNAL_PORT=%s\nSECURE_CONTROLLER_PORT=%s\n' "$sp" "$mp" "$ip" "$sc" >"$secure_ports"
fi
if [[ -f $secure_ports ]]; then
	# shellcheck source=/dev/null
	. "$secure_ports"
	cat >>"$run_dir/env" <<EOF
export SLUICE_TEST_KAFKA_SASL=127.0.0.1:$SECURE_SASL_PORT
export SLUICE_TEST_KAFKA_MTLS=127.0.0.1:$SECURE_MTLS_PORT
export SLUICE_TEST_KAFKA_SECURE_INTERNAL=127.0.0.1:$SECURE_INTERNAL_PORT
export SLUICE_TEST_KAFKA_PKI=$run_dir/kafka-secure/pki
export SLUICE_TEST_KAFKA_PASSWORD_FILE=$run_dir/kafka-secure/password
EOF
fi

# ---------------------------------------------------------------- kafka

# start_kafka [secure]: the plain broker, or with "secure" the kafka-secure one.
start_kafka() {
	local secure=${1:-} dir=$run_dir/kafka libs=$kafka_home/libs version wait_port=$KAFKA_PORT name=Kafka
	local format_extra=()
	if [[ $secure == secure ]]; then
		dir=$run_dir/kafka-secure wait_port=$SECURE_INTERNAL_PORT name="Kafka (secured)"
	fi
	mkdir -p "$dir"
	if proc_alive "$dir/pid" "$dir/server.properties"; then
		log "$name already running (pid $(cat "$dir/pid"))"
		return
	fi
	version=$(kafka_version "$libs")
	if [[ $secure == secure ]]; then
		if [[ ! -f $dir/password ]]; then
			(cd "$repo" && go run ./scripts/brokers/gencerts -dir "$dir/pki") || die "could not generate the test certificates"
			head -c18 /dev/urandom | base64 | tr '+/' 'xy' >"$dir/password"
		fi
		local pw
		pw=$(cat "$dir/password")
		if [[ ! -f $dir/server.properties ]]; then
			sed -e "s|@SASL_PORT@|$SECURE_SASL_PORT|g" -e "s|@MTLS_PORT@|$SECURE_MTLS_PORT|g" \
				-e "s|@INTERNAL_PORT@|$SECURE_INTERNAL_PORT|g" -e "s|@CONTROLLER_PORT@|$SECURE_CONTROLLER_PORT|g" \
				-e "s|@PASSWORD@|$pw|g" -e "s|@PKI@|$dir/pki|g" \
				-e "s|@DATA_DIR@|$dir/data|g" "$here/kafka/server-secure.properties.tmpl" >"$dir/server.properties"
		fi
		format_extra=(--add-scram "SCRAM-SHA-512=[name=alice,password=$pw]" --add-scram "SCRAM-SHA-256=[name=bob,password=$pw]")
	elif [[ ! -f $dir/server.properties ]]; then
		sed -e "s|@KAFKA_PORT@|$KAFKA_PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
			-e "s|@DATA_DIR@|$dir/data|g" "$here/kafka/server.properties.tmpl" >"$dir/server.properties"
	fi
	cp "$here/kafka/log4j2.properties" "$dir/log4j2.properties"
	local jvm=(java -Xms256m -Xmx512m -XX:+UseSerialGC -Djava.awt.headless=true
		"-Dkafka.logs.dir=$dir" "-Dlog4j2.configurationFile=$dir/log4j2.properties" -cp "$libs/*")

	if [[ ! -f $dir/data/meta.properties ]]; then
		# A fresh data dir, formatted by the same jars that will run it. The
		# cluster id is 16 random bytes in URL-safe base64, as Kafka's own
		# random-uuid prints them (minus a JVM start); never starting with '-',
		# which the command line would read as an option.
		local id
		id=-
		while [[ $id == -* ]]; do
			id=$(head -c16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
		done
		rm -rf "$dir/data"
		local tf
		tf=$(now_ms)
		if ! "${jvm[@]}" kafka.tools.StorageTool format -t "$id" -c "$dir/server.properties" "${format_extra[@]}" >"$dir/format.log" 2>&1; then
			cat "$dir/format.log" >&2
			die "formatting the Kafka data dir failed (log above)"
		fi
		log "Kafka data dir formatted in $(secs_since "$tf") (cluster id $id)"
	fi

	local t0 pid
	t0=$(now_ms)
	"${jvm[@]}" kafka.Kafka "$dir/server.properties" >>"$dir/stdout.log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/pid"
	if ! "$bin_dir/waitkafka" -addr "127.0.0.1:$wait_port" -pid "$pid" \
		-timeout "${SLUICE_KAFKA_START_TIMEOUT:-60}s" >"$dir/wait.log" 2>&1; then
		log "$name $version did not become ready: $(tail -n1 "$dir/wait.log")"
		log "last 50 lines of $dir/server.log:"
		tail -n 50 "$dir/server.log" >&2 2>/dev/null || true
		# The cause is often far above the shutdown noise at the end.
		if grep -qE '\] (ERROR|FATAL) ' "$dir/server.log" 2>/dev/null; then
			log "first errors in $dir/server.log:"
			grep -E '\] (ERROR|FATAL) ' "$dir/server.log" | head -n 5 >&2
		fi
		if [[ -s $dir/stdout.log ]]; then
			log "last 20 lines of $dir/stdout.log:"
			tail -n 20 "$dir/stdout.log" >&2
		fi
		if [[ $secure == secure ]]; then
			"$here/down.sh" "$run_dir" kafka-secure || true
		else
			"$here/down.sh" "$run_dir" kafka || true
		fi
		exit 1
	fi
	log "$name $version (KRaft, one node) ready at 127.0.0.1:$wait_port in $(secs_since "$t0"), pid $pid"
	log "  $(cat "$dir/wait.log")"
}

# ---------------------------------------------------------------- nats

start_nats() {
	local dir=$run_dir/nats bin=$bin_dir/nats-server
	mkdir -p "$dir/store"
	if proc_alive "$dir/pid" nats-server; then
		log "nats-server already running (pid $(cat "$dir/pid"))"
		return
	fi
	cat >"$dir/nats.conf" <<EOF
# Written by scripts/brokers/up.sh for one test run.
server_name: sluice-test
listen: 127.0.0.1:$NATS_PORT
http: 127.0.0.1:$NATS_MONITOR_PORT
jetstream {
  store_dir: "$dir/store"
  max_memory_store: 256MB
  max_file_store: 4GB
}
EOF
	local t0 pid deadline info version
	version=$("$bin" --version | awk '{print $NF}')
	t0=$(now_ms)
	"$bin" -c "$dir/nats.conf" >>"$dir/nats.log" 2>&1 &
	pid=$!
	echo "$pid" >"$dir/pid"
	deadline=$(($(now_ms) + ${SLUICE_NATS_START_TIMEOUT:-30} * 1000))
	# Ready when a client gets an INFO that says JetStream is on: the server
	# enables JetStream before it accepts clients.
	while :; do
		info=$(nats_info "$NATS_PORT")
		[[ $info == *'"jetstream":true'* ]] && break
		if ! proc_alive "$dir/pid" nats-server || (($(now_ms) > deadline)); then
			log "nats-server $version did not become ready; last 50 lines of $dir/nats.log:"
			tail -n 50 "$dir/nats.log" >&2 || true
			"$here/down.sh" "$run_dir" nats || true
			exit 1
		fi
		sleep 0.1
	done
	log "nats-server $version (JetStream) ready at nats://127.0.0.1:$NATS_PORT in $(secs_since "$t0"), pid $pid"
}

[[ $want_kafka == 1 ]] && start_kafka
[[ $want_secure == 1 ]] && start_kafka secure
[[ $want_nats == 1 ]] && start_nats
exit 0
