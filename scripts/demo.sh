#!/usr/bin/env bash
# `make demo`: install the runner venv if needed (cached), then run the demo (see scripts/demo.py).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"
ensure_runner_env
exec .venv-runner/bin/python scripts/demo.py "$@"
