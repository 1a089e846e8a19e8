# quipd in a container: built in a Rust image, run from a slim Debian one
# as an unprivileged user, with the data directory on a volume.
#
#   docker build -t quipd .
#   docker run -d --name quipd -p 4433:4433/udp -p 4433:4433/tcp \
#     -v quip-data:/var/lib/quip quipd
#
# Settings come from QUIP_* variables (every flag has one) or a TOML file
# mounted at /etc/quip/quipd.toml (QUIP_CONFIG below), e.g. the
# certificate: -v /etc/letsencrypt:/etc/letsencrypt:ro and cert/key in the
# file. `docker kill -s HUP quipd` reloads the certificate.

# ---- build: the release binary, nothing else (Rust only: no protoc, no C
# libraries; the FoundationDB store is a cargo feature this image leaves off).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin quipd \
    && install -m 0755 target/release/quipd /usr/local/bin/quipd

# ---- run: quipd, CA certificates (S3 media over HTTPS), an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/quip --shell /usr/sbin/nologin quip \
    && install -d -m 0700 -o quip -g quip /var/lib/quip \
    && install -d -m 0755 /etc/quip
COPY --from=build /usr/local/bin/quipd /usr/local/bin/quipd
USER quip:quip
# Listens on every interface inside the container (publish the ports you
# mean to); the admin listener stays off unless QUIP_ADMIN_LISTEN is set
# (e.g. 0.0.0.0:9433, published only to the monitoring network).
ENV QUIP_DATA_DIR=/var/lib/quip \
    QUIP_LISTEN=0.0.0.0:4433 \
    QUIP_LOG_FORMAT=json
VOLUME ["/var/lib/quip"]
# QUIC on UDP, HTTPS and WebSocket on TCP: the same port number.
EXPOSE 4433/udp 4433/tcp
# SIGTERM drains: replies written, connections closed with "server
# shutting down" (clients reconnect), within about 5 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/quipd"]
