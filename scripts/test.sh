#!/usr/bin/env bash
# The project's test entry point: starts the real dependencies the tests talk to,
# then runs every test in the workspace.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# What the tests talk to: ZooKeeper (discovery), MariaDB (the SQL stores) and Redis
# (the bus). Each test makes its own database or key prefix, so runs never collide.
"$root/scripts/services.sh" up zookeeper mariadb redis
# im-cli's test types into two terminals under tmux.
if ! command -v tmux >/dev/null; then
  sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null \
    || { $sudo apt-get update -q >/dev/null && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q tmux >/dev/null; }
fi
# examples/tests/connections.rs holds 10 000 connections open (a process each side): raise
# the soft limit on open files as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace --locked "$@"
