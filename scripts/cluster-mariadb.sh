# shellcheck shell=bash
# The MariaDB side of scripts/cluster.sh (sourced, not run): binary logging on the primary,
# and a second server that replicates from it by GTID.
#
# The primary is whatever scripts/services.sh brought up on PRIMARY_PORT. Replication needs
# its binary log; when it is off, it is turned on once and the primary restarted:
#   - a server services.sh started: options in <state>/mariadb/server.cnf, restarted
#     through services.sh;
#   - the system's server: /etc/mysql/mariadb.conf.d/60-mpim-replication.cnf (my.cnf gains
#     an !includedir line when it lacks one), restarted with systemctl where systemd runs,
#     else shut down and started again with the command line it ran with.
# The replica (port REPLICA_PORT, data under <state>/cluster/replica) starts as a copy of a
# consistent dump of the primary (mariadb-dump --all-databases --gtid --master-data) and then
# follows it from the dump's GTID position (MASTER_USE_GTID=slave_pos). It is read-only and
# holds the primary's accounts, so root comes in over TCP as it does on the primary.
# A replica whose replication broke (the primary purged binary logs it still needed, say)
# is seeded again by the next `up`.

REPLICA_DIR=$PROC_DIR/replica
REPL_USER=mpim_repl
BINLOG_CNF=/etc/mysql/mariadb.conf.d/60-mpim-replication.cnf

# The primary's binary log: row-based (replicas apply exactly what changed), kept two days.
BINLOG_OPTIONS='[mysqld]
log_bin = mysql-bin
server_id = 1
binlog_format = ROW
binlog_expire_logs_seconds = 172800
max_binlog_size = 256M'

mdb() {
  local port=$1
  shift
  "$MARIADB" --protocol=TCP -h "$HOST" -P "$port" -uroot --connect-timeout=5 "$@"
}
primary() { mdb "$PRIMARY_PORT" "$@"; }
replica() { mdb "$REPLICA_PORT" "$@"; }

mdb_alive() {
  "$MARIADB_ADMIN" --protocol=TCP -h "$HOST" -P "$1" --connect-timeout=2 ping >/dev/null 2>&1
}

# Waits until "$@" succeeds, for at most $1 seconds.
wait_for() {
  local secs=$1 deadline
  shift
  deadline=$((SECONDS + secs))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.5
  done
}

mariadb_find() {
  MARIADB=$(find_cmd mariadb mysql) && MARIADB_ADMIN=$(find_cmd mariadb-admin mysqladmin) &&
    MARIADB_DUMP=$(find_cmd mariadb-dump mysqldump) && MARIADBD=$(find_cmd mariadbd mysqld) &&
    INSTALL_DB=$(find_cmd mariadb-install-db mysql_install_db)
}

mariadb_tools() {
  mariadb_find && return
  apt_install mariadb-server mariadb-client
  mariadb_find || die "the MariaDB tools are missing after installing mariadb-server"
}

# ---------------------------------------------------------------- the primary

primary_enable_binlog() {
  [[ $(primary -N -e 'SELECT @@log_bin') == 1 ]] && return
  local own=$STATE_DIR/mariadb
  if [[ -r $own/pid ]] && kill -0 "$(<"$own/pid")" 2>/dev/null; then
    log "primary: turning on binary logging ($own/server.cnf), restarting it through services.sh"
    printf '%s\n' "$BINLOG_OPTIONS" >"$own/server.cnf"
    "$SERVICES_SH" down mariadb 8>&-
    "$SERVICES_SH" up mariadb 8>&-
  else
    log "primary: turning on binary logging ($BINLOG_CNF) and restarting MariaDB"
    as_root mkdir -p "${BINLOG_CNF%/*}"
    printf '# Written by scripts/cluster.sh: the binary log its replica reads.\n%s\n' \
      "$BINLOG_OPTIONS" | as_root tee "$BINLOG_CNF" >/dev/null
    if ! as_root "$MARIADBD" --print-defaults | grep -qE -- '--log[-_]bin'; then
      log "primary: /etc/mysql/my.cnf does not read ${BINLOG_CNF%/*}; adding an !includedir"
      printf '\n# Added by scripts/cluster.sh (binary logging for its replica).\n!includedir %s/\n' \
        "${BINLOG_CNF%/*}" | as_root tee -a /etc/mysql/my.cnf >/dev/null
    fi
    primary_restart
  fi
  wait_for 60 primary -N -e 'SELECT 1' >/dev/null 2>&1 || die "the primary did not come back"
  [[ $(primary -N -e 'SELECT @@log_bin') == 1 ]] ||
    die "the primary still runs without a binary log; see $BINLOG_CNF"
}

# Restarts the system's MariaDB the way it runs: systemd, its init script (when it runs under
# mysqld_safe), or the very command line it was started with.
primary_restart() {
  if [[ -d /run/systemd/system ]] && systemctl is-active --quiet mariadb 2>/dev/null; then
    as_root systemctl restart mariadb
    return
  fi
  local pid_file pid parent argv=()
  pid_file=$(primary -N -e 'SELECT @@pid_file')
  pid=$(as_root cat "$pid_file") || die "cannot read the primary's pid file $pid_file"
  mapfile -d '' argv <"/proc/$pid/cmdline"
  # The parent's pid is the 4th field of /proc/<pid>/stat, after the parenthesised name.
  parent=$(cut -d' ' -f2 <<<"$(sed 's/.*) //' "/proc/$pid/stat")")
  parent=$(cat "/proc/$parent/comm" 2>/dev/null || true)
  log "primary: shutting down pid $pid (${argv[*]})"
  "$MARIADB_ADMIN" --protocol=TCP -h "$HOST" -P "$PRIMARY_PORT" -uroot shutdown
  wait_for 120 eval "! kill -0 $pid 2>/dev/null" || die "the primary (pid $pid) did not stop"
  if [[ $parent == mysqld_safe ]]; then
    as_root /etc/init.d/mariadb start 8>&-
  else
    # A server of its own session, like the one it replaces; it changes user as my.cnf says.
    # (exec: no shell stays behind as its parent.)
    local sudo=()
    [[ $EUID -eq 0 ]] || sudo=(sudo -n)
    (exec "${sudo[@]}" setsid "${argv[@]}" </dev/null >>"$PROC_DIR/primary.log" 2>&1 8>&-) &
  fi
}

# The account the replica reads the binary log with, its password kept in the state dir.
primary_replication_user() {
  local file=$REPLICA_DIR/repl-password password
  mkdir -p "$REPLICA_DIR"
  [[ -s $file ]] || (umask 077 && head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"$file")
  password=$(<"$file")
  primary -e "CREATE USER IF NOT EXISTS '$REPL_USER'@'$HOST' IDENTIFIED BY '$password';
    ALTER USER '$REPL_USER'@'$HOST' IDENTIFIED BY '$password';
    GRANT REPLICATION SLAVE ON *.* TO '$REPL_USER'@'$HOST';"
}

# ---------------------------------------------------------------- the replica

replica_socket() {
  # sun_path holds at most 107 bytes; deep checkouts would overflow it.
  local sock=$REPLICA_DIR/run/mysqld.sock
  ((${#sock} <= 100)) || sock=/tmp/mpim-replica-$EUID-$REPLICA_PORT.sock
  printf '%s\n' "$sock"
}

replica_write_config() {
  local resolve=
  # The same name resolution as the primary, so that its accounts match the same way here.
  [[ $(primary -N -e 'SELECT @@skip_name_resolve') == 1 ]] && resolve=skip_name_resolve
  mkdir -p "$REPLICA_DIR/data" "$REPLICA_DIR/run"
  cat >"$REPLICA_DIR/my.cnf" <<-EOF
	# Written by scripts/cluster.sh: the replica of the MariaDB on $HOST:$PRIMARY_PORT.
	[mysqld]
	datadir = $REPLICA_DIR/data
	socket = $(replica_socket)
	pid_file = $REPLICA_DIR/run/mariadbd.pid
	bind_address = $HOST
	port = $REPLICA_PORT
	server_id = 2
	read_only = ON
	relay_log = relay-bin
	$resolve
	# A dead primary is noticed within 10 s, and connected to again every 5 s.
	slave_net_timeout = 10
	character_set_server = utf8mb4
	collation_server = utf8mb4_general_ci
	innodb_buffer_pool_size = 128M
	EOF
}

# mariadbd refuses to run as root unless told to; the package's mysql user is used when it
# can reach the state directory. Sets REPLICA_USER to the option (or none).
replica_user() {
  REPLICA_USER=()
  [[ $EUID -eq 0 ]] || return 0
  if id mysql >/dev/null 2>&1 && runuser -u mysql -- test -x "$REPLICA_DIR"; then
    chown -R mysql:mysql "$REPLICA_DIR/data" "$REPLICA_DIR/run"
    REPLICA_USER=(--user=mysql)
  else
    REPLICA_USER=(--user=root)
  fi
}

replica_start() {
  replica_user
  PROC_PATTERN="--defaults-file=$REPLICA_DIR/my.cnf" \
    proc_start mariadb-replica "$MARIADBD" --defaults-file="$REPLICA_DIR/my.cnf" "${REPLICA_USER[@]}"
  wait_for 60 mdb_alive "$REPLICA_PORT" ||
    die "the replica did not start; see $PROC_DIR/mariadb-replica.log"
}

# One field of SHOW SLAVE STATUS (empty when replication is not configured).
replica_field() {
  replica -e 'SHOW SLAVE STATUS\G' 2>/dev/null | sed -n "s/^ *$1: //p"
}

replica_running() {
  [[ $(replica_field Slave_IO_Running) == Yes && $(replica_field Slave_SQL_Running) == Yes ]]
}

# Running, or a thread stopped on an error (which waiting does not mend).
replica_settled() {
  replica_running && return
  local io sql
  io=$(replica_field Slave_IO_Running) sql=$(replica_field Slave_SQL_Running)
  [[ $io == No && $(replica_field Last_IO_Errno) != 0 ]] ||
    [[ $sql == No && $(replica_field Last_SQL_Errno) != 0 ]]
}

# A fresh data directory filled from a dump of the primary, following it from there.
replica_seed() {
  local dump=$REPLICA_DIR/seed.sql gtid try
  proc_stop mariadb-replica 60
  rm -rf "$REPLICA_DIR/data" "$REPLICA_DIR/seeded"
  replica_write_config
  log "replica: initialising $REPLICA_DIR/data"
  replica_user
  "$INSTALL_DB" --defaults-file="$REPLICA_DIR/my.cnf" "${REPLICA_USER[@]}" \
    --auth-root-authentication-method=normal >"$REPLICA_DIR/install-db.log" 2>&1 ||
    die "mariadb-install-db failed; see $REPLICA_DIR/install-db.log"
  replica_start
  log "replica: seeding from a dump of the primary"
  # Databases come and go on a shared primary (test runs): a dump that met one is retried.
  for try in 1 2 3; do
    "$MARIADB_DUMP" --protocol=TCP -h "$HOST" -P "$PRIMARY_PORT" -uroot --all-databases \
      --ignore-database=sys --single-transaction --gtid --master-data=2 --routines --events \
      --triggers --flush-privileges >"$dump" 2>"$REPLICA_DIR/dump.log" && break
    ((try < 3)) || die "mariadb-dump failed; see $REPLICA_DIR/dump.log"
    log "replica: the dump failed ($(head -c 200 "$REPLICA_DIR/dump.log")); again"
  done
  gtid=$(sed -n "s/^-- SET GLOBAL gtid_slave_pos='\([^']*\)';.*/\1/p" "$dump" | head -n 1)
  # Until the dump brings the primary's accounts, root is the fresh server's, on the socket.
  "$MARIADB" --protocol=SOCKET --socket="$(replica_socket)" -uroot <"$dump" ||
    die "loading the dump into the replica failed"
  rm -f "$dump"
  replica -e "STOP SLAVE; RESET SLAVE ALL; SET GLOBAL gtid_slave_pos = '$gtid';
    CHANGE MASTER TO MASTER_HOST = '$HOST', MASTER_PORT = $PRIMARY_PORT,
      MASTER_USER = '$REPL_USER', MASTER_PASSWORD = '$(<"$REPLICA_DIR/repl-password")',
      MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 5;
    START SLAVE;"
  touch "$REPLICA_DIR/seeded"
  log "replica: following the primary from GTID '${gtid:-the beginning}'"
}

# Brings the replica up and waits until both replication threads run.
replica_up() {
  if [[ -f $REPLICA_DIR/seeded ]]; then
    replica_write_config
    replica_start
    wait_for 30 replica_settled || true
    if ! replica_running; then
      log "replica: replication does not run (IO: $(replica_field Last_IO_Error);" \
        "SQL: $(replica_field Last_SQL_Error)); seeding it again"
      replica_seed
    fi
  else
    replica_seed
  fi
  wait_for 60 replica_running || die "replication does not run: IO $(replica_field \
    Slave_IO_Running) ($(replica_field Last_IO_Error)), SQL $(replica_field Slave_SQL_Running)\
 ($(replica_field Last_SQL_Error))"
  log "replica: $HOST:$REPLICA_PORT replicating ($(replica_field Seconds_Behind_Master) s behind)"
}
