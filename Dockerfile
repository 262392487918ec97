# syntax=docker/dockerfile:1
# streamscore's container image: a multi-stage build to a slim runtime holding the
# `streamscore` binary, the shipped models and the tenant policy, run as a non-root user.
#
#   docker build -t streamscore:local .
#   docker run --rm streamscore:local --help
#
# docker-compose.yml builds it and runs every stage from it (README: "Deployment").

FROM rust:1.95-bookworm AS build
WORKDIR /src
# librdkafka is built from source by rdkafka-sys (zlib from the image); the CUDA backend loads
# the driver at run time (cudarc's dynamic loading), so no CUDA toolkit is needed here.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin streamscore \
    && install -m 0755 target/release/streamscore /usr/local/bin/streamscore

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/streamscore --create-home streamscore
COPY --from=build /usr/local/bin/streamscore /usr/local/bin/streamscore
COPY models /opt/streamscore/models
COPY policies /opt/streamscore/policies
WORKDIR /opt/streamscore
ENV STREAMSCORE_MODELS=/opt/streamscore/models \
    STREAMSCORE_DATA_DIR=/var/lib/streamscore \
    STREAMSCORE_AUDIT_HEAD_DIR=/var/lib/streamscore/audit-heads
USER streamscore:streamscore
# Metrics of pipeline, ingest, infer, monitor; the HTTP bridge.
EXPOSE 9401 9402 9403 9404 8080
# Every long-running command serves /healthz beside /metrics; STREAMSCORE_PROBE_URL says
# where (compose sets it per service).
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 CMD ["streamscore", "probe"]
ENTRYPOINT ["streamscore"]
CMD ["--help"]
