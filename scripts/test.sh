#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine: installs what is
# missing, checks formatting and lints, starts Apache ZooKeeper (the oracle)
# and makes sure RabbitMQ runs, then runs every test of the workspace
# against both the coordinator and Apache ZooKeeper.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/setup.sh

echo "== format and lints" >&2
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "== servers" >&2
scripts/rabbitmq.sh ensure
# The RabbitMQ fault test drives the broker with rabbitmqctl; point it at
# the private node when that is the one answering.
if rabbitmqctl -n coordination-demo@localhost status >/dev/null 2>&1; then
  export RABBITMQ_NODENAME=coordination-demo@localhost
fi
zk_port=${ZK_ORACLE_PORT:-21810}
# Stop the oracle at the end only if this run started it.
if ! (exec 3<>"/dev/tcp/127.0.0.1/$zk_port") 2>/dev/null; then
  trap 'scripts/zookeeper.sh stop "$zk_port"' EXIT
fi
scripts/zookeeper.sh start "$zk_port"
export ZK_ORACLE_ADDR=127.0.0.1:$zk_port
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

echo "== tests" >&2
# Binaries first: the end-to-end tests start them as processes.
cargo build --workspace --bins --locked
cargo test --workspace --locked "$@"
