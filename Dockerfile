# syntax=docker/dockerfile:1
#
# The Agora image: the four binaries (agora-server, agora, agora-admin,
# agora-loadtest) on a small Debian runtime, running as the non-root user
# `agora`. The entry point is the node binary:
#
#   docker build -t agora:local .
#   docker run --rm agora:local node --help
#   docker run --rm --entrypoint agora-admin agora:local --help
#
# docker-compose.yml runs a three-node cluster from it (docs/OPERATIONS.md).

# ---------------------------------------------------------------------------
# Builder: the whole build needs only the Rust toolchain (SQLite is bundled,
# protobuf is compiled by protox in pure Rust, no database is contacted at
# compile time) and a C compiler for the bundled SQLite and ring, which the
# rust image has.
FROM rust:1-bookworm AS builder
WORKDIR /src

# Only what the build reads. Listing it (instead of `COPY . .`) keeps the
# local target/ directory, which can weigh tens of GB, out of the image.
# Every workspace member must be present for cargo to load the workspace,
# tests/ included; migrations/ is embedded by sqlx::migrate! at compile time.
COPY Cargo.toml Cargo.lock ./
COPY proto proto
COPY server server
COPY peer-client peer-client
COPY admin-console admin-console
COPY loadtest loadtest
COPY tests tests
COPY migrations migrations

# The registry and target directories are cache mounts, so a rebuild after a
# source change recompiles only the workspace crates. A cache mount is not
# part of the image: the binaries are copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
        -p agora-server -p agora-peer -p agora-admin -p agora-loadtest --bins \
    && mkdir -p /out \
    && cp target/release/agora-server target/release/agora \
          target/release/agora-admin target/release/agora-loadtest /out/

# ---------------------------------------------------------------------------
# Runtime: glibc from the same Debian release as the builder; CA roots only
# (the cluster's own TLS uses the cluster CA it is given, not the system's).
FROM debian:bookworm-slim AS runtime

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# A fixed uid/gid: docker-compose.yml runs its one-shot `init` container
# (a grpcurl image) as 10001 so it can read the operator key that
# `agora-server certs` writes with mode 0600.
# /var/lib/agora (node data) and /certs (certificates) are created here and
# owned by `agora`: a new named volume mounted on them takes that ownership.
RUN groupadd --system --gid 10001 agora \
    && useradd --system --uid 10001 --gid agora --create-home \
        --home-dir /home/agora --shell /usr/sbin/nologin agora \
    && mkdir -p /var/lib/agora /certs \
    && chown agora:agora /var/lib/agora /certs

COPY --from=builder /out/ /usr/local/bin/

USER agora
WORKDIR /var/lib/agora
VOLUME ["/var/lib/agora"]

# 7101: public gRPC (peers, operators; TLS). 7201: Raft between nodes
# (mutual TLS; never publish it). 7301: Prometheus /metrics (plain HTTP).
# The node's own defaults are 127.0.0.1:7100+ID etc.: pass --api-listen,
# --raft-listen and --metrics-listen 0.0.0.0:... in a container, as
# docker-compose.yml does. 8080: the web dashboard (`agora-admin serve`).
EXPOSE 7101 7201 7301 8080

ENTRYPOINT ["agora-server"]
CMD ["node", "--help"]
