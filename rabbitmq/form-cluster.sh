#!/bin/bash
# The scale-out profile's `rabbitmq-cluster` one-shot
# (docker-compose.scale-out.yml): waits until every node in
# RABBITMQ_CLUSTER_NODES runs in one cluster, then gives every quorum queue
# a member on each node, and exits 0 once each has as many members as there
# are nodes; non-zero, saying what is missing, after WAIT_SECONDS (300).
#
# Why the growing: a quorum queue's members are chosen when it is declared,
# among the nodes in the cluster then. The first node declares the task
# queue and its dead-letter queue from the definitions at its first boot,
# before the other two have joined, so each starts with one member; RabbitMQ
# 3.x never adds members by itself (`rabbitmq-queues grow` does). Run it
# again after a node is rebuilt on an empty data dir: the node rejoins with
# no replica, and this gives it its replicas back. Every step is idempotent.
#
# rabbitmqctl proves itself to the nodes with the cluster's Erlang cookie,
# from the broker's identity volume, in this container's own home.
set -euo pipefail
read -r -a nodes <<<"${RABBITMQ_CLUSTER_NODES:?RABBITMQ_CLUSTER_NODES must list the node names}"
wait_s=${WAIT_SECONDS:-300}
install -m 0400 /run/identity/erlang.cookie "$HOME/.erlang.cookie"
say() { echo "rabbitmq-cluster: $*"; }
deadline=$((SECONDS + wait_s))

# The running nodes a node reports, one per line (cluster_status's JSON,
# read without jq, which the image lacks).
running_nodes() { # NODE
  rabbitmqctl -q -n "$1" cluster_status --formatter json 2>/dev/null |
    sed -n 's/.*"running_nodes":\[\([^]]*\)\].*/\1/p' | tr -d '"' | tr ',' '\n'
}

while true; do
  missing=()
  running=$(running_nodes "${nodes[0]}" || true)
  for n in "${nodes[@]}"; do
    grep -qxF "$n" <<<"$running" || missing+=("$n")
  done
  [ ${#missing[@]} -eq 0 ] && break
  [ "$SECONDS" -lt "$deadline" ] || { say "not one cluster after ${wait_s} s: ${missing[*]} not running with ${nodes[0]}"; exit 1; }
  sleep 2
done
say "${#nodes[@]} nodes running in one cluster: ${nodes[*]}"

# Each quorum queue: "NAME<tab>MEMBERS" (list_queues' tab-separated columns;
# members is a list such as [rabbit-1@rabbitmq,rabbit-2@rabbitmq-2]).
quorum_queues() {
  rabbitmqctl -q -n "${nodes[0]}" list_queues name type members --no-table-headers 2>/dev/null |
    awk -F'\t' '$2 == "quorum" { print $1 "\t" $3 }'
}
while true; do
  for n in "${nodes[@]}"; do
    rabbitmq-queues -q -n "${nodes[0]}" grow "$n" all >/dev/null 2>&1 || true
  done
  queues=$(quorum_queues || true)
  short=$(awk -F'\t' -v want="${#nodes[@]}" '{ n = split($2, m, ","); if (n < want) print $1 " (" $2 ")" }' <<<"$queues")
  if [ -n "$queues" ] && [ -z "$short" ]; then
    while IFS=$'\t' read -r q m; do say "quorum queue $q: members $m"; done <<<"$queues"
    exit 0
  fi
  [ "$SECONDS" -lt "$deadline" ] || { say "quorum queues short of members after ${wait_s} s: ${short:-no quorum queue declared}"; exit 1; }
  sleep 2
done
