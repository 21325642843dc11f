# shellcheck shell=bash
# Helpers shared by the scripts (sourced, not run): logging, root, apt, ports, and the process
# management of scripts/distributed.sh and scripts/cluster.sh.
#
# The caller sets:
#   LOG_TAG   what its messages start with ("cluster")
#   PROC_DIR  where each process it starts keeps <name>.pid and <name>.log
#
# A pid file holds the pid, then a text the process's command line must contain: a pid that
# was reused by another program since is not taken for ours.

HOST=127.0.0.1

log() { printf '%s: %s\n' "$LOG_TAG" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

as_root() {
  if [[ $EUID -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo -n "$@"
  else
    die "need root to run: $*"
  fi
}

# Installs Debian packages (apt-get update once per run, on the first install).
APT_UPDATED=0
# The lock timeout lets a concurrent apt/dpkg run finish instead of failing; a package's
# changed configuration file keeps the one on disk. On failure the log's tail is shown.
apt_install() {
  local apt_log=$PROC_DIR/apt.log started=$SECONDS
  mkdir -p "$PROC_DIR"
  local apt=(as_root env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
  if ((!APT_UPDATED)); then
    log "apt-get update (log: $apt_log)"
    if ! "${apt[@]}" update </dev/null >>"$apt_log" 2>&1; then
      tail -n 20 "$apt_log" >&2
      die "apt-get update failed; see $apt_log"
    fi
    APT_UPDATED=1
  fi
  log "apt-get install $*"
  if ! "${apt[@]}" install -y --no-install-recommends "$@" </dev/null >>"$apt_log" 2>&1; then
    tail -n 20 "$apt_log" >&2
    die "apt-get install $* failed; see $apt_log"
  fi
  log "installed $* in $((SECONDS - started)) s"
}

# The first of the commands named that exists, with its path (/usr/sbin is searched too: it
# is not on every user's PATH).
find_cmd() {
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

port_open() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null
}

# Sends $2 (printf %b escapes) to 127.0.0.1:$1 and prints the first $3 bytes of the answer
# (default: all of it, until the peer closes), giving up after $4 seconds (default 3).
tcp_talk() {
  # shellcheck disable=SC2016 # expanded by the inner bash
  timeout "${4:-3}" bash -c 'exec 3<>"/dev/tcp/$0/$1" || exit 1
    env printf "%b" "$2" >&3  # one write: the builtin writes line by line
    if [[ -n $3 ]]; then head -c "$3" <&3; else cat <&3; fi' "$HOST" "$1" "$2" "${3:-}" \
    2>/dev/null || true
}

# The status code of GET http://127.0.0.1:$1$2 (empty when nothing answers within $3
# seconds, default 3).
http_status() {
  tcp_talk "$1" "GET $2 HTTP/1.0\r\nHost: $HOST\r\n\r\n" 64 "${3:-3}" | head -n 1 | cut -d' ' -f2
}

# The pid of process $1, printed only while it runs the program it was started as.
proc_pid() {
  local file=$PROC_DIR/$1.pid pid pattern
  [[ -r $file ]] || return 1
  # A pid file of an older version has no second line: any live process is taken.
  { read -r pid && { read -r pattern || true; }; } <"$file" || return 1
  [[ $pid =~ ^[0-9]+$ && -r /proc/$pid/cmdline ]] || return 1
  [[ $(tr '\0' ' ' <"/proc/$pid/cmdline") == *"$pattern"* ]] || return 1
  printf '%s\n' "$pid"
}

proc_running() { proc_pid "$1" >/dev/null; }

# Starts process $1: "$@" after it (env assignments first, like env(1)), in its own session,
# so that it outlives this script; output to <name>.log (the previous one is kept as
# <name>.log.1). Returns at once. PROC_PATTERN, when set, is what its command line must
# contain from then on (default: the program's name).
proc_start() {
  local name=$1 pid program
  shift
  if pid=$(proc_pid "$name"); then
    log "$name: already running (pid $pid)"
    return
  fi
  program=$(for arg in "$@"; do [[ $arg == *=* ]] || { echo "$arg"; break; }; done)
  local log=$PROC_DIR/$name.log
  if [[ -s $log ]]; then mv -f "$log" "$log.1"; fi
  # Only the MPIM_* variables given reach it: every one is a configuration key, and one the
  # process does not know (MPIM_STATE_DIR) would stop it.
  local clear=() var
  for var in $(compgen -e); do [[ $var != MPIM_* ]] || clear+=(-u "$var"); done
  # fd 8 and 9 are the scripts' locks: a server holding them would block every later run.
  setsid env "${clear[@]}" "$@" </dev/null >"$log" 2>&1 8>&- 9>&- &
  printf '%s\n%s\n' "$!" "${PROC_PATTERN:-${program##*/}}" >"$PROC_DIR/$name.pid"
}

# Waits until `name`'s log has a line matching `pattern`; fails when it exits first.
proc_wait_log() {
  local name=$1 pattern=$2 deadline=$((SECONDS + ${3:-60}))
  until grep -q "$pattern" "$PROC_DIR/$name.log" 2>/dev/null; do
    proc_running "$name" || die "$name exited; see $PROC_DIR/$name.log"
    ((SECONDS < deadline)) || die "$name did not start in ${3:-60} s; see $PROC_DIR/$name.log"
    sleep 0.2
  done
}

# Stops process $1: SIGTERM, then SIGKILL after $2 seconds (default 15).
proc_stop() { proc_stop_all "${2:-15}" "$1"; }

# Stops the processes named after $1 together: SIGTERM to each, then SIGKILL to those still
# running after $1 seconds.
proc_stop_all() {
  local grace=$1 name pid deadline
  shift
  local -A pids=()
  for name in "$@"; do
    if pid=$(proc_pid "$name"); then
      kill -TERM "$pid" 2>/dev/null || true
      pids[$name]=$pid
    fi
  done
  deadline=$((SECONDS + grace))
  for name in "${!pids[@]}"; do
    while kill -0 "${pids[$name]}" 2>/dev/null; do
      if ((SECONDS >= deadline)); then
        log "$name: still running after ${grace} s, sending SIGKILL"
        kill -KILL "${pids[$name]}" 2>/dev/null || true
        break
      fi
      sleep 0.1
    done
    log "$name: stopped"
  done
  for name in "$@"; do rm -f "$PROC_DIR/$name.pid"; done
}

# The names of the processes with a pid file, in the order given by the glob.
proc_names() {
  local file
  for file in "$PROC_DIR"/*.pid; do
    [[ -e $file ]] && basename "$file" .pid
  done
  return 0
}

# The token-signing secret every im-user instance shares, made once.
jwt_secret() {
  local file=$PROC_DIR/jwt-secret
  if [[ ! -s $file ]]; then
    (umask 077 && head -c 48 /dev/urandom | base64 | tr -d '\n' >"$file")
  fi
  cat "$file"
}

# The cluster's trust material in <state>/certs (made once, kept across runs): the CA and one
# certificate per role (`mpim-certs`, built beside the services), and the ZooKeeper credential.
# Sets TRUST_DIR. Usage: cluster_trust BIN_DIR
cluster_trust() {
  TRUST_DIR=$STATE_DIR/certs
  mkdir -p "$TRUST_DIR"
  "$1/mpim-certs" --dir "$TRUST_DIR" >/dev/null || die "mpim-certs failed"
  local credential=$TRUST_DIR/zookeeper-credential
  if [[ ! -s $credential ]]; then
    (umask 077 && printf 'mpim:%s\n' "$(head -c 24 /dev/urandom | base64 | tr -d '\n/+=')" >"$credential")
  fi
}

# The MPIM_* settings that give process `role` (gateway, user, presence, message, group) its
# certificate, the cluster CA and the ZooKeeper credential; call cluster_trust first.
trust_env() {
  printf '%s\n' "MPIM_TLS__CERT=$TRUST_DIR/$1.pem" "MPIM_TLS__KEY=$TRUST_DIR/$1.key" \
    "MPIM_TLS__CA=$TRUST_DIR/ca.pem" "MPIM_DISCOVERY__CREDENTIAL_FILE=$TRUST_DIR/zookeeper-credential"
}

# proc_start with the trust settings of `role` added: proc_start_as ROLE NAME [VAR=value…] PROGRAM…
proc_start_as() {
  local role=$1 name=$2 trust
  shift 2
  mapfile -t trust < <(trust_env "$role")
  proc_start "$name" "${trust[@]}" "$@"
}
