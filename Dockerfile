# trimtab in one small image: a static binary on `scratch`, run as an unprivileged user, with all
# state in the /data volume.
#
#   docker build -t trimtab .
#   docker run -p 8080:8080 -v trimtab-data:/data trimtab       # the demo at http://localhost:8080
#
# Config: TRIMTAB_* variables (TRIMTAB_ADMIN_TOKEN, TRIMTAB_WRITE_KEY, TRIMTAB_TLS__CERT, …) or a
# mounted file: -v ./trimtab.toml:/etc/trimtab.toml:ro -e TRIMTAB_CONFIG=/etc/trimtab.toml.
# Secrets not given are generated into the volume on the first start (printed once).
#
# CI (.ci/image-test) builds the same `runtime` stage with podman, offline: it builds the binary
# itself and passes the laid-out root filesystem as the `builder` context
# (podman build --build-context builder=DIR --target runtime).

ARG RUST_IMAGE=docker.io/library/rust:1-bookworm

FROM ${RUST_IMAGE} AS builder
WORKDIR /src
COPY . .
# `docker build --build-arg TRIMTAB_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .` names the
# commit in `trimtab --version` (the build context has no .git).
ARG TRIMTAB_GIT_COMMIT=unknown
ENV TRIMTAB_GIT_COMMIT=${TRIMTAB_GIT_COMMIT}
# Static (glibc, +crt-static); random numbers from the getrandom(2) system call directly (a
# static binary cannot look the libc wrapper up and would fall back to /dev/urandom).
RUN RUSTFLAGS="-C target-feature=+crt-static --cfg getrandom_backend=\"linux_getrandom\"" \
        cargo build --profile image --locked --bin trimtab --target x86_64-unknown-linux-gnu \
    && docker/rootfs.sh target/x86_64-unknown-linux-gnu/image/trimtab /out

FROM scratch AS runtime
COPY --from=builder /out/root/ /
COPY --from=builder --chown=10001:10001 /out/data/ /data/
USER 10001:10001
ENV TRIMTAB_ADDR=0.0.0.0:8080 \
    TRIMTAB_DATA=/data \
    TRIMTAB_SCRIPTS=/data/scripts \
    TRIMTAB_MODELS=/data/models
WORKDIR /data
VOLUME /data
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["/trimtab", "health"]
ENTRYPOINT ["/trimtab"]
CMD ["serve"]
