#!/usr/bin/env bash
# Checks that scripts/cluster.sh brings MPIM up on a fresh Debian, one where ZooKeeper,
# MariaDB, Redis and nginx were never installed: a minimal Debian (debootstrap) booted with
# systemd in a container (systemd-nspawn) with a network namespace of its own, so that its
# 127.0.0.1 ports are its own and nothing running on this host is touched.
#
#   sudo scripts/fresh-debian-check.sh [--redis-cluster] [--keep]
#
# In the container, one after the other: `cluster.sh up` (which installs the packages from
# the mirror, reached through NAT from the namespace), `cluster.sh status`, `drills.sh
# --short`, `cluster.sh down`. Their output is printed; the first that fails fails the check.
# The repository is mounted read-only at its own path and the binaries are this host's build
# (CLUSTER_NO_BUILD=1), so build them first:
#   cargo build --release -p im-user -p im-presence -p im-message -p im-group -p im-gateway
#   cargo build --release -p benches --bin im-bench
# (with CLUSTER_PROFILE=debug, the same without --release). The state directory is inside
# the container. At the end the container is powered off, the namespace, its veth pair and
# NAT rule are removed, and the Debian is deleted (--keep leaves it to look into; a later
# run wants it gone, as it checks a fresh one).
#
# Needs root, debootstrap, systemd-nspawn (package systemd-container), nft and ip.
#
# Environment:
#   FRESH_ROOT       where the Debian goes (default: /var/tmp/mpim-fresh; must not exist)
#   FRESH_SUITE      Debian suite (default: bookworm)
#   FRESH_MIRROR     mirror (default: http://deb.debian.org/debian)
#   FRESH_NET        the first three octets of the veth pair's /30 and its base (default:
#                    10.231.0: the host is .1, the container .2)
#   CLUSTER_PROFILE  release (default) or debug, as for cluster.sh
#   CARGO_TARGET_DIR where the binaries are (default: <repo>/target)
set -euo pipefail

REPO_ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${FRESH_ROOT:-/var/tmp/mpim-fresh}
SUITE=${FRESH_SUITE:-bookworm}
MIRROR=${FRESH_MIRROR:-http://deb.debian.org/debian}
NET=${FRESH_NET:-10.231.0}
PROFILE=${CLUSTER_PROFILE:-release}
TARGET=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
NS=mpim-fresh
VETH_HOST=mpim-fresh0
VETH_NS=mpim-fresh1
NFT_TABLE=mpim_fresh
WORK=$(mktemp -d /tmp/mpim-fresh.XXXXXX)
LOG_TAG=fresh-debian-check
KEEP=0 UP_ARGS=()

# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2
  exit 2
}

while (($#)); do
  case $1 in
    --redis-cluster) UP_ARGS+=(--redis-cluster) ;;
    --keep) KEEP=1 ;;
    *) usage ;;
  esac
  shift
done

[[ $EUID -eq 0 ]] || die "run as root (it makes a network namespace and boots a container)"
for cmd in debootstrap systemd-nspawn nft ip nsenter; do
  command -v "$cmd" >/dev/null || die "$cmd is missing (apt-get install debootstrap systemd-container nftables)"
done
[[ ! -e $ROOT ]] || die "$ROOT exists: delete it (the check wants a fresh Debian) or set FRESH_ROOT"
for bin in im-user im-presence im-message im-group im-gateway im-bench; do
  [[ -x $TARGET/$PROFILE/$bin ]] || die "$TARGET/$PROFILE/$bin is missing: build it first (see --help)"
done
! ip netns list | grep -qw "$NS" || die "network namespace $NS exists (another check running?)"

NSPAWN_PID= FORWARD=
cleanup() {
  local rc=$?
  if [[ -n $NSPAWN_PID ]] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
    log "powering the container off"
    inside systemctl poweroff >/dev/null 2>&1 || kill -TERM "$NSPAWN_PID" 2>/dev/null || true
    local deadline=$((SECONDS + 60))
    while kill -0 "$NSPAWN_PID" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
    kill -KILL "$NSPAWN_PID" 2>/dev/null || true
  fi
  nft delete table ip "$NFT_TABLE" 2>/dev/null || true
  ip link delete "$VETH_HOST" 2>/dev/null || true
  ip netns delete "$NS" 2>/dev/null || true
  [[ -z $FORWARD ]] || echo "$FORWARD" >/proc/sys/net/ipv4/ip_forward
  if ((KEEP)); then
    log "kept $ROOT"
  elif [[ -d $ROOT ]]; then
    rm -rf --one-file-system "$ROOT"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# ---------------------------------------------------------------- the Debian and its network

log "debootstrap $SUITE into $ROOT (log: $WORK/debootstrap.log)"
debootstrap "$SUITE" "$ROOT" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 ||
  { tail -n 20 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE-updates" >"$ROOT/etc/apt/sources.list"
echo fresh >"$ROOT/etc/hostname"

log "network namespace $NS: $NET.2 behind NAT through $NET.1"
ip netns add "$NS"
ip link add "$VETH_HOST" type veth peer name "$VETH_NS"
ip link set "$VETH_NS" netns "$NS"
ip addr add "$NET.1/30" dev "$VETH_HOST"
ip link set "$VETH_HOST" up
ip netns exec "$NS" ip addr add "$NET.2/30" dev "$VETH_NS"
ip netns exec "$NS" ip link set "$VETH_NS" up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip route add default via "$NET.1"
FORWARD=$(</proc/sys/net/ipv4/ip_forward)
echo 1 >/proc/sys/net/ipv4/ip_forward
nft add table ip "$NFT_TABLE"
nft add chain ip "$NFT_TABLE" post '{ type nat hook postrouting priority srcnat; }'
nft add rule ip "$NFT_TABLE" post ip saddr "$NET.0/30" masquerade

# ---------------------------------------------------------------- the container

log "booting it (systemd-nspawn; log: $WORK/nspawn.log)"
binds=(--bind-ro="$REPO_ROOT")
[[ $TARGET == "$REPO_ROOT"/* ]] || binds+=(--bind-ro="$TARGET")
setsid systemd-nspawn -q -D "$ROOT" -M fresh -b --network-namespace-path="/run/netns/$NS" \
  "${binds[@]}" --register=no --keep-unit --resolv-conf=copy-host --console=passive \
  </dev/null >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!

# The container's init: the child of systemd-nspawn.
init_pid() { pgrep -P "$NSPAWN_PID" | head -n 1; }

# Runs "$@" (one shell command line) in the container, as root on a login-like environment.
inside() {
  local pid
  pid=$(init_pid) || return 1
  [[ -n $pid ]] || return 1
  nsenter -t "$pid" -a -r -w env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root TERM=dumb MPIM_STATE_DIR=/var/lib/mpim CARGO_TARGET_DIR="$TARGET" \
    CLUSTER_PROFILE="$PROFILE" CLUSTER_NO_BUILD=1 IM_BENCH="$TARGET/$PROFILE/im-bench" \
    bash -c "cd '$REPO_ROOT' && $*"
}

deadline=$((SECONDS + 120))
until [[ $(inside systemctl is-system-running 2>/dev/null) =~ ^(running|degraded)$ ]]; do
  kill -0 "$NSPAWN_PID" 2>/dev/null || { cat "$WORK/nspawn.log" >&2; die "the container exited"; }
  ((SECONDS < deadline)) || die "the container did not boot in 120 s"
  sleep 1
done

# ---------------------------------------------------------------- the check

step() {
  local what=$1 start=$SECONDS rc=0
  shift
  log "$what"
  inside "$@" || rc=$?
  log "$what: exit $rc in $((SECONDS - start)) s"
  ((rc == 0)) || die "$what failed"
}

step "scripts/cluster.sh up${UP_ARGS[*]:+ ${UP_ARGS[*]}}" scripts/cluster.sh up "${UP_ARGS[@]}"
step "scripts/cluster.sh status" scripts/cluster.sh status
step "scripts/drills.sh --short" scripts/drills.sh --short
step "scripts/cluster.sh down" scripts/cluster.sh down
log "passed: a fresh $SUITE ran the cluster, its status and the short drills"
