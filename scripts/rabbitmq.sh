#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672, and loads the
# services' users into it. One that already answers is reused; otherwise a
# private one is started with its own node name and data dir under .run/,
# bound to loopback.
#
#   scripts/rabbitmq.sh ensure
#   scripts/rabbitmq.sh import FILE   # broker definitions (zkctl gen-broker-credentials)
#   scripts/rabbitmq.sh node          # prints the node name rabbitmqctl must use
#   scripts/rabbitmq.sh stop          # stops only the private one
#   scripts/rabbitmq.sh migrate-to-quorum QUEUE   # drops QUEUE and QUEUE.dlq if classic and empty
#   scripts/rabbitmq.sh sweep-tests [PREFIX]   # deletes what the tests made (named e2e.*)
#
# The task queue and its dead-letter queue are quorum queues. A broker that
# has them from an older release as classic queues keeps them so through
# an import (RabbitMQ never changes a queue's type, and import_definitions
# skips a queue that exists): `import` checks each queue's type afterwards
# and stops with the way to migrate, which is: stop system-a, let system-b
# empty the task queue (`rabbitmqctl list_queues name messages`), look at
# what waits in QUEUE.dlq, stop system-b, run `migrate-to-quorum QUEUE`
# (it deletes only empty classic queues), import again and start the
# services. Tasks accepted meanwhile wait in system-a's outbox, in the
# coordination server, and are published once it is back.
#
# `import` goes through rabbitmqctl (Erlang distribution, as root or the
# rabbitmq user): it needs no broker user, so no guest either.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=$root/.run/rabbitmq
port=${RABBITMQ_PORT:-5672}
node=coordination-demo@localhost

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
# The node that answers: the private one this script starts, if it runs;
# else RABBITMQ_NODENAME, or rabbitmqctl's default (the system broker).
node_in_use() {
  if rabbitmqctl -n "$node" status >/dev/null 2>&1; then
    echo "$node"
  else
    echo "${RABBITMQ_NODENAME:-}"
  fi
}

case "${1:-ensure}" in
ensure)
  if answers; then
    echo "rabbitmq.sh: RabbitMQ answers on 127.0.0.1:$port; reusing it" >&2
    exit 0
  fi
  command -v rabbitmq-server >/dev/null || { echo "rabbitmq.sh: rabbitmq-server is not installed; run scripts/setup.sh" >&2; exit 1; }
  mkdir -p "$dir/mnesia" "$dir/log"
  export RABBITMQ_NODENAME=$node RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT=$port \
    RABBITMQ_DIST_PORT=$((port + 20000)) RABBITMQ_MNESIA_BASE=$dir/mnesia RABBITMQ_LOG_BASE=$dir/log \
    RABBITMQ_PID_FILE=$dir/pid
  rabbitmq-server -detached
  for _ in $(seq 1 120); do
    if answers; then
      # The port opens before the broker accepts logins; wait for boot.
      rabbitmqctl -n "$node" await_startup >/dev/null 2>&1 || true
      echo "rabbitmq.sh: started a private RabbitMQ on 127.0.0.1:$port (data $dir)" >&2
      exit 0
    fi
    sleep 0.5
  done
  echo "rabbitmq.sh: RabbitMQ did not start within 60 s; its logs are in $dir/log" >&2
  tail -30 "$dir"/log/*.log >&2 2>/dev/null || true
  exit 1
  ;;
import)
  file=${2:?usage: $0 import FILE}
  n=$(node_in_use)
  # One import per deployment: users, permissions, queues, exchanges and
  # bindings in one call (rabbitmqctl costs ~0.7 s a call). Idempotent.
  # On standard input: the broker node runs as its own user and could not
  # open a file that is ours and mode 0600.
  rabbitmqctl ${n:+-n "$n"} -q import_definitions <"$file" >/dev/null
  # The type each imported queue asked for, against the one it has.
  wanted=$(python3 -c '
import json, sys
for q in json.load(open(sys.argv[1])).get("queues", []):
    print(q["name"], q.get("arguments", {}).get("x-queue-type", "classic"))' "$file")
  have=$(rabbitmqctl ${n:+-n "$n"} -q list_queues name type 2>/dev/null || true)
  bad=0
  while read -r name type; do
    [ -n "$name" ] || continue
    actual=$(awk -v q="$name" '$1 == q { print $2 }' <<<"$have")
    if [ -n "$actual" ] && [ "$actual" != "$type" ]; then
      echo "rabbitmq.sh: queue '$name' exists as a $actual queue; these definitions make it a $type queue, and" \
        "RabbitMQ never changes the type of a queue that exists. To migrate: stop system-a, let system-b empty" \
        "the queue (rabbitmqctl list_queues name messages), deal with what waits in its .dlq, stop system-b, run" \
        "'scripts/rabbitmq.sh migrate-to-quorum ${name%.dlq}' and import again." >&2
      bad=1
    fi
  done <<<"$wanted"
  [ "$bad" = 0 ] || exit 1
  echo "rabbitmq.sh: imported $file into ${n:-the default node}" >&2
  ;;
migrate-to-quorum)
  queue=${2:?usage: $0 migrate-to-quorum QUEUE}
  n=$(node_in_use)
  have=$(rabbitmqctl ${n:+-n "$n"} -q list_queues name type messages 2>/dev/null)
  for q in "$queue" "$queue.dlq"; do
    read -r type messages < <(awk -v q="$q" '$1 == q { print $2, $3 }' <<<"$have") || true
    if [ -z "${type:-}" ] || [ "$type" != classic ]; then
      echo "rabbitmq.sh: '$q' is ${type:-absent}; nothing to drop" >&2
      continue
    fi
    if [ "$messages" != 0 ]; then
      echo "rabbitmq.sh: classic queue '$q' holds $messages messages: not dropping it (accepted tasks, or" \
        "dead letters an operator must see); empty it first (let system-b consume the task queue; move or" \
        "replay the dead letters)" >&2
      exit 1
    fi
    # --if-empty: a message that arrived since the look above stops it.
    rabbitmqctl ${n:+-n "$n"} -q delete_queue --if-empty "$q" >/dev/null
    echo "rabbitmq.sh: dropped the empty classic queue '$q'; import the definitions to declare it a quorum queue" >&2
  done
  ;;
sweep-tests)
  # Every queue, exchange and user a test makes is named `e2e.` first
  # (testkit::broker::queue_name). A test that is killed, or fails, leaves
  # them behind, and each quorum queue is a Raft group the broker keeps
  # running: a few hundred of them once wedged a broker. One rabbitmqctl
  # eval deletes them all (a rabbitmqctl call per item costs ~0.7 s).
  # Nothing else is touched: the deployment's `tasks` and its users stay.
  # PREFIX narrows it (the suite's own test of the sweep uses one).
  prefix=${2:-e2e.}
  [[ $prefix =~ ^e2e\.[A-Za-z0-9._-]*$ ]] || { echo "rabbitmq.sh: sweep-tests PREFIX must start with e2e. and hold only [A-Za-z0-9._-]" >&2; exit 2; }
  n=$(node_in_use)
  rabbitmqctl ${n:+-n "$n"} -q eval '
    Prefix = <<"'"$prefix"'">>,
    Mine = fun(Name) -> binary:match(Name, Prefix) =:= {0, byte_size(Prefix)} end,
    Who = <<"scripts/rabbitmq.sh sweep-tests">>,
    Qs = [Q || Q <- rabbit_amqqueue:list(), Mine(element(4, amqqueue:get_name(Q)))],
    [rabbit_amqqueue:delete(Q, false, false, Who) || Q <- Qs],
    Xs = [element(2, X) || X <- rabbit_exchange:list(), Mine(element(4, element(2, X)))],
    [rabbit_exchange:delete(X, false, Who) || X <- Xs],
    Us = [U || P <- rabbit_auth_backend_internal:list_users(), U <- [proplists:get_value(user, P)], Mine(U)],
    [rabbit_auth_backend_internal:delete_user(U, Who) || U <- Us],
    io:format("rabbitmq.sh: swept ~b queues, ~b exchanges, ~b users left by tests~n", [length(Qs), length(Xs), length(Us)]).' | grep -v '^ok$' >&2
  ;;
node)
  node_in_use
  ;;
stop)
  if [ -f "$dir/pid" ]; then
    rabbitmqctl -n "$node" stop >/dev/null 2>&1 || kill "$(cat "$dir/pid")" 2>/dev/null || true
  fi
  ;;
*)
  echo "usage: $0 ensure|import FILE|node|stop|migrate-to-quorum QUEUE|sweep-tests [PREFIX]" >&2
  exit 2
  ;;
esac
