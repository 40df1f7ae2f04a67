# syntax=docker/dockerfile:1
# Images of gitdev-operator and of the simulator gitdev-sim, from one build (docs/images.md):
#
#   docker build -t gitdev-operator:0.1.0 .                        # the operator (default target)
#   docker build --target gitdev-sim -t gitdev-sim:0.1.0 .         # the simulator
#
# Both images are FROM scratch: one static binary, the CA bundle for HTTPS, nothing else (no
# shell, no libc, no package manager). They run as the numeric user 65532:65532 on a read-only
# root file system, as the Helm chart's security context expects. Needs BuildKit (the default
# builder of Docker 23+).
#
# tests/cluster/images.sh builds the same images with buildah where there is no Docker: it
# compiles the binaries on the host exactly as the `build` stage does and hands them in as the
# build context named `build`, so the stages below are the one definition of what an image holds.

ARG RUST_VERSION=1.89

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Static glibc binaries (glibc 2.34+ carries its DNS and files resolvers inside, so name lookups
# work without any shared library). The cache mounts keep crates and build artifacts between
# builds; the binaries are copied out of them, since a cache mount is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --locked \
      --target x86_64-unknown-linux-gnu --bin gitdev-operator --bin gitdev-sim \
 && mkdir -p /out/etc/ssl/certs \
 && cp target/x86_64-unknown-linux-gnu/release/gitdev-operator \
       target/x86_64-unknown-linux-gnu/release/gitdev-sim /out/ \
 && cp /etc/ssl/certs/ca-certificates.crt /out/etc/ssl/certs/

# The simulator: the git.dev Deployments API on :8080, for demos and tests in a cluster.
FROM scratch AS gitdev-sim
COPY --from=build /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/gitdev-sim /usr/local/bin/gitdev-sim
USER 65532:65532
ENV GITDEV_SIM_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gitdev-sim"]

# The operator (last, so the default target). /metrics, /healthz and /readyz on :8080.
FROM scratch AS gitdev-operator
COPY --from=build /out/etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/gitdev-operator /usr/local/bin/gitdev-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/gitdev-operator"]
