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
# .secrets/ itself is mode 0700, so no other user of the host can open what
# is in it. The files are 0644 because compose bind-mounts a file secret with
# its host mode and the containers run as a non-root user of their own.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${SECRETS_DIR:-$root/.secrets}
roles=(operator system-a system-b ha-worker dashboard)

if [ -e "$dir/operator.cred" ] && [ "${1:-}" != "--rotate" ]; then
  echo "$dir already holds a set; pass --rotate to replace it" >&2
  exit 1
fi
command -v openssl >/dev/null || { echo "openssl is needed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"

password() { head -c 32 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }
declare -A pw
ids=""
for r in "${roles[@]}"; do
  pw[$r]=$(password)
  hash=$(printf '%s' "$r:${pw[$r]}" | openssl dgst -sha1 -binary | base64)
  ids+="id = $r:$hash"$'\n'
done
tmp=$(mktemp -d "$dir/.new.XXXXXX")
for r in "${roles[@]}"; do
  {
    echo "# ZooKeeper credentials of \`$r\`. Secret."
    echo "auth = $r:${pw[$r]}"
    echo "# Every identity's digest id (public; the same in every file)."
    printf '%s' "$ids"
  } >"$tmp/$r.cred"
done
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/admin.token"
chmod 644 "$tmp"/*
sync "$tmp"/*
# Each file replaces the old one in a rename: a reader sees old or new.
for f in "$tmp"/*; do mv -f "$f" "$dir/"; done
rmdir "$tmp"
sync "$dir"
echo "wrote ${#roles[@]} identities and admin.token to $dir" >&2
