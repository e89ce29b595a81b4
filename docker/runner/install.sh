#!/bin/sh
# Install the runner into /opt/venv inside an image (both targets of docker/Dockerfile.runner run this).
#   install.sh deps     the exact versions of requirements/runner.lock (one big layer, cached until the
#                       lock or the pip arguments change)
#   install.sh project  the helical_runner package itself, --no-deps (a small layer on top)
# Reads the build args PIP_INDEX_URL, PIP_FIND_LINKS, PIP_EXTRA_ARGS and TORCH_INDEX_URL.
set -eu
step=$1
# pip reads PIP_* from the environment: an empty build arg must mean "unset", not "an empty URL".
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

case $step in
deps)
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
    ;;
project)
    # shellcheck disable=SC2086
    /opt/venv/bin/pip install ${PIP_EXTRA_ARGS:-} --no-deps /tmp/src
    rm -rf /tmp/src
    /opt/venv/bin/helical-runner --help >/dev/null
    ;;
*)
    echo "usage: install.sh deps|project" >&2; exit 2 ;;
esac
