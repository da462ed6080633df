# The admetrics host with its shipped plugins baked in (docker-compose.yml builds it).
#   docker build -t admetrics .
#   docker run admetrics --help
# Build stage: the toolchain named by rust-toolchain.toml (stable + wasm32-wasip2) builds the
# plugins for WebAssembly and the host natively; librdkafka is compiled from source by rdkafka-sys.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN rustup show active-toolchain \
 && scripts/build-plugins.sh --plain-only \
 && cargo build --release -p admetrics --bin admetrics \
 && mkdir -p /out/plugins \
 && cp target/release/admetrics /out/ \
 && cp target/wasm32-wasip2/release/ctr.wasm target/wasm32-wasip2/release/cvr.wasm \
       target/wasm32-wasip2/release/attribution.wasm \
       target/wasm32-wasip2/release/attribution_linear.wasm \
       target/wasm32-wasip2/release/attribution_time_decay.wasm \
       target/wasm32-wasip2/release/attribution_position.wasm \
       target/wasm32-wasip2/release/reach.wasm /out/plugins/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/admetrics /usr/local/bin/admetrics
COPY --from=build /out/plugins/ /opt/admetrics/plugins/
COPY config/compose.toml /etc/admetrics/admetrics.toml
# Drop-in plugin directory (watched: add, replace or remove a .wasm and the daemon follows) and
# the warehouse + SQLite catalog.
RUN mkdir -p /opt/admetrics/plugins.d /var/lib/admetrics
VOLUME ["/var/lib/admetrics"]
EXPOSE 9464
HEALTHCHECK --interval=5s --timeout=3s --start-period=30s CMD curl -fs http://127.0.0.1:9464/health || exit 1
ENTRYPOINT ["admetrics"]
CMD ["run", "--config", "/etc/admetrics/admetrics.toml", "--log-format", "json"]
