# Plaza: a multi-stage build. The build stage compiles the binary with the `dist` profile
# (release with whole-program optimisation, see Cargo.toml); the runtime image is
# Debian slim with the binary, the browser client and the default configuration, running as an
# unprivileged user.
#
#   docker build -t plaza .
#   docker run --init --network host plaza --advertise-ip YOUR.PUBLIC.IP
#
# See docs/deploy.md for NAT, TLS and Prometheus.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --profile dist --locked --bin plaza \
 && cp target/dist/plaza /usr/local/bin/plaza \
 && strip --strip-debug /usr/local/bin/plaza

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin plaza
COPY --from=build /usr/local/bin/plaza /usr/local/bin/plaza
COPY static /usr/share/plaza/static
COPY config/default.toml /etc/plaza/plaza.toml
ENV PLAZA_HTTP__STATIC_DIR=/usr/share/plaza/static
USER plaza
# HTTP (browser client, signalling, metrics) and the one media UDP port.
EXPOSE 8080/tcp 50000/udp
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
    CMD ["plaza", "--config", "/etc/plaza/plaza.toml", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["plaza", "--config", "/etc/plaza/plaza.toml"]
