#!/usr/bin/env bash
# A fresh set of identities for one docker compose deployment:
#
#   scripts/compose-secrets.sh            # writes ./.secrets/ (refuses to overwrite)
#   scripts/compose-secrets.sh --rotate   # replaces them (docs/security.md, "Rotating")
#
# Writes <role>.cred for operator, system-a, system-b, ha-worker and dashboard
# (the format of `zkctl gen-credentials`) and admin.token, from the kernel's
# random source. Needs only bash, openssl and coreutils on the Docker host:
# the digest id is base64(sha1("role:password")), ZooKeeper's digest scheme.
#
# And the broker's (docs/security.md, "Broker identities"): the RabbitMQ
# users of system-a and system-b, broker-<service>.cred (`auth =
# user:password`), and broker-definitions.json, which the rabbitmq container
# loads at boot (users, permissions, the `tasks` queue's topology): what
# `zkctl gen-broker-credentials .secrets --queue tasks` writes, the password
# hash being RabbitMQ's base64(salt ++ sha256(salt ++ password)) with a
# 4-byte salt. A set made before broker identities existed gets them added
# on the next run, without --rotate.
#
# .secrets/ itself is mode 0700, so no other user of the host can open what
# is in it. The files are 0644 because compose bind-mounts a file secret with
# its host mode and the containers run as a non-root user of their own.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SECRETS_DIR:-$root/.secrets}
roles=(operator system-a system-b ha-worker dashboard)

broker_only=0
if [ -e "$dir/operator.cred" ] && [ "${1:-}" != "--rotate" ]; then
  if [ -e "$dir/broker-definitions.json" ]; then
    echo "$dir already holds a set; pass --rotate to replace it" >&2
    exit 1
  fi
  broker_only=1
fi
command -v openssl >/dev/null || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"

password() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }

# RabbitMQ's rabbit_password_hashing_sha256 of $1: a fresh 4-byte salt, then
# base64(salt ++ sha256(salt ++ password)).
rabbit_hash() {
  local salt
  salt=$(mktemp)
  head -c 4 /dev/urandom >"$salt"
  { cat "$salt"; { cat "$salt"; printf '%s' "$1"; } | openssl dgst -sha256 -binary; } | base64 | tr -d '\n'
  rm -f "$salt"
}

# The broker's set, into directory $1, for the task queue `tasks`. The
# permissions are servicekit::broker::permissions (tests/tests/compose.rs
# checks that both generators agree).
broker_set() {
  local out=$1 a b
  a=$(password)
  b=$(password)
  printf '# RabbitMQ credentials of `system-a` for the task queue `tasks`. Secret.\nauth = system-a:%s\n' "$a" \
    >"$out/broker-system-a.cred"
  printf '# RabbitMQ credentials of `system-b` for the task queue `tasks`. Secret.\nauth = system-b:%s\n' "$b" \
    >"$out/broker-system-b.cred"
  cat >"$out/broker-definitions.json" <<JSON
{
  "users": [
    {"name": "system-a", "password_hash": "$(rabbit_hash "$a")", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""},
    {"name": "system-b", "password_hash": "$(rabbit_hash "$b")", "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ""}
  ],
  "vhosts": [{"name": "/"}],
  "permissions": [
    {"user": "system-a", "vhost": "/", "configure": "^\$", "write": "^tasks\\\\.in\$", "read": "^\$"},
    {"user": "system-b", "vhost": "/", "configure": "^\$", "write": "^tasks\\\\.in\$", "read": "^tasks\$"}
  ],
  "queues": [
    {"name": "tasks", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "quorum", "x-dead-letter-exchange": "tasks.dlx", "x-dead-letter-strategy": "at-least-once", "x-overflow": "reject-publish", "x-delivery-limit": 20}},
    {"name": "tasks.dlq", "vhost": "/", "durable": true, "auto_delete": false, "arguments": {"x-queue-type": "quorum"}}
  ],
  "exchanges": [
    {"name": "tasks.in", "vhost": "/", "type": "direct", "durable": true, "auto_delete": false, "internal": false, "arguments": {}},
    {"name": "tasks.dlx", "vhost": "/", "type": "fanout", "durable": true, "auto_delete": false, "internal": false, "arguments": {}}
  ],
  "bindings": [
    {"source": "tasks.in", "vhost": "/", "destination": "tasks", "destination_type": "queue", "routing_key": "tasks", "arguments": {}},
    {"source": "tasks.dlx", "vhost": "/", "destination": "tasks.dlq", "destination_type": "queue", "routing_key": "", "arguments": {}}
  ]
}
JSON
}
declare -A pw
ids=""
for r in "${roles[@]}"; do
  pw[$r]=$(password)
  hash=$(printf '%s' "$r:${pw[$r]}" | openssl dgst -sha1 -binary | base64)
  ids+="id = $r:$hash"$'\n'
done
tmp=$(mktemp -d "$dir/.new.XXXXXX")
broker_set "$tmp"
for r in "${roles[@]}"; do
  [ "$broker_only" = 1 ] && break
  {
    echo "# ZooKeeper credentials of \`$r\`. Secret."
    echo "auth = $r:${pw[$r]}"
    echo "# Every identity's digest id (public; the same in every file)."
    printf '%s' "$ids"
  } >"$tmp/$r.cred"
done
[ "$broker_only" = 1 ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/admin.token"
chmod 644 "$tmp"/*
sync "$tmp"/*
# Each file replaces the old one in a rename: a reader sees old or new.
for f in "$tmp"/*; do mv -f "$f" "$dir/"; done
rmdir "$tmp"
sync "$dir"
if [ "$broker_only" = 1 ]; then
  echo "added the broker identities to the set in $dir" >&2
else
  echo "wrote ${#roles[@]} identities, admin.token and the broker identities to $dir" >&2
fi
