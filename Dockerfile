# syntax=docker/dockerfile:1
# Images of gitdev-operator and of the simulator gitdev-sim, from one build (docs/helm.md):
#
#   docker build -t gitdev-operator:0.1.0 .                        # the operator (default target)
#   docker build --target gitdev-sim -t gitdev-sim:0.1.0 .         # the simulator
#
# Both run as the distroless "nonroot" user (65532:65532) on a read-only root file system, as
# the Helm chart's security context expects. Needs BuildKit (the default builder of Docker 23+).

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# The cache mounts keep crates and build artifacts between builds; the binaries are copied out
# of them, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin gitdev-operator --bin gitdev-sim \
 && mkdir -p /out \
 && cp target/release/gitdev-operator target/release/gitdev-sim /out/

# The simulator: the git.dev Deployments API on :8080, for demos and tests in a cluster.
FROM gcr.io/distroless/cc-debian12:nonroot AS gitdev-sim
COPY --from=build /out/gitdev-sim /usr/local/bin/gitdev-sim
USER 65532:65532
ENV GITDEV_SIM_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gitdev-sim"]

# The operator (last, so the default target). /metrics, /healthz and /readyz on :8080.
FROM gcr.io/distroless/cc-debian12:nonroot AS gitdev-operator
COPY --from=build /out/gitdev-operator /usr/local/bin/gitdev-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gitdev-operator"]
