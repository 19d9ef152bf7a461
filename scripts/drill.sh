#!/usr/bin/env bash
# A failure drill on the running system: causes one fault the way it
# happens in production, drives the scenario through it, prints the
# evidence and a verdict, and exits non-zero when a promise broke.
#
#   scripts/drill.sh NAME                        # the system scripts/run.sh started
#   scripts/drill.sh --compose NAME              # docker compose up (coordinator)
#   scripts/drill.sh --compose --scale-out NAME  # docker compose, the scale-out profile
#   scripts/drill.sh --list                      # the drills, one line each
#
# NAME: task-crash, lock-stall, config-change, active-crash, active-pause,
# broker-outage, coordinator-restart, broker-node-kill (the scale-out
# profile's broker cluster only). Each is explained, step by step
# against the code, in docs/scenarios/.
#
# Builds the `drill` binary if needed (the profile run.sh used:
# RUN_PROFILE, release by default). The broker-outage drill stops the
# local RabbitMQ node's application for a few seconds (rabbitmqctl
# stop_app / start_app): run it where that broker serves only this system.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ "${1:-}" = "--list" ]; then
  cat <<'LIST'
task-crash           kill -9 a system-b mid-task: the task is done exactly once
lock-stall           SIGSTOP the lock holder past its session: its stale write is refused by token
config-change        a new config version: every live instance applies it, and how fast
active-crash         kill -9 the active ha-worker: the standby takes over with a newer term
active-pause         SIGSTOP the active past its session: its old term's write is refused by the journal
broker-outage        RabbitMQ stopped under submits: nothing refused, every task done once
coordinator-restart  kill -9 the coordination server (or the ensemble's leader): sessions, locks, the active survive
broker-node-kill     kill -9 the broker node leading the task queue (scale-out): nothing refused, every task done once
LIST
  exit 0
fi
profile=${RUN_PROFILE:-release}
case "$profile" in
release) flags=(--release) ;;
debug) flags=() ;;
*) echo "drill.sh: RUN_PROFILE must be release or debug" >&2; exit 2 ;;
esac
bin=$root/target/$profile/drill
if [ ! -x "$bin" ] || [ -n "$(find drills servicekit recipes -newer "$bin" -name '*.rs' 2>/dev/null | head -1)" ]; then
  cargo build -q --locked "${flags[@]}" -p drills >&2
fi
exec "$bin" "$@"
