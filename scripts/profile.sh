#!/usr/bin/env bash
# Where the coordinator's CPU goes under one kind of load: runs zkbench's
# throughput cells for the given ops against the coordinator alone, under
# `perf record`, and draws a flamegraph of the server's stacks (the client
# runs in the same recording; only the server's threads, named
# "coordinator" and "txn-log", are kept).
#
#   scripts/profile.sh [OPS] [SECS]    # e.g. scripts/profile.sh setData 5
#
# Output: docs/bench/flame-<ops>.svg. Needs perf (Debian's linux-perf) and
# inferno (cargo install inferno); this VM has no hardware counters, so the
# samples are taken on the cpu-clock software event.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
ops=${1:-setData}
secs=${2:-3}
command -v perf >/dev/null || { apt-get update -qq && apt-get install -y -qq linux-perf; }
command -v inferno-flamegraph >/dev/null || cargo install --locked inferno
cargo build --release --locked -p coordinator -p bench
data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
# DWARF call graphs: the release profile keeps debug info but not frame
# pointers. 299 Hz keeps the recording small over a run of ~20 s.
perf record -q -F 299 -e cpu-clock --call-graph dwarf,32768 -o "$data/perf.data" -- \
    target/release/zkbench --only coordinator --cells-only --ops "$ops" --secs "$secs" --out "$data/results.json" >/dev/null
out="docs/bench/flame-${ops//,/-}.svg"
perf script -i "$data/perf.data" 2>/dev/null \
    | inferno-collapse-perf \
    | grep -E '^(coordinator|txn-log);' \
    | inferno-flamegraph --title "coordinator: $ops, $secs s a cell" > "$out"
echo "wrote $out"
