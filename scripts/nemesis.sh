#!/usr/bin/env bash
# Many nemesis runs (tests/src/nemesis): the scenarios under a seeded
# schedule of faults, every history judged by the checkers, then the table
# docs/faults.md keeps. CI runs a fixed few (tests/tests/nemesis.rs).
#
#   scripts/nemesis.sh [--target coordinator|ensemble|both] [--seed S]
#                      [--runs N] [--seconds T] [--faults kind,kind,...]
#
# Fault kinds: kill-server, pause-server, kill-service, pause-service,
# clock-jump, stall-lock-holder, partition, power-loss, slow-link. A failed run keeps
# its history, verdicts, logs (and, with power-loss, what the disks held)
# under target/nemesis/<target>-<seed>/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

scripts/setup.sh
scripts/rabbitmq.sh ensure
# The services' broker users are made with the tests' guest login.
export AMQP_URL=${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
cargo build --workspace --bins --locked
exec target/debug/nemesis "$@"
