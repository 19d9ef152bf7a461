#!/usr/bin/env bash
# The whole system on loopback, from a fresh Debian machine:
#
#   scripts/run.sh                 # on the coordinator (the default, no JVM)
#   scripts/run.sh --zookeeper     # the same services on Apache ZooKeeper 3.8
#
# Installs what is missing, makes sure RabbitMQ answers (reusing one that
# does), builds release binaries, then starts: the coordination server on
# 127.0.0.1:2181, system-a (gRPC on 127.0.0.1:50051), three system-b, two
# ha-workers, and the dashboard if it was built. Data lives under .run/.
# Ctrl-C stops everything this script started.
#
# Each process is supervised, as systemd or a container engine would: one
# that dies (kill -9, a crash) is started again a second later. Its pid is
# in .run/system/pids/<name>.pid, and .run/system/system.env says where
# everything is: what `scripts/drill.sh` reads to break things on purpose
# and judge what happened.
#
# RUN_PROFILE=debug uses the debug build (what scripts/test.sh builds)
# instead of building release binaries; RUN_DIR moves .run elsewhere.
#
# Every process runs as its own ZooKeeper identity (docs/security.md): the
# first run generates a fresh set of credentials, and an admin API token,
# under .run/identities/ (mode 0600, never in the repository); they live
# as long as the data they protect, so `rm -rf .run` starts afresh. The
# same goes for the broker: system-a and system-b each log in to RabbitMQ
# as a user of their own (broker-<service>.cred), which the first run
# generates and every run imports into the broker (with the task queue's
# topology), so a broker started afresh gets them back. No service uses
# guest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
backend=coordinator
[ "${1:-}" = "--zookeeper" ] && backend=zookeeper

scripts/setup.sh
scripts/rabbitmq.sh ensure
profile=${RUN_PROFILE:-release}
case "$profile" in
release) echo "== building (release)" >&2; cargo build --release --locked --workspace --bins ;;
debug) echo "== building (debug)" >&2; cargo build --locked --workspace --bins ;;
*) echo "run.sh: RUN_PROFILE must be release or debug, not $profile" >&2; exit 2 ;;
esac

bin=$root/target/$profile
base=${RUN_DIR:-$root/.run}
run=$base/system
rm -rf "$run/pids"
mkdir -p "$run/logs" "$run/store" "$run/ha" "$run/pids"
zk=127.0.0.1:2181
ids=$base/identities
if [ ! -f "$ids/operator.cred" ]; then
  "$bin/zkctl" gen-credentials "$ids"
fi
if [ ! -f "$ids/admin.token" ]; then
  (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$ids/admin.token")
fi
if [ ! -f "$ids/broker-definitions.json" ]; then
  "$bin/zkctl" gen-broker-credentials "$ids" --queue tasks
fi
scripts/rabbitmq.sh import "$ids/broker-definitions.json"
cred() { echo "--zk-credentials-file=$ids/$1.cred"; }
broker() { echo "--amqp-credentials-file=$ids/broker-$1.cred"; }
# No user or password in the URL: those come from each service's file.
amqp=${AMQP_URL:-amqp://127.0.0.1:5672/%2f}
names=()
cleanup() {
  trap - EXIT INT TERM
  echo "== stopping" >&2
  # Supervisors first, so nothing is started again; then the services
  # (they resign and deregister through the server), the coordination
  # server last.
  touch "$run/pids/stopping"
  for ((i = ${#names[@]} - 1; i >= 0; i--)); do
    local name=${names[i]} p
    p=$(cat "$run/pids/$name.pid" 2>/dev/null) || continue
    kill -CONT "$p" 2>/dev/null || true # a drill may have paused it
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  done
  [ "$backend" = zookeeper ] && scripts/zookeeper.sh stop 2181 "$base/zookeeper-2181" || true
  exit 0
}
trap cleanup EXIT INT TERM

start() { # name, then the command; logs to .run/system/logs/<name>.log
  local name=$1
  shift
  names+=("$name")
  (
    # The supervisor: start again whatever ends unasked, a second later.
    while [ ! -e "$run/pids/stopping" ]; do
      "$@" >>"$run/logs/$name.log" 2>&1 &
      echo $! >"$run/pids/$name.pid"
      rc=0
      wait $! || rc=$?
      [ -e "$run/pids/stopping" ] && break
      echo "run.sh: $name exited ($rc); starting it again in 1 s" >>"$run/logs/$name.log"
      sleep 1
    done
  ) &
  for _ in $(seq 1 50); do [ -s "$run/pids/$name.pid" ] && break; sleep 0.02; done
}

if [ "$backend" = zookeeper ]; then
  scripts/zookeeper.sh start 2181 "$base/zookeeper-2181"
else
  start coordinator "$bin/coordinator" --listen "$zk" --data-dir "$run/coordinator" --admin-listen 127.0.0.1:8081 \
    --admin-token-file "$ids/admin.token"
fi
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/2181) 2>/dev/null && break; sleep 0.1; done

# The operator lays out the tree with least-privilege ACLs (again on every
# start: it is idempotent). Runtime settings live in znodes; the services
# apply changes live.
"$bin/zkctl" --zk "$zk" "$(cred operator)" init
"$bin/zkctl" --zk "$zk" "$(cred operator)" set /config/system-a '{"timeout_ms":10000}'
"$bin/zkctl" --zk "$zk" "$(cred operator)" set /config/system-b '{"work_ms":200}'
"$bin/zkctl" --zk "$zk" "$(cred operator)" set /config/ha-worker '{"interval_ms":1000}'

# Each process serves Prometheus metrics and /health on a loopback port of
# its own: system-a 9101, system-b 9102-9104, ha-worker 9111-9112.
start system-a "$bin/system-a" --zk "$zk" "$(cred system-a)" --amqp "$amqp" "$(broker system-a)" --listen 127.0.0.1:50051 \
  --instance a1 --metrics-listen 127.0.0.1:9101
for i in 1 2 3; do
  start "system-b-$i" "$bin/system-b" --zk "$zk" "$(cred system-b)" --amqp "$amqp" "$(broker system-b)" \
    --store-dir "$run/store" --instance "b$i" --metrics-listen "127.0.0.1:910$((i + 1))"
done
for i in 1 2; do
  start "ha-worker-$i" "$bin/ha-worker" --zk "$zk" "$(cred ha-worker)" --journal "$run/ha/journal" --instance "ha$i" \
    --metrics-listen "127.0.0.1:911$i"
done
if [ -x "$bin/dashboard" ]; then
  admin=()
  [ "$backend" = coordinator ] && admin=(--admin 127.0.0.1:8081 --admin-token-file "$ids/admin.token")
  start dashboard "$bin/dashboard" --zk "$zk" "$(cred dashboard)" --listen 127.0.0.1:8080 "${admin[@]}"
fi

# Where everything is, for scripts/drill.sh (and anyone else who asks).
cat >"$run/system.env" <<ENV
backend=$backend
zk=$zk
system_a=127.0.0.1:50051
dashboard=127.0.0.1:8080
metrics_system_a=127.0.0.1:9101
metrics_system_b=127.0.0.1:9102,127.0.0.1:9103,127.0.0.1:9104
metrics_ha_worker=127.0.0.1:9111,127.0.0.1:9112
operator_credentials=$ids/operator.cred
pids=$run/pids
logs=$run/logs
journal=$run/ha/journal
zookeeper_dir=$base/zookeeper-2181
ENV

cat <<MSG

The system runs on $backend at $zk. Logs: $run/logs/. Try, in another shell:

  export ZK_CREDENTIALS_FILE=$ids/operator.cred         # act as the operator
  target/release/zkctl tree /                            # everything, drawn
  target/release/zkctl services                          # who is alive
  target/release/system-a submit --entity acct-1 --amount 5   # scenario 1 + 2
  target/release/zkctl set /config/system-b '{"work_ms":20}'  # scenario 3, live
  kill -9 \$(cat $run/pids/ha-worker-1.pid)               # scenario 4: the standby takes over
  scripts/drill.sh lock-stall                            # a failure, caused and judged (docs/scenarios/)
  tail -f $run/ha/journal
  dashboard: http://127.0.0.1:8080/   metrics: http://127.0.0.1:8081/metrics (coordinator)
  service metrics (/metrics, /health): system-a http://127.0.0.1:9101  system-b http://127.0.0.1:9102-9104
                                       ha-worker http://127.0.0.1:9111-9112

Ctrl-C stops it all.
MSG
# Until Ctrl-C (the supervisors never end on their own).
while :; do sleep 3600 & wait $! || true; done
