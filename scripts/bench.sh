#!/usr/bin/env bash
# The coordinator against Apache ZooKeeper 3.8, side by side, same client,
# same load, fsync on for both (see bench/src/main.rs for what is measured).
#
#   scripts/bench.sh [zkbench flags]     # e.g. --nodes 1000000 --secs 5
#   scripts/bench.sh brokers --secs 5    # A→B→A on classic vs quorum queues, 1 node vs a 3-node cluster
#   scripts/bench.sh disk                # writes against the disk's own fdatasync, requests per fsync
#   scripts/bench.sh pipeline --secs 4  # A→B→A at 1-6 system-b, 32-512 in flight: tasks/s, each stage, the limit
#
# Results: docs/bench/results.json, docs/bench/results.png (latency against
# load), and Markdown tables with ratios on stdout (pasted into BENCHMARKS.md).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/setup.sh
# The scenario figures run the real services over RabbitMQ.
scripts/rabbitmq.sh ensure
# guest is the benchmark's setup login; each service it starts gets a user
# of its own, provisioned with rabbitmqctl on the node that answers.
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
node=$(scripts/rabbitmq.sh node)
[ -n "$node" ] && export RABBITMQ_NODENAME=$node
cargo build --release --locked -p coordinator -p system-a -p system-b -p ha-worker -p bench
exec target/release/zkbench "$@"
