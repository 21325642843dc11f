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
DIR=$STATE_DIR/distributed
DB=${DISTRIBUTED_DB:-mpim}
PREFIX=${DISTRIBUTED_PREFIX:-}
BIN=$REPO_ROOT/target/release
SERVICES=(im-user im-presence im-message im-group)

log() { printf 'distributed: %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

running() { [[ -f $DIR/$1.pid ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

# Waits until `name`'s log says `pattern` (or the process dies).
wait_log() {
  local name=$1 pattern=$2 deadline=$((SECONDS + 60))
  until grep -q "$pattern" "$DIR/$name.log" 2>/dev/null; do
    running "$name" || die "$name exited; see $DIR/$name.log"
    ((SECONDS < deadline)) || die "$name did not start in 60 s; see $DIR/$name.log"
    sleep 0.2
  done
}

start() {
  local name=$1 binary=$2
  shift 2
  if running "$name"; then
    log "$name: already running (pid $(cat "$DIR/$name.pid"))"
    return
  fi
  env -u MPIM_STATE_DIR "$@" "$BIN/$binary" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
}

secret() {
  [[ -s $DIR/jwt-secret ]] || head -c 48 /dev/urandom | base64 | tr -d '\n' >"$DIR/jwt-secret"
  cat "$DIR/jwt-secret"
}

up() {
  local gateways=1
  while (($#)); do
    case $1 in
      --gateways) gateways=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  mkdir -p "$DIR"
  "$REPO_ROOT/scripts/services.sh" up zookeeper mariadb redis
  mysql -uroot -h127.0.0.1 -e "CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  log "building (release)"
  (cd "$REPO_ROOT" && cargo build --release --locked -p im-user -p im-presence -p im-message \
    -p im-group -p im-gateway)
  local common=(
    MPIM_DISCOVERY__ZOOKEEPER=127.0.0.1:2181
    MPIM_REDIS__URL=redis://127.0.0.1:6379
    MPIM_REDIS__PREFIX="$PREFIX"
    MPIM_LOG__LEVEL=info
  )
  local db=MPIM_DATABASE__URL=mysql://root@127.0.0.1:3306/$DB
  start im-user im-user "${common[@]}" "$db" MPIM_AUTH__JWT_SECRET="$(secret)"
  start im-presence im-presence "${common[@]}"
  start im-message im-message "${common[@]}" "$db"
  start im-group im-group "${common[@]}" "$db"
  for service in "${SERVICES[@]}"; do wait_log "$service" "metrics at /metrics"; done
  local i
  for ((i = 1; i <= gateways; i++)); do
    local offset=$((10 * (i - 1)))
    start "im-gateway-$i" im-gateway "${common[@]}" \
      MPIM_SERVER__LISTEN=127.0.0.1:$((6000 + offset)) \
      MPIM_WS__LISTEN=127.0.0.1:$((6080 + offset)) \
      MPIM_GATEWAY__ID="gw-$i"
    wait_log "im-gateway-$i" "metrics at /metrics"
  done
  status
}

down() {
  local name pid
  for pidfile in "$DIR"/*.pid; do
    [[ -e $pidfile ]] || continue
    name=$(basename "$pidfile" .pid)
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      log "$name: stopped"
    fi
    rm -f "$pidfile"
  done
}

status() {
  local ok=0 name
  for pidfile in "$DIR"/*.pid; do
    [[ -e $pidfile ]] || { log "nothing started"; return 1; }
    name=$(basename "$pidfile" .pid)
    if running "$name"; then
      printf '%-14s up    pid %-7s %s\n' "$name" "$(cat "$pidfile")" \
        "$(grep -oE '(addr|tcp)=[^ ]*' "$DIR/$name.log" | sort -u | head -3 | tr '\n' ' ')"
    else
      printf '%-14s DOWN  (see %s)\n' "$name" "$DIR/$name.log"
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
