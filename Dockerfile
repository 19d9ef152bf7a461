# One image for every binary of the workspace; docker-compose.yml picks the
# binary per service with `command:`.
#
# Stage 1 builds with the official Rust image (RUST_IMAGE overrides it, e.g.
# with a locally built image where no registry is reachable). Cargo's
# registry and target dir are BuildKit cache mounts, so a rebuild after
# editing a service recompiles only what changed, not lapin, tonic and tokio.
# The binaries are stripped (the release profile keeps line tables for
# profiling on a workstation; an image has no use for them), and zkbench,
# the benchmark, is not built.
ARG RUST_IMAGE=rust:1.89-slim-bookworm
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
ENV CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins --exclude bench \
 && mkdir -p /out \
 && for bin in coordinator system-a system-b ha-worker zkctl dashboard; do cp "target/release/$bin" /out/; done

# Stage 2: a slim runtime with only the binaries, running as a non-root user.
# ca-certificates for amqps:// brokers; curl for the healthchecks.
# /store and /journal exist, owned by that user, before the volumes are
# mounted there: Docker initialises an empty named volume from the image's
# directory, ownership included. Without them the volumes are created
# root-owned and system-b and ha-worker cannot write.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home app \
 && mkdir -p /store /journal \
 && chown app:app /store /journal
COPY --from=build /out/ /usr/local/bin/
USER app
WORKDIR /data
