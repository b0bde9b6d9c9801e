# The svcplane image: one binary, run as `svcplane dns …` or `svcplane controller …`.
#   docker build -t REGISTRY/svcplane:0.1.0 .
# Base images are pinned by digest (the digests public Dockerfiles pinned for these tags; refresh
# them with `docker buildx imagetools inspect IMAGE:TAG`). The tag to push is Cargo.toml's
# version, which is the chart's appVersion and so its default image tag.

FROM docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1 AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends protobuf-compiler libcap2-bin \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin svcplane \
    # Port 53 as a non-root user: the binary carries the one capability it needs.
    && setcap cap_net_bind_service=+ep target/release/svcplane

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
COPY --from=build /src/target/release/svcplane /usr/local/bin/svcplane
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/svcplane"]
