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
  echo "rabbitmq.sh: imported $file into ${n:-the default node}" >&2
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
  echo "usage: $0 ensure|import FILE|node|stop" >&2
  exit 2
  ;;
esac
