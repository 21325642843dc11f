#!/usr/bin/env bash
# A Redis Cluster of three masters on 127.0.0.1 (optionally with replicas), for running
# MPIM (and its tests) on a cluster instead of one Redis.
#
#   scripts/redis-cluster.sh up      start the nodes that do not run, form the cluster,
#                                    wait until every node says cluster_state:ok
#   scripts/redis-cluster.sh down    stop only the nodes `up` started; forget the cluster
#   scripts/redis-cluster.sh status  one line per node; exit 0 iff the cluster is ok
#
# The nodes are Debian's redis-server (installed with apt-get when missing), each in the
# foreground of its own session with its pid, log and nodes.conf under the state
# directory. Like the single Redis of scripts/services.sh they keep no data on disk (no
# RDB, no AOF): the bus holds nothing that the database does not. For the same reason a
# replica takes over from a failed master however long ago it last heard from it
# (cluster-replica-validity-factor 0: available rather than current). If every port already
# answers as one healthy cluster, it is used as is ("external") and never stopped.
#
# Point MPIM at it with
#   [redis]
#   cluster = ["redis://127.0.0.1:7001", "redis://127.0.0.1:7002", "redis://127.0.0.1:7003"]
# or MPIM_REDIS__CLUSTER=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003
# (`urls` prints that list), and the tests with TEST_REDIS_CLUSTER set to the same list.
#
#   scripts/redis-cluster.sh urls    the node URLs, comma-separated
#
# Environment:
#   REDIS_CLUSTER_PORTS   the nodes' ports, space-separated (default: 7001 7002 7003; at
#                         least three masters; each also uses port + 10000 for the cluster bus)
#   REDIS_CLUSTER_REPLICAS  replicas per master (default: 0); with 1, six ports make three
#                         masters and three replicas, and a master's failure fails over
#   REDIS_CLUSTER_NODE_TIMEOUT_MS  cluster-node-timeout (default: 5000)
#   MPIM_STATE_DIR        state directory (default: <repo>/.run); nodes under
#                         <state>/redis-cluster/<port>
#   SERVICES_TIMEOUT      seconds to wait for a start (default: 60)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MPIM_STATE_DIR:-$REPO_ROOT/.run}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
CLUSTER_DIR=$STATE_DIR/redis-cluster

read -r -a PORTS <<<"${REDIS_CLUSTER_PORTS:-7001 7002 7003}"
REPLICAS=${REDIS_CLUSTER_REPLICAS:-0}
NODE_TIMEOUT_MS=${REDIS_CLUSTER_NODE_TIMEOUT_MS:-5000}
WAIT_SECS=${SERVICES_TIMEOUT:-60}

LOG_TAG=redis-cluster
# lib.sh keeps its apt log there.
PROC_DIR=$CLUSTER_DIR
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
	exit 2
}

server_bin() {
	command -v redis-server || { [[ -x /usr/bin/redis-server ]] && echo /usr/bin/redis-server; }
}

ensure_installed() {
	if ! server_bin >/dev/null || ! command -v redis-cli >/dev/null; then
		# redis-server depends on redis-tools, which has redis-cli.
		apt_install redis-server redis-tools
	fi
	server_bin >/dev/null || die "redis-server missing after install"
	command -v redis-cli >/dev/null || die "redis-cli missing after install"
}

cli() {
	local port=$1
	shift
	timeout 5 redis-cli -h "$HOST" -p "$port" "$@" 2>/dev/null
}

node_answers() { [[ $(cli "$1" PING) == PONG ]]; }

# The value of `field` in CLUSTER INFO of the node on port $1.
cluster_info() {
	cli "$1" CLUSTER INFO | tr -d '\r' | sed -n "s/^$2://p"
}

# Every node sees the whole cluster serving every slot, and every replica is in sync with
# its master (a replica that never synced would not take over when its master fails).
cluster_ok() {
	local port
	for port in "${PORTS[@]}"; do
		[[ $(cluster_info "$port" cluster_state) == ok ]] || return 1
		[[ $(cluster_info "$port" cluster_known_nodes) -ge ${#PORTS[@]} ]] || return 1
		if [[ $(cli "$port" ROLE | head -n 1) == slave ]]; then
			cli "$port" INFO replication | grep -q '^master_link_status:up' || return 1
		fi
	done
}

node_dir() { echo "$CLUSTER_DIR/$1"; }

# The pid `up` recorded for the node on port $1, if that process still runs it.
owned_pid() {
	local pid_file pid cmd
	pid_file=$(node_dir "$1")/pid
	[[ -r $pid_file ]] || return 1
	pid=$(<"$pid_file")
	[[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline")
	[[ $cmd == *redis-server*":$1"* ]] || return 1
	printf '%s\n' "$pid"
}

# Polls "$@" until it succeeds or WAIT_SECS pass.
wait_for() {
	local what=$1
	shift
	local deadline=$((SECONDS + WAIT_SECS))
	until "$@"; do
		if ((SECONDS >= deadline)); then
			log "$what: not within ${WAIT_SECS}s"
			return 1
		fi
		sleep 0.25
	done
}

start_node() {
	local port=$1 dir pid
	dir=$(node_dir "$port")
	mkdir -p "$dir"
	log "node $port: starting (log: $dir/redis.log)"
	# fd 9 is the state lock: a server inheriting it would hold the lock for its life.
	setsid "$(server_bin)" --daemonize no --bind "$HOST" --port "$port" \
		--cluster-enabled yes --cluster-config-file nodes.conf \
		--cluster-node-timeout "$NODE_TIMEOUT_MS" --cluster-replica-validity-factor 0 \
		--save "" --appendonly no --dir "$dir" \
		</dev/null >>"$dir/redis.log" 2>&1 9>&- &
	pid=$!
	echo "$pid" >"$dir/pid"
	if ! wait_for "node $port answering" node_answers "$port"; then
		tail -n 20 "$dir/redis.log" >&2
		kill -KILL "$pid" 2>/dev/null || true
		rm -f "$dir/pid"
		die "node $port failed to start"
	fi
}

up() {
	[[ $REPLICAS =~ ^[0-9]+$ ]] || die "REDIS_CLUSTER_REPLICAS must be a number"
	((${#PORTS[@]} >= 3 * (1 + REPLICAS))) ||
		die "a cluster needs at least three masters: $((3 * (1 + REPLICAS))) ports (REDIS_CLUSTER_PORTS)"
	local port started=0
	if ! owned_pid "${PORTS[0]}" >/dev/null && cluster_ok 2>/dev/null; then
		log "an external cluster answers on ${PORTS[*]}"
		return
	fi
	ensure_installed
	for port in "${PORTS[@]}"; do
		if owned_pid "$port" >/dev/null; then
			wait_for "node $port answering" node_answers "$port" || die "node $port is not answering"
			continue
		fi
		if node_answers "$port" || timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$port" 2>/dev/null; then
			die "port $port is in use by something else (set REDIS_CLUSTER_PORTS)"
		fi
		start_node "$port"
		started=1
	done
	# Nodes that come back with their nodes.conf rejoin by themselves; a cluster is formed
	# only when no node knows any other yet.
	if [[ $(cluster_info "${PORTS[0]}" cluster_known_nodes) == 1 ]]; then
		local nodes=()
		for port in "${PORTS[@]}"; do nodes+=("$HOST:$port"); done
		log "forming the cluster of ${nodes[*]}"
		redis-cli --cluster create "${nodes[@]}" --cluster-replicas "$REPLICAS" --cluster-yes \
			>>"$CLUSTER_DIR/create.log" 2>&1 || {
			tail -n 20 "$CLUSTER_DIR/create.log" >&2
			die "redis-cli --cluster create failed"
		}
	fi
	wait_for "cluster_state:ok on every node" cluster_ok || {
		status >&2 || true
		die "the cluster did not become ok"
	}
	if ((started)); then
		log "up: $(urls)"
	else
		log "already up: $(urls)"
	fi
}

down() {
	local port pid dir
	for port in "${PORTS[@]}"; do
		dir=$(node_dir "$port")
		if pid=$(owned_pid "$port"); then
			log "node $port: stopping (pid $pid)"
			kill -TERM "$pid" 2>/dev/null || true
			local deadline=$((SECONDS + 30))
			while kill -0 "$pid" 2>/dev/null; do
				if ((SECONDS >= deadline)); then
					kill -KILL "$pid" 2>/dev/null || true
					break
				fi
				sleep 0.2
			done
		else
			log "node $port: nothing started by redis-cluster.sh"
		fi
		# No data is kept, so neither is the cluster: the next `up` forms a new one.
		rm -f "$dir/pid" "$dir/nodes.conf"
	done
}

status() {
	local port pid origin state role rc=0
	for port in "${PORTS[@]}"; do
		origin=external pid=
		if pid=$(owned_pid "$port"); then origin="started by redis-cluster.sh, pid $pid"; fi
		if node_answers "$port"; then
			state=$(cluster_info "$port" cluster_state)
			role=$(cli "$port" ROLE | head -n 1)
			echo "node $HOST:$port: up, $role, cluster_state:${state:-unknown} ($origin)"
			[[ $state == ok ]] || rc=1
		else
			echo "node $HOST:$port: down${pid:+ ($origin)}"
			rc=1
		fi
	done
	return "$rc"
}

urls() {
	local port list=()
	for port in "${PORTS[@]}"; do list+=("redis://$HOST:$port"); done
	(
		IFS=,
		echo "${list[*]}"
	)
}

main() {
	(($# == 1)) || usage
	case $1 in
	up | down)
		mkdir -p "$CLUSTER_DIR"
		# Serialises concurrent runs (parallel CI jobs) over the same state.
		exec 9>"$CLUSTER_DIR/.lock"
		flock -w 600 9 || die "timed out waiting for $CLUSTER_DIR/.lock"
		"$1"
		;;
	status) status ;;
	urls) urls ;;
	*) usage ;;
	esac
}

main "$@"
