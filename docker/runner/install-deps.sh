#!/bin/sh
# Step 1 of the runner's install in docker/Dockerfile.runner (both targets): /opt/venv with exactly the
# versions of requirements/runner.lock. One big layer, cached until the lock, this file or the pip build
# args change: keep everything else (the project, its data) out of this file.
# Reads the build args PIP_INDEX_URL, PIP_FIND_LINKS, PIP_EXTRA_ARGS and TORCH_INDEX_URL.
set -eu
# pip reads PIP_* from the environment: an empty build arg must mean "unset", not "an empty URL".
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

python3.12 -m venv /opt/venv
lock=/tmp/runner.lock
if [ -n "${TORCH_INDEX_URL:-}" ]; then
    # A CPU (or other CUDA) torch build from its own index: the lock's torch==X matches X+cpu there,
    # and the CUDA-only wheels PyPI's torch pulls in (nvidia-*, triton, cuda-*) are left out.
    grep -vE '^(nvidia-|triton==|cuda-bindings==|cuda-pathfinder==)' /tmp/runner.lock.in > "$lock"
    # shellcheck disable=SC2086
    /opt/venv/bin/pip install ${PIP_EXTRA_ARGS:-} --extra-index-url "$TORCH_INDEX_URL" -r "$lock"
else
    cp /tmp/runner.lock.in "$lock"
    # shellcheck disable=SC2086
    /opt/venv/bin/pip install ${PIP_EXTRA_ARGS:-} -r "$lock"
fi
rm -f "$lock" /tmp/runner.lock.in
