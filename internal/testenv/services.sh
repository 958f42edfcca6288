#!/usr/bin/env bash
# services.sh starts and stops the local backends steadfast's integration tests
# use: PostgreSQL, Redis and RabbitMQ, on 127.0.0.1 at non-default ports, with
# every data, log and pid file under <repo>/.services/. Kafka needs no service:
# internal/testenv runs franz-go's in-process kfake cluster.
#
# Usage:
#   services.sh up              start what is missing, pin it up until `down`
#   services.sh down            stop every service this script started
#   services.sh run [--tee FILE] -- CMD...
#                               up (under a lease), source .services/env, run
#                               CMD, then release the lease (stopping the
#                               services if nothing else uses them) even when
#                               CMD fails; exits with CMD's status
#   services.sh status          print what is running
#   services.sh env             print the generated env file
#   services.sh clean           down, then delete .services/
#
# Contract:
#   - Missing server packages (redis-server, rabbitmq-server, postgresql) are
#     installed with apt-get, only when missing and only as root.
#   - A service whose STEADFAST_*_URL is already set in the environment is not
#     started: the user's server is used instead.
#   - A service that already answers on its port is reused, not restarted.
#   - `up` records which services it started (.services/started); `down`
#     stops only those, so a server the script did not start is never killed.
#   - Leases: `run` takes a lease (its pid) and `down --lease` stops services
#     only when no other live lease and no manual `up` still needs them, so
#     concurrent `make test` runs and a developer's `make services` coexist.
#   - .services/env holds `export` lines for STEADFAST_POSTGRES_URL,
#     STEADFAST_REDIS_URL, STEADFAST_RABBITMQ_URL and STEADFAST_RABBITMQ_CTL,
#     each guarded so a value already in the environment wins.
#
# Ports (override with these variables): STEADFAST_PG_PORT (31432),
# STEADFAST_REDIS_PORT (31379), STEADFAST_AMQP_PORT (31672); RabbitMQ's Erlang
# distribution port is AMQP+1, its epmd port STEADFAST_EPMD_PORT (31369).
# The defaults lie below Linux's ephemeral range (32768 and up) and above
# the ports testenv picks for private nodes (20000-29999), so that no
# client connection is given one of them while a test restarts a service.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SVC="${STEADFAST_SERVICES_DIR:-$ROOT/.services}"

PG_PORT="${STEADFAST_PG_PORT:-31432}"
REDIS_PORT="${STEADFAST_REDIS_PORT:-31379}"
AMQP_PORT="${STEADFAST_AMQP_PORT:-31672}"
DIST_PORT="$((AMQP_PORT + 1))"
EPMD_PORT="${STEADFAST_EPMD_PORT:-31369}"
CTL_PORT_MIN="$((AMQP_PORT + 10))"
CTL_PORT_MAX="$((AMQP_PORT + 19))"
RABBIT_NODE="steadfast@localhost"

PG_DB="steadfast"
PG_URL="postgres://postgres@127.0.0.1:${PG_PORT}/${PG_DB}?sslmode=disable"
REDIS_URL="redis://127.0.0.1:${REDIS_PORT}/0"
AMQP_URL="amqp://guest:guest@127.0.0.1:${AMQP_PORT}/"

START_TIMEOUT="${STEADFAST_START_TIMEOUT:-180}" # seconds per service

# ---------------------------------------------------------------- helpers

log() { printf 'services: %s\n' "$*" >&2; }
die() {
	printf 'services: ERROR: %s\n' "$*" >&2
	exit 1
}

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# port_open PORT: true when something accepts TCP connections on 127.0.0.1:PORT.
port_open() {
	timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null
}

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# pidfile_alive FILE [COMM]: the pid in FILE is alive (and, where /proc
# tells, its command name is COMM: guards against a pid reused after a reboot).
pidfile_alive() {
	local pid
	[ -s "$1" ] || return 1
	pid="$(head -n1 "$1" | tr -dc '0-9')"
	pid_alive "$pid" || return 1
	if [ -n "${2:-}" ] && [ -r "/proc/$pid/comm" ]; then
		[ "$(cat "/proc/$pid/comm")" = "$2" ] || return 1
	fi
}

# tail_logs FILE...: print the last lines of each existing log.
tail_logs() {
	local f
	for f in "$@"; do
		[ -f "$f" ] || continue
		printf -- '----- last lines of %s -----\n' "$f" >&2
		tail -n 40 "$f" >&2 || true
	done
	printf -- '-----\n' >&2
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# lock takes the exclusive lock that serializes up/down on fd 9; children that
# outlive us must be started with 9>&- so they do not inherit (and hold) it.
lock() {
	mkdir -p "$SVC"
	chmod 755 "$SVC"
	exec 9>"$SVC/lock"
	if ! flock -w 900 9; then
		die "timed out waiting for $SVC/lock (another services.sh is running)"
	fi
}
unlock() { exec 9>&-; }

started_has() { [ -f "$SVC/started" ] && grep -qx "$1" "$SVC/started"; }
started_add() { started_has "$1" || echo "$1" >>"$SVC/started"; }
started_del() {
	[ -f "$SVC/started" ] || return 0
	grep -vx "$1" "$SVC/started" >"$SVC/started.tmp" || true
	mv "$SVC/started.tmp" "$SVC/started"
}

# user_url SERVICE prints the STEADFAST_*_URL the user exported for it, if any.
user_url() {
	case "$1" in
	postgres) printf '%s' "${STEADFAST_POSTGRES_URL:-}" ;;
	redis) printf '%s' "${STEADFAST_REDIS_URL:-}" ;;
	rabbitmq) printf '%s' "${STEADFAST_RABBITMQ_URL:-}" ;;
	esac
}

# ---------------------------------------------------------------- binaries

pg_bin() {
	local d
	if [ -n "${PG_BIN:-}" ]; then
		printf '%s' "$PG_BIN"
		return 0
	fi
	# Debian/Ubuntu layout: newest /usr/lib/postgresql/<major>/bin.
	d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
	if [ -n "$d" ] && [ -x "$d/pg_ctl" ]; then
		printf '%s' "$d"
		return 0
	fi
	if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then
		dirname "$(command -v pg_ctl)"
		return 0
	fi
	return 1
}

redis_bin() {
	if command -v redis-server >/dev/null 2>&1; then
		command -v redis-server
	elif [ -x /usr/bin/redis-server ]; then
		printf '/usr/bin/redis-server'
	else
		return 1
	fi
}

# rabbit_sbin prints the directory holding the real rabbitmq-server and
# rabbitmqctl scripts. On Debian /usr/sbin/* are wrappers that switch to the
# rabbitmq user and its /var/lib/rabbitmq; /usr/lib/rabbitmq/bin runs as us.
rabbit_sbin() {
	if [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
		printf '/usr/lib/rabbitmq/bin'
	elif command -v rabbitmq-server >/dev/null 2>&1 && ! grep -q 'su rabbitmq' "$(command -v rabbitmq-server)" 2>/dev/null; then
		dirname "$(command -v rabbitmq-server)"
	else
		return 1
	fi
}

# ensure_packages SERVICE...: apt-get install the server packages that are
# missing for the given services.
ensure_packages() {
	local need=() svc policy_created=0
	for svc in "$@"; do
		case "$svc" in
		postgres) pg_bin >/dev/null || need+=(postgresql) ;;
		redis) redis_bin >/dev/null || need+=(redis-server) ;;
		rabbitmq) rabbit_sbin >/dev/null || need+=(rabbitmq-server) ;;
		esac
	done
	[ "${#need[@]}" -eq 0 ] && return 0

	if ! is_root; then
		die "missing ${need[*]}: install them (e.g. 'sudo apt-get install ${need[*]}'), run as root, or export STEADFAST_POSTGRES_URL / STEADFAST_REDIS_URL / STEADFAST_RABBITMQ_URL pointing at running servers"
	fi
	command -v apt-get >/dev/null 2>&1 || die "missing ${need[*]} and no apt-get to install them"

	log "installing ${need[*]} with apt-get"
	local t0
	t0="$(now)"
	# Keep the packages' maintainer scripts from starting system-wide
	# instances on the default ports: we run our own below.
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		policy_created=1
	fi
	local rc=0
	{
		DEBIAN_FRONTEND=noninteractive apt-get update -q &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
				-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}"
	} >"$SVC/apt.log" 2>&1 9>&- || rc=$?
	if [ "$policy_created" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
	if [ "$rc" -ne 0 ]; then
		tail_logs "$SVC/apt.log"
		die "apt-get install ${need[*]} failed (exit $rc)"
	fi
	log "installed ${need[*]} in $(since "$t0")s"
	for svc in "$@"; do
		case "$svc" in
		postgres) pg_bin >/dev/null || die "postgresql installed but pg_ctl not found" ;;
		redis) redis_bin >/dev/null || die "redis-server installed but not found" ;;
		rabbitmq) rabbit_sbin >/dev/null || die "rabbitmq-server installed but /usr/lib/rabbitmq/bin/rabbitmq-server not found" ;;
		esac
	done
}

# ---------------------------------------------------------------- postgres

PG_DIR="$SVC/postgres"

# as_pg runs a command as the postgres user when we are root (postgres
# refuses to run as root), else as ourselves.
as_pg() {
	if is_root; then
		(cd / && runuser -u postgres -- "$@")
	else
		"$@"
	fi
}

# pg_resolve_dir follows .services/postgres when it links to a data directory
# kept elsewhere (see pg_prepare_dir).
pg_resolve_dir() {
	if [ -L "$SVC/postgres" ]; then
		PG_DIR="$(readlink -f "$SVC/postgres")"
	fi
}

pg_prepare_dir() {
	pg_resolve_dir
	mkdir -p "$PG_DIR"
	is_root || return 0
	id postgres >/dev/null 2>&1 || die "user 'postgres' does not exist (install the postgresql package)"
	chown postgres: "$PG_DIR"
	chmod 755 "$PG_DIR"
	if runuser -u postgres -- test -w "$PG_DIR" 2>/dev/null; then
		return 0
	fi
	# A parent of the repository (e.g. /root, mode 700) keeps user postgres
	# out: keep the cluster in a postgres-owned directory under /tmp and link
	# it from .services/postgres.
	local alt
	alt="${TMPDIR:-/tmp}/steadfast-postgres-$(printf '%s' "$SVC" | cksum | cut -d' ' -f1)"
	[ -e "$PG_DIR/data/PG_VERSION" ] && die "user postgres cannot reach its data in $PG_DIR"
	log "postgres: user postgres cannot reach $PG_DIR (a parent directory is not searchable); keeping the cluster in $alt"
	rm -rf "$PG_DIR"
	mkdir -p "$alt"
	chown postgres: "$alt"
	chmod 700 "$alt"
	ln -sfn "$alt" "$SVC/postgres"
	PG_DIR="$alt"
	runuser -u postgres -- test -w "$PG_DIR" 2>/dev/null || die "user postgres cannot write $PG_DIR"
}

pg_start() {
	local bin t0
	bin="$(pg_bin)" || die "PostgreSQL binaries not found (set PG_BIN)"
	t0="$(now)"
	if port_open "$PG_PORT"; then
		log "postgres: reusing server on 127.0.0.1:$PG_PORT"
	else
		pg_prepare_dir
		if [ ! -s "$PG_DIR/data/PG_VERSION" ]; then
			rm -rf "$PG_DIR/data"
			log "postgres: initdb $PG_DIR/data"
			if ! as_pg "$bin/initdb" -D "$PG_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C \
				--no-sync --no-instructions >"$PG_DIR/initdb.log" 2>&1 9>&-; then
				tail_logs "$PG_DIR/initdb.log"
				die "postgres: initdb failed"
			fi
		fi
		# Settings go on the command line so they apply to reused data dirs too.
		local opts="-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories='' -c max_connections=300 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB -c max_prepared_transactions=0"
		if is_root; then touch "$PG_DIR/postgres.log" && chown postgres: "$PG_DIR/postgres.log"; fi
		log "postgres: starting on 127.0.0.1:$PG_PORT"
		if ! as_pg setsid "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" -w -t "$START_TIMEOUT" \
			-o "$opts" start </dev/null >"$PG_DIR/pg_ctl.log" 2>&1 9>&-; then
			tail_logs "$PG_DIR/pg_ctl.log" "$PG_DIR/postgres.log"
			die "postgres: pg_ctl start failed"
		fi
		started_add postgres
	fi
	local i=0
	until PGCONNECT_TIMEOUT=3 "$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtX -c 'SELECT 1' >/dev/null 2>&1; do
		i=$((i + 1))
		if [ "$i" -gt 60 ]; then
			tail_logs "$PG_DIR/postgres.log"
			die "postgres: 127.0.0.1:$PG_PORT does not accept connections as user postgres"
		fi
		sleep 0.5
	done
	if [ "$("$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtX \
		-c "SELECT 1 FROM pg_database WHERE datname = '$PG_DB'")" != 1 ]; then
		"$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -qAtX -c "CREATE DATABASE $PG_DB" >/dev/null 2>&1 ||
			"$bin/psql" -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$PG_DB" -qAtX -c 'SELECT 1' >/dev/null ||
			die "postgres: cannot create database $PG_DB"
	fi
	log "postgres: ready in $(since "$t0")s ($PG_URL)"
}

pg_stop() {
	local bin
	bin="$(pg_bin)" || return 0
	pg_resolve_dir
	[ -s "$PG_DIR/data/postmaster.pid" ] || return 0
	log "postgres: stopping"
	as_pg "$bin/pg_ctl" -D "$PG_DIR/data" -m fast -w -t 60 stop >>"$PG_DIR/pg_ctl.log" 2>&1 9>&- ||
		log "postgres: pg_ctl stop failed (see $PG_DIR/pg_ctl.log)"
}

# ---------------------------------------------------------------- redis

REDIS_DIR="$SVC/redis"

redis_start() {
	local bin t0
	bin="$(redis_bin)" || die "redis-server not found"
	t0="$(now)"
	if port_open "$REDIS_PORT"; then
		log "redis: reusing server on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	mkdir -p "$REDIS_DIR"
	log "redis: starting on 127.0.0.1:$REDIS_PORT"
	rm -f "$REDIS_DIR/redis.pid"
	if ! setsid "$bin" --bind 127.0.0.1 --port "$REDIS_PORT" --daemonize yes \
		--pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log" --dir "$REDIS_DIR" \
		--save '' --appendonly no --maxclients 4000 </dev/null >"$REDIS_DIR/start.log" 2>&1 9>&-; then
		tail_logs "$REDIS_DIR/start.log" "$REDIS_DIR/redis.log"
		die "redis: redis-server failed to start"
	fi
	started_add redis
	local deadline=$((SECONDS + 30))
	until port_open "$REDIS_PORT"; do
		if [ "$SECONDS" -ge "$deadline" ]; then
			tail_logs "$REDIS_DIR/start.log" "$REDIS_DIR/redis.log"
			die "redis: not listening on 127.0.0.1:$REDIS_PORT after 30s"
		fi
		sleep 0.1
	done
	log "redis: ready in $(since "$t0")s ($REDIS_URL)"
}

redis_stop() {
	local pid i
	[ -s "$REDIS_DIR/redis.pid" ] || return 0
	pid="$(tr -dc '0-9' <"$REDIS_DIR/redis.pid")"
	pid_alive "$pid" || return 0
	log "redis: stopping (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || true
	for i in $(seq 1 100); do
		pid_alive "$pid" || return 0
		sleep 0.1
	done
	kill -KILL "$pid" 2>/dev/null || true
}

# ---------------------------------------------------------------- rabbitmq

RB_DIR="$SVC/rabbitmq"
RB_CTL="$SVC/rabbitmqctl"

# q NAME VALUE prints a shell-quoted export line.
q() { printf "export %s=%q\n" "$1" "$2"; }

# rabbit_env_lines prints the environment that points a RabbitMQ node and its
# CLI at RB_DIR; the server and the generated ctl wrapper both use it.
rabbit_env_lines() {
	q HOME "$RB_DIR/home"
	q RABBITMQ_NODENAME "$RABBIT_NODE"
	q RABBITMQ_USE_LONGNAME false
	q RABBITMQ_NODE_IP_ADDRESS 127.0.0.1
	q RABBITMQ_NODE_PORT "$AMQP_PORT"
	q RABBITMQ_DIST_PORT "$DIST_PORT"
	q ERL_EPMD_PORT "$EPMD_PORT"
	q ERL_EPMD_ADDRESS 127.0.0.1
	q RABBITMQ_CTL_DIST_PORT_MIN "$CTL_PORT_MIN"
	q RABBITMQ_CTL_DIST_PORT_MAX "$CTL_PORT_MAX"
	q RABBITMQ_CONF_ENV_FILE "$RB_DIR/rabbitmq-env.conf"
	q RABBITMQ_CONFIG_FILE "$RB_DIR/rabbitmq.conf"
	q RABBITMQ_ADVANCED_CONFIG_FILE "$RB_DIR/advanced.config"
	q RABBITMQ_ENABLED_PLUGINS_FILE "$RB_DIR/enabled_plugins"
	q RABBITMQ_PLUGINS_EXPAND_DIR "$RB_DIR/plugins-expand"
	q RABBITMQ_MNESIA_BASE "$RB_DIR/mnesia"
	q RABBITMQ_LOG_BASE "$RB_DIR/log"
	q RABBITMQ_LOGS "$RB_DIR/log/rabbit.log"
	q RABBITMQ_PID_FILE "$RB_DIR/rabbitmq.pid"
	q RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS "-kernel inet_dist_use_interface {127,0,0,1}"
}

rabbit_prepare() {
	local sbin
	sbin="$(rabbit_sbin)" || die "rabbitmq-server not found"
	mkdir -p "$RB_DIR/home" "$RB_DIR/mnesia" "$RB_DIR/log" "$RB_DIR/plugins-expand"
	if [ ! -s "$RB_DIR/home/.erlang.cookie" ]; then
		rm -f "$RB_DIR/home/.erlang.cookie"
		(umask 077 && od -An -N20 -tx1 /dev/urandom | tr -d ' \n' | tr 'a-f' 'A-F' >"$RB_DIR/home/.erlang.cookie")
		chmod 400 "$RB_DIR/home/.erlang.cookie"
	fi
	printf '# generated by services.sh; keeps /etc/rabbitmq/rabbitmq-env.conf out\n' >"$RB_DIR/rabbitmq-env.conf"
	cat >"$RB_DIR/rabbitmq.conf" <<-'EOF'
		# generated by services.sh: a test node, reachable from 127.0.0.1 only
		loopback_users.guest = true
		log.console = false
		log.file.level = info
		disk_free_limit.absolute = 50MB
	EOF
	printf '[].\n' >"$RB_DIR/enabled_plugins"
	{
		printf '#!/bin/sh\n# generated by services.sh: rabbitmqctl against the %s test node\n' "$RABBIT_NODE"
		rabbit_env_lines
		printf 'exec %q -n %q "$@"\n' "$sbin/rabbitmqctl" "$RABBIT_NODE"
	} >"$RB_CTL.tmp"
	chmod 755 "$RB_CTL.tmp"
	mv "$RB_CTL.tmp" "$RB_CTL"
}

# rabbit_wait waits until the node has booted and its AMQP port answers.
rabbit_wait() {
	local server_pid="${1:-}" deadline=$((SECONDS + START_TIMEOUT))
	while :; do
		if "$RB_CTL" await_startup --timeout 10 >"$RB_DIR/await.log" 2>&1 9>&- && port_open "$AMQP_PORT"; then
			return 0
		fi
		if [ -n "$server_pid" ] && ! pid_alive "$server_pid"; then
			tail_logs "$RB_DIR/log/rabbit.log" "$RB_DIR/await.log" "$RB_DIR/log/startup.log"
			die "rabbitmq: the node exited during startup"
		fi
		if [ "$SECONDS" -ge "$deadline" ]; then
			tail_logs "$RB_DIR/log/rabbit.log" "$RB_DIR/await.log" "$RB_DIR/log/startup.log"
			die "rabbitmq: not ready after ${START_TIMEOUT}s"
		fi
		sleep 1
	done
}

rabbit_start() {
	local sbin t0
	sbin="$(rabbit_sbin)" || die "rabbitmq-server not found"
	t0="$(now)"
	rabbit_prepare
	if pidfile_alive "$RB_DIR/rabbitmq.pid" beam.smp; then
		# Our node is alive; if its app is stopped (a test is restarting it)
		# wait for it rather than starting a second node with the same name.
		log "rabbitmq: reusing node $RABBIT_NODE (pid $(cat "$RB_DIR/rabbitmq.pid"))"
		port_open "$AMQP_PORT" || rabbit_wait
		return 0
	fi
	if port_open "$AMQP_PORT"; then
		log "rabbitmq: reusing server on 127.0.0.1:$AMQP_PORT"
		return 0
	fi
	log "rabbitmq: starting node $RABBIT_NODE on 127.0.0.1:$AMQP_PORT"
	rm -f "$RB_DIR/rabbitmq.pid"
	(
		# shellcheck disable=SC1090
		. <(rabbit_env_lines)
		cd "$RB_DIR"
		exec setsid "$sbin/rabbitmq-server" </dev/null >>"$RB_DIR/log/startup.log" 2>&1 9>&-
	) &
	local spid=$!
	echo "$spid" >"$RB_DIR/server.pid"
	started_add rabbitmq
	rabbit_wait "$spid"
	log "rabbitmq: ready in $(since "$t0")s ($AMQP_URL)"
}

rabbit_stop() {
	local pid spid i
	[ -x "$RB_CTL" ] || return 0
	pid=""
	[ -s "$RB_DIR/rabbitmq.pid" ] && pid="$(tr -dc '0-9' <"$RB_DIR/rabbitmq.pid")"
	spid=""
	[ -s "$RB_DIR/server.pid" ] && spid="$(tr -dc '0-9' <"$RB_DIR/server.pid")"
	if pid_alive "$pid"; then
		log "rabbitmq: stopping node $RABBIT_NODE (pid $pid)"
		timeout 60 "$RB_CTL" shutdown >"$RB_DIR/stop.log" 2>&1 9>&- || true
		for i in $(seq 1 100); do
			pid_alive "$pid" || break
			sleep 0.1
		done
		if pid_alive "$pid"; then
			log "rabbitmq: node did not stop, killing it"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	if pid_alive "$spid"; then kill -TERM "$spid" 2>/dev/null || true; fi
	# The node started its own epmd on EPMD_PORT; stop it with the node.
	if command -v epmd >/dev/null 2>&1; then
		ERL_EPMD_PORT="$EPMD_PORT" epmd -kill >/dev/null 2>&1 9>&- || true
	fi
	rm -f "$RB_DIR/rabbitmq.pid" "$RB_DIR/server.pid"
}

# ---------------------------------------------------------------- env file

# sq VALUE prints VALUE single-quoted for sh.
sq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }

write_env() {
	local tmp="$SVC/env.tmp"
	{
		printf '# generated by internal/testenv/services.sh; load with: . %s\n' "$(sq "$SVC/env")"
		printf '# A value already exported in your shell wins over the ones below.\n'
		if port_open "$PG_PORT"; then
			printf '[ -n "${STEADFAST_POSTGRES_URL:-}" ] || export STEADFAST_POSTGRES_URL=%s\n' "$(sq "$PG_URL")"
		fi
		if port_open "$REDIS_PORT"; then
			printf '[ -n "${STEADFAST_REDIS_URL:-}" ] || export STEADFAST_REDIS_URL=%s\n' "$(sq "$REDIS_URL")"
		fi
		if port_open "$AMQP_PORT"; then
			printf 'if [ -z "${STEADFAST_RABBITMQ_URL:-}" ]; then\n'
			printf '\texport STEADFAST_RABBITMQ_URL=%s\n' "$(sq "$AMQP_URL")"
			if [ -x "$RB_CTL" ] && pidfile_alive "$RB_DIR/rabbitmq.pid" beam.smp; then
				# A command line for sh -c: quote the path only if it needs it.
				local ctl="$RB_CTL"
				[[ "$ctl" =~ ^[A-Za-z0-9_./@:+-]+$ ]] || ctl="$(sq "$ctl")"
				printf '\texport STEADFAST_RABBITMQ_CTL=%s\n' "$(sq "$ctl")"
			fi
			printf 'fi\n'
		fi
	} >"$tmp"
	mv "$tmp" "$SVC/env"
}

# ---------------------------------------------------------------- commands

ALL_SERVICES=(postgres redis rabbitmq)

cmd_up() {
	local lease="${1:-}" t0 svc want=()
	t0="$(now)"
	lock
	for svc in "${ALL_SERVICES[@]}"; do
		if [ -n "$(user_url "$svc")" ]; then
			log "$svc: using the server from STEADFAST_$(echo "$svc" | tr a-z A-Z)_URL"
		else
			want+=("$svc")
		fi
	done
	if [ "${#want[@]}" -gt 0 ]; then
		ensure_packages "${want[@]}"
		for svc in "${want[@]}"; do
			case "$svc" in
			postgres) pg_start ;;
			redis) redis_start ;;
			rabbitmq) rabbit_start ;;
			esac
		done
	fi
	write_env
	mkdir -p "$SVC/leases"
	if [ -n "$lease" ]; then
		echo "$lease" >"$SVC/leases/$lease"
	else
		touch "$SVC/leases/manual"
	fi
	unlock
	log "up in $(since "$t0")s; environment: . $SVC/env"
}

# live_leases prints the leases still in force, dropping dead ones.
live_leases() {
	local f name
	[ -d "$SVC/leases" ] || return 0
	for f in "$SVC/leases"/*; do
		[ -e "$f" ] || continue
		name="$(basename "$f")"
		if [ "$name" = manual ] || pid_alive "$name"; then
			echo "$name"
		else
			rm -f "$f"
		fi
	done
}

cmd_down() {
	local lease="${1:-}" svc remaining
	lock
	if [ -n "$lease" ]; then
		rm -f "$SVC/leases/$lease"
		remaining="$(live_leases | tr '\n' ' ')"
		if [ -n "$remaining" ]; then
			log "leaving services up: still in use (${remaining% }; 'manual' = services.sh up / make services)"
			unlock
			return 0
		fi
	else
		remaining="$(live_leases | grep -vx manual | tr '\n' ' ' || true)"
		[ -n "$remaining" ] && log "warning: stopping services still leased by running processes: ${remaining% }"
		rm -rf "$SVC/leases"
	fi
	if [ ! -s "$SVC/started" ]; then
		log "nothing to stop (no service was started by services.sh)"
	fi
	for svc in rabbitmq redis postgres; do
		started_has "$svc" || continue
		case "$svc" in
		postgres) pg_stop ;;
		redis) redis_stop ;;
		rabbitmq) rabbit_stop ;;
		esac
		started_del "$svc"
	done
	rm -f "$SVC/env"
	unlock
	log "down"
}

cmd_status() {
	local svc port
	for svc in "${ALL_SERVICES[@]}"; do
		case "$svc" in
		postgres) port=$PG_PORT ;;
		redis) port=$REDIS_PORT ;;
		rabbitmq) port=$AMQP_PORT ;;
		esac
		printf '%-9s 127.0.0.1:%-6s %-4s %s\n' "$svc" "$port" \
			"$(port_open "$port" && echo up || echo down)" \
			"$(started_has "$svc" && echo '(started by services.sh)' || true)"
	done
	printf 'leases: %s\n' "$(live_leases | tr '\n' ' ')"
}

cmd_run() {
	local tee_file=""
	while [ $# -gt 0 ]; do
		case "$1" in
		--tee)
			tee_file="$2"
			shift 2
			;;
		--)
			shift
			break
			;;
		*) break ;;
		esac
	done
	[ $# -gt 0 ] || die "run: no command given"
	local status=0
	RUN_LEASE="$$" # global: the EXIT trap runs after this function returns
	trap 'cmd_down "$RUN_LEASE" || true' EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
	cmd_up "$RUN_LEASE"
	# shellcheck disable=SC1091
	. "$SVC/env"
	set +e
	if [ -n "$tee_file" ]; then
		mkdir -p "$(dirname "$tee_file")"
		"$@" 2>&1 | tee "$tee_file"
		status="${PIPESTATUS[0]}"
	else
		"$@"
		status=$?
	fi
	set -e
	trap - INT TERM
	return "$status"
}

main() {
	local cmd="${1:-}" lease=""
	[ $# -gt 0 ] && shift
	case "$cmd" in
	up | down)
		if [ "${1:-}" = --lease ]; then
			lease="${2:?--lease needs an id}"
		fi
		"cmd_$cmd" "$lease"
		;;
	run) cmd_run "$@" ;;
	status) cmd_status ;;
	env) cat "$SVC/env" ;;
	clean)
		cmd_down
		if [ -L "$SVC/postgres" ]; then rm -rf "$(readlink -f "$SVC/postgres")"; fi
		rm -rf "$SVC"
		log "removed $SVC"
		;;
	*)
		sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
		exit 2
		;;
	esac
}

main "$@"
