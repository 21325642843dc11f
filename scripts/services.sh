#!/usr/bin/env bash
# Bring up the local services the test suite talks to: ZooKeeper, MariaDB
# and Redis, all on 127.0.0.1.
#
#   scripts/services.sh up     [service...]  start whatever does not answer yet
#   scripts/services.sh down   [service...]  stop only what `up` started
#   scripts/services.sh status [service...]  one line per service; exit 0 iff all up
#
# Services: zookeeper, mariadb, redis (default: all three).
#
# A service that already answers on its port is used as is ("external"): it
# is never changed and never stopped by `down`. An external MariaDB must
# already let root in over TCP without a password; `up` only checks that (and
# creates the database `test` when it may). Missing packages are installed
# with apt-get (Debian). Everything `up` starts keeps its config, data, logs
# and pid file under the state directory.
#
# Environment:
#   MPIM_STATE_DIR    state directory              (default: <repo>/.run)
#   ZK_PORT           ZooKeeper client port        (default: 2181)
#   MARIADB_PORT      MariaDB port                 (default: 3306)
#   REDIS_PORT        Redis port                   (default: 6379)
#   SERVICES_TIMEOUT  seconds to wait for a start  (default: 60)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MPIM_STATE_DIR:-$REPO_ROOT/.run}
# Servers are started from here but may chdir; their paths must be absolute.
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR

LOG_TAG=services
# Where apt.log goes (lib.sh's apt_install).
PROC_DIR=$STATE_DIR
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

ZK_PORT=${ZK_PORT:-2181}
MARIADB_PORT=${MARIADB_PORT:-3306}
REDIS_PORT=${REDIS_PORT:-6379}
WAIT_SECS=${SERVICES_TIMEOUT:-60}

ZK_DIR=$STATE_DIR/zookeeper
MARIADB_DIR=$STATE_DIR/mariadb
REDIS_DIR=$STATE_DIR/redis

ALL_SERVICES=(zookeeper mariadb redis)

export DEBIAN_FRONTEND=noninteractive

now_ms() {
	local t=${EPOCHREALTIME:-$SECONDS.000000}
	t=${t/,/.} # the decimal separator follows the locale
	echo $((${t%.*} * 1000 + 10#${t#*.} / 1000))
}

# Seconds (one decimal) since the now_ms value $1.
since() {
	local ms=$(($(now_ms) - $1))
	printf '%d.%ds' $((ms / 1000)) $((ms % 1000 / 100))
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# ---------------------------------------------------------------- helpers

# Pid recorded by `up` for service dir $1, printed only if that process is
# still alive and its command line matches $2 (guards against pid reuse).
owned_pid() {
	local pid_file=$1/pid pattern=$2 pid cmd
	[[ -r $pid_file ]] || return 1
	pid=$(<"$pid_file")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
	[[ $cmd == *$pattern* ]] || return 1
	printf '%s\n' "$pid"
}

# Polls "$@" until it succeeds. Fails early if process $2 dies.
wait_until() {
	local what=$1 pid=$2
	shift 2
	local deadline=$((SECONDS + WAIT_SECS))
	until "$@"; do
		if ! kill -0 "$pid" 2>/dev/null; then
			log "$what exited during startup"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "$what did not answer within ${WAIT_SECS}s"
			return 1
		fi
		sleep 0.25
	done
}

stop_pid() {
	local what=$1 pid=$2 grace=${3:-30}
	log "stopping $what (pid $pid)"
	kill -TERM "$pid" 2>/dev/null || return 0
	local deadline=$((SECONDS + grace))
	while kill -0 "$pid" 2>/dev/null; do
		if ((SECONDS >= deadline)); then
			log "$what still running after ${grace}s, sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			break
		fi
		sleep 0.2
	done
}

show_log_tail() {
	local f
	for f in "$@"; do
		[[ -s $f ]] || continue
		log "last lines of $f:"
		tail -n 25 "$f" >&2
	done
}

# Starts "$@" detached from this shell (own session, no stdin) so that it
# outlives the caller, e.g. a CI step. Output goes to $1, pid to $2.
# fd 9 is the state lock: a server inheriting it would hold the lock for
# its whole life and block every later up/down.
spawn() {
	local out=$1 pid_file=$2
	shift 2
	setsid "$@" </dev/null >>"$out" 2>&1 9>&- &
	printf '%s\n' "$!" >"$pid_file"
}

# ---------------------------------------------------------------- zookeeper

ZK_PATTERN=org.apache.zookeeper.server.quorum.QuorumPeerMain

# `srvr` is the one four-letter word every ZooKeeper >= 3.5 whitelists by
# default, so it also works against an external server. A server that is
# still loading its database answers "not currently serving requests".
zk_answers() {
	local reply
	reply=$(tcp_talk "$ZK_PORT" srvr)
	[[ $reply == *"Mode: "* || $reply == *"not in the whitelist"* ]]
}

zk_classpath() {
	# zookeeper.jar's manifest Class-Path already lists the Debian jars it
	# depends on (netty, jetty, jackson, slf4j-api, ...). Only the slf4j
	# binding and log4j are added on top so that the server logs at all;
	# the conf dir comes first for log4j.properties.
	local cp=$ZK_DIR/conf jar
	for jar in /usr/share/java/zookeeper.jar /usr/share/java/zookeeper-jute.jar \
		/usr/share/java/slf4j-log4j12.jar /usr/share/java/log4j-1.2.jar \
		/usr/share/zookeeper/lib/*.jar; do
		if [[ -f $jar ]]; then cp+=:$jar; fi
	done
	printf '%s\n' "$cp"
}

zk_write_config() {
	mkdir -p "$ZK_DIR/conf" "$ZK_DIR/data"
	# maxClientCnxns=0: tests open many sessions from 127.0.0.1 and the
	# default per-address cap of 60 would reject some of them.
	cat >"$ZK_DIR/conf/zoo.cfg" <<-EOF
		tickTime=2000
		initLimit=10
		syncLimit=5
		dataDir=$ZK_DIR/data
		clientPort=$ZK_PORT
		clientPortAddress=$HOST
		maxClientCnxns=0
		minSessionTimeout=4000
		maxSessionTimeout=60000
		admin.enableServer=false
		4lw.commands.whitelist=*
		autopurge.snapRetainCount=3
		autopurge.purgeInterval=1
	EOF
	cat >"$ZK_DIR/conf/log4j.properties" <<-EOF
		log4j.rootLogger=INFO, FILE
		log4j.appender.FILE=org.apache.log4j.RollingFileAppender
		log4j.appender.FILE.File=$ZK_DIR/zookeeper.log
		log4j.appender.FILE.MaxFileSize=10MB
		log4j.appender.FILE.MaxBackupIndex=2
		log4j.appender.FILE.layout=org.apache.log4j.PatternLayout
		log4j.appender.FILE.layout.ConversionPattern=%d{ISO8601} %-5p [%t:%C{1}@%L] - %m%n
	EOF
}

zk_ensure_installed() {
	if [[ ! -f /usr/share/java/zookeeper.jar ]]; then
		apt_install zookeeper
	fi
	if ! command -v java >/dev/null; then
		apt_install default-jre-headless
	fi
	[[ -f /usr/share/java/zookeeper.jar ]] || die "zookeeper.jar missing after install"
}

zk_up() {
	local pid
	if pid=$(owned_pid "$ZK_DIR" "$ZK_PATTERN"); then
		# Possibly still starting from a concurrent or interrupted run.
		wait_until zookeeper "$pid" zk_answers || die "zookeeper (pid $pid) is not answering"
		log "zookeeper: already running (pid $pid)"
		return
	fi
	rm -f "$ZK_DIR/pid"
	if zk_answers; then
		log "zookeeper: external server answers on $HOST:$ZK_PORT"
		return
	fi
	if port_open "$ZK_PORT"; then
		die "port $ZK_PORT is in use but does not answer like ZooKeeper"
	fi

	zk_ensure_installed
	zk_write_config
	local t0 java
	t0=$(now_ms)
	java=$(command -v java)
	log "zookeeper: starting on $HOST:$ZK_PORT (log: $ZK_DIR/zookeeper.log)"
	spawn "$ZK_DIR/zookeeper.out" "$ZK_DIR/pid" \
		"$java" -Xms64m -Xmx512m \
		-Dzookeeper.log.dir="$ZK_DIR" \
		-cp "$(zk_classpath)" \
		"$ZK_PATTERN" "$ZK_DIR/conf/zoo.cfg"
	pid=$(<"$ZK_DIR/pid")
	if ! wait_until zookeeper "$pid" zk_answers; then
		show_log_tail "$ZK_DIR/zookeeper.out" "$ZK_DIR/zookeeper.log"
		kill -KILL "$pid" 2>/dev/null || true
		rm -f "$ZK_DIR/pid"
		die "zookeeper failed to start"
	fi
	log "zookeeper: up in $(since "$t0") (pid $pid)"
}

zk_down() {
	local pid
	if pid=$(owned_pid "$ZK_DIR" "$ZK_PATTERN"); then
		stop_pid zookeeper "$pid" 30
	else
		log "zookeeper: nothing started by services.sh"
	fi
	rm -f "$ZK_DIR/pid"
}

zk_status() {
	local pid
	if pid=$(owned_pid "$ZK_DIR" "$ZK_PATTERN"); then
		if zk_answers; then
			echo "zookeeper: up (started by services.sh, pid $pid)"
			return 0
		fi
		echo "zookeeper: not answering (started by services.sh, pid $pid)"
		return 1
	fi
	if zk_answers; then
		echo "zookeeper: up (external)"
		return 0
	fi
	echo "zookeeper: down"
	return 1
}

# ---------------------------------------------------------------- mariadb

# Matches whichever server binary was used (mariadbd or mysqld).
MARIADB_PATTERN="--datadir=$MARIADB_DIR/data"

first_cmd() {
	local c
	for c in "$@"; do
		if command -v "$c" >/dev/null; then
			command -v "$c"
			return 0
		elif [[ -x /usr/sbin/$c ]]; then
			echo "/usr/sbin/$c"
			return 0
		fi
	done
	return 1
}

mdb_client() { first_cmd mariadb mysql; }

mdb_tcp() {
	local cli
	cli=$(mdb_client) || return 1
	"$cli" --protocol=TCP -h "$HOST" -P "$MARIADB_PORT" -uroot --connect-timeout=3 "$@"
}

# What the tests need: root over TCP without a password.
mariadb_usable() {
	mdb_tcp -N -e 'SELECT 1' >/dev/null 2>&1
}

# "Some MySQL-protocol server is alive", even if it refuses root.
mariadb_alive() {
	local admin
	if admin=$(first_cmd mariadb-admin mysqladmin); then
		"$admin" --protocol=TCP -h "$HOST" -P "$MARIADB_PORT" --connect-timeout=2 ping >/dev/null 2>&1
	else
		port_open "$MARIADB_PORT"
	fi
}

# Debian's root@localhost authenticates by unix_socket only, which a TCP
# client cannot use. Keep unix_socket and add an empty native password, plus
# root@127.0.0.1 for servers running with skip-name-resolve. Runs over the
# unix socket as the OS root user; "$@" selects the socket. Only for servers
# this script started or whose package it just installed: on anyone else's
# it would empty root's password.
mariadb_open_root() {
	local cli
	cli=$(mdb_client) || return 1
	log "mariadb: allowing root@localhost/127.0.0.1 without password over TCP"
	"$cli" --protocol=SOCKET -uroot "$@" -e "
		ALTER USER 'root'@'localhost'
			IDENTIFIED VIA mysql_native_password USING PASSWORD('') OR unix_socket;
		CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'
			IDENTIFIED VIA mysql_native_password USING PASSWORD('');
		ALTER USER 'root'@'127.0.0.1'
			IDENTIFIED VIA mysql_native_password USING PASSWORD('');
		GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
		FLUSH PRIVILEGES;"
}

# Makes a server of ours usable by the tests (see mariadb_open_root for which
# servers are ours). "$@" selects the socket.
mariadb_prepare() {
	if ! mariadb_usable; then
		mariadb_open_root "$@" || true
	fi
	if ! mariadb_usable; then
		mdb_tcp -e 'SELECT 1' >&2 || true
		die "mariadb on $HOST:$MARIADB_PORT does not accept root without password"
	fi
	mdb_tcp -e 'CREATE DATABASE IF NOT EXISTS test'
}

# A server found running is someone else's: its accounts are left alone. It
# is used only if it already lets root in over TCP without a password.
mariadb_use_external() {
	if ! mariadb_usable; then
		mdb_tcp -e 'SELECT 1' >&2 || true
		log "mariadb on $HOST:$MARIADB_PORT was not started by services.sh and refuses root"
		log "without password over TCP; services.sh does not change servers it did not start."
		log "Allow root@127.0.0.1 without password there yourself, or stop that server (or"
		die "set MARIADB_PORT to a free port) so that services.sh starts its own."
	fi
	mdb_tcp -e 'CREATE DATABASE IF NOT EXISTS test'
}

mariadb_socket() {
	# sun_path holds at most 107 bytes; deep checkouts would overflow it.
	local sock=$MARIADB_DIR/run/mysqld.sock
	if ((${#sock} > 100)); then
		sock=/tmp/mpim-mariadb-$EUID-$MARIADB_PORT.sock
	fi
	printf '%s\n' "$sock"
}

mariadb_up() {
	local pid
	if pid=$(owned_pid "$MARIADB_DIR" "$MARIADB_PATTERN"); then
		wait_until mariadb "$pid" mariadb_alive || die "mariadb (pid $pid) is not answering"
		mariadb_prepare --socket="$(mariadb_socket)"
		log "mariadb: already running (pid $pid)"
		return
	fi
	rm -f "$MARIADB_DIR/pid"
	if port_open "$MARIADB_PORT"; then
		mdb_client >/dev/null || apt_install mariadb-client
		mariadb_alive || die "port $MARIADB_PORT is in use but does not answer like MariaDB"
		log "mariadb: external server answers on $HOST:$MARIADB_PORT"
		mariadb_use_external
		return
	fi

	local server install_db
	if ! server=$(first_cmd mariadbd mysqld) || ! install_db=$(first_cmd mariadb-install-db mysql_install_db) ||
		! mdb_client >/dev/null; then
		apt_install mariadb-server mariadb-client
		server=$(first_cmd mariadbd mysqld) || die "mariadbd missing after install"
		install_db=$(first_cmd mariadb-install-db mysql_install_db) || die "mariadb-install-db missing"
		# Where systemd runs, the package starts its own server on 3306.
		if mariadb_alive; then
			log "mariadb: the package started a server on $HOST:$MARIADB_PORT"
			mariadb_prepare
			return
		fi
	fi

	local t0 data=$MARIADB_DIR/data sock user=()
	t0=$(now_ms)
	sock=$(mariadb_socket)
	mkdir -p "$MARIADB_DIR" "$data" "$(dirname "$sock")"
	if [[ $EUID -eq 0 ]]; then
		# mariadbd refuses to run as root unless told to; prefer the
		# package's mysql user when it can reach the state dir.
		if id mysql >/dev/null 2>&1 && runuser -u mysql -- test -x "$MARIADB_DIR"; then
			chown mysql:mysql "$data" "$(dirname "$sock")"
			user=(--user=mysql)
		else
			user=(--user=root)
		fi
	fi
	local fresh=0
	if [[ ! -d $data/mysql ]]; then
		fresh=1
		log "mariadb: initialising $data"
		if ! "$install_db" --no-defaults --datadir="$data" "${user[@]}" \
			--auth-root-authentication-method=normal >>"$MARIADB_DIR/install-db.log" 2>&1 </dev/null; then
			show_log_tail "$MARIADB_DIR/install-db.log"
			die "mariadb-install-db failed"
		fi
	fi
	log "mariadb: starting on $HOST:$MARIADB_PORT (log: $MARIADB_DIR/mariadb.log)"
	# --no-defaults keeps /etc/mysql (socket, pid file, datadir of the
	# system server) out of the picture; the charset matches Debian's.
	# $MARIADB_DIR/server.cnf, when present, is the one option file read
	# instead (scripts/cluster.sh puts binary logging there for its replica).
	local defaults=(--no-defaults)
	if [[ -f $MARIADB_DIR/server.cnf ]]; then
		defaults=(--defaults-file="$MARIADB_DIR/server.cnf")
	fi
	spawn "$MARIADB_DIR/mariadb.log" "$MARIADB_DIR/pid" \
		"$server" "${defaults[@]}" "${user[@]}" \
		--datadir="$data" --socket="$sock" --pid-file="$MARIADB_DIR/run/mariadbd.pid" \
		--bind-address="$HOST" --port="$MARIADB_PORT" \
		--character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci
	pid=$(<"$MARIADB_DIR/pid")
	if ! wait_until mariadb "$pid" mariadb_alive; then
		show_log_tail "$MARIADB_DIR/mariadb.log"
		kill -KILL "$pid" 2>/dev/null || true
		rm -f "$MARIADB_DIR/pid"
		die "mariadb failed to start"
	fi
	mariadb_prepare --socket="$sock"
	if ((fresh)); then
		# mariadb-install-db also creates anonymous ''@localhost accounts,
		# which shadow any 'user'@'%' a test creates when it connects locally.
		mdb_tcp -e "DELETE FROM mysql.global_priv WHERE User=''; FLUSH PRIVILEGES"
	fi
	log "mariadb: up in $(since "$t0") (pid $pid)"
}

mariadb_down() {
	local pid
	if pid=$(owned_pid "$MARIADB_DIR" "$MARIADB_PATTERN"); then
		# InnoDB flushes on SIGTERM; give it time before SIGKILL.
		stop_pid mariadb "$pid" 90
	else
		log "mariadb: nothing started by services.sh"
	fi
	rm -f "$MARIADB_DIR/pid"
}

mariadb_status() {
	local pid origin=external
	if pid=$(owned_pid "$MARIADB_DIR" "$MARIADB_PATTERN"); then
		origin="started by services.sh, pid $pid"
	fi
	if mariadb_usable; then
		echo "mariadb: up ($origin)"
		return 0
	fi
	if ! mdb_client >/dev/null && port_open "$MARIADB_PORT"; then
		echo "mariadb: unknown (port $MARIADB_PORT open, no mariadb client installed)"
	elif [[ -n $pid ]] || mariadb_alive; then
		echo "mariadb: not usable (root without password refused; $origin)"
	else
		echo "mariadb: down"
	fi
	return 1
}

# ---------------------------------------------------------------- redis

REDIS_PATTERN=redis-server

redis_answers() {
	# QUIT makes the server close the connection so the read ends.
	[[ $(tcp_talk "$REDIS_PORT" 'PING\r\nQUIT\r\n') == *"+PONG"* ]]
}

redis_up() {
	local pid
	if pid=$(owned_pid "$REDIS_DIR" "$REDIS_PATTERN"); then
		wait_until redis "$pid" redis_answers || die "redis (pid $pid) is not answering"
		log "redis: already running (pid $pid)"
		return
	fi
	rm -f "$REDIS_DIR/pid"
	if redis_answers; then
		log "redis: external server answers on $HOST:$REDIS_PORT"
		return
	fi
	if port_open "$REDIS_PORT"; then
		die "port $REDIS_PORT is in use but does not answer PING (password set?)"
	fi

	local server
	if ! server=$(first_cmd redis-server); then
		apt_install redis-server
		server=$(first_cmd redis-server) || die "redis-server missing after install"
		if redis_answers; then
			log "redis: the package started a server on $HOST:$REDIS_PORT"
			return
		fi
	fi
	local t0
	t0=$(now_ms)
	mkdir -p "$REDIS_DIR"
	log "redis: starting on $HOST:$REDIS_PORT (log: $REDIS_DIR/redis.log)"
	# Kept in the foreground of its own session instead of --daemonize so
	# that the pid is known at once and a failed start is noticed at once.
	spawn "$REDIS_DIR/redis.log" "$REDIS_DIR/pid" \
		"$server" --daemonize no --bind "$HOST" --port "$REDIS_PORT" \
		--save "" --appendonly no --dir "$REDIS_DIR"
	pid=$(<"$REDIS_DIR/pid")
	if ! wait_until redis "$pid" redis_answers; then
		show_log_tail "$REDIS_DIR/redis.log"
		kill -KILL "$pid" 2>/dev/null || true
		rm -f "$REDIS_DIR/pid"
		die "redis failed to start"
	fi
	log "redis: up in $(since "$t0") (pid $pid)"
}

redis_down() {
	local pid
	if pid=$(owned_pid "$REDIS_DIR" "$REDIS_PATTERN"); then
		stop_pid redis "$pid" 30
	else
		log "redis: nothing started by services.sh"
	fi
	rm -f "$REDIS_DIR/pid"
}

redis_status() {
	local pid origin=external
	if pid=$(owned_pid "$REDIS_DIR" "$REDIS_PATTERN"); then
		origin="started by services.sh, pid $pid"
	fi
	if redis_answers; then
		echo "redis: up ($origin)"
		return 0
	fi
	if [[ -n $pid ]]; then
		echo "redis: not answering ($origin)"
	else
		echo "redis: down"
	fi
	return 1
}

# ---------------------------------------------------------------- main

fn_prefix() {
	case $1 in
	zookeeper | zk) echo zk ;;
	mariadb | mysql) echo mariadb ;;
	redis) echo redis ;;
	*) die "unknown service: $1 (expected: ${ALL_SERVICES[*]})" ;;
	esac
}

main() {
	(($# >= 1)) || usage
	local action=$1
	shift
	local services=("$@")
	((${#services[@]})) || services=("${ALL_SERVICES[@]}")
	local s prefixes=()
	for s in "${services[@]}"; do
		prefixes+=("$(fn_prefix "$s")")
	done

	case $action in
	up | down)
		mkdir -p "$STATE_DIR"
		# Serialises concurrent runs (parallel CI jobs) over the same state.
		exec 9>"$STATE_DIR/.lock"
		flock -w 600 9 || die "timed out waiting for $STATE_DIR/.lock"
		local p i
		if [[ $action == up ]]; then
			for p in "${prefixes[@]}"; do "${p}_up"; done
		else
			for ((i = ${#prefixes[@]} - 1; i >= 0; i--)); do
				"${prefixes[i]}_down"
			done
		fi
		;;
	status)
		local p rc=0
		for p in "${prefixes[@]}"; do
			"${p}_status" || rc=1
		done
		return "$rc"
		;;
	-h | --help | help) usage ;;
	*) usage ;;
	esac
}

main "$@"
