# syntax=docker/dockerfile:1.7
# The paysync image. Build stage: the pinned Rust toolchain builds the binary from the
# committed Cargo.lock (--locked). Runtime stage: distroless (libc and CA certificates; no
# shell, no package manager), running as the non-root user 65532.
#   docker build -t paysync:dev .
ARG RUST_VERSION=1.95.0

FROM rust:${RUST_VERSION}-slim-bookworm AS build
# librdkafka is built from source by rdkafka-sys (make, a C compiler, zlib), with OpenSSL for
# TLS and SASL to Kafka (the runtime image has libssl3).
RUN apt-get update \
 && apt-get install -y --no-install-recommends make g++ pkg-config zlib1g-dev libssl-dev python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock rust-toolchain.toml ./
COPY src src
COPY migrations migrations
COPY tests tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin paysync \
 && cp target/release/paysync /paysync \
 && mkdir -p /runtime-libs \
 && for lib in $(ldd /paysync | awk '/libz\.so/ {print $3}'); do cp "$lib" /runtime-libs/; done

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /runtime-libs/ /usr/lib/
COPY --from=build /paysync /usr/local/bin/paysync
USER 65532:65532
EXPOSE 8080
ENV PAYSYNC_LISTEN=0.0.0.0:8080 \
    PAYSYNC_LOG_FORMAT=json
ENTRYPOINT ["/usr/local/bin/paysync"]
CMD ["serve"]
