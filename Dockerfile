# The engine runner as a container image (docs/runner.md).
#
#   docker build -t dagger-engine .
#   docker run -d --name dagger-engine --privileged -v dagger-engine:/var/lib/dagger dagger-engine
#   _EXPERIMENTAL_DAGGER_RUNNER_HOST=docker-container://dagger-engine dagger query <<< '{ version }'
#
# The default target is the full multi-stage build: release binaries compiled in a Rust stage,
# runc built from a pinned, checked release in a Go stage, and a slim Debian runtime.
#
# `--target prebuilt` copies binaries built outside instead (the tests use it, with no network
# beyond Debian's mirror): put dagger-engine, dagger and runc in prebuilt/ and run
#   docker build --target prebuilt -t dagger-engine .
# With the legacy builder (no BuildKit) every stage before the target is built, so the stages
# that `prebuilt` does not need come after it.

ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.85-bookworm
ARG GO_IMAGE=golang:1.24-bookworm

# ---------------------------------------------------------------------------------------------
# runtime: what the engine needs at run time.
#   runc          comes from the runc stage (Debian 12's 1.1.5 has known CVEs)
#   tini          /usr/bin/tini: the engine's PID 1 (reaps orphans); /usr/bin/tini-static: the
#                 init bind-mounted into every exec at /.init
#   nftables      NAT for the exec network (nft -f -); netlink does the rest (iproute2 is for
#                 debugging only)
#   git, openssh-client   git sources over https and ssh
#   ca-certificates       the system trust store; custom CAs go in /usr/local/share/ca-certificates
FROM ${DEBIAN_IMAGE} AS runtime
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      ca-certificates git openssh-client nftables iproute2 tini \
 && rm -rf /var/lib/apt/lists/*
COPY engine.toml /etc/dagger/engine.toml
RUN mkdir -p /var/lib/dagger /run/dagger /usr/local/share/ca-certificates
# The bundled CLI reaches the engine of this container (readiness probes, `docker exec NAME dagger`).
ENV _EXPERIMENTAL_DAGGER_RUNNER_HOST=unix:///run/dagger/engine.sock
# The state directory must be a real filesystem (ext4, xfs): overlay snapshots cannot live on
# the container's own overlay rootfs. Mount a named volume here.
VOLUME /var/lib/dagger
# tini as PID 1 forwards SIGTERM to the engine (graceful shutdown) and reaps orphans.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/dagger-engine"]

# ---------------------------------------------------------------------------------------------
# prebuilt: binaries built outside (prebuilt/dagger-engine, prebuilt/dagger, prebuilt/runc).
# The legacy builder also runs this stage for the default target, where prebuilt/ is absent:
# the wildcard copies nothing then (engine.toml only keeps COPY from failing) and the stage
# does nothing.
FROM runtime AS prebuilt
COPY engine.toml prebuilt* /tmp/prebuilt/
RUN if [ -e /tmp/prebuilt/dagger-engine ]; then \
      install -m 0755 /tmp/prebuilt/dagger-engine /tmp/prebuilt/dagger /tmp/prebuilt/runc /usr/local/bin/ \
      && ln -s /usr/local/bin/dagger-engine /usr/local/bin/buildctl \
      && dagger-engine --version && runc --version; \
    else \
      echo "no prebuilt/dagger-engine in the build context: the prebuilt target needs it" >&2; \
    fi \
 && rm -rf /tmp/prebuilt

# ---------------------------------------------------------------------------------------------
# runc, built statically from a pinned release; the tag must point at the expected commit.
FROM ${GO_IMAGE} AS runc
ARG RUNC_VERSION=v1.3.3
ARG RUNC_COMMIT=d842d7719497cc3b774fd71620278ac9e17710e0
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libseccomp-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
RUN git clone --depth 1 --branch "${RUNC_VERSION}" https://github.com/opencontainers/runc /src/runc \
 && cd /src/runc \
 && test "$(git rev-parse HEAD)" = "${RUNC_COMMIT}" \
 && make static \
 && install -m 0755 runc /usr/local/bin/runc \
 && /usr/local/bin/runc --version

# ---------------------------------------------------------------------------------------------
# build: the release binaries.
FROM ${RUST_IMAGE} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p dagger-engine -p dagger-cli \
 && install -m 0755 target/release/dagger-engine target/release/dagger /usr/local/bin/

# ---------------------------------------------------------------------------------------------
# The default image.
FROM runtime AS default
COPY --from=runc /usr/local/bin/runc /usr/local/bin/runc
COPY --from=build /usr/local/bin/dagger-engine /usr/local/bin/dagger /usr/local/bin/
RUN ln -s /usr/local/bin/dagger-engine /usr/local/bin/buildctl \
 && dagger-engine --version && runc --version
