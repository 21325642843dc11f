# shellcheck shell=bash
# `scripts/cluster.sh status` (sourced, not run): every process of the cluster, its pid, its
# ports and whether it is healthy, judged from outside as a client or a scraper would:
#   services   process alive, RPC port accepting, /metrics answering 200
#   gateways   process alive, a Ping on the TCP port answered, GET /healthz and /metrics 200,
#              and not taken out of nginx by the supervisor's health checks
#   nginx      process alive, and through each of its ports a gateway answering: a Ping on
#              6000 and (TLS) 6001, a WebSocket upgrade on 6080 and (TLS) 6443, GET / on 6443
#   replica    process alive, both replication threads running, and how far behind it is
#   primary, ZooKeeper, Redis   answering (scripts/services.sh status), binary log on

# A client Ping request (id 1) as the gateways read it: u32 big-endian length, then protobuf.
PING_FRAME='\x00\x00\x00\x04\x08\x01\x6a\x00'
WS_UPGRADE='GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n'

HEALTHY=0
row() { printf '%-16s %-8s %-40s %s\n' "$@"; }
# row with "ok" when every problem given is empty, else the problems (and status fails).
verdict() {
  local name=$1 pid=$2 ports=$3 problems
  shift 3
  problems=$(printf '%s' "$*" | tr -s ' ')
  problems=${problems# }
  if [[ -z ${problems// /} ]]; then
    row "$name" "$pid" "$ports" ok
  else
    row "$name" "$pid" "$ports" "FAIL:$problems"
    HEALTHY=1
  fi
}

# Sends $2 to the TLS port $1 (checking the certificate against our CA) and prints the
# answer: until the server closes, or with $3 set, what came within $3 seconds.
tls_talk() {
  local keep=()
  [[ -n ${3:-} ]] && keep=(-no_ign_eof)
  { env printf '%b' "$2"; [[ -z ${3:-} ]] || sleep "$3"; } |
    timeout 5 openssl s_client -quiet "${keep[@]}" -verify_return_error -CAfile "$TLS_DIR/ca.pem" \
      -connect "$HOST:$1" -servername localhost 2>/dev/null || true
}

ping_answered() { [[ $(tcp_talk "$1" "$PING_FRAME" 4 | wc -c) -eq 4 ]]; }
http_ok() { [[ $(http_status "$1" "$2") == 200 ]]; }

status_dependencies() {
  local line what
  for what in zookeeper mariadb redis; do
    if [[ $what == redis ]] && ((REDIS_CLUSTER)); then
      if line=$("$REDIS_CLUSTER_SH" status 2>&1); then
        line=$(redis_nodes)
        row redis-cluster - "${line//redis:\/\/$HOST:/}" ok
      else
        row redis-cluster - "" "FAIL: $(tr '\n' ' ' <<<"$line")"
        HEALTHY=1
      fi
      continue
    fi
    line=$("$SERVICES_SH" status "$what" 2>&1) || true
    case $what in
      zookeeper) verdict zookeeper - 2181 "$([[ $line == *': up'* ]] || echo " $line")" ;;
      redis) verdict redis - 6379 "$([[ $line == *': up'* ]] || echo " $line")" ;;
      mariadb)
        local binlog
        binlog=$(primary -N -e 'SELECT @@log_bin, @@gtid_binlog_pos' 2>/dev/null | tr '\t' ' ')
        verdict mariadb - "$PRIMARY_PORT" "$([[ $line == *': up'* ]] || echo " $line")" \
          "$([[ $binlog == 1* ]] || echo " binary log off")"
        ;;
    esac
  done
}

status_replica() {
  local pid io sql lag
  pid=$(proc_pid mariadb-replica) || { verdict mariadb-replica - "$REPLICA_PORT" " not running"; return; }
  io=$(replica_field Slave_IO_Running)
  sql=$(replica_field Slave_SQL_Running)
  lag=$(replica_field Seconds_Behind_Master)
  verdict mariadb-replica "$pid" "$REPLICA_PORT (lag ${lag:-?} s)" \
    "$([[ $io == Yes ]] || echo " IO thread ${io:-?} $(replica_field Last_IO_Error)")" \
    "$([[ $sql == Yes ]] || echo " SQL thread ${sql:-?} $(replica_field Last_SQL_Error)")"
}

status_services() {
  local n service port pid
  for ((n = 1; n <= INSTANCES; n++)); do
    for service in "${SERVICES[@]}"; do
      port=$(service_port "$service" "$n")
      pid=$(proc_pid "$service-$n") || { verdict "$service-$n" - "$port" " not running"; continue; }
      verdict "$service-$n" "$pid" "rpc $port metrics $((port + 1000))" \
        "$(port_open "$port" || echo " rpc")" "$(http_ok $((port + 1000)) /metrics || echo " /metrics")"
    done
  done
}

status_gateways() {
  local n tcp http pid
  for ((n = 1; n <= GATEWAYS; n++)); do
    tcp=$(gateway_tcp "$n") http=$(gateway_http "$n")
    pid=$(proc_pid "im-gateway-$n") || { verdict "im-gateway-$n" - "$tcp" " not running"; continue; }
    verdict "im-gateway-$n" "$pid" "tcp $tcp http $http metrics $((tcp + 1000))" \
      "$(ping_answered "$tcp" || echo " tcp-ping")" "$(http_ok "$http" /healthz || echo " /healthz")" \
      "$(http_ok $((tcp + 1000)) /metrics || echo " /metrics")" \
      "$([[ ! -e $HEALTH_DIR/gw-$n.out ]] || echo " out of nginx (failed /healthz)")"
  done
}

status_nginx() {
  local pid
  pid=$(proc_pid nginx) || { verdict nginx - "6000 6001 6080 6443" " not running"; return; }
  verdict nginx "$pid" "6000 6001(tls) 6080 6443(tls)" \
    "$(ping_answered 6000 || echo " 6000-ping")" \
    "$([[ $(tls_talk 6001 "$PING_FRAME" 0.5 | head -c 4 | wc -c) -eq 4 ]] || echo " 6001-ping")" \
    "$([[ $(tcp_talk 6080 "$WS_UPGRADE" 12) == 'HTTP/1.1 101' ]] || echo " 6080-ws")" \
    "$([[ $(tls_talk 6443 "$WS_UPGRADE" 0.5 | head -c 12) == 'HTTP/1.1 101' ]] || echo " 6443-wss")" \
    "$([[ $(tls_talk 6443 'GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' |
      head -c 12) == 'HTTP/1.1 200' ]] || echo " 6443-https")"
}

status() {
  [[ -f $OPTIONS ]] || { log "not up (no $OPTIONS)"; return 1; }
  # shellcheck disable=SC1090 # written by up
  source "$OPTIONS"
  mariadb_find || die "the MariaDB client is missing"
  row PROCESS PID PORTS HEALTH
  status_dependencies
  status_replica
  status_services
  status_gateways
  status_nginx
  local pid
  if pid=$(proc_pid supervisor); then verdict supervisor "$pid" -; else verdict supervisor - - " not running"; fi
  return "$HEALTHY"
}
