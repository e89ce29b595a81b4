#!/usr/bin/env bash
# Build the runner image from docker/Dockerfile.runner on this machine (no registry; legacy builder),
# cheaply when nothing changed. Prints the image tag.
#
#   scripts/build-runner-image.sh [cpu|gpu]        (default cpu -> helical-runner:cpu)
#
# - FROM the local base image (scripts/docker-base-image.sh) instead of python:3.12-slim-bookworm; the gpu
#   target here uses the same base (the CUDA libraries come with PyPI's torch wheels anyway). Both base
#   args are passed because the legacy builder builds every stage before the target (gpu builds cpu too,
#   from its layer cache).
# - pip in the build installs from a wheelhouse outside the clone, keyed by the lock file
#   ($CACHE_ROOT/wheelhouse-<hash>, filled once with `pip wheel --no-deps -r requirements/runner.lock`),
#   served on 127.0.0.1 with `--no-index`: a rebuild downloads nothing.
# - Skipped altogether when the tag already carries the hash of everything that goes into the image
#   (label io.helical-airflow.build-hash).
# - The build context is only what the Dockerfile copies (a tar on stdin), never data/ or the venvs.
#
# Settings (environment): HELICAL_RUNNER_TAG (default helical-runner:<target>), HELICAL_WHEELHOUSE_PORT
# (default 38765; a fixed port keeps Docker's layer cache valid between builds), HELICAL_FORCE_BUILD=1.
source "$(dirname "$0")/lib.sh"

TARGET=${1:-cpu}
case $TARGET in cpu|gpu) ;; *) die "usage: $0 [cpu|gpu]" ;; esac
TAG=${HELICAL_RUNNER_TAG:-helical-runner:$TARGET}
PORT=${HELICAL_WHEELHOUSE_PORT:-38765}
LOCK=$REPO_ROOT/requirements/runner.lock
# Everything the Dockerfile copies, relative to the repo.
CONTEXT=(docker/Dockerfile.runner docker/runner requirements/runner.lock pyproject.toml README.md
         helical_runner config/profiles.yaml)

use_engine  # DOCKER_HOST's engine (a worker host's), else this machine's
BASE=$(bash "$REPO_ROOT/scripts/docker-base-image.sh")

cd "$REPO_ROOT"
build_hash=$( { printf '%s\n' "$TARGET" "$(docker image inspect -f '{{.Id}}' "$BASE")";
                find "${CONTEXT[@]}" scripts/build-runner-image.sh -type f ! -name '*.pyc' | LC_ALL=C sort | xargs sha256sum; } \
              | sha256sum | cut -c1-16)
up_to_date() {
    [ "${HELICAL_FORCE_BUILD:-0}" != 1 ] && \
    [ "$(docker image inspect -f '{{index .Config.Labels "io.helical-airflow.build-hash"}}' "$TAG" 2>/dev/null)" = "$build_hash" ]
}
if up_to_date; then
    log "$TAG is up to date (build hash $build_hash)"
    echo "$TAG"; exit 0
fi

# One builder at a time: two concurrent 8 GB builds would fight over 2 cores and the wheelhouse; whoever
# waited may find the image already built.
exec 9>"$CACHE_ROOT/build-runner-image.lock"
flock 9
if up_to_date; then
    log "$TAG was just built by another process (build hash $build_hash)"
    echo "$TAG"; exit 0
fi

# --- the wheelhouse: every pinned wheel once per lock file (sdist-only pins are built into wheels here)
wheelhouse=$CACHE_ROOT/wheelhouse-$(sha256sum "$LOCK" | cut -c1-12)
if [ ! -f "$wheelhouse/.complete" ]; then
    PY=$(find_python312)
    log "filling the wheelhouse $wheelhouse from ${LOCK#$REPO_ROOT/} (once per lock; several GB: torch + CUDA wheels)"
    prune_old "$CACHE_ROOT/wheelhouse-" "$wheelhouse" 0  # an older lock's wheels: 4 GB nobody builds from again
    need_disk "$CACHE_ROOT" 6 "the runner image's wheelhouse"
    mkdir -p "$wheelhouse"
    "$PY" -m pip wheel -q --no-deps -r "$LOCK" -w "$wheelhouse" 2>&1 | quiet_pip
    touch "$wheelhouse/.complete"
fi

# --- serve it to the build (the build runs with --network host, so 127.0.0.1 is this host)
port_busy() { python3 -c 'import socket, sys; sys.exit(socket.socket().connect_ex(("127.0.0.1", int(sys.argv[1]))) != 0)' "$1"; }
if port_busy "$PORT"; then
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log "port ${HELICAL_WHEELHOUSE_PORT:-38765} is busy: serving the wheelhouse on $PORT (Docker's layer cache misses once)"
fi
python3 -m http.server "$PORT" --bind 127.0.0.1 --directory "$wheelhouse" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "http://127.0.0.1:$PORT/" 2>/dev/null && break
    sleep 0.1
done

log "building $TAG (target $TARGET, base $BASE, build hash $build_hash)"
start=$SECONDS
tar -c --exclude=__pycache__ --exclude='*.pyc' "${CONTEXT[@]}" \
    | DOCKER_BUILDKIT=0 docker build --network host --target "$TARGET" -t "$TAG" \
        -f docker/Dockerfile.runner \
        --build-arg "BASE_IMAGE=$BASE" --build-arg "GPU_BASE_IMAGE=$BASE" \
        --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$PORT/" \
        --build-arg "PIP_EXTRA_ARGS=--no-index" \
        --label "io.helical-airflow.build-hash=$build_hash" \
        - >"$CACHE_ROOT/build-runner-$TARGET.log" 2>&1 \
    || { tail -n 30 "$CACHE_ROOT/build-runner-$TARGET.log" >&2; die "docker build failed; see $CACHE_ROOT/build-runner-$TARGET.log"; }
# Smoke test as the image's own (non-root) user; a broken image must not count as up to date next time.
if ! docker run --rm --network none "$TAG" --help >/dev/null 2>"$CACHE_ROOT/build-runner-$TARGET.smoke"; then
    cat "$CACHE_ROOT/build-runner-$TARGET.smoke" >&2
    docker rmi "$TAG" >/dev/null 2>&1 || true
    die "the new $TAG can't run helical-runner --help (untagged it)"
fi
# Intermediate images of earlier builds of this tag are left dangling: drop them (the layer cache of the
# new image stays).
docker image prune -f --filter "label=io.helical-airflow.build-hash" >/dev/null 2>&1 || true
log "built $TAG in $((SECONDS - start))s ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
echo "$TAG"
