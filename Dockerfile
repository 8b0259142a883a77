# infergate container image: the one binary on a small, non-root runtime.
#
#   docker build -t infergate:0.1.0 .
#   docker run --rm -p 8080:8080 -p 9090:9090 \
#     -v "$PWD/my-config.yaml:/etc/infergate/config.yaml:ro" infergate:0.1.0
#
# The config must listen on 0.0.0.0 to be reachable from outside the container (the Helm chart in
# deploy/helm/infergate writes the listeners itself). Other subcommands:
#   docker run --rm --entrypoint infergate infergate:0.1.0 check-config /etc/infergate/config.yaml

# Rust 1.89 or newer (Cargo.toml's rust-version); pin a full version (e.g. 1.95) for repeatable builds.
ARG RUST_VERSION=1

# --- build -----------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not rebuild them: build stub targets with the
# real manifest and lock file (every target Cargo.toml names must exist), then the real sources.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs tests/it/main.rs \
    && echo 'fn main() {}' > benches/hot_path.rs \
    && cargo build --release --locked --bin infergate \
    && rm -rf src
COPY src ./src
COPY config ./config
# touch: the stub's build outputs are newer than the copied sources' timestamps.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin infergate \
    && cp target/release/infergate /infergate

# --- runtime ---------------------------------------------------------------------------------
# distroless/cc: glibc, libgcc, CA certificates and the nonroot user 65532; no shell, no package
# manager.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /infergate /usr/local/bin/infergate
USER 65532:65532
# 8080: OpenAI-compatible gateway; 9090: /metrics, /healthz, /readyz, /admin/status.
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/infergate", "serve"]
CMD ["--config", "/etc/infergate/config.yaml"]
