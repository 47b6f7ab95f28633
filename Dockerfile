# Multi-stage build of the api. The builder caches dependencies in a layer of their own: every
# workspace member's manifest with stub sources, built once; then the real sources.
FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY api/Cargo.toml api/
COPY bench/Cargo.toml bench/
COPY entity/Cargo.toml entity/
COPY migration/Cargo.toml migration/
COPY observability/Cargo.toml observability/
COPY testkit/Cargo.toml testkit/
RUN for crate in api bench entity migration observability testkit; do mkdir -p $crate/src && echo 'fn main() {}' > $crate/src/main.rs && touch $crate/src/lib.rs; done \
    && cargo build --release -p api --locked
COPY . .
RUN touch api/src/main.rs api/src/lib.rs entity/src/lib.rs migration/src/lib.rs observability/src/lib.rs \
    && cargo build --release -p api --locked

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home app
COPY --from=builder /src/target/release/api /usr/local/bin/api
USER app
ENV HTTP_ADDR=0.0.0.0:8080 ADMIN_ADDR=0.0.0.0:9464 LOG_FORMAT=json
EXPOSE 8080 9464
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:8080/health/live || exit 1
ENTRYPOINT ["/usr/local/bin/api"]
