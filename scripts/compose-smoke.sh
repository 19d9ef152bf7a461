#!/usr/bin/env bash
# The README's Docker section, run for real: the project's images in a real
# Docker engine on this machine, on both profiles (the coordinator; and the
# scale-out profile, a 3-node Apache ZooKeeper ensemble and a 3-node RabbitMQ
# cluster), driven through `docker-compose exec` the way a user drives them.
# Fails loudly at the first broken promise.
#
#   scripts/compose-smoke.sh                 # both profiles
#   scripts/compose-smoke.sh coordinator     # or: scale-out (zookeeper, its old name)
#   scripts/compose-smoke.sh --images-only   # build the stand-in base images
#   scripts/compose-smoke.sh --rmi           # also remove every image it built
#   SMOKE_COMPOSE=/path/to/compose-v2 scripts/compose-smoke.sh
#                                            # the same with another Compose
#
# What it needs and does, in order:
# - Docker's engine and docker-compose (v1 1.29, the oldest Compose the files
#   are written for) from Debian's packages, installed when missing.
# - A daemon: reuses one that answers; otherwise starts `dockerd` with no
#   bridge and no iptables rules (this machine may not own its firewall) and
#   stops it at the end.
# - Base images, built locally when they cannot be pulled (no registry is
#   reachable from CI machines): debian:bookworm-slim by debootstrap from the
#   host's Debian mirror; a Rust build image from the host's own toolchain
#   (passed to the Dockerfile as RUST_IMAGE, so its tag says what it is);
#   Apache ZooKeeper from Debian's `zookeeper` package; RabbitMQ from
#   Debian's `rabbitmq-server` package (3.10), for the scale-out profile's
#   three nodes, which are real nodes clustered as the compose file clusters
#   them; and, on the coordinator profile, a stand-in for the single
#   broker, since the broker image cannot be pulled either: a TCP proxy on
#   the broker's own address (rabbitmq = 127.0.0.14:5672) to the host's
#   RabbitMQ (127.0.0.1:5672), healthy once an AMQP handshake through it
#   succeeds. Stopping the `rabbitmq` service closes every connection and
#   refuses new ones, as stopping the broker does, so the broker-outage
#   drill has a real outage without touching the host's broker. The host's
#   broker gets the deployment's definitions imported (the services' users
#   `system-a` and `system-b`, their permissions, the `tasks` topology), as
#   the broker image loads them at boot; it replaces the passwords of users
#   of the same names, such as scripts/run.sh's, which its next start
#   imports back.
# - Every container on the host network (no bridge exists), service names
#   resolved to loopback: a generated override adds network_mode/extra_hosts,
#   and the merged file is rendered with `docker-compose config` with its
#   `ports:` removed (host networking refuses port bindings, and Compose v1
#   appends an override's ports to the base file's instead of replacing them).
#   The ZooKeeper servers take 127.0.0.11-13, the coordinator 127.0.0.1, the
#   broker (or the cluster's three nodes) 127.0.0.14-16 on AMQP's 5672.
#   Sharing one network, the broker nodes also need Erlang distribution
#   ports of their own (25691-25693, not the host broker's 25672) and one
#   port mapper (epmd) that no node's death takes down: a container of its
#   own on port 4391 (not the host's 4369), with node names that differ
#   before the @ (rabbit-1@rabbitmq ...), which one epmd requires.
#   A published port whose host address and port differ from where the
#   service listens (zk1-3's 2181 on 127.0.0.1:2182-2184) gets a forwarder
#   on the host for the profile's run, as Docker's port publishing would.
# - After the scenarios, every failure drill once on each profile
#   (scripts/drill.sh --compose [--scale-out] NAME, its Compose commands
#   run as this script runs them: same Compose, project and rendered file,
#   through a DRILL_COMPOSE wrapper): its VERDICT line in the output, all
#   its evidence when it fails. The drill binary is built on the host
#   first (cargo build --release -p drills). On the scale-out profile, also
#   broker-node-kill: kill -9 of the broker node that leads the task queue
#   while 4 clients submit.
# - On the scale-out profile, the cluster itself: three running nodes, the
#   task queue a quorum queue with a member on each.
# - Containers, volumes and the project's network are removed at the end;
#   base images and the build cache are kept for the next run (--rmi removes
#   them too).
set -euo pipefail
export PATH=/usr/bin:/usr/sbin:/bin:/sbin:$PATH
root=$(cd "$(dirname "$0")/.." && pwd)
work=${SMOKE_WORK:-$root/.run/compose-smoke}
mkdir -p "$work"
rust_version=$(rustc --version | awk '{print $2}')
rust_image=coordination-demo/rust-host:$rust_version
# The tags name what the images are and change when what the smoke needs of
# them does (a base image is rebuilt only when its tag is missing).
zk_image=coordination-demo/zookeeper-debian:3.8-nometrics
broker_image=coordination-demo/rabbitmq-proxy:definitions
rabbitmq_image=coordination-demo/rabbitmq-debian:3.10-uid999
prometheus_image=coordination-demo/prometheus-debian:2.42
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
compose=${SMOKE_COMPOSE:-docker-compose}
t0=$(date +%s)

say() { printf '[compose-smoke %4ss] %s\n' "$(($(date +%s) - t0))" "$*" >&2; }
fail() {
  say "FAILED: $*"
  exit 1
}

profiles=()
images_only=0
rmi=0
for arg in "$@"; do
  case "$arg" in
  coordinator | scale-out) profiles+=("$arg") ;;
  zookeeper) profiles+=(scale-out) ;;
  --images-only) images_only=1 ;;
  --rmi) rmi=1 ;;
  *) fail "unknown argument $arg" ;;
  esac
done
[ ${#profiles[@]} -gt 0 ] || profiles=(coordinator scale-out)

# ---------------------------------------------------------------- engine ---
ensure_engine() {
  if [ -x /usr/sbin/dockerd ] && command -v docker-compose >/dev/null && command -v debootstrap >/dev/null &&
    python3 -c 'import yaml' 2>/dev/null; then
    return
  fi
  say "installing docker.io, docker-compose, debootstrap from Debian"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap python3-yaml >/dev/null
}

started_dockerd=
ensure_daemon() {
  if docker info >/dev/null 2>&1; then
    say "reusing the Docker daemon that answers"
    return
  fi
  say "starting dockerd (no bridge, no iptables)"
  setsid /usr/sbin/dockerd --iptables=false --ip6tables=false --bridge=none >"$work/dockerd.log" 2>&1 &
  started_dockerd=$!
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return
    sleep 0.5
  done
  fail "dockerd did not answer within 30 s; see $work/dockerd.log"
}

# ------------------------------------------------------------ base images ---
have_image() { docker image inspect "$1" >/dev/null 2>&1; }

debian_mirror() {
  # The first plain Debian URI the host's apt uses (deb822 or one-line form).
  local uri
  uri=$(grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null |
    grep -v security | sed -E 's/^URIs: *//; s/^deb (\[[^]]*\] )?//' | awk '{print $1}' | head -1)
  echo "${uri:-http://deb.debian.org/debian}"
}

build_debian() {
  have_image debian:bookworm-slim && return
  local rootfs=$work/bookworm-rootfs mirror
  mirror=$(debian_mirror)
  say "debootstrap bookworm from $mirror (about a minute)"
  rm -rf "$rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    fail "debootstrap failed; see $work/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import -c 'CMD ["bash"]' - debian:bookworm-slim >/dev/null
  rm -rf "$rootfs"
}

# The host's CA certificates: HTTPS from these machines may be re-signed by a
# local CA, and the build stage downloads crates.
copy_cas() {
  mkdir -p "$1/cas"
  cp /usr/local/share/ca-certificates/*.crt "$1/cas/" 2>/dev/null || true
}

build_rust() {
  have_image "$rust_image" && return
  local ctx=$work/rust-ctx tc
  tc=$(rustc --print sysroot)
  say "building $rust_image from the host toolchain $tc"
  rm -rf "$ctx" && mkdir -p "$ctx"
  copy_cas "$ctx"
  # Hard links where possible: the toolchain is over 600 MB without its docs.
  cp -al "$tc" "$ctx/toolchain" 2>/dev/null || cp -a "$tc" "$ctx/toolchain"
  rm -rf "$ctx/toolchain/share/doc"
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY cas/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY toolchain/ /usr/local/rustup/toolchains/host/
# The official image's layout: CARGO_HOME holds the registry (cached by the
# project's Dockerfile) and the tools are on PATH.
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rustup/toolchains/host/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN mkdir -p /usr/local/cargo/bin && cargo --version && rustc --version
EOF
  docker build --network host -t "$rust_image" "$ctx" >"$work/rust-image.log" 2>&1 ||
    fail "building $rust_image failed; see $work/rust-image.log"
  rm -rf "$ctx"
}

build_zookeeper() {
  have_image "$zk_image" && return
  local ctx=$work/zk-ctx
  say "building $zk_image from Debian's zookeeper package"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # An entrypoint that reads the official image's ZOO_* variables. Each
  # server binds its client port on its own address (its host's in
  # ZOO_SERVERS), so three servers share the host's network without
  # clashing with each other or with a coordinator on 127.0.0.1:2181. The
  # AdminServer is off: it would take port 8080 from the dashboard.
  cat >"$ctx/entrypoint.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
conf=/conf/zoo.cfg
mkdir -p /conf /data
echo "${ZOO_MY_ID:?ZOO_MY_ID is required}" >/data/myid
{
  echo "tickTime=2000"
  echo "initLimit=10"
  echo "syncLimit=5"
  echo "dataDir=/data"
  echo "admin.enableServer=false"
  echo "4lw.commands.whitelist=${ZOO_4LW_COMMANDS_WHITELIST:-srvr}"
  echo "quorumListenOnAllIPs=false"
  # server.N=HOST:QUORUM:ELECTION;PORT becomes ...;ADDRESS:PORT, where
  # ADDRESS is what HOST resolves to.
  for s in ${ZOO_SERVERS:?ZOO_SERVERS is required}; do
    host=${s#*=}; host=${host%%:*}
    addr=$(getent hosts "$host" | awk '{print $1; exit}')
    echo "${s%;*};${addr:?cannot resolve $host}:${s##*;}"
  done
  # Debian's package lacks ZooKeeper's Prometheus metrics provider (the
  # official image has it): its settings are left out, said once.
  for kv in ${ZOO_CFG_EXTRA:-}; do
    case $kv in
    metricsProvider.*) echo "stand-in: no Prometheus metrics provider in Debian's zookeeper; ignoring $kv" >&2 ;;
    *) echo "$kv" ;;
    esac
  done
} >"$conf"
exec java -Xmx256m -Dzookeeper.root.logger=INFO,CONSOLE \
  -cp "/conf:/usr/share/java/zookeeper.jar" \
  org.apache.zookeeper.server.quorum.QuorumPeerMain "$conf"
EOF
  # `zkServer.sh status`, the compose file's healthcheck: healthy once the
  # server answers `srvr` on its own client address as leader, follower or
  # standalone, which is what the official image's script checks. (Debian's
  # script reads /etc/zookeeper/conf and asks localhost.)
  cat >"$ctx/zkServer.sh" <<'EOF'
#!/bin/bash
[ "${1:-}" = status ] || exec /usr/share/zookeeper/bin/zkServer.sh "$@"
line=$(grep "^server.${ZOO_MY_ID}=" /conf/zoo.cfg)
client=${line##*;}
echo srvr | nc -w 2 "${client%:*}" "${client##*:}" | grep -E '^Mode: (leader|follower|standalone)'
EOF
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends zookeeper default-jre-headless netcat-openbsd \
 && rm -rf /var/lib/apt/lists/*
COPY entrypoint.sh zkServer.sh /usr/local/bin/
RUN chmod +x /usr/local/bin/entrypoint.sh /usr/local/bin/zkServer.sh
ENTRYPOINT ["/usr/local/bin/entrypoint.sh"]
EOF
  docker build --network host -t "$zk_image" "$ctx" >"$work/zk-image.log" 2>&1 ||
    fail "building $zk_image failed; see $work/zk-image.log"
  rm -rf "$ctx"
}

build_broker() {
  have_image "$broker_image" && return
  local ctx=$work/broker-ctx
  say "building $broker_image (a stand-in that proxies to the host's RabbitMQ)"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # The healthcheck speaks AMQP: it sends the 0-9-1 protocol header and
  # expects the broker's Connection.Start method frame (type 1, channel 0,
  # class 10, method 10), which a broker sends only once it accepts
  # connections. An open TCP port alone is not a broker that is up.
  cat >"$ctx/amqp-ping" <<'EOF'
#!/bin/bash
set -euo pipefail
exec 3<>"/dev/tcp/${1:-127.0.0.1}/${2:-5672}"
printf 'AMQP\x00\x00\x09\x01' >&3
head=$(timeout 3 head -c 11 <&3 | od -An -tx1 | tr -d ' \n')
[ "${head:0:6}" = 010000 ] && [ "${head:14:8}" = 000a000a ]
EOF
  # The broker's address in the deployment (what `rabbitmq` resolves to)
  # forwarded to the host's broker. On SIGTERM (compose stop) the whole
  # process group goes, so every proxied connection closes at once, as
  # when a broker stops.
  cat >"$ctx/broker-proxy" <<'EOF'
#!/bin/bash
set -euo pipefail
addr=$(getent hosts rabbitmq | awk '{print $1; exit}')
trap 'trap - TERM INT; kill 0' TERM INT
socat "TCP-LISTEN:5672,bind=${addr:?cannot resolve rabbitmq},reuseaddr,fork" TCP:127.0.0.1:5672 &
wait
EOF
  # The broker image loads the definitions it mounts at boot; the host's
  # broker is given them by this script (import_definitions_loop), which
  # records the hash of what it imported in /imported/sha256. Ready means
  # both: AMQP answers, and the definitions in the broker's own volume are
  # the ones loaded.
  cat >"$ctx/broker-ready" <<'EOF'
#!/bin/bash
set -euo pipefail
amqp-ping rabbitmq 5672
[ "$(sha256sum </run/identity/definitions.json)" = "$(cat /imported/sha256)" ]
EOF
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends socat \
 && rm -rf /var/lib/apt/lists/*
COPY amqp-ping broker-proxy broker-ready /usr/local/bin/
RUN chmod +x /usr/local/bin/amqp-ping /usr/local/bin/broker-proxy /usr/local/bin/broker-ready
CMD ["broker-proxy"]
EOF
  docker build --network host -t "$broker_image" "$ctx" >"$work/broker-image.log" 2>&1 ||
    fail "building $broker_image failed; see $work/broker-image.log"
  rm -rf "$ctx"
}

# RabbitMQ from Debian's package, laid out as the official image is where
# the compose file relies on it: the `rabbitmq` user is 999:999 (so the
# cookie `identities` gives to 999 is the node's own), a
# `docker-entrypoint.sh` that runs the server as that user after giving it
# its data dir, the CLI tools on PATH working as root through
# /root/.erlang.cookie (a link to the node's cookie), logs on the console,
# and no plugins (the management UI would take the host broker's port
# 15672).
build_rabbitmq() {
  have_image "$rabbitmq_image" && return
  local ctx=$work/rabbitmq-ctx
  say "building $rabbitmq_image from Debian's rabbitmq-server package"
  rm -rf "$ctx" && mkdir -p "$ctx"
  cat >"$ctx/docker-entrypoint.sh" <<'EOF'
#!/bin/bash
set -euo pipefail
if [[ "$1" == rabbitmq* ]] && [ "$(id -u)" = 0 ]; then
  if [ "$1" = rabbitmq-server ]; then
    find /var/lib/rabbitmq \! -user rabbitmq -exec chown rabbitmq '{}' +
  fi
  exec setpriv --reuid rabbitmq --regid rabbitmq --init-groups env HOME=/var/lib/rabbitmq "$BASH_SOURCE" "$@"
fi
exec "$@"
EOF
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN groupadd --system --gid 999 rabbitmq \
 && useradd --system --uid 999 --gid rabbitmq --home-dir /var/lib/rabbitmq --no-create-home rabbitmq \
 && printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d \
 && apt-get update \
 && apt-get install -y --no-install-recommends rabbitmq-server \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /var/lib/rabbitmq /etc/rabbitmq/conf.d \
 && chown rabbitmq:rabbitmq /var/lib/rabbitmq \
 && ln -sf /var/lib/rabbitmq/.erlang.cookie /root/.erlang.cookie
COPY docker-entrypoint.sh /usr/local/bin/
RUN chmod +x /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/rabbitmq/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin RABBITMQ_LOGS=-
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["rabbitmq-server"]
EOF
  docker build --network host -t "$rabbitmq_image" "$ctx" >"$work/rabbitmq-image.log" 2>&1 ||
    fail "building $rabbitmq_image failed; see $work/rabbitmq-image.log"
  rm -rf "$ctx"
}

build_prometheus() {
  have_image "$prometheus_image" && return
  local ctx=$work/prometheus-ctx
  say "building $prometheus_image from Debian's prometheus package"
  rm -rf "$ctx" && mkdir -p "$ctx"
  # The official image's layout: the binary as the entrypoint, the TSDB in
  # /prometheus (owned by the user it runs as, so a named volume there is
  # too), wget for the compose file's healthcheck.
  cat >"$ctx/Dockerfile" <<'EOF'
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends prometheus wget \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /prometheus && chown prometheus:prometheus /prometheus
USER prometheus
ENTRYPOINT ["/usr/bin/prometheus"]
EOF
  docker build --network host -t "$prometheus_image" "$ctx" >"$work/prometheus-image.log" 2>&1 ||
    fail "building $prometheus_image failed; see $work/prometheus-image.log"
  rm -rf "$ctx"
}

ensure_engine
ensure_daemon
build_debian
build_rust
build_zookeeper
build_broker
build_rabbitmq
build_prometheus
say "base images ready"
if [ "$images_only" = 1 ]; then
  [ -z "$started_dockerd" ] || say "dockerd left running, pid $started_dockerd"
  exit 0
fi

# ------------------------------------------------------------- the files ---
# Host networking: every service sees the others on loopback. The
# coordinator binds 127.0.0.1 only, so that the ensemble's servers can take
# port 2181 on 127.0.0.11-13.
# Checked again before each profile's `up`: a build takes minutes, and a
# system started meanwhile (scripts/run.sh, a test) takes the same ports.
ports_free() { # PROFILE
  local port addr
  for port in 2181 8080 8081 9090 50051; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      fail "port $port on 127.0.0.1 is taken by another process; the compose services need it"
    fi
  done
  # The broker's address (or the cluster nodes'): a broker listening on
  # every address holds them already.
  for addr in 127.0.0.14 127.0.0.15 127.0.0.16; do
    if (exec 3<>"/dev/tcp/$addr/5672") 2>/dev/null; then
      fail "$addr:5672 answers (a broker on 0.0.0.0?): the compose broker needs it; bind the host's RabbitMQ to 127.0.0.1"
    fi
  done
  if [ "${1:-}" = scale-out ]; then
    for port in 4391 25691 25692 25693; do
      if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port is taken by another process; the broker cluster's nodes need it (epmd, distribution)"
      fi
    done
  fi
}
ports_free
if [[ " ${profiles[*]} " == *" coordinator "* ]]; then
  (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null || fail "no RabbitMQ on 127.0.0.1:5672 (scripts/rabbitmq.sh ensure starts one)"
fi

# Identities: none made here. The first `up` makes them (the `identities`
# service), as for a user on a fresh checkout.

hosts='["coordinator:127.0.0.1", "rabbitmq:127.0.0.14", "rabbitmq-2:127.0.0.15", "rabbitmq-3:127.0.0.16", "zk1:127.0.0.11", "zk2:127.0.0.12", "zk3:127.0.0.13"]'
# The profile's compose files, as a user names them.
profile_files() { # PROFILE
  echo "$root/docker-compose.yml"
  [ "$1" = scale-out ] && echo "$root/docker-compose.scale-out.yml"
  return 0
}
# The override that puts PROFILE's services on the host network with the
# locally built base images: $work/smoke-override-PROFILE.yml.
write_override() { # PROFILE
  local profile=$1 out=$work/smoke-override-$1.yml files=() f s metrics_port=9100
  while read -r f; do files+=(-f "$f"); done < <(profile_files "$profile")
  {
    cat <<YAML
# Generated by scripts/compose-smoke.sh: the $profile profile's services on
# the host network with locally built base images.
x-host: &host
  network_mode: host
  extra_hosts: $hosts
services:
  identities:
    <<: *host
    build:
      context: $root
      network: host
      args:
        RUST_IMAGE: $rust_image
  coordinator:
    <<: *host
    command: ["coordinator", "--listen", "127.0.0.1:2181", "--data-dir", "/data/coordinator", "--admin-listen", "127.0.0.1:8081",
              "--admin-token-file", "/run/identity/admin.token"]
  prometheus:
    <<: *host
    image: $prometheus_image
    command: ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus",
              "--web.listen-address=127.0.0.1:9090"]
    volumes:
      - $work/prometheus.yml:/etc/prometheus/prometheus.yml:ro
YAML
    if [ "$profile" = scale-out ]; then
      # Real RabbitMQ nodes, each on its own address with its own
      # distribution port, all registered with one epmd of their own.
      cat <<YAML
  epmd:
    <<: *host
    image: $rabbitmq_image
    init: true
    restart: unless-stopped
    entrypoint: ["epmd", "-port", "4391"]
    command: []
  rabbitmq-cluster:
    <<: *host
    image: $rabbitmq_image
    environment:
      ERL_EPMD_PORT: "4391"
YAML
      local n addr
      for n in 1 2 3; do
        s=rabbitmq; [ "$n" = 1 ] || s=rabbitmq-$n
        addr=127.0.0.$((13 + n))
        cat <<YAML
  $s:
    <<: *host
    image: $rabbitmq_image
    environment:
      ERL_EPMD_PORT: "4391"
      RABBITMQ_NODE_IP_ADDRESS: $addr
      RABBITMQ_DIST_PORT: "$((25690 + n))"
    depends_on:
      epmd:
        condition: service_started
YAML
      done
      for n in 1 2 3; do
        printf '  zk%s:\n    <<: *host\n    image: %s\n' "$n" "$zk_image"
      done
    else
      # The host's broker through a proxy (see the top of this file).
      cat <<YAML
  rabbitmq:
    <<: *host
    image: $broker_image
    init: true
    volumes:
      - $work/broker-imported:/imported:ro
    healthcheck:
      test: ["CMD", "broker-ready"]
      interval: 2s
      timeout: 5s
      retries: 30
YAML
    fi
    # Every other service of the profile's files, so a service added there
    # is on the host network here too (one left on the default network,
    # which has no bridge, resolves nothing).
    # Each service's metrics listen on 9100 in a network namespace of its
    # own; sharing the host's, they need a port each (compose merges these
    # into the base file's environment).
    for s in $("$compose" --project-directory "$root" "${files[@]}" config --services |
      grep -vxE 'identities|coordinator|rabbitmq(-[0-9]+|-cluster)?|zk[0-9]+|prometheus|grafana'); do
      printf '  %s:\n    <<: *host\n' "$s"
      case $s in
      system-a | system-b-* | ha-worker-*)
        metrics_port=$((metrics_port + 1))
        printf '    environment:\n      METRICS_LISTEN: 127.0.0.1:%s\n' "$metrics_port"
        ;;
      esac
    done
  } >"$out"
  echo "$out"
}

# Renders the merged files without `ports:` (host networking refuses port
# bindings) into $work/<profile>.yml, and lists in $work/<profile>.forwards
# ("HOST_IP HOST_PORT ADDRESS PORT") each published port that is not where
# its service listens on the host network (ADDRESS: the service's name in
# extra_hosts, else 127.0.0.1). The stand-in broker has no management UI to
# publish.
render() {
  local profile=$1 files=() f
  while read -r f; do files+=(-f "$f"); done < <(profile_files "$profile")
  files+=(-f "$(write_override "$profile")")
  # The project's name too: Compose v2 writes every volume's full name into
  # what it renders (the project's name before it), and without -p that is
  # the directory's name, not the project dc() runs.
  "$compose" -p "$project" --project-directory "$root" "${files[@]}" config >"$work/$profile.raw.yml"
  local scrape=$root/prometheus/prometheus.yml
  [ "$profile" = scale-out ] && scrape=$root/prometheus/prometheus-zookeeper.yml
  python3 - "$work/$profile.raw.yml" "$work/$profile.yml" "$work/$profile.forwards" "$scrape" "$work/prometheus.yml" <<'PY'
import re, sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
# Grafana is an optional profile whose image cannot be pulled here (and
# Debian has no package): its dashboard's queries are run against
# Prometheus instead (check_prometheus).
doc["services"].pop("grafana", None)
forwards = []
for name, svc in doc["services"].items():
    ports = svc.pop("ports", None) or []
    # On the host's network a container has the host's name: Docker
    # refuses another (the broker nodes' names are RABBITMQ_NODENAME's).
    svc.pop("hostname", None)
    # The stand-in brokers serve no management UI to publish.
    if name.startswith("rabbitmq"):
        continue
    hosts = svc.get("extra_hosts") or []
    if isinstance(hosts, dict):
        hosts = [f"{k}:{v}" for k, v in hosts.items()]
    addr = next((re.split("[:=]", h, 1)[1] for h in hosts if re.split("[:=]", h, 1)[0] == name), "127.0.0.1")
    for p in ports:
        if isinstance(p, dict):  # Compose v2's long form
            ip, published, target = p.get("host_ip", "0.0.0.0"), str(p["published"]), str(p["target"])
        else:  # v1: "[ip:]published:target[/proto]"
            parts = str(p).split("/")[0].split(":")
            target, published = parts[-1], parts[-2]
            ip = parts[-3] if len(parts) > 2 else "0.0.0.0"
        if (ip, published) != (addr, target):
            forwards.append(f"{ip} {published} {addr} {target}")
yaml.safe_dump(doc, open(sys.argv[2], "w"), sort_keys=False)
open(sys.argv[3], "w").write("".join(f + "\n" for f in forwards))
# The profile's own Prometheus file, each target moved to where its service
# listens on the host network: its METRICS_LISTEN here, else its name's
# address in extra_hosts with the same port.
prom = yaml.safe_load(open(sys.argv[4]))
jobs = []
for job in prom["scrape_configs"]:
    if job["job_name"] == "zookeeper":
        print("the ZooKeeper stand-in (Debian's package) has no Prometheus metrics provider:"
              " its job is left out here (the official image serves it on port 7000)", file=sys.stderr)
        continue
    for sc in job["static_configs"]:
        moved = []
        for t in sc["targets"]:
            name, port = t.rsplit(":", 1)
            svc = doc["services"][name]
            listen = (svc.get("environment") or {}).get("METRICS_LISTEN")
            if listen and listen.rsplit(":", 1)[1] != port:
                moved.append(listen)
                continue
            hosts = svc.get("extra_hosts") or []
            if isinstance(hosts, dict):
                hosts = [f"{k}:{v}" for k, v in hosts.items()]
            addr = next((re.split("[:=]", h, 1)[1] for h in hosts if re.split("[:=]", h, 1)[0] == name), "127.0.0.1")
            moved.append(f"{addr}:{port}")
        sc["targets"] = moved
    jobs.append(job)
prom["scrape_configs"] = jobs
yaml.safe_dump(prom, open(sys.argv[5], "w"), sort_keys=False)
PY
}

# The stand-in broker is the host's, and the broker image loads the
# definitions in its volume at every boot: this loop plays that part. It
# imports the definitions the `identities` service wrote into the broker's
# volume (read on the host, through the volume's mount point) whenever they
# change (the first `up`, a rotation), and records their hash where the
# stand-in's healthcheck reads it, so the broker is healthy only once its
# users are loaded, as the real one is.
importer=
import_definitions_loop() {
  local imported=$work/broker-imported mp sum
  mkdir -p "$imported"
  rm -f "$imported/sha256"
  while true; do
    mp=$(docker volume inspect -f '{{.Mountpoint}}' "${project}_identity-rabbitmq" 2>/dev/null || true)
    if [ -n "$mp" ] && [ -f "$mp/definitions.json" ]; then
      sum=$(sha256sum <"$mp/definitions.json")
      if [ "$sum" != "$(cat "$imported/sha256" 2>/dev/null)" ]; then
        if "$root/scripts/rabbitmq.sh" import "$mp/definitions.json" 2>>"$work/import.log"; then
          echo "$sum" >"$imported/sha256.new" && mv "$imported/sha256.new" "$imported/sha256"
        fi
      fi
    fi
    sleep 0.5
  done
}
start_importer() {
  import_definitions_loop &
  importer=$!
}
stop_importer() {
  [ -n "$importer" ] || return 0
  kill "$importer" 2>/dev/null || true
  wait "$importer" 2>/dev/null || true
  importer=
}

# Forwarders for $work/<profile>.forwards, on the host, each in its own
# process group (socat forks one child per connection).
forwarders=()
start_forwards() {
  local ip port addr target pid
  while read -r ip port addr target; do
    if (exec 3<>"/dev/tcp/$ip/$port") 2>/dev/null; then
      fail "$ip:$port is taken by another process; $profile publishes it"
    fi
    setsid socat "TCP-LISTEN:$port,bind=$ip,reuseaddr,fork" "TCP:$addr:$target" </dev/null 2>>"$work/$profile.forwards.log" &
    pid=$!
    forwarders+=("$pid")
    sleep 0.2
    kill -0 "$pid" 2>/dev/null || fail "cannot forward $ip:$port to $addr:$target; see $work/$profile.forwards.log"
    say "forwarding $ip:$port to $addr:$target (a published port)"
  done <"$work/$profile.forwards"
}
stop_forwards() {
  local pid
  for pid in "${forwarders[@]}"; do
    kill -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  forwarders=()
}

# Every failure drill once against the running profile, through the same
# Compose, project and files as dc(). The drill names the repository's files
# itself (-f docker-compose.yml [-f docker-compose.scale-out.yml]); here
# those files run rendered for the host network, and Compose v1 checks a
# service's networks on `start`, so the files as written (on the default
# network, which host networking never creates) fail with "network
# coordsmoke_default not found". DRILL_COMPOSE is a wrapper that swaps the
# files the drill names for the profile's rendered file, after checking
# that they are this profile's.
write_drill_compose() {
  local wrapper=$work/drill-compose want=docker-compose.yml
  [ "$profile" = scale-out ] && want="docker-compose.yml docker-compose.scale-out.yml"
  {
    echo '#!/usr/bin/env bash'
    echo "# Generated by scripts/compose-smoke.sh for the $profile profile: dc()."
    echo 'files=() args=()'
    echo 'while [ $# -gt 0 ]; do'
    echo '  if [ "$1" = -f ]; then files+=("$2"); shift 2; else args+=("$1"); shift; fi'
    echo 'done'
    printf 'if [ "${files[*]}" != %q ]; then\n' "$want"
    printf '  echo "drill-compose: the drill named ${files[*]}, expected %s" >&2; exit 2\nfi\n' "$want"
    printf 'exec %q -p %q --project-directory %q -f %q "${args[@]}"\n' "$compose" "$project" "$root" "$work/$profile.yml"
  } >"$wrapper"
  chmod +x "$wrapper"
  echo "$wrapper"
}
drills=(config-change task-crash lock-stall active-crash active-pause broker-outage coordinator-restart)
build_drill() {
  say "building the drill binary (cargo build --release -p drills)"
  (cd "$root" && cargo build -q --locked --release -p drills) >"$work/drill-build.log" 2>&1 ||
    fail "cannot build the drill binary; see $work/drill-build.log"
}
run_drills() {
  local args=(--compose) d log t verdict drill_compose
  local these=("${drills[@]}")
  if [ "$profile" = scale-out ]; then
    args+=(--scale-out)
    these+=(broker-node-kill)
  fi
  drill_compose=$(write_drill_compose)
  for d in "${these[@]}"; do
    log=$work/$profile.drill-$d.log
    t=$(date +%s)
    if COMPOSE_PROJECT_NAME=$project DRILL_COMPOSE=$drill_compose RUN_PROFILE=release \
      timeout 900 "$root/scripts/drill.sh" "${args[@]}" "$d" >"$log" 2>&1; then
      verdict=$(grep -m1 'VERDICT:' "$log" || true)
      [ -n "$verdict" ] || { cat "$log" >&2; fail "drill $d exited 0 without a VERDICT line"; }
      say "drill $d ($(($(date +%s) - t)) s): $verdict"
    else
      sed 's/^/    /' "$log" >&2
      fail "drill $d on profile $profile failed ($(($(date +%s) - t)) s); its output is above and in $log"
    fi
  done
}

project=coordsmoke
dc() { "$compose" -p "$project" --project-directory "$root" -f "$work/$profile.yml" "$@"; }

cleanup() {
  local rc=$?
  stop_forwards
  stop_importer
  if [ -n "${profile:-}" ] && [ -f "$work/$profile.yml" ]; then
    if [ "$rc" != 0 ]; then
      say "logs of the failed run: $work/$profile.failed.log"
      dc logs --no-color >"$work/$profile.failed.log" 2>&1 || true
      dc ps >&2 || true
    fi
    # A drill that failed midway may leave a container paused.
    dc unpause >/dev/null 2>&1 || true
    dc down -v --remove-orphans >/dev/null 2>&1 || true
  fi
  if [ "$rmi" = 1 ]; then
    docker rmi -f coordination-demo:latest "$rust_image" "$zk_image" "$broker_image" "$rabbitmq_image" "$prometheus_image" \
      debian:bookworm-slim >/dev/null 2>&1 || true
    docker builder prune -af >/dev/null 2>&1 || true
  fi
  if [ -n "$started_dockerd" ]; then
    say "stopping the dockerd this script started (pid $started_dockerd)"
    kill "$started_dockerd" 2>/dev/null || true
    wait "$started_dockerd" 2>/dev/null || true
  fi
  exit "$rc"
}
trap cleanup EXIT

# ------------------------------------------------------------- scenarios ---
# Waits until `docker-compose logs SERVICE` shows a line containing TEXT at
# least N times (default 1).
wait_log() {
  local svc=$1 text=$2 secs=$3 n=${4:-1}
  local until=$(($(date +%s) + secs))
  while [ "$(dc logs --no-color "$svc" 2>/dev/null | grep -cF -- "$text")" -lt "$n" ]; do
    [ "$(date +%s)" -lt "$until" ] || fail "$svc did not log \"$text\" (x$n) within ${secs}s"
    sleep 0.5
  done
}

wait_healthy() {
  local until=$(($(date +%s) + $1)) svc
  for svc in $(dc config --services); do
    while true; do
      local id state
      id=$(dc ps -a -q "$svc")
      state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id" 2>/dev/null || echo missing)
      case "$state" in
      "running healthy" | "running ") break ;;
      esac
      # identities and init-acls are one-shot: done once exited 0.
      if [[ "$svc" =~ ^(identities|init-acls|rabbitmq-cluster)$ ]] && [ "${state%% *}" = exited ]; then
        [ "$(docker inspect -f '{{.State.ExitCode}}' "$id")" = 0 ] || fail "$svc failed: $(dc logs --no-color "$svc" | tail -5)"
        break
      fi
      [ "$(date +%s)" -lt "$until" ] || fail "$svc is not running and healthy: $state"
      sleep 1
    done
  done
  for b in 1 2 3; do wait_log "system-b-$b" "system-b ready" 60; done
}

# Runs a command as the operator: in a one-off init-acls container, the
# only one that mounts the operator's secret (as the README does it).
operator() { # zkctl ARGS... (ZK_CREDENTIALS_FILE is init-acls's own)
  dc run --rm --no-deps -T init-acls "$@"
}

submit() { # ENTITY AMOUNT -> prints the value B returned
  local out
  out=$(dc exec -T system-a system-a submit --entity "$1" --amount "$2" 2>&1) || fail "submit $1 +$2: $out"
  case "$out" in *" done: $1 = "*) ;; *) fail "submit $1 +$2 answered: $out" ;; esac
  echo "$out" | sed -E "s/.* done: $1 = (-?[0-9]+) .*/\1/"
}

active_worker() { # prints the running ha-worker whose last state line says active
  local w last
  for w in ha-worker-1 ha-worker-2; do
    [ "$(docker inspect -f '{{.State.Running}}' "$(dc ps -a -q "$w")" 2>/dev/null)" = true ] || continue
    last=$(dc logs --no-color "$w" 2>/dev/null | grep -oE 'ha-worker (active term=[0-9]+|standby|stepped down|resigned|fenced.*|journal unusable)' | tail -1)
    case "$last" in "ha-worker active"*) echo "$w" ;; esac
  done
}

wait_active() { # SERVICE SECS: SERVICE becomes the active worker
  local until=$(($(date +%s) + $2))
  while [ "$(active_worker)" != "$1" ]; do
    [ "$(date +%s)" -lt "$until" ] || fail "$1 did not take over within $2 s (active: $(active_worker | tr '\n' ' '))"
    sleep 0.2
  done
}

# Nanoseconds since the epoch of SERVICE's last log line containing TEXT,
# from the engine's own timestamps (docker-compose's start-up time is not
# part of a handoff).
log_time() {
  local ts
  ts=$(docker logs -t "$(dc ps -a -q "$1")" 2>&1 | grep -F -- "$2" | tail -1 | cut -d' ' -f1)
  [ -n "$ts" ] || fail "$1 never logged \"$2\""
  date -d "$ts" +%s%N
}

scenarios() {
  local v i expected
  # Scenarios 1 + 2: sequential submits, exact.
  for i in 1 2 3; do
    v=$(submit acct-1 5)
    [ "$v" = $((5 * i)) ] || fail "sequential submit $i on acct-1 gave $v, expected $((5 * i))"
  done
  say "sequential submits exact (acct-1 = 15)"
  # Concurrent: 12 clients at once on one entity; every value distinct and
  # the last one exact. Each task takes 500 ms at system-b for this, so the
  # 12 overlap there and contend for the entity's lock: started through
  # `docker-compose exec`, whose own start-up takes a core, they arrived
  # 0.2 s apart on a 2-core machine, and a task of a few milliseconds was
  # over before the next came (no lock handoff at all, which the
  # Prometheus check below caught).
  operator zkctl set /config/system-b '{"work_ms":500}' >/dev/null || fail "zkctl set /config/system-b failed"
  for i in 1 2 3; do wait_log "system-b-$i" 'config applied {"work_ms":500}' 20; done
  local pids=()
  for i in $(seq 1 12); do
    submit acct-2 1 >"$work/concurrent.$i" &
    pids+=($!)
  done
  wait "${pids[@]}" || true
  expected=$(seq 1 12 | tr '\n' ' ')
  v=$(cat "$work"/concurrent.* | sort -n | tr '\n' ' ')
  rm -f "$work"/concurrent.*
  [ "$v" = "$expected" ] || fail "concurrent submits saw values '$v', expected each of '$expected' once"
  say "12 concurrent submits exact (acct-2 = 12, each value seen once)"

  # Least privilege: no identity but the operator's may write config, and
  # the admin calls that read data need the token.
  local refused
  refused=$(dc exec -T system-a zkctl set /config/system-b '{"work_ms":1}' 2>&1) &&
    fail "system-a's container wrote /config/system-b without the operator identity"
  echo "$refused" | grep -q "not allowed: /config/system-b" || fail "the refusal was not one clear line: $refused"
  [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8081/commands/dump)" = 401 ] ||
    fail "the admin API's dump answered without the token"
  say "config refused to other identities; admin data refused without the token"
  # Scenario 3: live config, as the operator, through ZK_CONNECT (whichever
  # profile).
  operator zkctl set /config/system-b '{"work_ms":20}' >/dev/null || fail "zkctl set /config/system-b failed"
  for i in 1 2 3; do wait_log "system-b-$i" 'config applied {"work_ms":20}' 20; done
  say "config change applied by every system-b"
  if [ "$profile" = scale-out ]; then
    # The services and zkctl talk to the ensemble, not the idle coordinator.
    operator zkctl --zk zk2:2181 get /config/system-b | grep -qF '"work_ms":20' ||
      fail "the config is not on the ensemble"
    if operator zkctl --zk coordinator:2181 get /config/system-b >/dev/null 2>&1; then
      fail "the config went to the coordinator, not to the ensemble"
    fi
    say "the config is on the ensemble, not on the coordinator"
  fi
  local services
  services=$(dc exec -T system-a zkctl --json services)
  for want in '"system-b":{' '"b1":' '"b2":' '"b3":' '"ha1":' '"ha2":' '"system-a":{'; do
    echo "$services" | tr -d ' \n' | grep -qF -- "$want" || fail "zkctl services lacks $want: $services"
  done
  say "zkctl services lists system-a, b1-b3, ha1-ha2"

  # Dashboard and metrics answer.
  # Each body read whole before it is searched: `curl | grep -q` fails
  # under pipefail whenever grep matches and exits before curl has written
  # the rest (curl: (23) Failed writing body).
  local body
  body=$(curl -fsS http://127.0.0.1:8080/) && grep -qi "<html" <<<"$body" || fail "the dashboard page did not answer"
  body=$(curl -fsS http://127.0.0.1:8080/api/state) && grep -q '"' <<<"$body" ||
    fail "the dashboard's /api/state did not answer"
  body=$(curl -fsS http://127.0.0.1:8081/metrics) && grep -q '^[a-z_]\+' <<<"$body" ||
    fail "the coordinator's /metrics did not answer"
  say "dashboard and /metrics answer"

  # Scenario 4: graceful stop, then crash, of the active ha-worker.
  local active standby started
  wait_log ha-worker-1 "ha-worker" 30
  local until=$(($(date +%s) + 30))
  while [ -z "$(active_worker)" ]; do
    [ "$(date +%s)" -lt "$until" ] || fail "no ha-worker became active"
    sleep 0.5
  done
  active=$(active_worker)
  standby=ha-worker-1; [ "$active" = ha-worker-1 ] && standby=ha-worker-2
  dc stop "$active" >/dev/null 2>&1
  wait_active "$standby" 5
  started=$(log_time "$active" "ha-worker resigned")
  # (A worker prints "resigned" after it deregisters, so the standby may
  # log "active" a few ms before that line: the figure can be negative.)
  say "stop $active: $standby active at $((($(log_time "$standby" "ha-worker active") - started) / 1000000)) ms from its resignation"
  dc start "$active" >/dev/null 2>&1
  wait_log "$active" "ha-worker standby" 30 2
  active=$standby
  standby=ha-worker-1; [ "$active" = ha-worker-1 ] && standby=ha-worker-2
  dc kill "$active" >/dev/null 2>&1
  wait_active "$standby" 20
  started=$(date -d "$(docker inspect -f '{{.State.FinishedAt}}' "$(dc ps -a -q "$active")")" +%s%N)
  say "kill $active: $standby active $((($(log_time "$standby" "ha-worker active") - started) / 1000000)) ms after the kill (a 6 s session requested)"
  dc start "$active" >/dev/null 2>&1
  # No permanent faults anywhere (the volumes are writable).
  if dc logs --no-color 2>&1 | grep -E "Permission denied|permanent fault|journal unusable"; then
    fail "a service reported a permanent fault"
  fi
}

# A clean start and the scenarios leave no WARN or ERROR line in the logs of
# the project's own containers (the broker's and ZooKeeper's stand-ins log
# as they do). A warning there must mean something is wrong.
warning_lines() { grep -E '(^|[ |])(WARN|ERROR)[ :]|(^|[ |])warning:' | head -5 || true; }
project_services() { dc config --services | grep -vxE 'rabbitmq(-[0-9]+)?|epmd|zk[0-9]|prometheus'; }
no_warnings() {
  local s lines=""
  for s in $(project_services); do
    lines+=$(dc logs --no-color "$s" 2>&1 | warning_lines)
  done
  [ -z "$lines" ] || { echo "$lines" >&2; fail "WARN or ERROR lines $1 (above)"; }
  say "no WARN or ERROR line $1"
}

# `stop`, then what every project container logged from the moment it was
# asked to stop: a clean shutdown (SIGTERM, sessions closed, the broker
# connection closed) says nothing alarming. `down` is `stop` and then the
# containers' removal, which takes their logs with it; so the logs are read
# in between.
stop_quietly() { # WHAT
  local since s id lines=""
  since=$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)
  dc stop >/dev/null 2>&1 || fail "stop failed"
  for s in $(project_services); do
    for id in $(dc ps -a -q "$s"); do
      lines+=$(docker logs --since "$since" "$id" 2>&1 | sed "s/^/$s: /" | warning_lines)
    done
  done
  [ -z "$lines" ] || { echo "$lines" >&2; fail "WARN or ERROR lines while stopping $1 (above)"; }
  say "no WARN or ERROR line while stopping $1"
}

# Each container sees its own identity and no other: the identity volumes
# each one mounts, read from the engine; in one service's container, its
# files private and its own; and no file it can read there holds another
# role's password (each password read on the host from its volume and
# given to grep on standard input, never in a command line).
check_identities() {
  local s id mounts want mp role f
  for s in $(dc config --services); do
    id=$(dc ps -a -q "$s" | head -1)
    mounts=$(docker inspect -f '{{range .Mounts}}{{.Name}} {{end}}' "$id" | tr ' ' '\n' | sed -n "s/^${project}_\(identity-.*\)/\1/p" | sort | tr '\n' ' ')
    case $s in
    identities) want=$(printf '%s\n' operator coordinator dashboard system-a system-b ha-worker rabbitmq | sed 's/^/identity-/' | sort | tr '\n' ' ') ;;
    init-acls) want="identity-operator " ;;
    system-b-*) want="identity-system-b " ;;
    ha-worker-*) want="identity-ha-worker " ;;
    coordinator | dashboard | system-a | rabbitmq) want="identity-$s " ;;
    rabbitmq-[0-9] | rabbitmq-cluster) want="identity-rabbitmq " ;;
    *) want="" ;;
    esac
    [ "$mounts" = "$want" ] || fail "$s mounts identities '$mounts', expected '$want'"
  done
  [ "$(dc exec -T system-b-1 ls -A /run/identity | tr '\n' ' ')" = "amqp.cred zk.cred " ] ||
    fail "system-b's identity volume holds more than its own files"
  [ "$(dc exec -T system-b-1 stat -c '%a %u' /run/identity/zk.cred /run/identity/amqp.cred | tr '\n' ' ')" = "600 10001 600 10001 " ] ||
    fail "system-b's credentials are not 0600 and its own"
  dc exec -T system-b-1 grep -q '^auth = system-b:' /run/identity/zk.cred || fail "system-b's zk.cred is not system-b's"
  # One pass over the container's files for the three passwords.
  for role in operator ha-worker system-a; do
    mp=$(docker volume inspect -f '{{.Mountpoint}}' "${project}_identity-$role")
    sed -n 's/^auth = [^:]*://p' "$mp/zk.cred"
  done | dc exec -T system-b-1 bash -c \
    'if grep -rlsF -D skip -f /dev/stdin --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev /; then exit 1; fi' >"$work/leak" 2>&1 ||
    fail "system-b's container can read another role's password, in: $(cat "$work/leak")"
  say "each container mounts only its own identity; system-b's files are 0600 and 10001's; it can read no other role's password"
}

# rabbitmqctl ARGS on the first broker node that answers (one may be down).
rabbitmqctl_any() {
  local n
  for n in rabbitmq rabbitmq-2 rabbitmq-3; do
    dc exec -T "$n" rabbitmqctl -q "$@" 2>/dev/null && return 0
  done
  return 1
}

# The scale-out profile's broker cluster: its three nodes running as one
# cluster; the task queue and its dead-letter queue quorum queues with a
# member on each node, every member online; and one cookie on the three
# nodes, owner-only and the node's own (compared by hash, never shown).
check_cluster() { # WHEN
  local status queues out n sums=""
  status=$(rabbitmqctl_any cluster_status --formatter json) || fail "no broker node answers rabbitmqctl cluster_status"
  out=$(python3 -c 'import json,sys; print(" ".join(sorted(json.load(sys.stdin)["running_nodes"])))' <<<"$status") ||
    fail "cluster_status is not what was expected: $status"
  [ "$out" = "rabbit-1@rabbitmq rabbit-2@rabbitmq-2 rabbit-3@rabbitmq-3" ] ||
    fail "$1: the broker cluster's running nodes are '$out', not the three"
  say "broker cluster $1: 3 running nodes ($out)"
  queues=$(rabbitmqctl_any list_queues name type members online leader --formatter json) ||
    fail "no broker node answers rabbitmqctl list_queues"
  out=$(python3 -c '
import json, sys
qs = {q["name"]: q for q in json.load(sys.stdin)}
bad = []
for name in ("tasks", "tasks.dlq"):
    q = qs.get(name)
    if not q:
        bad.append(f"{name} missing"); continue
    if q["type"] != "quorum" or len(q["members"]) != 3 or len(q["online"]) != 3:
        bad.append(f"{name}: {q}")
    members = ", ".join(sorted(q["members"]))
    print("queue %s: %s, %d members (%s), %d online, leader %s" % (name, q["type"], len(q["members"]), members, len(q["online"]), q["leader"]))
if bad:
    print("BAD " + "; ".join(bad))' <<<"$queues") || fail "list_queues is not what was expected: $queues"
  if grep -q '^BAD ' <<<"$out"; then
    echo "$out" >&2
    fail "$1: the queues are not quorum queues with a member online on each node (above)"
  fi
  while read -r line; do say "$line"; done <<<"$out"
  for n in rabbitmq rabbitmq-2 rabbitmq-3; do
    [ "$(dc exec -T "$n" stat -c '%a %U' /var/lib/rabbitmq/.erlang.cookie)" = "400 rabbitmq" ] ||
      fail "$n's Erlang cookie is not 0400 and the rabbitmq user's"
    sums+=$(dc exec -T "$n" sha256sum /var/lib/rabbitmq/.erlang.cookie | cut -d' ' -f1)" "
  done
  [ "$(tr ' ' '\n' <<<"$sums" | sort -u | grep -c .)" = 1 ] || fail "the nodes' Erlang cookies differ"
  [ "$(dc exec -T rabbitmq stat -c '%a %u' /run/identity/erlang.cookie)" = "400 999" ] ||
    fail "the cookie in the broker's identity volume is not 0400 and 999's"
  say "one Erlang cookie on the three nodes, 0400 and the rabbitmq user's"
}

prom() { # PATH [CURL ARGS...]: Prometheus's HTTP API, from the host
  curl -fsS --max-time 5 "${@:2}" "http://127.0.0.1:9090$1"
}

# Prometheus scrapes every target of the profile's file, and its queries
# say what the scenarios did; every panel of the Grafana dashboard returns
# data.
check_prometheus() {
  local want until out
  want=$(python3 -c 'import sys,yaml; d=yaml.safe_load(open(sys.argv[1])); print(sum(len(sc["targets"]) for j in d["scrape_configs"] for sc in j["static_configs"]))' "$work/prometheus.yml")
  until=$(($(date +%s) + 60))
  while true; do
    out=$(prom /api/v1/targets | python3 -c 'import sys,json; t=json.load(sys.stdin)["data"]["activeTargets"]; print(len(t), sum(x["health"]=="up" for x in t), " ".join(x["scrapeUrl"] for x in t if x["health"]!="up"))' 2>&1 || true)
    [ "${out%% *}" = "$want" ] && [ "$(echo "$out" | awk '{print $2}')" = "$want" ] && break
    [ "$(date +%s)" -lt "$until" ] || fail "Prometheus targets (total, up, down ones): $out; expected $want up"
    sleep 1
  done
  say "Prometheus: all $want targets up"
  # name|query|test on the value (python, v)
  local checks=(
    'system-b tasks done|sum(system_b_tasks_total{outcome="done"})|v >= 15'
    'system-a submit latencies|sum(system_a_submit_duration_seconds_count)|v >= 15'
    'system-a submits done|sum(system_a_submits_total{outcome="done"})|v >= 15'
    'lock waits|sum(system_b_lock_wait_seconds_count)|v >= 15'
    'lock handoffs (waits over 5 ms)|sum(system_b_lock_wait_seconds_count) - sum(system_b_lock_wait_seconds_bucket{le="0.005"})|v >= 1'
    'lock holds|sum(system_b_lock_hold_seconds_count)|v >= 15'
    'active ha-workers|sum(ha_worker_active)|v == 1'
    'failovers|sum(ha_worker_failovers_total)|v >= 1'
    'handovers timed|sum(ha_worker_failover_handover_seconds_count)|v >= 1'
    'the active term|max(ha_worker_term)|v > 0'
    'live sessions|sum(zk_session_live)|v == 6'
    'config applied|min(config_version{job="system-b"})|v > 0'
    'znodes on the coordinator|znode_count{job="coordinator"}|v > 0'
  )
  local c name q test
  for c in "${checks[@]}"; do
    IFS='|' read -r name q test <<<"$c"
    until=$(($(date +%s) + 30))
    while true; do
      out=$(prom "/api/v1/query" --data-urlencode "query=$q" -G | TEST="$test" python3 -c '
import json, os, sys
r = json.load(sys.stdin)["data"]["result"]
v = float(r[0]["value"][1]) if r else float("nan")
print(v, "ok" if r and eval(os.environ["TEST"]) else "no")' 2>&1 || true)
      [ "${out##* }" = ok ] && break
      [ "$(date +%s)" -lt "$until" ] || fail "Prometheus: $name: $q = ${out% *}, wanted $test"
      sleep 1
    done
    say "Prometheus: $name = ${out% *}"
  done
  # Every query of the Grafana dashboard, as Grafana would send it.
  local n=0
  while IFS= read -r q; do
    n=$((n + 1))
    out=$(prom "/api/v1/query" --data-urlencode "query=$q" -G | python3 -c '
import json, sys
d = json.load(sys.stdin)
print(len(d["data"]["result"]) if d["status"] == "success" else "error")' 2>&1 || true)
    [[ "$out" =~ ^[1-9][0-9]*$ ]] || fail "the dashboard's query $q returned no data ($out)"
  done < <(python3 -c 'import json,sys; [print(t["expr"]) for p in json.load(open(sys.argv[1]))["panels"] for t in p.get("targets", [])]' "$root/grafana/dashboards/coordination.json")
  say "Prometheus: every one of the dashboard's $n queries returns data"
}

# Rotation as the README gives it: a new set, the re-grant holding the old
# operator, every container recreated on its new files, the re-grant once
# more; then the deployment works and the old operator is refused.
rotate() {
  local t out
  t=$(date +%s)
  dc run --rm -T identities --rotate >"$work/$profile.rotate.log" 2>&1 || fail "identities --rotate failed: $(cat "$work/$profile.rotate.log")"
  operator zkctl init --extra-auth-file /run/identity/previous-operator.cred >>"$work/$profile.rotate.log" 2>&1 ||
    fail "the re-grant failed: $(tail -5 "$work/$profile.rotate.log")"
  dc up -d --force-recreate >>"$work/$profile.rotate.log" 2>&1 || fail "up --force-recreate failed; see $work/$profile.rotate.log"
  wait_healthy 180
  operator zkctl init >>"$work/$profile.rotate.log" 2>&1 || fail "the second re-grant failed"
  out=$(dc run --rm --no-deps -T -e ZK_CREDENTIALS_FILE=/run/identity/previous-operator.cred init-acls \
    zkctl set /config/system-b '{"work_ms":21}' 2>&1) && fail "the old operator still writes config after the rotation"
  echo "$out" | grep -q "not allowed" || fail "the old operator's refusal: $out"
  local v
  v=$(submit acct-1 5)
  [ "$v" = 25 ] || fail "after the rotation, acct-1 + 5 gave $v, expected 25"
  say "rotation: new identities in $(($(date +%s) - t)) s; acct-1 = 25; the old operator refused"
}

run_profile() {
  profile=$1
  say "== profile $profile =="
  render "$profile"
  dc down -v --remove-orphans >/dev/null 2>&1 || true
  local t
  t=$(date +%s)
  # Compose v2 builds through buildx, which Debian's engine lacks: with
  # it, the image is built by the engine's own BuildKit, then `up` runs it.
  local build=--build
  if ! "$compose" version 2>/dev/null | grep -q 'version 1\.'; then
    docker build --network host --build-arg "RUST_IMAGE=$rust_image" -t coordination-demo:latest "$root" \
      >"$work/$profile.build.log" 2>&1 || fail "docker build failed; see $work/$profile.build.log"
    build=
  fi
  ports_free "$profile"
  [ "$profile" = coordinator ] && start_importer
  dc up -d $build >"$work/$profile.up.log" 2>&1 || {
    tail -40 "$work/$profile.up.log" >&2
    fail "docker-compose up --build failed; see $work/$profile.up.log"
  }
  wait_healthy 180
  say "up --build and healthy in $(($(date +%s) - t)) s"
  [ "$profile" = scale-out ] && check_cluster "after the first up"
  start_forwards
  check_identities
  scenarios
  check_prometheus
  no_warnings "from up to the end of the scenarios"
  # Data survives down + up (the named volumes stay).
  t=$(date +%s)
  stop_quietly "after the scenarios"
  dc down >/dev/null 2>&1
  dc up -d >"$work/$profile.up2.log" 2>&1 || fail "second up failed; see $work/$profile.up2.log"
  wait_healthy 180
  local v
  v=$(submit acct-1 5)
  [ "$v" = 20 ] || fail "after down + up, acct-1 + 5 gave $v, expected 20 (data lost?)"
  say "down + up keeps the data (acct-1 = 20), $(($(date +%s) - t)) s"
  [ "$profile" = scale-out ] && check_cluster "after down and up"
  no_warnings "after down and up again"
  rotate
  run_drills
  [ "$profile" = scale-out ] && check_cluster "after the drills"
  stop_quietly "after the drills"
  stop_forwards
  stop_importer
  dc down -v --remove-orphans >/dev/null 2>&1
  say "profile $profile: every promise held"
  profile=
}

build_drill
for p in "${profiles[@]}"; do
  run_profile "$p"
done
say "all profiles passed in $(($(date +%s) - t0)) s"
