# The image `tessera deploy kubernetes` runs (docs/deploy.md): the `tessera` binary (control
# plane, gateway), Tessera Shop's services and Tessera Invest's Rust ones, on a small Debian
# base, as a user without privileges. (Invest's Python service has its own image:
# examples/invest/signals/Dockerfile.)
#
#   docker build -t tessera-shop:latest .
#
# Stage 1 builds the release binaries; stage 2 holds only them, CA certificates and a user.

FROM rust:1-bookworm AS build
# etcd's client is generated from its protocol files.
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p tessera-cli \
      -p shop-auth -p shop-catalog -p shop-inventory -p shop-notification \
      -p shop-order -p shop-payment -p shop-payment-provider \
      -p invest-market -p invest-portfolio -p invest-alerts \
 && mkdir /out \
 && cp target/release/tessera target/release/shop-* target/release/invest-* /out/ \
 && rm -f /out/*.d

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 tessera \
 && useradd --system --uid 10001 --gid tessera --no-create-home --shell /usr/sbin/nologin tessera
COPY --from=build /out/ /usr/local/bin/
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/tessera"]
