# syntax=docker/dockerfile:1
#
# pgtenant container image.
#
#   docker build -t pgtenant .                      # profile-guided (PGO=1)
#   docker build --build-arg PGO=0 -t pgtenant .   # plain release build
#   docker run --rm -p 6432:6432 \
#     -v "$PWD/my-pgtenant.toml:/etc/pgtenant/pgtenant.toml:ro" pgtenant
#   docker run --rm -v ...:/etc/pgtenant/pgtenant.toml:ro pgtenant \
#     check -c /etc/pgtenant/pgtenant.toml
#
# The image ships config/pgtenant.toml as a default, changed to listen on
# 0.0.0.0:6432 so the published port works; its placements point at
# 127.0.0.1:5432, so mount your own config. SIGTERM shuts down gracefully
# within proxy.shutdown_timeout (default 30s): give `docker stop` more
# than that (`docker stop -t 35`), or it kills the process after 10s.

# ---- build ------------------------------------------------------------
FROM rust:1-slim-bookworm AS build
# PGO=1 (the default): the binary is the profile-guided build of
# benches/pgo-build.sh, which trains an instrumented build for about a
# minute on a throwaway PostgreSQL (pgbench through the proxy) and builds
# again with the profile: 3-9 % less proxy CPU per transaction than the
# plain release build (README, "Profile-guided build"), for about three
# builds' time. PGO=0 (`docker build --build-arg PGO=0 .`): the plain
# `cargo build --release`, no PostgreSQL in the build.
ARG PGO=1
# The training's PostgreSQL (server binaries, psql, pgbench; no cluster of
# its own: the script starts throwaway ones), openssl for its TLS case and
# rustc's own llvm-profdata to merge the profile.
RUN if [ "$PGO" = 1 ]; then \
      mkdir -p /etc/postgresql-common/createcluster.d \
      && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/pgtenant.conf \
      && apt-get update \
      && apt-get install -y --no-install-recommends postgresql openssl \
      && rm -rf /var/lib/apt/lists/* \
      && rustup component add llvm-tools; \
    fi
WORKDIR /src
# The whole tree (minus .dockerignore): the build needs Cargo.lock, src/,
# sql/ (compiled in by `pgtenant demo`) and benches/ (declared in
# Cargo.toml, and the PGO training).
COPY . .
# Cache mounts keep the registry and target dir between builds; the binary
# is copied out in the same step because the cache is not part of the image.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    if [ "$PGO" = 1 ]; then \
      benches/pgo-build.sh && cp target/pgo/pgtenant /usr/local/bin/pgtenant; \
    else \
      cargo build --release --locked --bin pgtenant \
      && cp target/release/pgtenant /usr/local/bin/pgtenant; \
    fi

# ---- runtime ----------------------------------------------------------
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgtenant
COPY --from=build /usr/local/bin/pgtenant /usr/local/bin/pgtenant
COPY config/pgtenant.toml /etc/pgtenant/pgtenant.toml
RUN sed -i 's/^listen = "127\.0\.0\.1:6432"$/listen = "0.0.0.0:6432"/' \
        /etc/pgtenant/pgtenant.toml \
    && grep -q '^listen = "0.0.0.0:6432"$' /etc/pgtenant/pgtenant.toml
# The authentication secret (SCRAM salts) is created on first start where
# the proxy's user may write it; mount a volume (or a mode-0600 secret
# file) at /var/lib/pgtenant so that it survives the container.
RUN install -d -o pgtenant -g pgtenant -m 0700 /var/lib/pgtenant \
    && sed -i 's|^#secret_file = "pgtenant.secret"$|secret_file = "/var/lib/pgtenant/pgtenant.secret"|' \
        /etc/pgtenant/pgtenant.toml \
    && grep -q '^secret_file = "/var/lib/pgtenant/pgtenant.secret"$' /etc/pgtenant/pgtenant.toml
VOLUME /var/lib/pgtenant
# Numeric, so Kubernetes can check runAsNonRoot (deploy/kubernetes/).
USER 10001:10001
# 6432: PostgreSQL clients. 9930: admin HTTP (/metrics, /healthz,
# /reload) where [admin] listen = "0.0.0.0:9930" is set.
EXPOSE 6432 9930
ENTRYPOINT ["pgtenant"]
CMD ["-c", "/etc/pgtenant/pgtenant.toml"]
