#!/usr/bin/env bash
# Run MPIM as separate processes on this host: one of each service and N gateways, on
# MariaDB, Redis and ZooKeeper (brought up by scripts/services.sh).
#
#   scripts/distributed.sh up [--gateways N]   build (release) and start everything
#   scripts/distributed.sh down                stop what `up` started
#   scripts/distributed.sh status              one line per process; exit 0 iff all run
#
# Gateway i (1-based) serves clients on TCP 6000+10*(i-1) and HTTP/WebSocket 6080+10*(i-1)
# (so the first gateway has the default ports 6000 and 6080). Each process logs to
# <state>/distributed/<name>.log and keeps its pid in <name>.pid.
#
# Environment:
#   MPIM_STATE_DIR  state directory (default: <repo>/.run)
#   DISTRIBUTED_DB      database name (default: mpim)
#   DISTRIBUTED_PREFIX  Redis key prefix (default: empty)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MPIM_STATE_DIR:-$REPO_ROOT/.run}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
LOG_TAG=distributed
PROC_DIR=$STATE_DIR/distributed
DB=${DISTRIBUTED_DB:-mpim}
PREFIX=${DISTRIBUTED_PREFIX:-}
BIN=$REPO_ROOT/target/release
SERVICES=(im-user im-presence im-message im-group)
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

up() {
  local gateways=1
  while (($#)); do
    case $1 in
      --gateways) gateways=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  mkdir -p "$PROC_DIR"
  "$REPO_ROOT/scripts/services.sh" up zookeeper mariadb redis
  mysql -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  log "building (release)"
  # -p mpim for mpim-certs: a --bin here would limit every package to that binary.
  (cd "$REPO_ROOT" && cargo build --release --locked -p im-user -p im-presence -p im-message \
    -p im-group -p im-gateway -p mpim)
  # Mutual TLS between the processes and the ZooKeeper credential (docs/security.md).
  cluster_trust "$BIN"
  local common=(
    MPIM_DISCOVERY__ZOOKEEPER=127.0.0.1:2181
    MPIM_REDIS__URL=redis://127.0.0.1:6379
    MPIM_REDIS__PREFIX="$PREFIX"
    MPIM_LOG__LEVEL=info
  )
  local db=MPIM_DATABASE__URL=mysql://root@127.0.0.1:3306/$DB
  proc_start_as user im-user "${common[@]}" "$db" MPIM_AUTH__JWT_SECRET="$(jwt_secret)" \
    "$BIN/im-user"
  proc_start_as presence im-presence "${common[@]}" "$BIN/im-presence"
  proc_start_as message im-message "${common[@]}" "$db" "$BIN/im-message"
  proc_start_as group im-group "${common[@]}" "$db" "$BIN/im-group"
  for service in "${SERVICES[@]}"; do proc_wait_log "$service" "metrics at /metrics"; done
  local i
  for ((i = 1; i <= gateways; i++)); do
    local offset=$((10 * (i - 1)))
    proc_start_as gateway "im-gateway-$i" "${common[@]}" \
      MPIM_SERVER__LISTEN=127.0.0.1:$((6000 + offset)) \
      MPIM_WS__LISTEN=127.0.0.1:$((6080 + offset)) \
      MPIM_GATEWAY__ID="gw-$i" "$BIN/im-gateway"
    proc_wait_log "im-gateway-$i" "metrics at /metrics"
  done
  status
}

down() {
  # The gateways (and their clients) first, then the services they call.
  # shellcheck disable=SC2046 # names have no spaces
  proc_stop_all 10 $(proc_names | grep '^im-gateway-')
  # shellcheck disable=SC2046
  proc_stop_all 10 $(proc_names)
}

status() {
  local ok=0 name pid names
  names=$(proc_names)
  [[ -n $names ]] || { log "nothing started"; return 1; }
  for name in $names; do
    if pid=$(proc_pid "$name"); then
      printf '%-14s up    pid %-7s %s\n' "$name" "$pid" \
        "$(grep -oE '(addr|tcp)=[^ ]*' "$PROC_DIR/$name.log" | sort -u | head -3 | tr '\n' ' ')"
    else
      printf '%-14s DOWN  (see %s)\n' "$name" "$PROC_DIR/$name.log"
      ok=1
    fi
  done
  return $ok
}

case ${1:-} in
  up) shift; up "$@" ;;
  down) down ;;
  status) status ;;
  *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
