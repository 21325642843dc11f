#!/usr/bin/env bash
# Fault drills against the cluster of scripts/cluster.sh, each under load through nginx.
#
#   scripts/drills.sh [--short] [drill ...]
#
# Drills (default: every one, in this order):
#   e2e            im-bench pairs through nginx on TCP 6000, TLS 6001, WebSocket 6080 and
#                  WSS 6443 (no fault): lost=0, dup=0 on each
#   im-user im-presence im-message im-group
#                  kill -9 the first instance of that service
#   gateway        kill -9 the first gateway
#   freeze         freeze the first gateway for 15 s (SIGSTOP, then SIGCONT): alive, its
#                  kernel accepting connections, nothing answered
#   redis-restart  stop Redis and start it again: with systemctl when systemd runs it, with
#                  scripts/services.sh when that started it, else SHUTDOWN and its own configuration
#   redis-flush    FLUSHALL
#   zookeeper      stop ZooKeeper and start it again
#   replica        restart the MariaDB replica (SIGTERM; the supervisor starts it again);
#                  no friend lookup (a read the replica serves) may fail meanwhile
#   nginx          stop nginx for 5 s
#   rolling        restart every process one at a time, gracefully (SIGTERM, wait until
#                  healthy, next): no send may fail
# --short: e2e and gateway, with a shorter load (what .ci/run runs).
#
# Each fault drill runs `im-bench soak` (SDK clients that reconnect, resume and resend)
# through nginx on 6000, injects the fault after DRILL_FAULT_AT seconds, and measures:
#   lost / dup      acknowledged messages never delivered / delivered twice (must be 0)
#   first ok        from the fault to the first acknowledged send that started after it
#   p99 ok          from the fault to the start of the first second after which every
#                   second's p99 send latency is under DRILL_TARGET_MS again
#   healthy         from the fault until `cluster.sh status` passes again, with nothing
#                   done by hand (the supervisor restarts what died)
# The table goes to stdout and to <state>/drills/results.md; the exit status is 1 when a
# drill lost or doubled a message, the cluster did not come back, or (rolling) a send failed.
#
# Environment: DRILL_PAIRS (20), DRILL_RATE (200 msgs/s), DRILL_SECONDS (25),
# DRILL_FAULT_AT (8), DRILL_TARGET_MS (250), IM_BENCH (default: target/release/im-bench, else
# target/debug/im-bench, else built with cargo), MPIM_STATE_DIR.
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MPIM_STATE_DIR:-$REPO_ROOT/.run}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
LOG_TAG=drills
PROC_DIR=$STATE_DIR/cluster
OUT=$STATE_DIR/drills
CLUSTER=$REPO_ROOT/scripts/cluster.sh
SERVICES_SH=$REPO_ROOT/scripts/services.sh
PAIRS=${DRILL_PAIRS:-20}
RATE=${DRILL_RATE:-200}
SECONDS_OF_LOAD=${DRILL_SECONDS:-25}
FAULT_AT=${DRILL_FAULT_AT:-8}
TARGET_MS=${DRILL_TARGET_MS:-250}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
ALL=(e2e im-user im-presence im-message im-group gateway freeze redis-restart redis-flush
  zookeeper replica nginx rolling)

# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

now_ms() { date +%s%3N; }

bench_binary() {
  if [[ -n ${IM_BENCH:-} ]]; then echo "$IM_BENCH"; return; fi
  local profile
  for profile in release debug; do
    [[ -x $TARGET_DIR/$profile/im-bench ]] && { echo "$TARGET_DIR/$profile/im-bench"; return; }
  done
  # `cluster.sh up` builds the servers only.
  command -v cargo >/dev/null ||
    die "no im-bench: cargo build --release -p benches --bin im-bench (or set IM_BENCH)"
  log "building im-bench (release)"
  (cd "$REPO_ROOT" && cargo build --release --locked -p benches --bin im-bench >&2) ||
    die "building im-bench failed"
  echo "$TARGET_DIR/release/im-bench"
}

healthy() { "$CLUSTER" status >/dev/null 2>&1; }

# Waits up to $1 seconds for the cluster to be healthy; prints the ms it took.
wait_healthy() {
  local start deadline=$((SECONDS + $1))
  start=$(now_ms)
  until healthy; do
    ((SECONDS < deadline)) || { echo -1; return 1; }
    sleep 0.2
  done
  echo $(($(now_ms) - start))
}

pid_of() { proc_pid "$1" || die "$1 is not running"; }

# ---------------------------------------------------------------- faults

redis_cli() { redis-cli -h 127.0.0.1 -p "${REDIS_PORT:-6379}" "$@"; }

# Stops Redis and starts it again the way it runs: a server of systemd's unit (the package's,
# Restart=always: it would come back on its own, beside one started here) through systemctl,
# one of scripts/services.sh through it, any other with SHUTDOWN and its own configuration.
redis_restart() {
  local pid config dir
  pid=$(redis_cli info server | tr -d '\r' | sed -n 's/^process_id://p')
  if [[ -d /run/systemd/system && -n $pid ]] &&
    [[ $(systemctl show -p MainPID --value redis-server 2>/dev/null) == "$pid" ]]; then
    as_root systemctl restart redis-server
    return
  fi
  if [[ $("$SERVICES_SH" status redis 2>/dev/null) == *"started by services.sh"* ]]; then
    "$SERVICES_SH" down redis >/dev/null 2>&1
    "$SERVICES_SH" up redis >/dev/null 2>&1
    return
  fi
  config=$(redis_cli info server | tr -d '\r' | sed -n 's/^config_file://p')
  dir=$(redis_cli config get dir | tr -d '\r' | sed -n 2p)
  redis_cli shutdown >/dev/null 2>&1 || true
  wait_for_gone 30 || die "Redis did not stop"
  if [[ -n $config ]]; then
    (cd "$dir" && setsid redis-server "$config" --daemonize yes </dev/null >/dev/null 2>&1)
  else
    (cd "$dir" && setsid redis-server --bind 127.0.0.1 --port "${REDIS_PORT:-6379}" \
      --daemonize yes </dev/null >/dev/null 2>&1)
  fi
}

wait_for_gone() {
  local deadline=$((SECONDS + $1))
  while redis_cli ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

# Holds `name` down (the supervisor leaves it alone) for $2 seconds after stopping it.
hold_down() {
  local name=$1 pause=$2
  mkdir -p "$PROC_DIR/hold"
  touch "$PROC_DIR/hold/$name"
  proc_stop "$name" 15 >/dev/null 2>&1 || true
  sleep "$pause"
  rm -f "$PROC_DIR/hold/$name"
}

# Freezes the first gateway for $1 seconds: its connections stay open and its kernel still
# accepts new ones, but nothing is answered, so only the clients' silence timeout and the
# supervisor's active health checks notice.
freeze() {
  local pid
  pid=$(pid_of im-gateway-1)
  kill -STOP "$pid"
  sleep "$1"
  kill -CONT "$pid"
}

fault() {
  case $1 in
    im-user | im-presence | im-message | im-group) kill -9 "$(pid_of "$1-1")" ;;
    gateway) kill -9 "$(pid_of im-gateway-1)" ;;
    freeze) freeze 15 ;;
    redis-restart) redis_restart ;;
    redis-flush) redis_cli flushall >/dev/null ;;
    zookeeper)
      "$SERVICES_SH" down zookeeper >/dev/null 2>&1
      "$SERVICES_SH" up zookeeper >/dev/null 2>&1 ;;
    replica) kill -TERM "$(pid_of mariadb-replica)" ;;
    nginx) hold_down nginx 5 ;;
    *) die "unknown drill $1" ;;
  esac
}

# Restarts every process of the cluster one at a time: SIGTERM, wait for the exit, let the
# supervisor start it, wait until the whole cluster is healthy, next.
rolling() {
  local name
  for name in $(proc_names | grep -E '^im-(user|presence|message|group)-'; \
    proc_names | grep '^im-gateway-'); do
    mkdir -p "$PROC_DIR/hold"
    touch "$PROC_DIR/hold/$name"
    proc_stop "$name" 30 >/dev/null 2>&1
    rm -f "$PROC_DIR/hold/$name"
    wait_healthy 90 >/dev/null || die "the cluster did not come back after restarting $name"
    log "rolling: $name restarted"
  done
}

# ---------------------------------------------------------------- measuring

# `soak` under load with `$1` injected (none for "-"); appends a result row.
drill() {
  local name=$1 bench seconds=$SECONDS_OF_LOAD fault_ms=0 health=-
  bench=$(bench_binary)
  [[ $name == rolling ]] && seconds=$((SECONDS_OF_LOAD * 4))
  wait_healthy 120 >/dev/null || die "the cluster is not healthy before $name ($CLUSTER status)"
  log "$name: $PAIRS pairs, $RATE msgs/s for $seconds s through nginx"
  "$bench" --gateway 127.0.0.1:6000 --drain-seconds 60 soak --pairs "$PAIRS" --rate "$RATE" \
    --seconds "$seconds" --record "$OUT/$name.csv" >"$OUT/$name.out" 2>"$OUT/$name.err" &
  local pid=$!
  until grep -q "ready" "$OUT/$name.err" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || die "$name: im-bench failed: $(tail -3 "$OUT/$name.err")"
    sleep 0.1
  done
  sleep "$FAULT_AT"
  fault_ms=$(now_ms)
  if [[ $name == rolling ]]; then
    rolling
    health=0
  else
    fault "$name"
    health=$(wait_healthy 180) || true
  fi
  local rc=0
  wait "$pid" || rc=$?
  row "$name" "$fault_ms" "$health" "$rc"
}

# From a soak record (start_ms,end_ms,ok) and the fault's time: seconds to the first
# acknowledged send started after the fault, and seconds until every later second's p99
# latency is under the target.
recovery() {
  local csv=$1 f=$2 first p99
  first=$(awk -F, -v f="$f" 'NR > 1 && $3 == 1 && $1 >= f && (m == "" || $2 < m) { m = $2 }
    END { if (m == "") print "-"; else printf "%.1f\n", (m - f) / 1000 }' "$csv")
  p99=$(awk -F, -v f="$f" 'NR > 1 && $1 >= f { print int(($1 - f) / 1000), $2 - $1 }' "$csv" |
    sort -k1,1n -k2,2n |
    awk -v target="$TARGET_MS" '{ s = $1; v[s, ++n[s]] = $2; if (s > last) last = s }
      END {
        bad = -1
        for (s = 0; s <= last; s++)
          if (n[s] && v[s, int(0.99 * (n[s] - 1)) + 1] > target) bad = s
        printf "%.1f\n", bad + 1
      }')
  echo "$first $p99"
}

# The figures of one drill from its RESULT line and its per-send record.
row() {
  local name=$1 fault_ms=$2 health=$3 rc=$4 result recovery
  result=$(grep '^RESULT' "$OUT/$name.out" || echo "RESULT none")
  field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$result"; }
  recovery=$(recovery "$OUT/$name.csv" "$fault_ms" 2>/dev/null || echo "- -")
  local first=${recovery% *} p99=${recovery#* } healthy_s=-
  [[ $health =~ ^[0-9]+$ ]] && healthy_s=$(awk -v ms="$health" 'BEGIN { printf "%.1f", ms / 1000 }')
  [[ $health == -1 ]] && healthy_s=never
  printf '| %s | %s | %s | %s | %s | %s | %s s | %s s | %s s | %s/%s |\n' "$name" \
    "$(field sent)" "$(field acked)" "$(field failed)" "$(field lost)" "$(field dup)" "$first" \
    "$p99" "$healthy_s" "$(field reads_failed)" "$(field reads)" | tee -a "$OUT/results.md"
  if [[ $rc != 0 || $(field lost) != 0 || $(field dup) != 0 || $healthy_s == never ]]; then
    FAILED+=("$name")
  fi
  if [[ $name == rolling && $(field failed) != 0 ]]; then FAILED+=("$name (failed sends)"); fi
  if [[ $name == replica && $(field reads_failed) != 0 ]]; then
    FAILED+=("$name (failed lookups)")
  fi
}

# No fault: im-bench pairs through every nginx port.
e2e() {
  local bench ca=$PROC_DIR/tls/ca.pem how line
  bench=$(bench_binary)
  wait_healthy 120 >/dev/null || die "the cluster is not healthy ($CLUSTER status)"
  for how in "tcp --gateway 127.0.0.1:6000" "tls --gateway tls://127.0.0.1:6001 --ca $ca" \
    "ws --ws-url ws://127.0.0.1:6080/ws" "wss --ws-url wss://127.0.0.1:6443/ws --ca $ca"; do
    local label=${how%% *} args
    read -ra args <<<"${how#* }"
    log "e2e: im-bench pairs over $label"
    if ! "$bench" "${args[@]}" pairs --users 40 --rate 200 --seconds 5 \
      >"$OUT/e2e-$label.out" 2>"$OUT/e2e-$label.err"; then
      FAILED+=("e2e $label")
    fi
    line=$(grep '^RESULT' "$OUT/e2e-$label.out" || echo "RESULT none: $(tail -1 "$OUT/e2e-$label.err")")
    printf '| e2e %s | %s |\n' "$label" "$line" | tee -a "$OUT/results.md"
  done
}

main() {
  local drills=() name
  while (($#)); do
    case $1 in
      --short)
        drills=(e2e gateway)
        SECONDS_OF_LOAD=${DRILL_SECONDS:-15}
        FAULT_AT=${DRILL_FAULT_AT:-5} ;;
      -h | --help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
      *) drills+=("$1") ;;
    esac
    shift
  done
  ((${#drills[@]})) || drills=("${ALL[@]}")
  IM_BENCH=$(bench_binary)
  mkdir -p "$OUT"
  : >"$OUT/results.md"
  FAILED=()
  local header=0
  for name in "${drills[@]}"; do
    if [[ $name == e2e ]]; then e2e; continue; fi
    if ((!header)); then
      header=1
      printf '| drill | sent | acked | failed | lost | dup | first ok | p99 ok | healthy | lookups failed |\n' | tee -a "$OUT/results.md"
      printf '|---|---|---|---|---|---|---|---|---|---|\n' | tee -a "$OUT/results.md"
    fi
    drill "$name"
  done
  if ((${#FAILED[@]})); then
    log "FAILED: ${FAILED[*]} (logs in $OUT)"
    exit 1
  fi
  log "every drill passed (logs in $OUT)"
}

main "$@"
