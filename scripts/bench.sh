#!/usr/bin/env bash
# The coordinator against Apache ZooKeeper 3.8, side by side, same client,
# same load, fsync on for both (see bench/src/main.rs for what is measured).
#
#   scripts/bench.sh [zkbench flags]     # e.g. --nodes 1000000 --secs 5
#
# Results: docs/bench/results.json (and the table in BENCHMARKS.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
cargo build --release --locked -p coordinator -p bench
exec target/release/zkbench "$@"
