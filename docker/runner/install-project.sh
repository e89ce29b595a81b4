#!/bin/sh
# Step 2 of the runner's install in docker/Dockerfile.runner (both targets): the helical_runner package
# (copied to /tmp/src) into /opt/venv with --no-deps, on top of install-deps.sh's layer.
set -eu
# pip reads PIP_* from the environment: an empty build arg must mean "unset", not "an empty URL".
[ -n "${PIP_INDEX_URL:-}" ] || unset PIP_INDEX_URL
[ -n "${PIP_FIND_LINKS:-}" ] || unset PIP_FIND_LINKS
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore

# shellcheck disable=SC2086
/opt/venv/bin/pip install ${PIP_EXTRA_ARGS:-} --no-deps /tmp/src
rm -rf /tmp/src
/opt/venv/bin/helical-runner --help >/dev/null
# matplotlib's font cache, made once here instead of in every container (about 1.5 s a start); the
# home stays writable by uid 50000 and by any uid in group 0
MPLCONFIGDIR=/home/runner/.config/matplotlib /opt/venv/bin/python -c 'import matplotlib.font_manager'
chown -R 50000:0 /home/runner && chmod -R g+rwX /home/runner
