#!/usr/bin/env bash
# MPIM against ejabberd (XMPP) and mosquitto (MQTT) under the same load, one system at a
# time: im-bench's `pairs` at each rate, and the resident memory per idle authenticated
# connection.
#
#   scripts/compare.sh [--rates 2000,5000,10000] [--users 2000] [--seconds 20]
#                      [--body-bytes 32] [--idle 2000] [--systems mpim,ejabberd,mqtt]
#                      [--mqtt-server HOST:PORT] [--no-build]
#
# What it starts, on 127.0.0.1 (and stops at the end):
#   mpim      target/release/mpim on a fresh data directory, client TCP port 6400;
#   ejabberd  Debian's package, run as root from its own configuration (written to
#             <state>/compare/ejabberd/ejabberd.yml): c2s on 5222 without TLS, no shapers,
#             SQL authentication with plain passwords, mod_mam and mod_offline on SQL and
#             mod_stream_mgmt, all in the MariaDB database `ejabberd_bench` (recreated from
#             the package's schema each run, its users made by one INSERT); Erlang node
#             ejabberd-compare, distribution on 127.0.0.1:5291 without epmd;
#   mosquitto Debian's package, its own instance on 1884 with TCP_NODELAY (a broker that
#             already runs, such as the system's on 1883, has Nagle's algorithm on and has
#             served other clients: its latency and memory figures would not compare); or
#             the broker --mqtt-server names, as it is.
# MariaDB is brought up by scripts/services.sh when it does not answer. Missing packages
# (ejabberd, erlang-p1-mysql, mosquitto) are installed with apt-get.
#
# Each system's idle run comes first, on the freshly started server, so the memory of the
# pairs runs does not hide in its figure. Every run's RESULT line is printed as it ends; a
# table of all of them follows. Logs: <state>/compare/*.log.
#
# Environment:
#   MPIM_STATE_DIR  state directory (default: <repo>/.run)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MPIM_STATE_DIR:-$REPO_ROOT/.run}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
LOG_TAG=compare
PROC_DIR=$STATE_DIR/compare
BIN=$REPO_ROOT/target/release
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

RATES=2000,5000,10000
USERS=2000
SECONDS_MEASURED=20
BODY_BYTES=32
IDLE=2000
SYSTEMS=mpim,ejabberd,mqtt
BUILD=1

MPIM_PORT=6400
EJABBERD_PORT=5222
EJABBERD_DIST_PORT=5291
EJABBERD_DB=ejabberd_bench
EJABBERD_DB_PASSWORD=ejabberd-bench
MQTT_PORT=1884
MQTT_SERVER=
PASSWORD=bench-password

RESULTS=()

usage() {
  sed -n '2,8p' "$0" >&2
  exit 2
}

while (($#)); do
  case $1 in
    --rates) RATES=$2; shift 2 ;;
    --users) USERS=$2; shift 2 ;;
    --seconds) SECONDS_MEASURED=$2; shift 2 ;;
    --body-bytes) BODY_BYTES=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --systems) SYSTEMS=$2; shift 2 ;;
    --mqtt-server) MQTT_SERVER=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    -h | --help) usage ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
IFS=, read -r -a RATE_LIST <<<"$RATES"
IFS=, read -r -a SYSTEM_LIST <<<"$SYSTEMS"
for system in "${SYSTEM_LIST[@]}"; do
  [[ $system =~ ^(mpim|ejabberd|mqtt)$ ]] || die "unknown system $system"
done

sql() { "$MYSQL" -uroot -h"$HOST" -P3306 --batch --skip-column-names "$@"; }

# --------------------------------------------------------------------------- setup

install_missing() {
  local wanted=" ${SYSTEM_LIST[*]} " packages=()
  if [[ $wanted == *" ejabberd "* ]]; then
    [[ -x /usr/sbin/ejabberdctl ]] || packages+=(ejabberd)
    compgen -G '/usr/lib/*/p1_mysql-*' >/dev/null || compgen -G '/usr/lib/erlang/lib/p1_mysql-*' \
      >/dev/null || packages+=(erlang-p1-mysql)
  fi
  if [[ $wanted == *" mqtt "* && -z $MQTT_SERVER ]] && ! find_cmd mosquitto >/dev/null; then
    packages+=(mosquitto)
  fi
  if ((${#packages[@]})); then
    apt_install "${packages[@]}"
    # The package's own ejabberd service, when it started, holds port 5222.
    if [[ " ${packages[*]} " == *" ejabberd "* ]] && command -v systemctl >/dev/null; then
      systemctl stop ejabberd 2>/dev/null || true
    fi
  fi
  if [[ $wanted == *" ejabberd "* ]]; then
    "$REPO_ROOT/scripts/services.sh" up mariadb
    MYSQL=$(find_cmd mariadb mysql) || die "no MariaDB client"
  fi
}

build() {
  if ((BUILD)); then
    log "building im-bench and mpim (release)"
    (cd "$REPO_ROOT" && cargo build --release --locked -p benches -p mpim)
  fi
  [[ -x $BIN/im-bench && -x $BIN/mpim ]] || die "no release build in $BIN (drop --no-build)"
}

wait_port() {
  local name=$1 port=$2 deadline=$((SECONDS + ${3:-60}))
  until port_open "$port"; do
    proc_running "$name" || die "$name exited; see $PROC_DIR/$name.log"
    ((SECONDS < deadline)) || die "$name does not answer on port $port; see $PROC_DIR/$name.log"
    sleep 0.5
  done
}

port_free() {
  ! port_open "$1" || die "port $1 is taken: $(ss -ltnp "sport = :$1" | tail -n +2)"
}

# ---------------------------------------------------------------------------- mpim

start_mpim() {
  port_free "$MPIM_PORT"
  rm -rf "$PROC_DIR/mpim-data"
  # A cheaper password hash only shortens setup, when thousands of users log in.
  proc_start mpim MPIM_AUTH__ARGON2_MEMORY_KIB=1024 MPIM_AUTH__ARGON2_ITERATIONS=1 \
    "$BIN/mpim" --data "$PROC_DIR/mpim-data" --listen "$HOST:$MPIM_PORT" \
    --ws-listen "$HOST:$((MPIM_PORT + 80))"
  wait_port mpim "$MPIM_PORT"
  SERVER_PID=$(proc_pid mpim)
  BENCH_ARGS=(--target mpim --gateway "$HOST:$MPIM_PORT")
  IDLE_ARGS=(--devices-per-user 1)
}

stop_mpim() { proc_stop mpim 30; }

# ------------------------------------------------------------------------ ejabberd

ejabberd_config() {
  cat <<EOF
# Written by scripts/compare.sh: ejabberd for a comparison with MPIM on loopback.
hosts:
  - localhost
loglevel: warning
log_rotate_count: 0
hide_sensitive_log_data: true
sql_type: mysql
sql_server: "$HOST"
sql_port: 3306
sql_database: $EJABBERD_DB
sql_username: $EJABBERD_DB
sql_password: "$EJABBERD_DB_PASSWORD"
new_sql_schema: false
default_db: sql
auth_method: sql
auth_password_format: plain
max_fsm_queue: 100000
# The default 1000 entries thrash with thousands of users: every message would read the
# sender's MAM preferences from SQL again.
cache_size: 100000
listen:
  -
    port: $EJABBERD_PORT
    ip: "$HOST"
    module: ejabberd_c2s
    starttls: false
    starttls_required: false
    max_stanza_size: 1048576
    shaper: none
    access: c2s
    backlog: 1024
shaper: {}
shaper_rules:
  c2s_shaper: none
  max_user_sessions: 10
  max_user_offline_messages: 100000
access_rules:
  c2s:
    allow: all
modules:
  mod_stream_mgmt:
    resend_on_timeout: if_offline
  mod_mam:
    db_type: sql
    default: always
  mod_offline:
    db_type: sql
    access_max_user_messages: max_user_offline_messages
EOF
}

# The database from the package's schema, its user (p1_mysql cannot log in without a
# password), and the accounts bench-0 … bench-(n-1), all in one INSERT.
ejabberd_database() {
  local accounts=$1 schema='' candidate
  for candidate in /usr/share/ejabberd/sql/mysql.sql /usr/lib/*/ejabberd-*/priv/sql/mysql.sql; do
    if [[ -r $candidate ]]; then schema=$candidate && break; fi
  done
  [[ -n $schema ]] || die "the ejabberd package's mysql.sql schema is missing"
  sql -e "DROP DATABASE IF EXISTS \`$EJABBERD_DB\`;
    CREATE DATABASE \`$EJABBERD_DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
  local host
  for host in 127.0.0.1 localhost; do
    sql -e "CREATE USER IF NOT EXISTS '$EJABBERD_DB'@'$host' IDENTIFIED BY '$EJABBERD_DB_PASSWORD';
      GRANT ALL ON \`$EJABBERD_DB\`.* TO '$EJABBERD_DB'@'$host';"
  done
  sql "$EJABBERD_DB" <"$schema"
  sql "$EJABBERD_DB" -e "INSERT INTO users (username, password)
    SELECT CONCAT('bench-', seq), '$PASSWORD' FROM seq_0_to_$((accounts - 1));"
  log "ejabberd: database $EJABBERD_DB from $schema, $accounts accounts"
}

start_ejabberd() {
  port_free "$EJABBERD_PORT"
  port_free "$EJABBERD_DIST_PORT"
  local dir=$PROC_DIR/ejabberd libs accounts=$USERS
  ((IDLE <= accounts)) || accounts=$IDLE
  rm -rf "$dir"
  mkdir -p "$dir/spool" "$dir/logs"
  ejabberd_config >"$dir/ejabberd.yml"
  ejabberd_database "$accounts"
  # Where ejabberdctl finds ejabberd's Erlang applications.
  libs=$(sed -n "s/^ERL_LIBS='\(.*\)'$/\1/p" /usr/sbin/ejabberdctl)
  [[ -n $libs ]] || die "cannot read ERL_LIBS from /usr/sbin/ejabberdctl"
  # As ejabberdctl's `foreground` does, but as root (the package's ejabberdctl switches to
  # the ejabberd user, who may not reach this directory) and without epmd.
  PROC_PATTERN=ejabberd-compare proc_start ejabberd \
    ERL_LIBS="$libs" HOME="$dir" ERL_MAX_PORTS=65536 ERL_MAX_ETS_TABLES=1400 \
    EJABBERD_CONFIG_PATH="$dir/ejabberd.yml" EJABBERD_LOG_PATH="$dir/logs/ejabberd.log" \
    ERL_CRASH_DUMP="$dir/logs/erl_crash.dump" \
    erl -sname ejabberd-compare@localhost +K true +P 250000 -noinput \
    -setcookie "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
    -erl_epmd_port "$EJABBERD_DIST_PORT" -start_epmd false \
    -kernel inet_dist_use_interface '{127,0,0,1}' \
    -mnesia dir "\"$dir/spool\"" -s ejabberd
  wait_port ejabberd "$EJABBERD_PORT" 120
  SERVER_PID=$(proc_pid ejabberd)
  BENCH_ARGS=(--target ejabberd --server "$HOST:$EJABBERD_PORT" --prefix bench)
  IDLE_ARGS=()
  # ejabberd waits on MariaDB for its archive: MariaDB too must be done.
  mapfile -t BUSY_PIDS < <(ss -Hltnp "sport = :3306" | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -u)
}

stop_ejabberd() {
  local rows
  rows=$(sql "$EJABBERD_DB" -e "SELECT COUNT(*) FROM archive" 2>/dev/null || echo '?')
  ARCHIVE_NOTE="ejabberd MAM archive rows after the runs: $rows"
  log "$ARCHIVE_NOTE"
  proc_stop ejabberd 30
}

# ----------------------------------------------------------------------- mosquitto

start_mqtt() {
  if [[ -n $MQTT_SERVER ]]; then
    local port=${MQTT_SERVER##*:}
    SERVER_PID=$(ss -Hltnp "sport = :$port" | grep -o 'pid=[0-9]*' | head -n 1 | cut -d= -f2)
    [[ -n $SERVER_PID ]] || die "nothing of this host listens on $MQTT_SERVER"
    log "mqtt: using the broker on $MQTT_SERVER (pid $SERVER_PID)"
    BENCH_ARGS=(--target mqtt --server "$MQTT_SERVER" --prefix bench)
  else
    port_free "$MQTT_PORT"
    local dir=$PROC_DIR/mosquitto
    rm -rf "$dir"
    mkdir -p "$dir"
    # Debian's defaults but for TCP_NODELAY: without it, Nagle's algorithm holds pushes
    # back for the peer's delayed ACK (p99 about 40 ms at any rate).
    cat >"$dir/mosquitto.conf" <<EOF
# Written by scripts/compare.sh.
listener $MQTT_PORT $HOST
allow_anonymous true
set_tcp_nodelay true
persistence true
persistence_location $dir/
user $(id -un)
EOF
    proc_start mosquitto "$(find_cmd mosquitto)" -c "$dir/mosquitto.conf"
    wait_port mosquitto "$MQTT_PORT"
    SERVER_PID=$(proc_pid mosquitto)
    BENCH_ARGS=(--target mqtt --server "$HOST:$MQTT_PORT" --prefix bench)
  fi
  IDLE_ARGS=()
}

stop_mqtt() { if [[ -z $MQTT_SERVER ]]; then proc_stop mosquitto 15; fi; }

# ----------------------------------------------------------------------------- runs

# Runs im-bench with "$@" after the system's options; prints and keeps its RESULT line.
bench() {
  local label=$1 line
  shift
  local log=$PROC_DIR/bench-$label.log
  log "$label: im-bench ${BENCH_ARGS[*]} $*"
  line=$("$BIN/im-bench" "${BENCH_ARGS[@]}" "$@" 2>"$log" | grep '^RESULT' || true)
  if [[ -z $line ]]; then
    tail -n 5 "$log" >&2
    line="RESULT failed=1 system=${label%%-*} (no result; see $log)"
  fi
  printf '%s %s\n' "$label" "$line"
  RESULTS+=("$label $line")
}

# Waits until one connection logs in (ejabberd's SQL pool may come up after its port),
# then opens and closes WARM connections at once, so that what a server allocates once
# (caches, pools, the buffers of concurrent logins) is in its memory before the idle run
# reads it.
WARM=100
wait_ready() {
  local deadline=$((SECONDS + 60))
  until "$BIN/im-bench" "${BENCH_ARGS[@]}" idle --connections 1 --hold-seconds 0 \
    "${IDLE_ARGS[@]}" 2>/dev/null | grep -q 'opened=1 '; do
    ((SECONDS < deadline)) || die "$1: no login succeeds"
    sleep 1
  done
  "$BIN/im-bench" "${BENCH_ARGS[@]}" idle --connections "$WARM" --hold-seconds 0 \
    "${IDLE_ARGS[@]}" 2>/dev/null | grep -q "opened=$WARM " || die "$1: the warm-up failed"
  sleep 2
}

run_system() {
  local system=$1 rate
  log "=== $system"
  BUSY_PIDS=()
  "start_$system"
  wait_ready "$system"
  bench "$system-idle" idle --connections "$IDLE" --hold-seconds 10 --server-pid "$SERVER_PID" \
    "${IDLE_ARGS[@]}"
  for rate in "${RATE_LIST[@]}"; do
    wait_quiet "$SERVER_PID" "${BUSY_PIDS[@]}"
    bench "$system-$rate" --body-bytes "$BODY_BYTES" pairs --users "$USERS" --rate "$rate" \
      --seconds "$SECONDS_MEASURED"
  done
  "stop_$system"
}

# CPU time of processes "$@" so far, in clock ticks.
cpu_ticks() {
  local pid total=0
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# Waits (at most 120 s) until processes "$@" together use under 5 % of a core: a run that
# overloaded a server leaves it working through its backlog, which the next run must not
# inherit.
wait_quiet() {
  local deadline=$((SECONDS + 120)) hz before after
  hz=$(getconf CLK_TCK)
  while ((SECONDS < deadline)); do
    before=$(cpu_ticks "$@")
    sleep 2
    after=$(cpu_ticks "$@")
    if (((after - before) * 100 < hz * 2 * 5)); then return 0; fi
  done
  log "still busy after 120 s: pids $*"
}

# The value of name= in a RESULT line.
field() { grep -o " $2=[^ ]*" <<<"$1" | head -n 1 | cut -d= -f2; }

summary() {
  local entry label
  printf '\n%-9s %6s %7s %7s %9s %6s %4s %9s %9s %10s %10s\n' system rate sent acked \
    delivered lost dup p50_ms p99_ms msgs_per_s ack_p99_ms
  for entry in "${RESULTS[@]}"; do
    label=${entry%% *}
    [[ $label != *-idle ]] || continue
    printf '%-9s %6s %7s %7s %9s %6s %4s %9s %9s %10s %10s\n' "${label%%-*}" "${label#*-}" \
      "$(field "$entry" sent)" "$(field "$entry" acked)" "$(field "$entry" delivered)" \
      "$(field "$entry" lost)" "$(field "$entry" dup)" "$(field "$entry" p50_ms)" \
      "$(field "$entry" p99_ms)" "$(field "$entry" msgs_per_s)" "$(field "$entry" ack_p99_ms)"
  done
  printf '\n%-9s %11s %14s %14s %14s\n' system connections rss_before_kib rss_after_kib \
    bytes_per_conn
  for entry in "${RESULTS[@]}"; do
    label=${entry%% *}
    [[ $label == *-idle ]] || continue
    printf '%-9s %11s %14s %14s %14s\n' "${label%%-*}" "$(field "$entry" connections)" \
      "$(field "$entry" rss_before_kib)" "$(field "$entry" rss_after_kib)" \
      "$(field "$entry" bytes_per_conn)"
  done
  if [[ -n ${ARCHIVE_NOTE:-} ]]; then printf '\n%s\n' "$ARCHIVE_NOTE"; fi
}

cleanup() {
  # shellcheck disable=SC2046 # names have no spaces
  proc_stop_all 30 $(proc_names)
}

main() {
  mkdir -p "$PROC_DIR"
  # Every connection is a file, in im-bench and in the servers it starts.
  ulimit -n "$(ulimit -Hn)"
  trap cleanup EXIT
  install_missing
  build
  local system
  for system in "${SYSTEM_LIST[@]}"; do run_system "$system"; done
  summary
}

main
