#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian machine, and nothing
# that is already there: Apache ZooKeeper 3.8 (the reference server for the
# differential tests and the alternative backend; it brings OpenJDK) and
# RabbitMQ. The Rust toolchain must already be installed (rustup), since
# Debian's cargo is too old for this workspace.
set -euo pipefail

missing=()
[ -f /usr/share/java/zookeeper.jar ] || missing+=(zookeeper)
# Curator, the JVM's usual ZooKeeper client library: the compatibility tests
# run its recipes against both servers.
[ -f /usr/share/java/curator-recipes.jar ] || missing+=(libcurator-recipes-java)
# kazoo, the Python client, for the same reason (under Debian's python3).
[ -d /usr/lib/python3/dist-packages/kazoo ] || missing+=(python3-kazoo)
# Headless Chromium and Node (for playwright-core) load the dashboard in a
# real browser.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
# The benchmark's plot draws its text with DejaVu Sans.
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# scripts/fuzz.sh: libfuzzer-sys compiles libFuzzer, which is C++.
command -v g++ >/dev/null 2>&1 || missing+=(g++)
# Clock steps of one service's wall clock (testkit::clock).
[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing+=(faketime)
# The partition tests: hosts are network namespaces joined by veth pairs
# (iproute2's `ip`), partitioned with iptables inside them.
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables-restore >/dev/null 2>&1 || missing+=(iptables)
# The power-loss tests mount testkit::crashfs (FUSE); fusermount3 unmounts
# it if the test process dies.
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)

if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup.sh: cargo is missing: install Rust 1.89 or newer with rustup (https://rustup.rs)" >&2
  exit 1
fi
