# syntax=docker/dockerfile:1
# The gateway as a container: built in a pinned Rust image, run from distroless (glibc +
# libgcc, CA certificates, no shell) as the non-root user 65532. The root filesystem can be
# read-only: the gateway writes only under /var/lib/gateway (data, trail) and reads its
# configuration and key material from /etc/gateway.
#
#   docker build -t gateway .
#   docker run --read-only -v /srv/gateway/etc:/etc/gateway:ro -v /srv/gateway/data:/var/lib/gateway \
#     -p 8443:8443 -p 2222:2222 gateway
#
# tests/container/chroot.sh assembles exactly what the runtime stage holds (the binary, the
# libraries and files distroless provides) and runs it under chroot as uid 65532 until
# /readyz answers; hadolint lints this file in CI.

FROM rust:1.95.0-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock rustfmt.toml ./
COPY gateway gateway
COPY certs certs
COPY config config
COPY tests tests
RUN cargo build --release --locked -p gateway \
    && install -D -m 0755 target/release/gateway /out/usr/local/bin/gateway

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/usr/local/bin/gateway /usr/local/bin/gateway
USER 65532:65532
VOLUME ["/etc/gateway", "/var/lib/gateway"]
# HTTPS, SFTP, admin (metrics and health; keep it on a private network).
EXPOSE 8443 2222 9090
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/gateway", "healthcheck", "--url", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.toml"]
