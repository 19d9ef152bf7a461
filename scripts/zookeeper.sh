#!/usr/bin/env bash
# Start or stop a private Apache ZooKeeper 3.8 (Debian's `zookeeper` package) on
# loopback, with its own port and data dir, so tests and benchmarks can use it
# as the reference server without touching any system-wide instance.
#
#   scripts/zookeeper.sh start [PORT] [DIR]   # default 21810, .run/zookeeper-PORT
#   scripts/zookeeper.sh stop  [PORT] [DIR]
#
# ZK_HEAP sets the JVM heap (default 512m), ZK_TICK_TIME the tick (2000),
# ZK_KEEP_DATA=1 keeps an existing data dir, ZK_WAIT=0 returns as soon as the
# JVM is spawned (the benchmark times start-up itself, finer than the 200 ms
# readiness poll here).
#
# The server runs in standalone mode with forceSync left at its default (on),
# 4lw commands all allowed, and extended types (TTL nodes) enabled: the
# coordinator enables them by default, and the differential tests compare them.
set -euo pipefail
cmd=${1:-start}
port=${2:-21810}
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${3:-$root/.run/zookeeper-$port}
tick=${ZK_TICK_TIME:-2000}

need_zookeeper() {
  if [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "zookeeper.sh: Apache ZooKeeper is not installed; run scripts/setup.sh" >&2
    exit 1
  fi
}

case "$cmd" in
start)
  need_zookeeper
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "zookeeper.sh: port $port already answers; reusing it" >&2
    exit 0
  fi
  # A fresh data dir each start, unless ZK_KEEP_DATA=1 (the benchmark's
  # recovery figure restarts on the data it loaded).
  [ "${ZK_KEEP_DATA:-0}" = 1 ] || rm -rf "$dir"
  mkdir -p "$dir/data" "$dir/conf"
  cat >"$dir/conf/zoo.cfg" <<CFG
tickTime=$tick
dataDir=$dir/data
clientPort=$port
clientPortAddress=127.0.0.1
maxClientCnxns=0
4lw.commands.whitelist=*
admin.enableServer=false
CFG
  # The jar's manifest names its dependencies' jars, so it is the whole classpath.
  # Run the JVM directly (not zkServer.sh) so the pid is ours to stop and the
  # log goes next to the data dir.
  nohup java -Xmx${ZK_HEAP:-512m} \
    -Dzookeeper.extendedTypesEnabled=true \
    -Dzookeeper.admin.enableServer=false \
    -Dzookeeper.root.logger=INFO,CONSOLE \
    -cp "$dir/conf:/usr/share/java/zookeeper.jar" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$dir/conf/zoo.cfg" \
    >"$dir/zookeeper.log" 2>&1 &
  echo $! >"$dir/pid"
  [ "${ZK_WAIT:-1}" = 0 ] && exit 0
  for _ in $(seq 1 150); do
    # `srvr` says `Mode:` only once the server serves requests; `ruok`
    # answers imok earlier, while the first sessions are still dropped.
    if (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf srvr >&3 && cat <&3) 2>/dev/null | grep -q '^Mode:'; then
      echo "zookeeper.sh: Apache ZooKeeper answers on 127.0.0.1:$port (data $dir)" >&2
      exit 0
    fi
    if ! kill -0 "$(cat "$dir/pid")" 2>/dev/null; then
      echo "zookeeper.sh: Apache ZooKeeper exited at start; its log:" >&2
      tail -40 "$dir/zookeeper.log" >&2
      exit 1
    fi
    sleep 0.2
  done
  echo "zookeeper.sh: Apache ZooKeeper did not answer on port $port within 30 s; its log:" >&2
  tail -40 "$dir/zookeeper.log" >&2
  exit 1
  ;;
stop)
  if [ -f "$dir/pid" ]; then
    pid=$(cat "$dir/pid")
    kill "$pid" 2>/dev/null || true
    # Wait for it to be gone, so a restart on the same port finds it free.
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$dir/pid"
  fi
  ;;
*)
  echo "usage: $0 start|stop [PORT] [DIR]" >&2
  exit 2
  ;;
esac
