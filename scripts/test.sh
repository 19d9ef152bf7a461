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
# What an earlier run left on the broker (a killed run, a failed test),
# now and again at the end: queues, exchanges and users named e2e.*.
scripts/rabbitmq.sh sweep-tests
at_exit='scripts/rabbitmq.sh sweep-tests || true'
zk_port=${ZK_ORACLE_PORT:-21810}
# Stop the oracle at the end only if this run started it.
if ! (exec 3<>"/dev/tcp/127.0.0.1/$zk_port") 2>/dev/null; then
  at_exit="$at_exit; scripts/zookeeper.sh stop $zk_port"
fi
trap "$at_exit" EXIT
scripts/zookeeper.sh start "$zk_port"
export ZK_ORACLE_ADDR=127.0.0.1:$zk_port
# The tests' own broker login: guest plays the observer and the attacker.
# The services they start never see it (the launcher removes it from their
# environment): each test provisions users of its own for its queue with
# rabbitmqctl (testkit::broker), as scripts/run.sh does for `tasks`.
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}

echo "== tests" >&2
# Binaries first: the end-to-end tests start them as processes.
cargo build --workspace --bins --locked
mkdir -p target
log=target/test-output.log
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
# One line that sums every test binary's result, printed last.
summary=$(awk '/^test result:/ { p += $4; f += $6; s += $8 } END { printf "%d passed, %d failed, %d skipped", p, f, s }' "$log")

# Coverage-guided fuzzing of what the coordinator reads from untrusted
# bytes (frames, requests, the log and snapshot readers), bounded in time:
# a finding fails the run and leaves its input in fuzz/artifacts/.
# FUZZ_SECONDS=0 leaves it out (a quick local run); CI runs it.
if [ "${FUZZ_SECONDS:-60}" -gt 0 ]; then
  echo "== fuzz" >&2
  scripts/fuzz.sh "${FUZZ_SECONDS:-60}"
fi
echo "tests: $summary"
