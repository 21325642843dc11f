#!/usr/bin/env bash
# Run MPIM on this host as the design draws it: nginx in front (plain and TLS), two gateways,
# two instances of every service, ZooKeeper, Redis, and MariaDB with a replica.
#
#   scripts/cluster.sh up [--redis-cluster] [--gateways N] [--instances N]
#   scripts/cluster.sh status          every process, its ports and health; exit 0 iff all healthy
#   scripts/cluster.sh down [--purge]  stop what `up` started (--purge: and delete its state)
#
# `up` installs what is missing from Debian's packages (nginx and its stream module, openssl,
# MariaDB), brings up ZooKeeper, MariaDB and Redis through scripts/services.sh (or, with
# --redis-cluster, a three-master Redis Cluster through scripts/redis-cluster.sh instead of
# the single Redis), turns on the primary's binary log when it is off (one restart of
# MariaDB; see scripts/cluster-mariadb.sh), starts a MariaDB replica, makes a self-signed
# certificate, builds the release binaries (installing gcc and libc6-dev first when there is
# no C compiler: rustup brings none), starts N (default 2) instances of each service
# and of the gateway, then nginx. It is idempotent: what runs is left running, what is
# missing is started, and instances beyond N are stopped (after nginx stopped sending
# clients to them), so `up --gateways 3` scales a tier out and `up --gateways 1` in.
# A process keeps its binary until it is restarted: `down` and `up` after a rebuild.
#
# Ports, all on 127.0.0.1:
#   nginx            6000 client TCP        6001 client TCP over TLS
#                    6080 HTTP/WebSocket    6443 HTTPS/WSS (wss://127.0.0.1:6443/ws)
#                    (GET /nginx-health on 6080/6443: nginx itself answers)
#   gateway n        TCP 6200+n, HTTP/WebSocket 6280+n, /metrics 7200+n   (n = 1..9)
#   service copy n   RPC 6100+10(n-1)+k, /metrics that + 1000              (n = 1..9)
#                    k = 1 im-user, 2 im-presence, 3 im-message, 4 im-group
#                    (copy 1: 6101-6104 and 7101-7104; copy 2: 6111-6114 and 7111-7114)
#   MariaDB          primary 3306 (scripts/services.sh), replica 3307
#   Redis 6379 (Cluster: scripts/redis-cluster.sh's nodes), ZooKeeper 2181
#
# nginx runs from its own configuration, generated from config/nginx/mpim.conf.in into
# <state>/cluster/nginx/nginx.conf (`nginx -c <that> -p <state>/cluster/nginx/`; the system's
# nginx and its sites are left alone). It spreads connections with least_conn. Its own health
# checks are passive (open-source nginx has no active ones): a gateway that fails two
# connections within 10 s is left out for 10 s, and the failed connection goes to the next.
# A frozen gateway fails none (its kernel still accepts), so the supervisor checks actively:
# every second GET /healthz on each gateway's HTTP port, one second to answer `200`; after
# two failures in a row the gateway is marked `down` in both upstreams (nginx reloads), and
# after two successes it is back. The last gateway still in is never taken out.
#
# The replica (port 3307, data in <state>/cluster/replica/) starts from a consistent dump of
# the primary and follows it by GTID (MASTER_USE_GTID=slave_pos); the services'
# [database] replica_url points at it. See scripts/cluster-mariadb.sh.
#
# A supervisor (`cluster.sh supervise`, pid file supervisor.pid) starts again, within a
# second, any of these processes that dies, as systemd's Restart=always would; a process
# named in <state>/cluster/hold/ is left down (scripts/drills.sh uses that).
#
# `status` judges each process from outside (scripts/cluster-check.sh): alive, its ports
# answering, /metrics; through nginx, a Ping on 6000 and 6001 and a WebSocket upgrade on
# 6080 and 6443; for the replica, both replication threads running and its lag.
#
# TLS: <state>/cluster/tls/ holds ca.pem (trust this one), ca.key, and server.pem/server.key
# (signed by the CA, for 127.0.0.1, ::1 and localhost, plus CLUSTER_TLS_SAN), made with
# openssl on the first `up` and again when within a week of expiring.
#
# State, logs and pid files are under <state>/cluster/: <name>.log and <name>.pid per process
# (im-user-1, im-gateway-2, mariadb-replica, nginx), nginx/ (its config, logs), replica/
# (the replica's data), tls/. The services read config/<binary>.toml, and the environment
# sets what differs per instance. `down` leaves what scripts/services.sh started running
# (ZooKeeper, MariaDB, Redis: `scripts/services.sh down` stops those), and the primary's
# binary log on.
#
# Environment:
#   MPIM_STATE_DIR        state directory (default: <repo>/.run)
#   MARIADB_PORT          the primary's port, as for scripts/services.sh (default: 3306)
#   CLUSTER_DB            database name (default: mpim)
#   CLUSTER_PREFIX        Redis key prefix (default: empty)
#   CLUSTER_REPLICA_PORT  the replica's port (default: 3307)
#   CLUSTER_REDIS_NODES   Redis Cluster seed URLs, comma-separated
#                         (default: what `scripts/redis-cluster.sh urls` prints)
#   CLUSTER_TLS_SAN       more subjectAltNames for the certificate (DNS:im.example.com,IP:10.0.0.5)
#   CLUSTER_NO_BUILD=1    use the binaries as built (CARGO_TARGET_DIR or <repo>/target)
#   CLUSTER_PROFILE       release (default) or debug: which build to run (CI runs the debug
#                         binaries its tests built)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
STATE_DIR=${MPIM_STATE_DIR:-$REPO_ROOT/.run}
[[ $STATE_DIR == /* ]] || STATE_DIR=$PWD/$STATE_DIR
LOG_TAG=cluster
PROC_DIR=$STATE_DIR/cluster
PROFILE=${CLUSTER_PROFILE:-release}
BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/$PROFILE
SERVICES_SH=$REPO_ROOT/scripts/services.sh
REDIS_CLUSTER_SH=$REPO_ROOT/scripts/redis-cluster.sh
DB=${CLUSTER_DB:-mpim}
PREFIX=${CLUSTER_PREFIX:-}
PRIMARY_PORT=${MARIADB_PORT:-3306}
REPLICA_PORT=${CLUSTER_REPLICA_PORT:-3307}
SERVICES=(im-user im-presence im-message im-group)
TLS_DIR=$PROC_DIR/tls
NGINX_DIR=$PROC_DIR/nginx
# Per gateway: failures or successes in a row (gw-<n>.count), and gw-<n>.out while it is out
# of nginx's upstreams.
HEALTH_DIR=$PROC_DIR/health
# What the last `up` was asked for; `status` and `down` read it.
OPTIONS=$PROC_DIR/cluster.env
GATEWAYS=2 INSTANCES=2 REDIS_CLUSTER=0

# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
# shellcheck source=scripts/cluster-mariadb.sh
source "$REPO_ROOT/scripts/cluster-mariadb.sh"
# shellcheck source=scripts/cluster-check.sh
source "$REPO_ROOT/scripts/cluster-check.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

service_port() {
  local k
  case $1 in
    im-user) k=1 ;;
    im-presence) k=2 ;;
    im-message) k=3 ;;
    im-group) k=4 ;;
  esac
  echo $((6100 + 10 * ($2 - 1) + k))
}
gateway_tcp() { echo $((6200 + $1)); }
gateway_http() { echo $((6280 + $1)); }

# Serialises runs over the same state; fd 8 is closed for everything started under it.
lock() {
  mkdir -p "$PROC_DIR"
  exec 8>"$PROC_DIR/.lock"
  flock -w 600 8 || die "timed out waiting for $PROC_DIR/.lock"
}

# ---------------------------------------------------------------- packages, TLS

NGINX=
install_packages() {
  local missing=()
  NGINX=$(find_cmd nginx) || missing+=(nginx libnginx-mod-stream)
  if [[ -n $NGINX ]] && "$NGINX" -V 2>&1 | grep -q -- '--with-stream=dynamic' &&
    [[ ! -e $(nginx_modules)/ngx_stream_module.so ]]; then
    missing+=(libnginx-mod-stream)
  fi
  command -v openssl >/dev/null || missing+=(openssl)
  if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
  NGINX=$(find_cmd nginx) || die "nginx is missing after installing it"
}

nginx_modules() {
  "$NGINX" -V 2>&1 | grep -oE -- '--modules-path=[^ ]+' | cut -d= -f2 || echo /usr/lib/nginx/modules
}

# A CA and a server certificate it signs, for 127.0.0.1, ::1, localhost (and CLUSTER_TLS_SAN).
tls_ensure() {
  local fresh=(-checkend 604800 -noout -in)
  if openssl x509 "${fresh[@]}" "$TLS_DIR/server.pem" >/dev/null 2>&1 &&
    openssl x509 "${fresh[@]}" "$TLS_DIR/ca.pem" >/dev/null 2>&1; then
    return
  fi
  log "tls: making a CA and a server certificate in $TLS_DIR"
  mkdir -p "$TLS_DIR"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256)
  (
    cd "$TLS_DIR" && umask 077
    openssl req -x509 "${ec[@]}" -days 3650 -subj "/CN=MPIM cluster CA" \
      -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    openssl req -new "${ec[@]}" -subj "/CN=localhost" -keyout server.key -out server.csr
    printf '%s\n' "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost${CLUSTER_TLS_SAN:+,$CLUSTER_TLS_SAN}" \
      basicConstraints=CA:FALSE keyUsage=critical,digitalSignature \
      extendedKeyUsage=serverAuth >server.ext
    openssl x509 -req -sha256 -days 825 -in server.csr -CA ca.pem -CAkey ca.key \
      -CAcreateserial -extfile server.ext -out server.pem
    rm -f server.csr server.ext
    chmod 644 ca.pem server.pem
  ) >"$PROC_DIR/tls.log" 2>&1 || die "openssl failed; see $PROC_DIR/tls.log"
}

# ---------------------------------------------------------------- MPIM processes

build() {
  if [[ ${CLUSTER_NO_BUILD:-0} == 1 ]]; then return; fi
  command -v cargo >/dev/null || die "cargo is missing (https://rustup.rs), or set CLUSTER_NO_BUILD=1"
  # rustc links through the system's C compiler, and ring compiles C: rustup brings neither.
  command -v cc >/dev/null || apt_install gcc libc6-dev
  log "building ($PROFILE)"
  # -p mpim for mpim-certs: a --bin here would limit every package to that binary.
  local profile=(--release)
  [[ $PROFILE == debug ]] && profile=()
  (cd "$REPO_ROOT" && cargo build "${profile[@]}" --locked -p im-user -p im-presence \
    -p im-message -p im-group -p im-gateway -p mpim)
}

# The Redis Cluster's seed URLs, comma-separated.
redis_nodes() {
  if [[ -n ${CLUSTER_REDIS_NODES:-} ]]; then
    echo "$CLUSTER_REDIS_NODES"
  else
    "$REDIS_CLUSTER_SH" urls
  fi
}

# What every process shares: discovery, Redis, logging; and the cluster's certificates and
# ZooKeeper credential, which proc_start_as gives each process by its role.
common_env() {
  cluster_trust "$BIN"
  COMMON=(MPIM_DISCOVERY__ZOOKEEPER=127.0.0.1:2181 MPIM_REDIS__PREFIX="$PREFIX" MPIM_LOG__LEVEL=info)
  if ((REDIS_CLUSTER)); then
    COMMON+=("MPIM_REDIS__CLUSTER=$(redis_nodes)")
  else
    COMMON+=(MPIM_REDIS__URL=redis://127.0.0.1:6379)
  fi
}

service_start() {
  local service=$1 n=$2 env=("${COMMON[@]}")
  env+=("MPIM_SERVER__LISTEN=$HOST:$(service_port "$service" "$n")")
  case $service in
    im-user | im-message | im-group)
      env+=("MPIM_DATABASE__URL=mysql://root@$HOST:$PRIMARY_PORT/$DB"
        "MPIM_DATABASE__REPLICA_URL=mysql://root@$HOST:$REPLICA_PORT/$DB") ;;
  esac
  case $service in
    im-user) env+=(MPIM_AUTH__JWT_SECRET="$(jwt_secret)") ;;
    # Message ids carry the node number: unique per instance.
    im-message) env+=(MPIM_MESSAGE__NODE="$n") ;;
  esac
  proc_start_as "${service#im-}" "$service-$n" "${env[@]}" "$BIN/$service" \
    --config "$REPO_ROOT/config/$service.toml"
}

gateway_start() {
  local n=$1
  # nginx, in front, is the trusted balancer (password-guessing limits per client address).
  proc_start_as gateway "im-gateway-$n" "${COMMON[@]}" MPIM_GATEWAY__ID="gw-$n" \
    MPIM_GATEWAY__TRUSTED_PROXIES='["127.0.0.1"]' \
    MPIM_SERVER__LISTEN="$HOST:$(gateway_tcp "$n")" MPIM_WS__LISTEN="$HOST:$(gateway_http "$n")" \
    "$BIN/im-gateway" --config "$REPO_ROOT/config/im-gateway.toml"
}

mpim_up() {
  local n service
  common_env
  for ((n = 1; n <= INSTANCES; n++)); do
    for service in "${SERVICES[@]}"; do service_start "$service" "$n"; done
  done
  for ((n = 1; n <= INSTANCES; n++)); do
    for service in "${SERVICES[@]}"; do proc_wait_log "$service-$n" "metrics at /metrics"; done
  done
  # Each connection is a descriptor: as many as the hard limit allows.
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  for ((n = 1; n <= GATEWAYS; n++)); do gateway_start "$n"; done
  for ((n = 1; n <= GATEWAYS; n++)); do proc_wait_log "im-gateway-$n" "metrics at /metrics"; done
}

# Stops the instances beyond the counts asked for (nginx no longer sends clients to them).
mpim_trim() {
  local name extra=()
  for name in $(proc_names); do
    if [[ $name =~ ^im-gateway-([0-9]+)$ ]]; then
      ((BASH_REMATCH[1] <= GATEWAYS)) || extra+=("$name")
    elif [[ $name =~ ^im-[a-z]+-([0-9]+)$ ]]; then
      ((BASH_REMATCH[1] <= INSTANCES)) || extra+=("$name")
    fi
  done
  proc_stop_all 15 "${extra[@]}"
}

# ---------------------------------------------------------------- nginx

nginx_config() {
  local text tcp='' http='' n load=''
  text=$(<"$REPO_ROOT/config/nginx/mpim.conf.in")
  local down
  for ((n = 1; n <= GATEWAYS; n++)); do
    down=''
    [[ -e $HEALTH_DIR/gw-$n.out ]] && down=' down'
    tcp+="        server $HOST:$(gateway_tcp "$n") max_fails=2 fail_timeout=10s$down;  # gw-$n"$'\n'
    http+="        server $HOST:$(gateway_http "$n") max_fails=2 fail_timeout=10s$down;  # gw-$n"$'\n'
  done
  if "$NGINX" -V 2>&1 | grep -q -- '--with-stream=dynamic'; then
    load="load_module $(nginx_modules)/ngx_stream_module.so;"
  fi
  text=${text//@LOAD_STREAM@/"$load"}
  text=${text//@PREFIX@/"$NGINX_DIR"}
  text=${text//@TLS@/"$TLS_DIR"}
  text=${text//@HOST@/"$HOST"}
  local nofile
  nofile=$(ulimit -Hn)
  [[ $nofile =~ ^[0-9]+$ ]] && ((nofile <= 1048576)) || nofile=1048576
  text=${text//@NOFILE@/"$nofile"}
  text=${text//@CONNECTIONS@/"$((nofile / 2))"}
  text=${text//@TCP_SERVERS@/"${tcp%$'\n'}"}
  text=${text//@HTTP_SERVERS@/"${http%$'\n'}"}
  printf '%s\n' "$text"
}

nginx_up() {
  local conf=$NGINX_DIR/nginx.conf pid
  local run=(-p "$NGINX_DIR/" -e "$NGINX_DIR/logs/error.log")
  mkdir -p "$NGINX_DIR/logs" "$NGINX_DIR/temp"
  nginx_config >"$conf.new"
  "$NGINX" -t -q -c "$conf.new" "${run[@]}" 2>"$NGINX_DIR/test.log" ||
    die "the nginx configuration is refused: $(cat "$NGINX_DIR/test.log")"
  if pid=$(proc_pid nginx); then
    # A reload moves new connections to new workers: only when something changed.
    if cmp -s "$conf.new" "$conf"; then
      rm -f "$conf.new"
      log "nginx: already running (pid $pid)"
    else
      mv -f "$conf.new" "$conf"
      kill -HUP "$pid"
      log "nginx: configuration reloaded (pid $pid)"
    fi
    return
  fi
  mv -f "$conf.new" "$conf"
  PROC_PATTERN=$conf proc_start nginx "$NGINX" -c "$conf" "${run[@]}" -g 'daemon off;'
  wait_for 30 port_open 6080 || die "nginx did not start; see $NGINX_DIR/logs/error.log"
  proc_running nginx || die "nginx exited; see $NGINX_DIR/logs/error.log and $PROC_DIR/nginx.log"
}

# ---------------------------------------------------------------- supervision

# Starts `name` with the rest of the line unless it runs or is held (<state>/cluster/hold/<name>,
# which scripts/drills.sh makes to keep a process down for a while).
revive() {
  local name=$1
  shift
  [[ -e $PROC_DIR/hold/$name ]] && return
  proc_running "$name" && return
  log "supervise: $name is not running; starting it"
  # In a subshell: a start that fails (die) must not end the supervisor.
  ("$@") || log "supervise: $name did not start; trying again"
}

# One round of the active health checks; rewrites nginx's configuration when a gateway goes
# out or comes back.
check_gateways() {
  mkdir -p "$HEALTH_DIR"
  local n code count out healthy changed=0 in=0
  for ((n = 1; n <= GATEWAYS; n++)); do [[ -e $HEALTH_DIR/gw-$n.out ]] || in=$((in + 1)); done
  for ((n = 1; n <= GATEWAYS; n++)); do
    # Within a second: a frozen gateway still accepts the connection, then says nothing.
    code=$(http_status "$(gateway_http "$n")" /healthz 1)
    count=$(cat "$HEALTH_DIR/gw-$n.count" 2>/dev/null || echo 0)
    out=0
    [[ -e $HEALTH_DIR/gw-$n.out ]] && out=1
    healthy=0
    [[ $code == 200 ]] && healthy=1
    # Counts what disagrees with the gateway's standing: failures while in, successes while out.
    if ((healthy == out)); then count=$((count + 1)); else count=0; fi
    if ((count >= 2)); then
      count=0
      if ((out)); then
        rm -f "$HEALTH_DIR/gw-$n.out"
        in=$((in + 1)) changed=1
        log "health: im-gateway-$n answers /healthz again; back in nginx"
      elif ((in > 1)); then
        touch "$HEALTH_DIR/gw-$n.out"
        in=$((in - 1)) changed=1
        log "health: im-gateway-$n failed /healthz twice (${code:-no answer in 1 s}); out of nginx"
      fi
    fi
    echo "$count" >"$HEALTH_DIR/gw-$n.count"
  done
  if ((changed)); then (nginx_up) || log "health: nginx did not take the new configuration"; fi
}

# What systemd's Restart=always does for the units in config/systemd/: every second, each
# process of the cluster that died is started again. `up` starts it; `down` stops it first.
supervise() {
  # Inherited from the `up` that started this; the processes started here name their own.
  unset PROC_PATTERN
  # shellcheck disable=SC1090 # written by up
  source "$OPTIONS"
  common_env
  install_packages >/dev/null
  mariadb_tools
  ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  local n service
  while [[ -f $OPTIONS ]]; do
    revive mariadb-replica replica_start
    for ((n = 1; n <= INSTANCES; n++)); do
      for service in "${SERVICES[@]}"; do revive "$service-$n" service_start "$service" "$n"; done
    done
    for ((n = 1; n <= GATEWAYS; n++)); do revive "im-gateway-$n" gateway_start "$n"; done
    revive nginx nginx_up
    check_gateways
    sleep 1
  done
}

supervisor_up() {
  # proc_start passes on only the MPIM_* variables named: the state directory is one.
  PROC_PATTERN="cluster.sh supervise" proc_start supervisor MPIM_STATE_DIR="$STATE_DIR" \
    "$REPO_ROOT/scripts/cluster.sh" supervise
}

# ---------------------------------------------------------------- commands

up() {
  while (($#)); do
    case $1 in
      --redis-cluster) REDIS_CLUSTER=1 ;;
      --gateways) GATEWAYS=${2:-}; shift ;;
      --instances) INSTANCES=${2:-}; shift ;;
      *) usage ;;
    esac
    shift
  done
  [[ $GATEWAYS =~ ^[1-9]$ && $INSTANCES =~ ^[1-9]$ ]] || die "--gateways and --instances: 1 to 9"
  lock
  install_packages
  if ((REDIS_CLUSTER)); then
    "$SERVICES_SH" up zookeeper mariadb 8>&-
    [[ -x $REDIS_CLUSTER_SH ]] || die "$REDIS_CLUSTER_SH is missing"
    "$REDIS_CLUSTER_SH" up 8>&-
  else
    "$SERVICES_SH" up zookeeper mariadb redis 8>&-
  fi
  mariadb_tools
  primary_enable_binlog
  primary -e "CREATE DATABASE IF NOT EXISTS \`$DB\` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
  primary_replication_user
  replica_up
  tls_ensure
  build
  printf 'GATEWAYS=%s\nINSTANCES=%s\nREDIS_CLUSTER=%s\n' "$GATEWAYS" "$INSTANCES" \
    "$REDIS_CLUSTER" >"$OPTIONS"
  mpim_up
  nginx_up
  mpim_trim
  rm -rf "$PROC_DIR/hold"
  supervisor_up
  log "up: nginx on $HOST:6000 (TCP), :6001 (TLS), :6080 (HTTP/WebSocket), :6443 (HTTPS/WSS)"
  status
}

down() {
  local purge=0 name
  case ${1:-} in
    --purge) purge=1 ;;
    '') ;;
    *) usage ;;
  esac
  lock
  # shellcheck disable=SC1090 # written by up
  [[ -f $OPTIONS ]] && source "$OPTIONS"
  # The supervisor first (it would start again what stops), then clients, then what they
  # call, then what that reads.
  proc_stop supervisor 5
  proc_stop nginx 15
  # shellcheck disable=SC2046 # names have no spaces
  proc_stop_all 15 $(proc_names | grep '^im-gateway-')
  # shellcheck disable=SC2046
  proc_stop_all 15 $(proc_names | grep '^im-')
  proc_stop mariadb-replica 90
  if ((REDIS_CLUSTER)) && [[ -x $REDIS_CLUSTER_SH ]]; then "$REDIS_CLUSTER_SH" down 8>&-; fi
  rm -f "$OPTIONS"
  rm -rf "$HEALTH_DIR"
  if ((purge)); then
    log "deleting $PROC_DIR (the replica's data, the certificates, the logs)"
    find "$PROC_DIR" -mindepth 1 -maxdepth 1 ! -name .lock -exec rm -rf {} +
  fi
  log "down; ZooKeeper, MariaDB and Redis keep running (scripts/services.sh down stops them)"
}

case ${1:-} in
  supervise) supervise ;;
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  status) status ;;
  *) usage ;;
esac
