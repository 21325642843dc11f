#!/usr/bin/env bash
# The project's test entry point: starts the real dependencies the tests talk to,
# then runs every test in the workspace.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# A test whose prerequisite (a Redis Cluster, tmux) is missing fails instead of skipping.
export TEST_STRICT=1

# What the tests talk to: ZooKeeper (discovery), MariaDB (the SQL stores) and Redis
# (the bus), one server and a cluster. Each test makes its own database or key prefix,
# so runs never collide.
"$root/scripts/services.sh" up zookeeper mariadb redis
# The bus suites and the multi-process test run again on a three-master Redis Cluster
# (127.0.0.1:7001-7003 unless REDIS_CLUSTER_PORTS says otherwise), unless
# TEST_REDIS_CLUSTER already names one.
if [[ -z ${TEST_REDIS_CLUSTER:-} ]]; then
  "$root/scripts/redis-cluster.sh" up
  TEST_REDIS_CLUSTER=$("$root/scripts/redis-cluster.sh" urls)
  export TEST_REDIS_CLUSTER
fi
# What the end-to-end tests drive: im-cli in two terminals under tmux, the web client in
# headless Chromium through chromedriver.
missing=()
command -v tmux >/dev/null || missing+=(tmux)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
if ((${#missing[@]})); then
  sudo=; [[ $(id -u) == 0 ]] || sudo=sudo
  install() { $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; }
  install || { $sudo apt-get update -q >/dev/null && install; }
fi
# examples/tests/connections.rs holds 10 000 connections open (a process each side): raise
# the soft limit on open files as far as the hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
cargo test --workspace --locked "$@"
