# syntax=docker/dockerfile:1
# One image for both roles: `redis-pair controller` (the chart's Deployment) and
# `redis-pair proxy` (the sidecar in application pods).
#
#   docker build -t redis-pair:dev .
#
# The binary links glibc dynamically (libc, libm, libgcc_s), so the runtime base is
# distroless/cc: glibc and libgcc_s and nothing else (no shell, no package manager), which
# static/scratch lack. Both stages are Debian 12, so the glibc the binary was linked against
# is the one it runs on.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit); the binary is copied out
# of the cache mount in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin redis-pair \
    && install -D -m 0755 target/release/redis-pair /out/redis-pair

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="redis-pair" \
      org.opencontainers.image.description="Highly available Redis master/replica groups: the Kubernetes controller and the sidecar proxy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/redis-pair /usr/local/bin/redis-pair
# distroless's nonroot user, by number so that runAsNonRoot can verify it.
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/redis-pair"]
CMD ["--help"]
