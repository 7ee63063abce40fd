# syntax=docker/dockerfile:1
#
# supabase-jwt-service, built in a Rust image and run from a distroless one as a non-root
# user. Needs BuildKit (the default in Docker 23+, `fly deploy`'s builder, podman/buildah)
# for the cache mount. No secret goes in here: pass them at run time (docs/deploy.md).
#
#   docker build -t supabase-jwt-service .
#   docker run --rm -p 8080:8080 --env-file .env supabase-jwt-service
#
# `--build-arg APP=chat` builds the AI chat example (examples/chat, docs/chat.md) instead;
# it installs under the same name, so the entrypoint and fly.toml's `migrate` work unchanged.
#
# scripts/image-test (part of scripts/test) builds this file for real, for both APP values, on
# local stand-ins for the two bases below, and runs each image: keep their names in step.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
ARG APP=supabase-jwt-service
WORKDIR /src

# The build context, whole: Cargo reads every target the manifest declares (examples, tests,
# benches) before it builds anything, and the sources include files from beside them
# (README.md, docs/library.md, the migrations, the examples' SQL), so copying a hand-picked
# list broke the build each time a target or an included file was added. .dockerignore keeps
# out what must never go in (secrets, local databases, build outputs, .git); only the binary
# reaches the image. The registry and the compiled dependencies live in cache mounts that
# outlive the layer, so a source change recompiles only this crate.
# The release profile keeps line tables (for backtraces while developing); they are most of
# the binary's size, so they stay in this stage as /out/supabase-jwt-service.debug and the
# image gets the binary without them (objcopy --strip-all; the debug link lets gdb find them).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    if [ "$APP" = chat ]; then \
      cargo build --release --locked --example chat \
      && install -D target/release/examples/chat /out/supabase-jwt-service; \
    else \
      cargo build --release --locked --bin supabase-jwt-service \
      && install -D target/release/supabase-jwt-service /out/supabase-jwt-service; \
    fi \
    && objcopy --only-keep-debug /out/supabase-jwt-service /out/supabase-jwt-service.debug \
    && objcopy --strip-all --add-gnu-debuglink=/out/supabase-jwt-service.debug /out/supabase-jwt-service \
    && mkdir -p /out/data

# glibc and libgcc for the binary, CA certificates for the key-set fetch, a `nonroot` user
# (65532), no shell and no package manager. Debian 12 matches the builder's glibc.
FROM gcr.io/distroless/cc-debian12:nonroot

# The embedded store defaults to ./data/dev.db, so the working directory holds a data
# folder the service user may write.
WORKDIR /app
COPY --from=build --chown=65532:65532 /out/data /app/data
COPY --from=build /out/supabase-jwt-service /usr/local/bin/supabase-jwt-service

ENV HOST=0.0.0.0 \
    PORT=8080 \
    LOG_FORMAT=json

USER 65532:65532
EXPOSE 8080

# Exec form: the binary is PID 1 and gets SIGTERM itself, which starts its graceful drain.
# Arguments after the image name (or Fly's release_command) are its subcommand: `migrate`.
ENTRYPOINT ["/usr/local/bin/supabase-jwt-service"]
