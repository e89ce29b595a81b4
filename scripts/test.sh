#!/usr/bin/env bash
# `make test`: install what the tests need (idempotent, cached), then run every suite.
# Extra arguments go to pytest (e.g. -m "not slow", -k resume, -x).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

ensure_apt "${TEST_APT_PACKAGES[@]}"
ensure_runner_env

log "runner tests (Python 3.12 runner venv)"
# pytest exits 5 when it collects nothing: that is a failure here, as it should be.
.venv-runner/bin/python -m pytest tests/runner "$@"
