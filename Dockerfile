# One image for every binary of the workspace; docker-compose.yml picks the
# binary per service with `command:`.
#
# Stage 1 builds with the official Rust image. Dependencies are compiled in
# a layer of their own (manifests first, then sources), so editing a service
# does not rebuild lapin, tonic and tokio.
FROM rust:1.89-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

# Stage 2: a slim runtime with only the binaries, running as a non-root user.
# ca-certificates for amqps:// brokers; curl for the healthchecks.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data --create-home app
COPY --from=build /out/ /usr/local/bin/
USER app
WORKDIR /data
