# One image for all five services and the CLI; docker-compose.yml picks the
# binary per service with `command:`.

FROM rust:1-bookworm AS builder
# protoc compiles proto/ in the proto crate's build.rs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --workspace --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data --no-create-home millrace \
    && mkdir -p /data /etc/millrace \
    && chown millrace:millrace /data
COPY --from=builder \
    /src/target/release/millrace \
    /src/target/release/millrace-ingest \
    /src/target/release/millrace-enrich \
    /src/target/release/millrace-feature-state \
    /src/target/release/millrace-inference \
    /src/target/release/millrace-monitor \
    /usr/local/bin/
COPY examples/flights/pipeline.toml /etc/millrace/pipeline.toml

ENV MILLRACE_PIPELINE=/etc/millrace/pipeline.toml \
    MILLRACE_DATA_DIR=/data \
    RUST_LOG=info
USER millrace
WORKDIR /data
# gRPC: ingest, feature-state, inference, monitor; HTTP: one per service.
EXPOSE 50051 50053 50054 50055 8081 8082 8083 8084 8085
CMD ["millrace", "--help"]
