#!/usr/bin/env bash
# The project's test entry point: starts the real dependencies the tests talk to
# (ZooKeeper, MariaDB, Redis), then runs every test in the workspace.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/services.sh" up
cargo test --workspace --locked "$@"
